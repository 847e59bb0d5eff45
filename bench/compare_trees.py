"""Throughput at two source trees, side by side in one run (a change's check): the cpu backend's training step,
or batch recommendation.

    python bench/compare_trees.py --before /path/to/old/checkout --after .
                                  [--workload rsc15|diginetica|recommend|recommend-prnn]
                                  [--rounds 5] [--steps 400] [--out PATH]

Each round runs one subprocess per tree (alternating, so both see the same machine load) that builds the same
problem, compiles (or loads its cache) and times it. Training workloads time ``CpuBackend.train_chunk`` over
``--steps`` steps, inputs, targets and samples drawn from a Zipf-like popularity, as real logs are: ``rsc15``
(B=32, H=100, n_sample=2048, cross-entropy, 40,000 items: per-step costs dominate) and ``diginetica`` (the
official DIGINETICA bpr-max settings: B=128, H=512, n_sample=2048, elu-1, dropout 0.5 / 0.3, 43,097 items: the
GEMMs dominate). ``recommend`` times ``recommend_batch`` of 1,000 sessions (1-10 random clicks) over 700,000
items at H=100, k=20, each session excluding its own items (``--steps`` is ignored); ``recommend-prnn`` the same
over 40,000 items for a parallel p-RNN (the ID subnet and a 50-category subnet, H=100 each). Prints and returns the
per-tree median rate (steps/s or sessions/s), the ratio after / before, and whether both trees computed the
same result (the last loss, or the recommended ids).
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
if sys.argv[2] in ("recommend", "recommend-prnn"):
    from gru4rec_kernels.recommend import recommend_batch
    R = 1000
    rng = np.random.default_rng(0)
    if sys.argv[2] == "recommend":
        N = 700_000
        cfg = g.TrainConfig(layers=[100])
        _, params = init_params(cfg, N, seed=1)
        params["By"][:] = rng.normal(0, 0.1, N).astype(np.float32)
        m = g.Model(cfg, np.arange(N), params, item_support=np.ones(N))
    else:  # a parallel p-RNN: the ID subnet and a category subnet, H 100 each
        import pandas as pd
        from gru4rec_kernels.features import ItemFeatures
        from gru4rec_kernels.prnn_config import PRNNConfig
        from gru4rec_kernels.prnn_layout import PRNNLayout, init_prnn_params
        N = 40_000
        cats = pd.DataFrame({"ItemId": np.arange(N), "category": rng.integers(0, 50, N)})
        feat = {"category": ItemFeatures.from_frame(cats, np.arange(N), item_key="ItemId", name="category")}
        cfg = g.TrainConfig(layers=[100], constrained_embedding=True, embedding=0)
        prnn = PRNNConfig.for_architecture("parallel", ["category"], layers=[[100], [100]])
        _, params = init_prnn_params(PRNNLayout(cfg, prnn, N, feat), np.float32)
        m = g.Model(cfg, np.arange(N), params, item_support=np.ones(N), prnn=prnn, features=feat)
    sessions = [rng.integers(0, N, rng.integers(1, 11)) for _ in range(R)]
    recommend_batch(m, sessions[:8], k=20, exclude=sessions[:8])  # compile / load
    t0 = time.perf_counter()
    ids, _ = recommend_batch(m, sessions, k=20, exclude=sessions)
    dt = time.perf_counter() - t0
    print(json.dumps({"per_s": R / dt, "result": int(ids.astype(np.int64).sum() % 1_000_000_007)}))
    sys.exit(0)
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
print(json.dumps({"per_s": steps / dt, "result": float(losses[-1])}))
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
    ap.add_argument("--workload", choices=("rsc15", "diginetica", "recommend", "recommend-prnn"), default="rsc15")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    res = {"before": [], "after": []}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            res[name].append(run(getattr(args, name), args.steps, args.workload))
    med = {k: sorted(x["per_s"] for x in v)[len(v) // 2] for k, v in res.items()}
    unit = "sessions_per_s" if args.workload.startswith("recommend") else "steps_per_s"
    out = {f"median_{unit}": med, f"all_{unit}": {k: [x["per_s"] for x in v] for k, v in res.items()},
           "ratio_after_over_before": med["after"] / med["before"],
           "same_result": res["before"][0]["result"] == res["after"][0]["result"],
           "load_average": list(os.getloadavg()), "workload": args.workload, "rounds": args.rounds,
           "steps": args.steps}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
