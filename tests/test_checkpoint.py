"""Checkpoint and resume: a run killed with SIGKILL (mid-epoch, or in the middle of a checkpoint write)
resumes to exactly the parameters of an uninterrupted run; corrupt or foreign checkpoints are clear errors."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels import checkpoint as ckpt

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import gru4rec_kernels as g
    from gru4rec_kernels import checkpoint as ckpt
    from gru4rec_kernels.synthetic import generate_clicks
    backend, out, ckdir, mode = sys.argv[1:5]
    train = g.SessionData.from_pandas(generate_clicks(n_items=300, n_sessions=1500, seed=1))
    cfg = g.TrainConfig(layers=[12], n_sample=24, batch_size=16, n_epochs=2, sample_store_size=500,
                        dropout_p_hidden=0.2, momentum=0.5)
    kw = {}
    if mode == "kill_in_write":
        n = [0]
        def hook():
            n[0] += 1
            if n[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt._mid_write_hook = hook
    if mode == "slow":  # give the parent time to kill us mid-epoch
        import gru4rec_kernels.trainer as tr
        orig = tr.Trainer._epoch
        def slow_epoch(self, be, *a, **k):
            f = be.train_chunk
            def slow_chunk(*x):
                import time; time.sleep(0.05); return f(*x)
            be.train_chunk = slow_chunk
            return orig(self, be, *a, **k)
        tr.Trainer._epoch = slow_epoch
    resume = ckdir if mode == "resume" else None
    t = g.Trainer(cfg, backend=backend, show_progress=False, chunk_steps=8)
    m = t.fit(train, checkpoint_dir=None if mode == "plain" else ckdir,
              checkpoint_every=None if mode == "plain" else 20, resume=resume)
    np.savez(out, **m.params, losses=np.array([h["loss"] for h in m.history]))
""")

ENV = dict(os.environ, NUMBA_NUM_THREADS="2")


def run(tmp_path, backend, mode, ckdir, wait=True):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{mode}.npz"
    args = [sys.executable, str(script), backend, str(out), str(ckdir), mode]
    if not wait:
        return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE), out
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    return r, out


def assert_same(a, b):
    A, B = np.load(a), np.load(b)
    assert sorted(A.files) == sorted(B.files)
    for k in A.files:
        np.testing.assert_array_equal(A[k], B[k], err_msg=k)


BACKEND = "cpu"  # bit-exact at a fixed thread count (NUMBA_NUM_THREADS=2 in ENV)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    r, out = run(tmp, BACKEND, "plain", tmp / "none")
    assert r.returncode == 0, r.stderr
    return out


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path, uninterrupted):
    ckdir = tmp_path / "ck"
    p, _ = run(tmp_path, BACKEND, "slow", ckdir, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and len(ckpt.list_checkpoints(str(ckdir))) < 2:
        time.sleep(0.05)
        assert p.poll() is None, p.stderr.read().decode()
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    state = ckpt.load(str(ckdir))
    assert state["sched"] is not None  # killed mid-epoch
    r, out = run(tmp_path, BACKEND, "resume", ckdir)
    assert r.returncode == 0, r.stderr
    assert_same(out, uninterrupted)


def test_sigkill_during_checkpoint_write_keeps_previous_and_resumes(tmp_path, uninterrupted):
    ckdir = tmp_path / "ck"
    r, _ = run(tmp_path, BACKEND, "kill_in_write", ckdir)
    assert r.returncode == -signal.SIGKILL
    done = ckpt.list_checkpoints(str(ckdir))
    assert len(done) == 2  # the third write was killed half-way
    assert any(f.startswith(".tmp-ckpt-") for f in os.listdir(ckdir))  # its partial temp file
    prev = ckpt.load(done[-1])  # the previous checkpoint is intact
    assert prev["step"] == 40
    r, out = run(tmp_path, BACKEND, "resume", ckdir)
    assert r.returncode == 0, r.stderr
    assert_same(out, uninterrupted)
    assert not any(f.startswith(".tmp-ckpt-") for f in os.listdir(ckdir))  # cleaned by the next write


def test_missing_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    from gru4rec_kernels.synthetic import generate_clicks
    train = g.SessionData.from_pandas(generate_clicks(n_items=100, n_sessions=300, seed=2))
    cfg = g.TrainConfig(layers=[4], n_sample=8, batch_size=8, n_epochs=1, sample_store_size=100)
    t = g.Trainer(cfg, backend="numpy", show_progress=False)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        t.fit(train, resume=str(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        t.fit(train, resume=str(tmp_path / "nope.safetensors"))
    t.fit(train, checkpoint_dir=str(tmp_path))
    path = ckpt.list_checkpoints(str(tmp_path))[-1]
    with pytest.raises(ckpt.CheckpointError, match="another config"):
        g.Trainer(cfg.replace(learning_rate=0.01), backend="numpy", show_progress=False).fit(train, resume=path)
    other = g.SessionData.from_pandas(generate_clicks(n_items=100, n_sessions=300, seed=3))
    with pytest.raises(ckpt.CheckpointError, match="other training data"):
        t.fit(other, resume=path)
    data = open(path, "rb").read()
    bad = tmp_path / "bad" / "ckpt-000000000001.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated|declares"):
        t.fit(train, resume=str(bad.parent))
    with pytest.raises(ValueError, match="checkpoint_every"):
        t.fit(train, checkpoint_dir=str(tmp_path), checkpoint_every=0)


def test_divergence_names_epoch_step_and_checkpoint(tmp_path):
    from gru4rec_kernels.synthetic import generate_clicks
    train = g.SessionData.from_pandas(generate_clicks(n_items=100, n_sessions=300, seed=2))
    cfg = g.TrainConfig(layers=[4], n_sample=8, batch_size=8, n_epochs=2, sample_store_size=100)
    t = g.Trainer(cfg, backend="numpy", show_progress=False)
    calls = [0]
    from gru4rec_kernels.backends.numpy import NumpyBackend
    orig = NumpyBackend.train_step

    def poisoned(self, *a):
        calls[0] += 1
        loss = orig(self, *a)
        return float("nan") if calls[0] == 50 else loss

    NumpyBackend.train_step = poisoned
    try:
        with pytest.raises(g.TrainingDivergedError, match=r"epoch 1, step 49 .*last good checkpoint: .*ckpt-"):
            t.fit(train, checkpoint_dir=str(tmp_path), checkpoint_every=10)
    finally:
        NumpyBackend.train_step = orig
