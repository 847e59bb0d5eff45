"""All-item evaluation time: ``gru4rec_kernels.evaluate(model, test, cutoffs=(20,), backend='cpu')`` next to the
official GRU4Rec PyTorch ``evaluation.batch_eval`` on the CPU, on the same test data, side by side in one run.

    python bench/eval_throughput.py --dataset rsc15 [--backends cpu official] [--max-sessions N]

Each side first trains its own model for 1 epoch with the official paramfile's settings (bench/train_throughput.py
has the data, settings and the official peer's location: ``$GRU4REC_DATA``, ``$GRU4REC_OFFICIAL``); evaluation
cost does not depend on the weights, so the timings compare, and recall/MRR show both models are sane. Both rank
every target against all items, batch_size 512, conservative ties (the official default). A short evaluation on
the first test sessions runs first, so Numba compilation is not timed.

Writes bench/results/eval_throughput_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import train_throughput as tt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(tt.FILES), default="rsc15")
    ap.add_argument("--backends", nargs="+", choices=("cpu", "numpy", "official"), default=["cpu", "official"])
    ap.add_argument("--max-sessions", type=int, default=None, help="train on the first N training sessions only")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--param-file", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from peers import official

    import gru4rec_kernels as g

    df_train, df_test = tt.load_frames(args.dataset)
    if df_train is None:
        print(f"{args.dataset}: no dataset under {tt.data_dir()}: skipped")
        return 0
    cfg, cfg_source = tt.config(args.dataset, 1, args.param_file)
    full = g.SessionData.from_pandas(df_train)
    train = tt.first_sessions(full, args.max_sessions) if args.max_sessions else full
    test = g.SessionData.from_pandas(df_test)
    # the official iterator needs at least batch_size sessions left after unknown items are dropped
    warm_test = tt.first_sessions(test, min(3 * args.batch_size, test.n_sessions))
    bs = args.batch_size
    res = {"what": "all-item evaluation time, gru4rec_kernels.evaluate vs official evaluation.batch_eval, CPU",
           "command": "python bench/eval_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "test_file": tt.FILES[args.dataset][1], "train_sessions": train.n_sessions,
           "test_sessions": test.n_sessions, "test_events": test.n_events, "batch_size": bs,
           "mode": "conservative", "config_source": cfg_source, "config": cfg.to_dict(), "backends": {},
           "machine": tt.machine_info(), "commit": tt.commit()}
    R = res["backends"]
    model = None
    for b in [b for b in args.backends if b in ("cpu", "numpy")]:
        if model is None:
            model = g.Trainer(cfg, backend="cpu", show_progress=False).fit(train)
        g.evaluate(model, warm_test, cutoffs=(20,), mode="conservative", batch_size=bs, backend=b)  # compile
        t0 = time.perf_counter()
        m = g.evaluate(model, test, cutoffs=(20,), mode="conservative", batch_size=bs, backend=b)
        dt = time.perf_counter() - t0
        R[b] = {"seconds": dt, "events": m["n_events"], "events_per_s": m["n_events"] / dt,
                "recall@20": m["recall"][20], "mrr@20": m["mrr"][20], "model": "ours, cpu backend, 1 epoch"}
    if "official" in args.backends:
        mod, why = official.load()
        if mod is None:
            R["official"] = {"status": why}
        else:
            gru = official.fit(mod, tt.frame_of(df_train, train), cfg)["model"]
            official.evaluate(gru, tt.frame_of(df_test, warm_test), cutoff=20, batch_size=bs)  # warm-up
            r = official.evaluate(gru, df_test, cutoff=20, batch_size=bs)
            # it evaluates every test event after a session's first (all test items are train items here)
            ev = R.get("cpu", {}).get("events")
            R["official"] = {**r, "events": ev, "events_per_s": ev / r["seconds"] if ev else None,
                             "model": "official, 1 epoch"}
    if "cpu" in R and "seconds" in R.get("official", {}):
        res["ratio_cpu_speedup_over_official"] = R["official"]["seconds"] / R["cpu"]["seconds"]
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    out = args.out or os.path.join(HERE, "results", f"eval_throughput_{args.dataset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(f"{args.dataset}: test {test.n_sessions} sessions / {test.n_events} events, {full.n_items} items, "
          f"layers={cfg.layers}, batch {bs}, conservative")
    print(f"{'backend':9s} {'seconds':>8s} {'events/s':>9s} {'recall@20':>9s} {'mrr@20':>7s}")
    for name, r in R.items():
        if "status" in r:
            print(f"{name:9s} {r['status']}")
        else:
            print(f"{name:9s} {r['seconds']:8.2f} {round(r['events_per_s'] or 0):9d} {r['recall@20']:9.4f} "
                  f"{r['mrr@20']:7.4f}")
    if "ratio_cpu_speedup_over_official" in res:
        print(f"official seconds / cpu seconds = {res['ratio_cpu_speedup_over_official']:.2f}")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
