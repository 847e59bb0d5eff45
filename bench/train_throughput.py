"""Training throughput of ``Trainer(cfg, backend).fit(train)`` (backends cpu and numpy) next to the official
GRU4Rec PyTorch code on the CPU, in one run, on one dataset, with the official parameter files' settings.

    python bench/train_throughput.py --dataset rsc15 [--epochs 1] [--backends cpu numpy official]
        [--numpy-steps 150] [--max-sessions N] [--param-file PATH] [--evaluate]

- Data: ``$GRU4REC_DATA`` (default ../shared/data next to the repo root): rsc15 = rsc15_100k_sessionrec
  train_full / test; diginetica = diginetica_srgnn train_sessions / test_sessions (no times: the global row
  number is the time, so every backend sees the file's session order). Skipped cleanly when absent.
- Settings: the official paramfiles rsc15_xe_shared_100_best.py and diginetica_bprmax_shared_best.py (their
  values below, as official parameter strings; ``--param-file`` reads a paramfile instead).
- Ours: the real user path, Trainer(...).fit(SessionData) with its SampleStore and schedule. A short fit on
  the first ``--warmup-sessions`` sessions runs first, so Numba compilation is in ``warmup_s``, not the timing.
- numpy: the reference is slow, so it trains on the first sessions giving about ``--numpy-steps`` steps (the
  JSON says so); the cpu backend trains on the same subset too, and both losses are recorded (they should agree).
- Official (``$GRU4REC_OFFICIAL``, bench/peers/official.py): GRU4Rec(..., device=cpu).fit(DataFrame); its own
  epoch timer (loop only) gives the seconds, as ``history`` does for ours. Recorded "not installed" when absent.

Writes bench/results/train_throughput_<dataset>.json.
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
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# The official paramfiles' values (hidasib/GRU4Rec_PyTorch_Official, paramfiles/), as official -ps strings.
PARAMS = {
    "rsc15": ("rsc15_xe_shared_100_best.py",
              "loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,layers=100,n_epochs=10,"
              "batch_size=32,dropout_p_embed=0.0,dropout_p_hidden=0.4,learning_rate=0.2,momentum=0.2,"
              "n_sample=2048,sample_alpha=0.5,bpreg=0.0,logq=1.0"),
    "diginetica": ("diginetica_bprmax_shared_best.py",
                   "loss=bpr-max,constrained_embedding=True,embedding=0,elu_param=1,layers=512,n_epochs=10,"
                   "batch_size=128,dropout_p_embed=0.5,dropout_p_hidden=0.3,learning_rate=0.05,momentum=0.15,"
                   "n_sample=2048,sample_alpha=0.3,bpreg=0.9,logq=0.0"),
}
# (folder/train, folder/test, session column, item column, time column or None: the row number is the time)
FILES = {
    "rsc15": ("rsc15_100k_sessionrec/yoochoose-clicks-100k_train_full.txt.gz",
              "rsc15_100k_sessionrec/yoochoose-clicks-100k_test.txt.gz", "SessionId", "ItemId", "Time"),
    "diginetica": ("diginetica_srgnn/train_sessions.tsv.gz", "diginetica_srgnn/test_sessions.tsv.gz",
                   "session_id", "item_id", None),
}


def data_dir() -> str:
    return os.environ.get("GRU4REC_DATA") or os.path.join(HERE, "..", "..", "shared", "data")


def load_frames(dataset: str):
    """(train, test) DataFrames with SessionId / ItemId / Time columns, or (None, None) when absent."""
    tr, te, s, i, t = FILES[dataset]
    paths = [os.path.join(data_dir(), p) for p in (tr, te)]
    if not all(os.path.exists(p) for p in paths):
        return None, None
    out = []
    for p in paths:
        df = pd.read_csv(p, sep="\t", usecols=[c for c in (s, i, t) if c])
        df = df.rename(columns={s: "SessionId", i: "ItemId"} | ({t: "Time"} if t else {}))
        if t is None:
            df["Time"] = np.arange(len(df), dtype=np.float64)
        out.append(df[["SessionId", "ItemId", "Time"]])
    return out[0], out[1]


def config(dataset: str, epochs: int, param_file: str | None):
    import gru4rec_kernels as g
    from gru4rec_kernels.official import parse_param_string, read_param_file
    kw = read_param_file(param_file) if param_file else parse_param_string(PARAMS[dataset][1])
    kw["n_epochs"] = epochs
    return g.TrainConfig(**kw), (param_file or f"official paramfiles/{PARAMS[dataset][0]} (values in this script)")


def first_sessions(data, k: int):
    """The first k sessions (in time order) of a SessionData, keeping the item map (same n_items)."""
    from gru4rec_kernels import SessionData
    e = int(data.offsets[k])
    return SessionData(data.item_ids, data.items[:e], data.offsets[:k + 1], data.session_ids[:k], data.times[:e])


def sessions_for_steps(data, batch_size: int, steps: int) -> int:
    """Fewest first sessions whose epoch has at least ``steps`` steps (all sessions when the data is smaller)."""
    from gru4rec_kernels.batching import EpochSchedule
    lo, hi = 1, data.n_sessions
    while lo < hi:
        mid = (lo + hi) // 2
        if EpochSchedule(data.offsets[:mid + 1], data.items[:data.offsets[mid]], batch_size).n_steps_total >= steps:
            hi = mid
        else:
            lo = mid + 1
    return lo


def frame_of(df: pd.DataFrame, data) -> pd.DataFrame:
    """The rows of ``df`` whose session is in SessionData ``data`` (the official peer's view of a subset)."""
    return df[df["SessionId"].isin(data.session_ids)]


def fit_ours(backend: str, cfg, train, warm, evaluate_on=None) -> dict:
    import gru4rec_kernels as g
    t0 = time.perf_counter()
    g.Trainer(cfg.replace(n_epochs=1), backend=backend, show_progress=False).fit(warm)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = g.Trainer(cfg, backend=backend, show_progress=False).fit(train)
    wall = time.perf_counter() - t0
    h = model.history
    steps, events, secs = sum(r["steps"] for r in h), sum(r["events"] for r in h), sum(r["seconds"] for r in h)
    res = {"backend": backend, "sessions": train.n_sessions, "epochs": len(h), "steps": steps, "events": events,
           "seconds": secs, "mb_per_s": steps / secs, "events_per_s": events / secs, "fit_wall_s": wall,
           "warmup_s": warmup_s, "final_loss": h[-1]["loss"], "epoch_losses": [r["loss"] for r in h]}
    if evaluate_on is not None:
        t0 = time.perf_counter()
        m = g.evaluate(model, evaluate_on, cutoffs=(20,), mode="conservative", backend="cpu")
        res.update({"recall@20": m["recall"][20], "mrr@20": m["mrr"][20], "eval_s": time.perf_counter() - t0})
    return res, model


def fit_official(mod, cfg, df_train, df_warm, df_test=None) -> dict:
    from peers import official
    t0 = time.perf_counter()
    official.fit(mod, df_warm, cfg.replace(n_epochs=1))
    warmup_s = time.perf_counter() - t0
    r = official.fit(mod, df_train, cfg)
    ep = r["epochs"]
    secs = sum(e["seconds"] for e in ep)
    steps = sum(round(e["mb_per_s"] * e["seconds"]) for e in ep)  # it prints mb/s = steps / seconds
    res = {"backend": "official", "sessions": int(df_train["SessionId"].nunique()), "epochs": len(ep),
           "steps": steps, "seconds": secs, "mb_per_s": steps / secs,
           "events_per_s_official_count": sum(e["events_per_s"] * e["seconds"] for e in ep) / secs,
           "fit_wall_s": r["fit_wall_s"], "warmup_s": warmup_s, "final_loss": ep[-1]["loss"],
           "epoch_losses": [e["loss"] for e in ep], "torch": r["torch"], "torch_threads": r["torch_threads"],
           "device": "cpu"}
    if df_test is not None:
        res.update({k if k != "seconds" else "eval_s": v
                    for k, v in official.evaluate(r["model"], df_test, cutoff=20).items()})
    return res, r["model"]


def machine_info() -> dict:
    import numba
    info = {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "cpu_model": None, "python": sys.version.split()[0], "numpy": np.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": None, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        pass
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:  # numpy's build record says which BLAS it links, not the runtime core type
        try:
            b = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            info["blas"] = [{"name": b.get("name"), "version": b.get("version"), "source": "np.show_config"}]
        except Exception:  # noqa: BLE001 - informational only
            info["blas"] = None
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def ratio(a: dict | None, b: dict | None, key: str = "mb_per_s"):
    if not a or not b or key not in a or key not in b:
        return None
    return a[key] / b[key]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(FILES), default="rsc15")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--backends", nargs="+", choices=("cpu", "numpy", "official"), default=["cpu", "numpy", "official"])
    ap.add_argument("--numpy-steps", type=int, default=150, help="about this many steps for the numpy reference")
    ap.add_argument("--max-sessions", type=int, default=None, help="train every backend on the first N sessions")
    ap.add_argument("--warmup-sessions", type=int, default=300)
    ap.add_argument("--param-file", default=None, help="an official paramfile instead of the built-in values")
    ap.add_argument("--evaluate", action="store_true", help="recall@20 / MRR@20 (conservative) on the test split")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from peers import official

    import gru4rec_kernels as g

    df_train, df_test = load_frames(args.dataset)
    if df_train is None:
        print(f"{args.dataset}: no dataset under {data_dir()}: skipped")
        return 0
    cfg, cfg_source = config(args.dataset, args.epochs, args.param_file)
    full = g.SessionData.from_pandas(df_train)
    train = first_sessions(full, args.max_sessions) if args.max_sessions else full
    warm = first_sessions(full, min(args.warmup_sessions, full.n_sessions))
    test = g.SessionData.from_pandas(df_test) if args.evaluate else None
    B = cfg.batch_size
    res = {"what": "training throughput, Trainer.fit (ours) vs official GRU4Rec PyTorch fit, CPU, one process",
           "command": "python bench/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "train_file": FILES[args.dataset][0], "n_items": full.n_items,
           "train_sessions": train.n_sessions, "train_events": train.n_events,
           "config_source": cfg_source, "config": cfg.to_dict(), "backends": {}, "machine": machine_info(),
           "commit": commit()}
    R = res["backends"]
    if "cpu" in args.backends:
        R["cpu"], _ = fit_ours("cpu", cfg, train, warm, test)
    if "numpy" in args.backends:
        k = min(sessions_for_steps(train, B, args.numpy_steps), train.n_sessions)
        sub = first_sessions(train, k)
        print(f"numpy: first {k} sessions ({sub.n_events} events), about {args.numpy_steps} steps per epoch")
        R["numpy"], _ = fit_ours("numpy", cfg, sub, warm)
        R["numpy"]["subset"] = (f"first {k} of {train.n_sessions} sessions: the numpy reference is timed over "
                                f"about --numpy-steps={args.numpy_steps} steps per epoch, not the full data")
        check, _ = fit_ours("cpu", cfg, sub, warm)  # same subset on cpu: the losses should agree
        R["numpy"]["cpu_on_same_subset"] = {k2: check[k2] for k2 in ("final_loss", "mb_per_s", "events_per_s")}
    if "official" in args.backends:
        mod, why = official.load()
        if mod is None:
            R["official"] = {"status": why}
        else:
            R["official"], _ = fit_official(mod, cfg, frame_of(df_train, train), frame_of(df_train, warm), df_test)
            # it processes every (input, target) pair of every session once per epoch, as ours does
            pairs = (train.n_events - int(np.count_nonzero(np.diff(train.offsets)))) * args.epochs
            R["official"]["events"] = pairs
            R["official"]["events_per_s"] = pairs / R["official"]["seconds"]
    res["machine"]["loadavg_at_end"] = os.getloadavg()  # other jobs on the machine skew every figure
    res["ratios"] = {"cpu_over_official_mb_per_s": ratio(R.get("cpu"), R.get("official")),
                     "cpu_over_numpy_mb_per_s": ratio(R.get("numpy", {}).get("cpu_on_same_subset"), R.get("numpy")),
                     "note": "mini-batches/s ratios; cpu/numpy compares both on the numpy subset"}
    out = args.out or os.path.join(HERE, "results", f"train_throughput_{args.dataset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(f"{args.dataset}: {train.n_sessions} sessions, {train.n_events} events, {full.n_items} items; "
          f"{cfg.loss} layers={cfg.layers} B={B} n_sample={cfg.n_sample}; epochs={args.epochs}")
    print(f"{'backend':9s} {'steps':>6s} {'seconds':>8s} {'mb/s':>8s} {'events/s':>9s} {'warmup s':>8s} {'loss':>8s}"
          + ("  recall@20  mrr@20" if args.evaluate else ""))
    for name, r in R.items():
        if "status" in r:
            print(f"{name:9s} {r['status']}")
            continue
        ev = r.get("events_per_s")
        print(f"{name:9s} {r['steps']:6d} {r['seconds']:8.2f} {r['mb_per_s']:8.1f} "
              f"{ev if ev is None else round(ev):>9} {r['warmup_s']:8.2f} {r['final_loss']:8.4f}"
              + (f"  {r['recall@20']:.4f}     {r['mrr@20']:.4f}" if "recall@20" in r else ""))
    print("ratios:", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res["ratios"].items()})
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
