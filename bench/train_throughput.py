"""Training throughput of the cpu backend next to the numpy reference, in one run, on real data.

Workload (issue 6): B=32, H=100, n_sample=2048, cross-entropy, constrained embedding; data: the SR-GNN
DIGINETICA training split from ../shared/data (43k items; the order within a session is the time), or
RSC15-100k when that is what exists. Both backends run the same schedule and samples from the same starting
parameters; each is warmed up (Numba compilation excluded), then timed over whole chunks.

    python bench/train_throughput.py [--steps 3000] [--ref-steps 150]

Writes bench/results/train_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")


def load_real_data():
    import gru4rec_kernels as g
    dig = os.path.join(DATA, "diginetica_srgnn", "train_sessions.tsv.gz")
    if os.path.exists(dig):
        return "diginetica_srgnn/train_sessions", g.SessionData.from_csv(
            dig, sep="\t", session_key="session_id", item_key="item_id", time_key="pos")
    rsc = os.path.join(DATA, "rsc15_100k_sessionrec", "yoochoose-clicks-100k_train_full.txt.gz")
    if os.path.exists(rsc):
        return "rsc15_100k/train_full", g.SessionData.from_csv(rsc, sep="\t")
    return None, None


def measure(backend: str, data, cfg, steps: int, warmup: int = 20, chunk: int = 64) -> dict:
    from gru4rec_kernels.backends import backend_class
    from gru4rec_kernels.batching import EpochSchedule
    from gru4rec_kernels.layout import init_params
    from gru4rec_kernels.sampling import SampleStore

    _, params = init_params(cfg, data.n_items)
    be = backend_class(backend)(cfg, data.n_items, params)
    sampler = SampleStore(data.item_support(), cfg.sample_alpha, cfg.sample_store_size, cfg.n_sample, cfg.seed)
    sched = EpochSchedule(data.offsets, data.items, cfg.batch_size)
    done, events, t_run, step, losses = 0, 0, 0.0, 0, []
    try:
        while done < warmup + steps:
            c = sched.next_chunk(min(chunk, warmup + steps - done) if done >= warmup else warmup)
            if c is None:
                break
            T = c.inputs.shape[0]
            samples = sampler.next_many(T)
            t0 = time.perf_counter()
            out = be.train_chunk(c.inputs, c.targets, c.active, c.reset, samples, step)
            dt = time.perf_counter() - t0
            losses.extend(out.tolist())
            if done >= warmup:  # the first chunk includes compilation
                t_run += dt
                events += c.n_events
            done += T
            step += T
    finally:
        be.close()
        sampler.close()
    timed = done - warmup
    return {"backend": backend, "steps": timed, "seconds": t_run, "mb_per_s": timed / t_run,
            "events_per_s": events / t_run, "first_losses": losses[:5]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000, help="timed steps of the cpu backend")
    ap.add_argument("--ref-steps", type=int, default=150, help="timed steps of the numpy reference")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "train_throughput.json"))
    args = ap.parse_args(argv)
    import gru4rec_kernels as g
    name, data = load_real_data()
    if data is None:
        print("no dataset under ../shared/data: skipped")
        return 0
    cfg = g.TrainConfig(layers=[100], loss="cross-entropy", constrained_embedding=True, n_sample=2048,
                        batch_size=32, n_epochs=1)
    cpu = measure("cpu", data, cfg, args.steps)
    ref = measure("numpy", data, cfg, args.ref_steps)
    # both backends start from the same parameters, schedule and samples: their first losses agree
    agree = bool(np.allclose(cpu["first_losses"], ref["first_losses"], rtol=1e-4))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE).stdout.strip()
    except OSError:
        commit = "unknown"
    import numba
    res = {"workload": {"dataset": name, "n_items": data.n_items, "n_events": data.n_events, "B": 32, "H": 100,
                        "n_sample": 2048, "loss": "cross-entropy", "embedding": "constrained"},
           "cpu": cpu, "numpy": ref, "speedup_cpu_over_numpy": cpu["mb_per_s"] / ref["mb_per_s"],
           "first_losses_agree": agree,
           "machine": {"cpus": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                       "processor": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                       "numpy": np.__version__, "numba": numba.__version__},
           "commit": commit}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{name}: {data.n_items} items, B=32 H=100 S=2048 cross-entropy constrained")
    for r in (cpu, ref):
        print(f"  {r['backend']:6s} {r['mb_per_s']:9.1f} mb/s {r['events_per_s']:11.0f} events/s ({r['steps']} steps)")
    print(f"  cpu / numpy = {res['speedup_cpu_over_numpy']:.1f}x   first losses agree: {agree}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
