"""What a p-RNN training step costs on the cpu backend: PRNNCpuBackend against the numpy p-RNN backend, and the
parallel architecture against its subnets trained alone (issue 15's cost target: at most 1.3x the sum).

    python bench/prnn_cost.py [--steps 60] [--reps 5] [--numpy-steps 10] [--cpu-time] [--out PATH]
    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/prnn_cost.py --cpu-time     # the single-core cost

Workload: 2,000 items with a Zipf-like popularity, one-hot categories (20 of them, CSR), B = 32, n_sample = 256,
cross-entropy, constrained ID input, dropout 0.2, momentum 0.1, H = 100 per subnet. Architectures, all on the
same schedule and samples: ``parallel`` ([id], [category], simultaneous), ``id_only`` ([id]) and ``feature_only``
([category]). The script first checks the cpu steps against the float32 numpy p-RNN backend on its own inputs,
warms up (compilation is not timed), then times train_chunk calls of ``--steps`` steps; a figure is the median
over ``--reps`` of seconds per step: wall time, or with ``--cpu-time`` the process's CPU time (with one Numba and
one BLAS thread: the single-core cost, which other jobs on a shared machine do not inflate; with two threads on a
loaded 2-core machine every parallel region waits for a descheduled thread, and wall times measured 10-100x the
single-core cost). The load average is recorded before and after (MEASURED, CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

N_ITEMS, N_CATEGORIES, B, S, H = 2000, 20, 32, 256, 100
CLOCK = time.perf_counter


def workload(n_steps: int, seed: int = 0):
    """(features, schedule): the category CSR and n_steps of Zipf-like inputs, targets, resets and samples."""
    from gru4rec_kernels.features import ItemFeatures
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, N_CATEGORIES, N_ITEMS)
    F = sp.csr_matrix((np.ones(N_ITEMS, np.float32), (np.arange(N_ITEMS), cats)), shape=(N_ITEMS, N_CATEGORIES))
    ids = np.arange(N_ITEMS)
    feat = ItemFeatures.from_matrix(F, ids, ids, name="category")
    pop = 1.0 / np.arange(1, N_ITEMS + 1)
    pop = pop[rng.permutation(N_ITEMS)] / pop.sum()
    draw = lambda *shape: rng.choice(N_ITEMS, size=shape, p=pop).astype(np.int32)  # noqa: E731
    sched = (draw(n_steps, B), draw(n_steps, B), np.ones((n_steps, B), bool), rng.random((n_steps, B)) < 0.1,
             draw(n_steps, S))
    return feat, sched


def configs():
    from gru4rec_kernels.config import TrainConfig
    from gru4rec_kernels.prnn_config import PRNNConfig
    cfg = TrainConfig(layers=[H], batch_size=B, n_sample=S, loss="cross-entropy", embedding=0,
                      constrained_embedding=True, dropout_p_hidden=0.2, learning_rate=0.05, momentum=0.1)
    return cfg, {"parallel": PRNNConfig.for_architecture("parallel", ["category"], layers=[[H], [H]]),
                 "id_only": PRNNConfig.for_architecture("id", layers=[[H]]),
                 "feature_only": PRNNConfig.for_architecture("feature", ["category"], layers=[[H]])}


def backend(kind, cfg, prnn, feat):
    from gru4rec_kernels.backends.cpu.prnn import PRNNCpuBackend
    from gru4rec_kernels.backends.prnn_numpy import PRNNNumpyBackend
    from gru4rec_kernels.prnn_layout import PRNNLayout, init_prnn_params
    layout = PRNNLayout(cfg, prnn, N_ITEMS, feat if prnn.features else [])
    _, params = init_prnn_params(layout)
    return PRNNCpuBackend(layout, params) if kind == "cpu" else PRNNNumpyBackend(layout, params, dtype=np.float32)


def chunk(be, sched, t0, t1, step0):
    be.set_phases([be.layout.prnn.phase(0, step0 + t, 1) for t in range(t1 - t0)])
    return be.train_chunk(*(a[t0:t1] for a in sched), step0)


def check(cfg, prnn, feat, sched, n=4):
    """The cpu steps against the float32 numpy backend's on the benchmark's own inputs (losses and Wy)."""
    cpu, ref = backend("cpu", cfg, prnn, feat), backend("numpy", cfg, prnn, feat)
    lc, lr = chunk(cpu, sched, 0, n, 0), chunk(ref, sched, 0, n, 0)
    np.testing.assert_allclose(lc, lr, rtol=1e-5)
    np.testing.assert_allclose(cpu.get_params()["Wy"], ref.get_params()["Wy"], atol=1e-5)


def seconds_per_step(be, sched, steps, reps, step0=0):
    chunk(be, sched, 0, min(steps, 5), step0)  # warm-up: compiled or loaded from the cache, buffers built
    times = []
    for r in range(reps):
        t = CLOCK()
        chunk(be, sched, 0, steps, step0 + 1000 * (r + 1))
        times.append((CLOCK() - t) / steps)
    return float(np.median(times)), [round(1e3 * x, 3) for x in times]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="steps per timed train_chunk (cpu)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--numpy-steps", type=int, default=10, help="steps per timed train_chunk (numpy)")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time (see above)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "prnn_cost.json"))
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    from train_throughput import machine_info
    cfg, archs = configs()
    feat, sched = workload(max(args.steps, args.numpy_steps, 5))
    load_before = os.getloadavg()
    for prnn in archs.values():
        check(cfg, prnn, feat, sched)
    print("All results match the numpy p-RNN backend. Starting benchmarks.")
    res = {}
    for name, prnn in archs.items():
        res[name] = seconds_per_step(backend("cpu", cfg, prnn, feat), sched, args.steps, args.reps)
    res["parallel_numpy"] = seconds_per_step(backend("numpy", cfg, archs["parallel"], feat), sched,
                                             args.numpy_steps, max(1, args.reps // 2))
    load_after = os.getloadavg()
    t = {k: v[0] for k, v in res.items()}
    ratio = t["parallel"] / (t["id_only"] + t["feature_only"])
    rows = [("parallel (cpu)", t["parallel"]), ("id_only (cpu)", t["id_only"]),
            ("feature_only (cpu)", t["feature_only"]), ("parallel (numpy)", t["parallel_numpy"])]
    print(f"{'step':<22}{'ms/step':>10}{'steps/s':>10}")
    for name, s in rows:
        print(f"{name:<22}{1e3 * s:>10.2f}{1 / s:>10.1f}")
    print(f"cpu / numpy speed-up (parallel): {t['parallel_numpy'] / t['parallel']:.1f}x")
    print(f"parallel / (id_only + feature_only): {ratio:.2f} (target <= 1.3)")
    print(f"load average before {load_before}, after {load_after}")
    out = {"kind": "MEASURED (CPU)", "workload": dict(n_items=N_ITEMS, n_categories=N_CATEGORIES, batch_size=B,
                                                     n_sample=S, hidden_per_subnet=H, loss=cfg.loss,
                                                     id_input="constrained", dropout_p_hidden=0.2),
           "clock": "process CPU time" if args.cpu_time else "wall", "steps_per_chunk": args.steps,
           "reps": args.reps, "numpy_steps_per_chunk": args.numpy_steps,
           "ms_per_step": {k: round(1e3 * v, 3) for k, v in t.items()},
           "ms_per_step_reps": {k: v[1] for k, v in res.items()},
           "steps_per_s": {k: round(1 / v, 1) for k, v in t.items()},
           "cpu_over_numpy_speedup": round(t["parallel_numpy"] / t["parallel"], 2),
           "parallel_over_sum_of_subnets": round(ratio, 3), "target": "<= 1.3",
           "loadavg_before": load_before, "loadavg_after": load_after, "machine": machine_info()}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.out)
    return out


if __name__ == "__main__":
    main()
