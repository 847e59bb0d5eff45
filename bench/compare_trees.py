"""The cpu backend's training throughput at two source trees, side by side in one run (a refactor's check).

    python bench/compare_trees.py --before /path/to/old/checkout --after . [--workload rsc15|diginetica]
                                  [--rounds 5] [--steps 400]

Each round runs one subprocess per tree (alternating, so both see the same machine load) that builds the same
problem, compiles, and times ``CpuBackend.train_chunk`` over ``--steps`` steps; inputs, targets and samples are
drawn from a Zipf-like popularity, as real logs are. Workloads: ``rsc15`` (B=32, H=100, n_sample=2048,
cross-entropy, 40,000 items: per-step costs dominate) and ``diginetica`` (the official DIGINETICA bpr-max
settings: B=128, H=512, n_sample=2048, elu-1, dropout 0.5 / 0.3, 43,097 items: the GEMMs dominate). Prints and
returns the per-tree median steps/s and the ratio after / before.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, sys, time
import numpy as np
import gru4rec_kernels as g
from gru4rec_kernels.backends.cpu import CpuBackend
from gru4rec_kernels.layout import init_params
steps = int(sys.argv[1])
if sys.argv[2] == "rsc15":
    N, B, S = 40_000, 32, 2048
    cfg = g.TrainConfig(layers=[100], batch_size=B, n_sample=S, loss="cross-entropy")
else:
    N, B, S = 43_097, 128, 2048
    cfg = g.TrainConfig(layers=[512], batch_size=B, n_sample=S, loss="bpr-max", final_act="elu-1",
                        dropout_p_embed=0.5, dropout_p_hidden=0.3, momentum=0.15, bpreg=0.9, sample_alpha=0.3)
_, params = init_params(cfg, N, seed=1)
rng = np.random.default_rng(0)
p = 1.0 / np.arange(1, N + 1) ** 0.9
p /= p.sum()
draw = lambda *shape: rng.choice(N, size=shape, p=p).astype(np.int32)
inputs, targets, samples = draw(steps, B), draw(steps, B), draw(steps, S)
active = np.ones((steps, B), bool)
reset = rng.random((steps, B)) < 0.2
be = CpuBackend(cfg, N, params)
be.train_chunk(inputs[:8], targets[:8], active[:8], reset[:8], samples[:8], 0)  # compile / load
t0 = time.perf_counter()
losses = be.train_chunk(inputs, targets, active, reset, samples, 8)
dt = time.perf_counter() - t0
print(json.dumps({"steps_per_s": steps / dt, "last_loss": float(losses[-1])}))
"""


def run(tree: str, steps: int, workload: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, "-c", WORKER, str(steps), workload], env=env, capture_output=True, text=True,
                         cwd=os.path.abspath(tree), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=".")
    ap.add_argument("--workload", choices=("rsc15", "diginetica"), default="rsc15")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args(argv)
    res = {"before": [], "after": []}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            res[name].append(run(getattr(args, name), args.steps, args.workload))
    med = {k: sorted(x["steps_per_s"] for x in v)[len(v) // 2] for k, v in res.items()}
    out = {"median_steps_per_s": med, "ratio_after_over_before": med["after"] / med["before"],
           "same_last_loss": res["before"][0]["last_loss"] == res["after"][0]["last_loss"],
           "load_average": list(os.getloadavg()), "workload": args.workload, "rounds": args.rounds,
           "steps": args.steps}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
