"""Model files cannot hurt: random bytes, truncations and bit flips of a real saved model give a
ModelFileError (or, for a flip that changes nothing the format reads, the same model), never another
exception, a hang, or an allocation beyond the file's size."""
import json
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import gru4rec_kernels as g
from gru4rec_kernels import modelfile
from gru4rec_kernels.layout import init_params

BUDGET_S = 40.0  # bound the fuzzing time in CI


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = g.TrainConfig(layers=[6], n_sample=8, loss="bpr-max", final_act="elu-0.5")
    _, params = init_params(cfg, 40)
    model = g.Model(cfg, np.arange(40) * 7 + 3, params, history=[{"epoch": 1, "loss": 1.5}],
                    item_support=np.arange(40, dtype=float))
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    model.save(path)
    return model, path.read_bytes()


def load_or_error(buf):
    try:
        return g.Model.from_bytes(buf)
    except g.ModelFileError:
        return None


def same(a, b):
    return (a.cfg == b.cfg and np.array_equal(a.item_ids, b.item_ids)
            and all(np.array_equal(a.params[k], b.params[k]) for k in a.params))


def test_fuzz_model_loader(saved):
    model, good = saved
    assert same(load_or_error(good), model)
    rng = np.random.default_rng(12345)
    n = {"random": 0, "truncate": 0, "flip_header": 0, "flip_payload": 0, "extend": 0}
    hlen = int.from_bytes(good[:8], "little") + 8
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        while time.perf_counter() - t0 < BUDGET_S and sum(n.values()) < 20000:
            kind = list(n)[sum(n.values()) % len(n)]
            if kind == "random":
                size = int(rng.integers(0, 2 * len(good)))
                buf = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
                if rng.random() < 0.5 and size >= 8:  # a plausible header size to get past the first check
                    buf = int(rng.integers(0, size)).to_bytes(8, "little") + buf[8:]
            elif kind == "truncate":
                buf = good[: int(rng.integers(0, len(good)))]
            elif kind == "extend":
                buf = good + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
            else:
                b = bytearray(good)
                lo, hi = (0, hlen) if kind == "flip_header" else (hlen, len(good))
                for _ in range(int(rng.integers(1, 4))):
                    i = int(rng.integers(lo, hi))
                    b[i] ^= 1 << int(rng.integers(0, 8))
                buf = bytes(b)
            tracemalloc.reset_peak()
            out = load_or_error(buf)  # anything but ModelFileError propagates and fails the test
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 8 * len(buf) + (1 << 20), (kind, peak, len(buf))
            assert out is None or (kind == "flip_header" and same(out, model)), kind
            n[kind] += 1
    finally:
        tracemalloc.stop()
    total = sum(n.values())
    print(f"fuzz cases: {total} {n}")
    assert total >= 1000, n


def test_specific_corruptions_name_the_problem(saved, tmp_path):
    _, good = saved
    hlen = int.from_bytes(good[:8], "little")
    cases = {
        "truncated": good[:5],
        "header declares": (10 ** 9).to_bytes(8, "little") + good[8:],
        "trailing bytes": good + b"\0" * 8,
        "checksum mismatch": good[:-1] + bytes([good[-1] ^ 1]),
        "not valid JSON": good[:8] + b"[" + good[9:],
        "header checksum mismatch": good.replace(b'layers\\": [6]', b'layers\\": [7]'),
    }
    for msg, buf in cases.items():
        with pytest.raises(g.ModelFileError, match=msg):
            g.Model.from_bytes(buf)
    p = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError):
        g.Model.load(p)
    assert hlen > 0


def test_file_written_by_the_hand_written_encoder_still_loads():
    # Written by the encoder model.py had before the safetensors library did the writing (tensors in name
    # order, the same checksums); the library reads any valid layout, so such files stay loadable.
    path = Path(__file__).parent / "fixtures" / "model_written_before_safetensors_lib.safetensors"
    m = g.Model.load(path)
    cfg = g.TrainConfig(layers=[6], n_sample=8, loss="bpr-max", final_act="elu-0.5", embedding=4,
                        constrained_embedding=False)
    _, params = init_params(cfg, 12)
    assert m.cfg == cfg and m.history == [{"epoch": 1, "loss": 1.5}]
    np.testing.assert_array_equal(m.item_ids, np.arange(12) * 7 + 3)
    np.testing.assert_array_equal(m.item_support, np.arange(12, dtype=float))
    assert sorted(m.params) == sorted(params)
    for k in params:
        np.testing.assert_array_equal(m.params[k], params[k], err_msg=k)


def _with_valid_checksums(header: dict, data: bytes) -> bytes:
    """A file whose checksums match its (possibly bad) header and data: only the layout checks can catch it."""
    meta = header.setdefault("__metadata__", {})
    meta["payload_crc32"] = f"{zlib.crc32(data):08x}"
    meta["header_crc32"] = modelfile._header_crc(header)
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def test_layout_errors_of_the_library_become_model_file_errors():
    entry = {"dtype": "F32", "shape": [2]}
    overlap = {"a": dict(entry, data_offsets=[0, 8]), "b": dict(entry, data_offsets=[4, 12])}
    with pytest.raises(g.ModelFileError, match="not a valid safetensors layout"):
        g.Model.from_bytes(_with_valid_checksums(overlap, bytes(12)))
    wrong_size = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    with pytest.raises(g.ModelFileError, match="not a valid safetensors layout"):
        g.Model.from_bytes(_with_valid_checksums(wrong_size, bytes(8)))
    bf16 = {"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}
    with pytest.raises(g.ModelFileError, match="unsupported dtype 'BF16'"):
        g.Model.from_bytes(_with_valid_checksums(bf16, bytes(4)))
    with pytest.raises(ValueError, match="reserved"):
        modelfile.encode_safetensors({"a": np.zeros(2, np.float32)}, {"payload_crc32": "0"})
    with pytest.raises(ValueError, match="not storable"):
        modelfile.encode_safetensors({"a": np.zeros(2, np.float16)}, {})


def test_saved_file_is_read_by_the_plain_library(saved):
    # The file is ordinary safetensors: any safetensors reader gets the tensors and the metadata.
    model, good = saved
    loaded = safetensors.numpy.load(good)
    np.testing.assert_array_equal(loaded["item_ids"], model.item_ids)
    for k, v in model.params.items():
        np.testing.assert_array_equal(loaded[k], v)
