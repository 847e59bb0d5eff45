"""Saving never replaces what it should not, honours the umask, leaves no temporaries; loading checks first."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.modelfile import ModelFileError


@pytest.fixture(scope="module")
def model():
    cfg = g.TrainConfig(layers=[4], n_sample=0)
    _, params = init_params(cfg, 6)
    return g.Model(cfg, np.arange(6) * 10, params, item_support=np.arange(1.0, 7.0))


def test_new_file_mode_follows_the_umask(tmp_path, model):
    for mask in (0o022, 0o077, 0o002):
        old = os.umask(mask)
        try:
            p = tmp_path / f"m{mask:o}.safetensors"
            model.save(p)
        finally:
            os.umask(old)
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_replacing_keeps_the_file_mode(tmp_path, model):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    model.save(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert g.Model.load(p).n_items == 6


def test_symlink_is_followed_not_replaced(tmp_path, model):
    real = tmp_path / "real.safetensors"
    real.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    model.save(link)
    assert link.is_symlink()
    assert g.Model.load(real).n_items == 6


def test_read_only_and_non_regular_destinations_are_refused(tmp_path, model):
    ro = tmp_path / "ro.safetensors"
    ro.write_bytes(b"keep")
    os.chmod(ro, 0o444)
    with pytest.raises(PermissionError, match="read-only"):
        model.save(ro)
    assert ro.read_bytes() == b"keep"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        model.save(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(IsADirectoryError):
        model.save(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match="not a regular file"):
            model.save("/dev/null")
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_failed_and_killed_saves_leave_no_temporaries(tmp_path, model):
    p = tmp_path / "m.safetensors"

    def failing():
        yield b"partial"
        raise RuntimeError("disk full")

    from gru4rec_kernels.modelfile import atomic_write_bytes
    with pytest.raises(RuntimeError):
        atomic_write_bytes(p, failing())
    assert os.listdir(tmp_path) == []
    # a save killed mid-write leaves a temporary: the next save of the same path removes it
    code = ("import os, sys; from gru4rec_kernels.modelfile import atomic_write_bytes\n"
            "def chunks():\n    yield b'x' * 1000\n    os._exit(9)\n"
            f"atomic_write_bytes({str(p)!r}, chunks())\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    assert any(n.startswith(".tmp-") for n in os.listdir(tmp_path))
    model.save(p)
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_loading_checks_before_reading(tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="not a regular file"):
        g.Model.load(fifo)  # returns at once instead of waiting for a writer
    if os.path.exists("/dev/zero"):
        z = tmp_path / "zero.safetensors"
        z.symlink_to("/dev/zero")
        with pytest.raises(ModelFileError, match="not a regular file"):
            g.Model.load(z)
    big = tmp_path / "big.safetensors"
    big.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelFileError, match="header declares"):
        g.Model.load(big)


def test_huge_integer_in_the_header_is_a_model_file_error(tmp_path, model):
    p = tmp_path / "m.safetensors"
    model.save(p)
    buf = p.read_bytes()
    hlen = int.from_bytes(buf[:8], "little")
    header = buf[8:8 + hlen].decode()
    bad = header.replace('"__metadata__":{', '"__metadata__":{"x":' + "9" * 5000 + ",", 1)
    assert bad != header
    hb = bad.encode()
    with pytest.raises(ModelFileError):
        g.Model.from_bytes(len(hb).to_bytes(8, "little") + hb + buf[8 + hlen:])
