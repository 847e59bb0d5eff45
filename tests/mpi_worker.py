"""One rank of the distributed tests (tests/test_distributed.py launches ``mpiexec -n 2 python mpi_worker.py
SCENARIO OUT [options]``); each rank writes what it saw under OUT for pytest to check.

Scenarios:
  equivalence  the given cases (dp_harness.CASES) trained data-parallel with the recording backend: per rank and
               case ``<case>.rank<r>.npz`` (per-step losses and inputs, parameters, Adagrad state)
  features     float32 numpy backend: a run with validation and checkpoints, the run resumed from its
               checkpoint at step K, sharded against one-process evaluation, and the refusals (batch not
               divisible, other data on one rank, replicas made to differ): ``features.rank<r>.{npz,json}``
  raise        rank 1 raises inside a training step: the job must end (abort), not hang
  hang         rank 1 stops answering inside a training step: rank 0's collective times out and aborts
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from dp_harness import CASES, case_cfg, fit_recorded, uneven_data  # noqa: E402
from steps import make_cfg  # noqa: E402

import gru4rec_kernels.trainer as tr  # noqa: E402
from gru4rec_kernels.backends.numpy import NumpyBackend  # noqa: E402
from gru4rec_kernels.comm import MPIComm  # noqa: E402

FAIL_STEP = 5
CKPT_EVERY = 10


def equivalence(comm, out, args):
    for case in args.cases.split(","):
        rec = fit_recorded(case_cfg(case), uneven_data(), args.backend, args.dtype, comm=comm)
        np.savez(os.path.join(out, f"{case}.rank{comm.rank}.npz"), **rec)


def features_cfg():
    return make_cfg(batch_size=8, n_sample=5, sample_store_size=64, n_epochs=2, dropout_p_hidden=0.2, momentum=0.3)


def features(comm, out, args):
    from gru4rec_kernels.dataparallel import ReplicaDivergedError
    from gru4rec_kernels.evaluate import evaluate
    cfg = features_cfg()
    train, valid = uneven_data(1, 60), uneven_data(2, 25)
    kw = dict(valid=valid, eval_cutoffs=(1, 5, 10), checkpoint_every=CKPT_EVERY, keep_checkpoints=100)
    trainer = lambda c=cfg, **k: tr.Trainer(c, backend="numpy", show_progress=False, comm=comm, **k)
    a = trainer().fit(train, checkpoint_dir=os.path.join(out, "ckA"), **kw)
    b = trainer().fit(train, checkpoint_dir=os.path.join(out, "ckB"), **kw,
                      resume=os.path.join(out, "ckA", f"ckpt-{CKPT_EVERY:012d}.safetensors"))
    res = {"history_a": a.history, "history_b": b.history}
    arrays = {**{f"a.{k}": v for k, v in a.params.items()}, **{f"b.{k}": v for k, v in b.params.items()}}
    sharded = evaluate(a, valid, cutoffs=(1, 5, 10), batch_size=3, backend="numpy", comm=comm, return_ranks=True)
    local = evaluate(a, valid, cutoffs=(1, 5, 10), batch_size=3, backend="numpy", return_ranks=True)
    arrays["ranks_sharded"], arrays["ranks_local"] = sharded.pop("ranks"), local.pop("ranks")
    res["eval_sharded"], res["eval_local"] = sharded, local

    def refusal(fn):
        try:
            fn()
        except Exception as e:  # every rank must raise it (not abort, not hang)
            return f"{type(e).__name__}: {e}"
        return None
    res["indivisible"] = refusal(lambda: trainer(cfg.replace(batch_size=7)).fit(train))
    res["other_data"] = refusal(lambda: trainer().fit(uneven_data(1 if comm.rank == 0 else 5, 60)))

    class Drifting(NumpyBackend):  # rank 1 nudges one weight after step FAIL_STEP: the replicas differ
        def apply_grad_buffer(self, buf, X_global, Y):
            loss = super().apply_grad_buffer(buf, X_global, Y)
            self.n = getattr(self, "n", 0) + 1
            if self.n == FAIL_STEP - 1:  # the ranks run in step now: a short timeout measures the failure alone
                comm.timeout = args.fail_timeout
            if comm.rank == 1 and self.n == FAIL_STEP:
                self.params["Wh0"][0, 0] += 1e-6
            return loss
    tr.backend_class = lambda name: Drifting
    try:
        res["diverged"] = refusal(lambda: trainer(replica_check_every=4).fit(train))
        res["diverged_type"] = ReplicaDivergedError.__name__
    finally:
        tr.backend_class = __import__("gru4rec_kernels.backends", fromlist=["backend_class"]).backend_class
    np.savez(os.path.join(out, f"features.rank{comm.rank}.npz"), **arrays)
    with open(os.path.join(out, f"features.rank{comm.rank}.json"), "w") as f:
        json.dump(res, f, default=float)


def failing(comm, out, args):
    """Rank 1 raises (``raise``) or stops answering (``hang``) in its FAIL_STEP-th step."""
    class Failing(NumpyBackend):
        def grad_step(self, *a):
            self.n = getattr(self, "n", 0) + 1
            if self.n == FAIL_STEP - 1:  # the ranks run in step now: a short timeout measures the failure alone
                comm.timeout = args.fail_timeout
            if comm.rank == 1 and self.n == FAIL_STEP:
                if args.scenario == "raise":
                    raise RuntimeError("injected failure on rank 1")
                time.sleep(600)
            super().grad_step(*a)
    tr.backend_class = lambda name: Failing
    tr.Trainer(case_cfg("ce-constrained-1"), backend="numpy", show_progress=False, comm=comm).fit(uneven_data())
    print(f"rank {comm.rank} finished: the failure did not stop the job", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["equivalence", "features", "raise", "hang"])
    ap.add_argument("out")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--fail-timeout", type=float, default=300.0, help="the collective timeout from step 3 on")
    args = ap.parse_args()
    comm = MPIComm(timeout=args.timeout)
    {"equivalence": equivalence, "features": features, "raise": failing, "hang": failing}[args.scenario](
        comm, args.out, args)


if __name__ == "__main__":
    main()
