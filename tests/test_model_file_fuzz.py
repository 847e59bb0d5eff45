"""Model files cannot hurt: random bytes, truncations and bit flips of a real saved model give a
ModelFileError (or, for a flip that changes nothing the format reads, the same model), never another
exception, a hang, or an allocation beyond the file's size."""
import time
import tracemalloc

import numpy as np
import pytest

import gru4rec_kernels as g
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
