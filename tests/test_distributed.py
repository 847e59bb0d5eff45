"""Synchronous data parallelism over MPI (comm.py, dataparallel.py, Trainer(comm=), evaluate(comm=), the CLI's
--distributed): 2 ranks launched with ``mpiexec -n 2`` (tests/mpi_worker.py) against one process at the global
batch, computed here. Each launch costs a few seconds of start-up, so one launch serves one test and covers many
cases; every launch has a timeout. The per-step math in one process is tests/test_dataparallel.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from dp_harness import CASES, case_cfg, fit_recorded, uneven_data

import gru4rec_kernels as g
from gru4rec_kernels import checkpoint as ckpt
from gru4rec_kernels.backends.base import Backend
from gru4rec_kernels.comm import LocalComm
from gru4rec_kernels.dataparallel import param_checksum, session_shard

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
HAVE_MPI = shutil.which("mpiexec") is not None and __import__("importlib").util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py (pip install 'gru4rec-kernels[mpi]')")
# one thread per rank: two ranks share the CI machine's two cores
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), NUMBA_NUM_THREADS="1",
           OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


def mpiexec(args, timeout: float = 300.0):
    """``mpiexec -n 2 <args>``: (CompletedProcess, seconds it took)."""
    t0 = time.monotonic()
    r = subprocess.run(["mpiexec", "-n", "2", *map(str, args)], env=ENV, capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    return r, time.monotonic() - t0


def worker(scenario, out, *extra, timeout=300.0):
    return mpiexec([sys.executable, WORKER, scenario, out, *extra], timeout)


def has_dp_step(name: str) -> bool:
    from gru4rec_kernels.backends import backend_class
    cls = backend_class(name)
    return cls.grad_step is not Backend.grad_step


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300))


# ------------------------------------------------------------------------------------------------ equivalence
# (backend, dtype, rtol): the numpy oracle in float64; a fast backend joins when it has its data-parallel step
BACKENDS = [
    pytest.param("numpy", "float64", 1e-10, id="numpy-float64"),
    pytest.param("cpu", "float32", 1e-5, id="cpu-float32", marks=pytest.mark.skipif(
        not has_dp_step("cpu"), reason="the cpu backend has no data-parallel step (grad_step) yet")),
]


@needs_mpi
@pytest.mark.parametrize("backend,dtype,rtol", BACKENDS)
def test_two_ranks_equal_one_process(backend, dtype, rtol, tmp_path):
    """Every loss and input mode (dropout, momentum, logq, clipping, accidental-hit masking among them), uneven
    sessions, 3 epochs (>= 50 steps): 2 ranks at B_l = 4 against one process at B = 8. The ranks' lane slices
    together are the one-process schedule step for step; per-step losses, parameters and Adagrad state equal
    to ``rtol``; the two replicas bitwise equal. Case "tail" (2 lanes on 2 ranks) leaves a rank without an
    active lane in each epoch's tail; ids shared by both ranks' rows and targets equal to samples occur (they
    must be summed once each)."""
    r, secs = worker("equivalence", tmp_path, "--backend", backend, "--dtype", dtype)
    assert r.returncode == 0, r.stderr[-4000:]
    data = uneven_data()
    worst = {}
    idle_rank_steps = shared_id_steps = hit_steps = 0
    for case in CASES:
        one = fit_recorded(case_cfg(case), data, backend, dtype)
        r0, r1 = (dict(np.load(tmp_path / f"{case}.rank{k}.npz")) for k in (0, 1))
        B = one["X"].shape[1]
        if B == 8:
            assert one["losses"].size >= 50, case
        # the union of the lane slices is the one-process schedule, step for step
        np.testing.assert_array_equal(np.concatenate([r0["X"], r1["X"]], axis=1), one["X"], err_msg=case)
        np.testing.assert_array_equal(np.concatenate([r0["active"], r1["active"]], axis=1), one["active"])
        for rk in (r0, r1):
            np.testing.assert_array_equal(rk["Y"], one["Y"], err_msg=case)
        idle_rank_steps += int((~r0["active"].any(1)).sum() + (~r1["active"].any(1)).sum())
        shared_id_steps += sum(bool(np.intersect1d(a[m], b[n]).size) for a, m, b, n in
                               zip(r0["X"], r0["active"], r1["X"], r1["active"]))
        hit_steps += sum(bool(np.intersect1d(y[:B], y[B:]).size) for y in one["Y"])
        # every rank reads the same all-reduced loss; it is the one-process loss
        np.testing.assert_array_equal(r0["losses"], r1["losses"], err_msg=case)
        np.testing.assert_allclose(r0["losses"], one["losses"], rtol=rtol, atol=rtol * 1e-3, err_msg=case)
        worst[(case, "losses")] = rel_diff(r0["losses"], one["losses"])
        for k, v in one.items():
            if k.startswith(("param.", "acc.", "mom.")):
                # atol on the array's scale: an element that cancels to ~0 keeps the absolute error of its terms
                np.testing.assert_allclose(r0[k], v, rtol=rtol, atol=rtol * np.abs(v).max(initial=1e-3),
                                           err_msg=f"{case} {k}")
                np.testing.assert_array_equal(r0[k], r1[k], err_msg=f"{case} {k}: the replicas differ")
                worst[(case, k.split(".")[0])] = max(worst.get((case, k.split(".")[0]), 0.0), rel_diff(r0[k], v))
    assert idle_rank_steps > 0 and shared_id_steps > 0 and hit_steps > 0
    print(f"\n{backend} {dtype}: launch {secs:.1f} s; max relative difference to one process per case and kind:")
    for (case, kind), d in sorted(worst.items()):
        print(f"  {case:<22} {kind:<7} {d:.2e}")


# ------------------------------------------------------------------------------------------------ the trainer
@needs_mpi
def test_checkpoint_resume_sharded_evaluation_and_refusals(tmp_path):
    """On 2 ranks (numpy backend, float32, validation every epoch, a checkpoint every 10 steps):
    - resumed from the checkpoint of step 10, the run equals the uninterrupted one bit for bit, on both ranks;
    - the replicas are bitwise equal; the run is the one-process run at the global batch (float32 rounding);
    - sharded evaluation gives every rank the one-process metrics and ranks;
    - a global batch the ranks do not divide, other data on one rank, and replicas made to differ (rank 1 moves a
      weight after step 5; checked every 4 steps) are errors raised on both ranks (no abort, no hang);
    - the checkpoint holds the global hidden state and n_ranks: one process resumes it at the same batch, and
      another global batch is a clear error."""
    from mpi_worker import CKPT_EVERY, features_cfg
    r, secs = worker("features", tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    res = [json.loads((tmp_path / f"features.rank{k}.json").read_text()) for k in (0, 1)]
    arr = [dict(np.load(tmp_path / f"features.rank{k}.npz")) for k in (0, 1)]
    names = [k[2:] for k in arr[0] if k.startswith("a.")]
    drop = ("seconds", "mb_per_s", "events_per_s")
    same = lambda h: [{k: v for k, v in e.items() if k not in drop} for e in h]
    for k in (0, 1):
        assert same(res[k]["history_b"]) == same(res[k]["history_a"])
        for n in names:
            np.testing.assert_array_equal(arr[k][f"b.{n}"], arr[k][f"a.{n}"], err_msg=n)  # resumed = uninterrupted
            np.testing.assert_array_equal(arr[1][f"a.{n}"], arr[0][f"a.{n}"], err_msg=n)  # replicas
        # sharded evaluation = one process
        sh, lo = res[k]["eval_sharded"], res[k]["eval_local"]
        assert sh["n_events"] == lo["n_events"] > 0
        for m in ("recall", "mrr", "ndcg"):
            for c, v in lo[m].items():
                assert sh[m][c] == pytest.approx(v, rel=1e-12), (m, c)
        np.testing.assert_array_equal(np.sort(arr[k]["ranks_sharded"]), np.sort(arr[k]["ranks_local"]))
        assert "not divisible by the 2 ranks" in res[k]["indivisible"]
        assert "rank(s) [1] have other training data" in res[k]["other_data"]
        assert res[k]["diverged"].startswith("ReplicaDivergedError") and "global step 8" in res[k]["diverged"]
    # one process at the global batch
    cfg = features_cfg()
    train, valid = uneven_data(1, 60), uneven_data(2, 25)
    one = g.Trainer(cfg, backend="numpy", show_progress=False).fit(train, valid=valid, eval_cutoffs=(1, 5, 10))
    np.testing.assert_allclose([h["loss"] for h in res[0]["history_a"]], [h["loss"] for h in one.history], rtol=1e-5)
    for n in names:
        np.testing.assert_allclose(arr[0][f"a.{n}"], one.params[n], rtol=1e-4, atol=1e-5, err_msg=n)
    # the 2-rank checkpoint: global hidden state, n_ranks; resumable by one process at the same global batch
    path = tmp_path / "ckA" / f"ckpt-{CKPT_EVERY:012d}.safetensors"
    st = ckpt.load(path)
    assert st["n_ranks"] == 2 and st["hidden"][0].shape == (8, 5) and np.abs(st["hidden"][0]).max() > 0
    resumed = g.Trainer(cfg, backend="numpy", show_progress=False).fit(train, valid=valid, eval_cutoffs=(1, 5, 10),
                                                                        resume=str(path))
    for n in names:
        np.testing.assert_allclose(resumed.params[n], arr[0][f"a.{n}"], rtol=1e-4, atol=1e-5, err_msg=n)
    with pytest.raises(ckpt.CheckpointError, match=r"2 rank\(s\) x 4 lanes = 8; this run has 1 x 12 = 12"):
        g.Trainer(cfg.replace(batch_size=12), backend="numpy", show_progress=False).fit(train, resume=str(path))
    print(f"\nfeatures launch: {secs:.1f} s")


@needs_mpi
@pytest.mark.parametrize("scenario", ["raise", "hang"])
def test_a_failing_rank_ends_the_job(scenario, tmp_path):
    """Rank 1 raises in a training step (``raise``; collective timeout 300 s), or stops answering (``hang``,
    collective timeout 5 s from the step before): the job ends at once, naming the failure, instead of leaving
    rank 0 waiting."""
    extra = ("--fail-timeout", "5") if scenario == "hang" else ()
    r, secs = worker(scenario, tmp_path, *extra, timeout=200)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "finished" not in r.stdout, out[-3000:]
    if scenario == "raise":
        assert "injected failure on rank 1" in out and "rank 1 of 2 failed" in out, out[-3000:]
    else:  # rank 1's 5th step is global step 4: rank 0 waits for it in that step's all-reduce
        assert "CollectiveTimeout" in out and "the gradient all-reduce of global step 4" in out, out[-3000:]
    assert secs < 150  # not the 300 s collective timeout (raise) nor rank 1's 600 s sleep (hang): seconds when warm


# ------------------------------------------------------------------------------------------------ the CLI
@needs_mpi
def test_cli_distributed_end_to_end(tmp_path):
    """`mpiexec -n 2 gru4rec train --distributed` on a small click log: rank 0 alone prints and writes the model and
    the JSON, equal to one process's `gru4rec train` up to float32 rounding; a batch the 2 ranks do not divide
    is one clear error message (rank 0's) and exit status 2."""
    from gru4rec_kernels import cli
    from gru4rec_kernels.synthetic import generate_clicks
    df = generate_clicks(n_items=60, n_sessions=150, seed=4)
    cut = df["SessionId"].isin(df["SessionId"].unique()[:120])
    df[cut].to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    df[~cut].to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    base = ["train", "--train", tmp_path / "train.tsv", "--test", tmp_path / "test.tsv", "--backend", "numpy",
            "--n-epochs", "2", "--layers", "6", "--n-sample", "8", "--batch-size", "8", "--no-progress",
            "--id-type", "int"]
    dist = [*base, "--distributed", "--save", tmp_path / "m2.safetensors", "--json", tmp_path / "o2.json"]
    r, _ = mpiexec([sys.executable, "-m", "gru4rec_kernels.cli", *dist])
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("saved ") == 1 and r.stdout.count("GRU4Rec:") == 1, r.stdout
    assert "distributed: 2 ranks x 4 lanes (mpi)" in r.stdout
    one = [*base, "--save", tmp_path / "m1.safetensors", "--json", tmp_path / "o1.json"]
    assert cli.main([str(a) for a in one]) == 0
    o1, o2 = (json.loads((tmp_path / f"o{k}.json").read_text()) for k in (1, 2))
    np.testing.assert_allclose([h["loss"] for h in o2["history"]], [h["loss"] for h in o1["history"]], rtol=1e-5)
    assert o2["test"]["n_events"] == o1["test"]["n_events"]
    m1, m2 = g.Model.load(tmp_path / "m1.safetensors"), g.Model.load(tmp_path / "m2.safetensors")
    for k, v in m1.params.items():
        np.testing.assert_allclose(m2.params[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    bad = [str(a) for a in dist]
    bad[bad.index("--batch-size") + 1] = "7"
    r, _ = mpiexec([sys.executable, "-m", "gru4rec_kernels.cli", *bad])
    assert r.returncode == 2 and r.stderr.count("not divisible by the 2 ranks") == 1, r.stderr[-3000:]


def test_cli_under_mpiexec_without_distributed_is_refused(monkeypatch, capsys):
    from gru4rec_kernels import cli
    monkeypatch.setenv("PMI_SIZE", "2")
    assert cli.main(["train", "--n-epochs", "1", "--backend", "numpy"]) == 2
    assert "without --distributed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ in one process
def test_local_comm_runs_the_data_parallel_path_bitwise_equal_to_one_process(tmp_path):
    """P = 1 through the data-parallel driver (grad_step, a no-op all-reduce, apply_grad_buffer), the replica
    checks, the gathered checkpoint and the sharded evaluation: the one-process run, bit for bit."""
    cfg = case_cfg("ce-constrained-1").replace(n_epochs=2)
    train, valid = uneven_data(1, 40), uneven_data(2, 15)
    kw = dict(valid=valid, eval_cutoffs=(1, 5), checkpoint_every=7, keep_checkpoints=100)
    a = g.Trainer(cfg, backend="numpy", show_progress=False).fit(train, checkpoint_dir=str(tmp_path / "a"), **kw)
    b = g.Trainer(cfg, backend="numpy", show_progress=False, comm=LocalComm(), replica_check_every=3).fit(
        train, checkpoint_dir=str(tmp_path / "b"), **kw)
    for k, v in a.params.items():
        np.testing.assert_array_equal(b.params[k], v, err_msg=k)
    drop = ("seconds", "mb_per_s", "events_per_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in b.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in a.history]
    ca, cb = ckpt.load(str(tmp_path / "a" / "ckpt-000000000007.safetensors")), \
        ckpt.load(str(tmp_path / "b" / "ckpt-000000000007.safetensors"))
    np.testing.assert_array_equal(cb["hidden"][0], ca["hidden"][0])
    assert ca["n_ranks"] == cb["n_ranks"] == 1


def test_data_parallel_refusals_in_one_process():
    from gru4rec_kernels.prnn_config import PRNNConfig
    cfg = case_cfg("ce-constrained-1")
    with pytest.raises(ValueError, match="p-RNN does not train data-parallel"):
        g.Trainer(cfg, backend="numpy", comm=LocalComm(), prnn=PRNNConfig.for_architecture("id", []))
    with pytest.raises(TypeError, match="Communicator"):
        g.Trainer(cfg, backend="numpy", comm=object())
    with pytest.raises(ValueError, match="replica_check_every"):
        g.Trainer(cfg, backend="numpy", comm=LocalComm(), replica_check_every=0)


def test_nccl_comm_without_cupy_is_a_clear_error_and_nothing_imports_mpi4py(monkeypatch):
    from gru4rec_kernels.comm import NCCLComm
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match="NCCLComm needs cupy"):
        NCCLComm(LocalComm())
    code = ("import sys, gru4rec_kernels.comm, gru4rec_kernels.dataparallel;"
            "assert 'mpi4py' not in sys.modules and 'cupy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, timeout=60)


def test_session_shards_partition_the_sessions():
    data = uneven_data(3, 23)
    for P in (1, 2, 3, 5, 40):  # 40 ranks > 23 sessions: some ranks get none
        shards = [session_shard(data.offsets, data.items, r, P) for r in range(P)]
        assert [s.s0 for s in shards[1:]] == [s.s1 for s in shards[:-1]] and shards[-1].s1 == data.n_sessions
        np.testing.assert_array_equal(np.concatenate([s.items for s in shards]), data.items)
        for s in shards:
            np.testing.assert_array_equal(s.offsets, data.offsets[s.s0:s.s1 + 1] - data.offsets[s.s0])
        if P <= 3:  # balanced by events: within one session of the even share
            assert max(s.n_events for s in shards) <= data.n_events / P + np.diff(data.offsets).max()


def test_replica_checksum_tells_nan_from_numbers():
    a = {"W": np.array([1.0, np.nan]), "V": np.ones(3, np.float32)}
    b = {"W": np.array([1.0, 2.0]), "V": np.ones(3, np.float32)}
    ca, cb = param_checksum(a)[1], param_checksum(b)[1]
    assert np.array_equal(ca, param_checksum(a)[1])  # NaN replicas agree with each other
    assert not np.array_equal(ca, cb) and np.isfinite(cb).all()


# ------------------------------------------------------------------------------------------------ NCCL
NCCL_SCRIPT = textwrap.dedent("""
    import cupy, numpy as np
    from gru4rec_kernels.comm import NCCLComm
    c = NCCLComm(timeout=60)
    buf = c.new_buffer(1000, np.float32) + (c.rank + 1)
    c.allreduce_sum(buf, "test")
    c.synchronize("test")
    assert float(buf.sum()) == 1000 * sum(range(1, c.size + 1)), float(buf.sum())
    print("rank", c.rank, "device", c.device, "ok", flush=True)
""")


@pytest.mark.gpu
@needs_mpi
def test_nccl_allreduce_on_two_gpus(tmp_path):
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("NCCL needs one GPU per rank: fewer than 2 GPUs")
    script = tmp_path / "nccl.py"
    script.write_text(NCCL_SCRIPT)
    r, _ = mpiexec([sys.executable, script], timeout=200)
    assert r.returncode == 0 and r.stdout.count(" ok") == 2, r.stderr[-3000:]
