"""All-item evaluation time: ``gru4rec_kernels.evaluate(model, test, cutoffs=(20,), backend='cpu')`` next to the
official GRU4Rec PyTorch ``evaluation.batch_eval`` on the CPU, on the same held-out test data, in one run.

    python bench/eval_throughput.py --dataset rsc15 [--backends cpu official] [--max-sessions N] [--repeats 5]

Each side first trains its own model for 1 epoch with the official paramfile's settings (bench/train_throughput.py
has the data, settings and the official peer's location: ``$GRU4REC_DATA``, ``$GRU4REC_OFFICIAL``) on the same
training sessions, each with the item map of those sessions (the official code's: only items seen in training;
test events with other items are dropped by both). Evaluation cost does not depend on the weights, so the timings
compare, and recall/MRR show both models are sane. Both rank every target against all items, batch_size 512,
conservative ties (the official default). Each side evaluates once untimed first (Numba compilation, torch
warm-up), then the two alternate ``--repeats`` times (A, B, A, B, ...) so that both see the same machine load; the
JSON keeps every time, the median and the load average at start and end.

Writes bench/results/eval_throughput_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import train_throughput as tt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(tt.FILES), default="rsc15")
    ap.add_argument("--backends", nargs="+", choices=("cpu", "official"), default=["cpu", "official"])
    ap.add_argument("--max-sessions", type=int, default=None, help="train on the first N training sessions only")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations per side, alternating")
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
    frame = tt.frame_of(df_train, tt.first_sessions(full, args.max_sessions)) if args.max_sessions else df_train
    train = g.SessionData.from_pandas(frame)  # the subset's own item map, as the official code builds it
    test = g.SessionData.from_pandas(df_test)
    bs = args.batch_size
    res = {"what": "all-item evaluation time, gru4rec_kernels.evaluate vs official evaluation.batch_eval, CPU",
           "command": "python bench/eval_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "test_file": tt.FILES[args.dataset][1], "train_sessions": train.n_sessions,
           "train_items": train.n_items, "test_sessions": test.n_sessions, "test_events": test.n_events,
           "batch_size": bs, "mode": "conservative", "repeats": args.repeats, "config_source": cfg_source,
           "config": cfg.to_dict(), "backends": {}, "machine": tt.machine_info(), "commit": tt.commit()}
    R = res["backends"]
    runs = {}  # name -> callable returning (seconds, metrics)
    if "cpu" in args.backends:
        model = g.Trainer(cfg, backend="cpu", show_progress=False).fit(train)

        def run_cpu():
            t0 = time.perf_counter()
            m = g.evaluate(model, test, cutoffs=(20,), mode="conservative", batch_size=bs, backend="cpu")
            return time.perf_counter() - t0, {"events": m["n_events"], "recall@20": m["recall"][20],
                                              "mrr@20": m["mrr"][20]}
        runs["cpu"] = run_cpu
    if "official" in args.backends:
        mod, why = official.load()
        if mod is None:
            R["official"] = {"status": why}
        else:
            gru = official.fit(mod, frame, cfg)["model"]
            known = test.remap(np.unique(gru.data_iterator.itemidmap.index.values))[0]
            # the events it ranks: every event after a session's first, once unknown items are dropped
            n_events = int(known.n_events - (known.session_lengths() > 0).sum())

            def run_official():
                r = official.evaluate(gru, df_test, cutoff=20, batch_size=bs)
                return r.pop("seconds"), {"events": n_events, **r}
            runs["official"] = run_official
    for name, fn in runs.items():  # untimed: compilation / warm-up
        _, m = fn()
        R[name] = {**m, "seconds_all": [], "model": f"{name}, 1 epoch on the same {train.n_sessions} sessions"}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            R[name]["seconds_all"].append(fn()[0])
    for r in R.values():
        if "seconds_all" in r:
            r["seconds"] = statistics.median(r["seconds_all"])
            r["events_per_s"] = r["events"] / r["seconds"]
    if "seconds" in R.get("cpu", {}) and "seconds" in R.get("official", {}):
        res["ratio_cpu_speedup_over_official"] = R["official"]["seconds"] / R["cpu"]["seconds"]
        res["ratio_per_repeat"] = [o / c for o, c in zip(R["official"]["seconds_all"], R["cpu"]["seconds_all"])]
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    out = args.out or os.path.join(HERE, "results", f"eval_throughput_{args.dataset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(f"{args.dataset}: train {train.n_sessions} sessions / {train.n_items} items; test {test.n_sessions} "
          f"sessions / {test.n_events} events; layers={cfg.layers}, batch {bs}, conservative; load "
          f"{res['machine']['loadavg_at_start'][0]:.1f} -> {res['machine']['loadavg_at_end'][0]:.1f}")
    print(f"{'backend':9s} {'events':>7s} {'median s':>9s} {'events/s':>9s} {'recall@20':>9s} {'mrr@20':>7s}")
    for name, r in R.items():
        if "status" in r:
            print(f"{name:9s} {r['status']}")
        else:
            print(f"{name:9s} {r['events']:7d} {r['seconds']:9.3f} {round(r['events_per_s']):9d} "
                  f"{r['recall@20']:9.4f} {r['mrr@20']:7.4f}")
    if "ratio_cpu_speedup_over_official" in res:
        print(f"official seconds / cpu seconds = {res['ratio_cpu_speedup_over_official']:.2f} (median; per repeat "
              f"{', '.join(f'{x:.2f}' for x in res['ratio_per_repeat'])})")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
