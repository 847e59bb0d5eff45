"""Training throughput of ``Trainer(cfg, backend).fit(train)`` (backends cpu and numpy) next to the official
GRU4Rec PyTorch code on the CPU, in one run, on one dataset, with the official parameter files' settings, and the
cpu backend alone on the same schedule outside fit.

    python bench/train_throughput.py --dataset rsc15 [--epochs 3] [--backends cpu backend official numpy]
        [--repeats 2] [--max-steps N | --max-sessions N] [--numpy-steps 150] [--param-file PATH] [--evaluate]

- Data: ``$GRU4REC_DATA`` (default ../shared/data next to the repo root): rsc15 = rsc15_100k_sessionrec
  train_full / test; diginetica = diginetica_srgnn train_sessions / test_sessions (no times: the global row
  number is the time, so every backend sees the file's session order). Skipped cleanly when absent.
  ``--max-steps`` / ``--max-sessions`` train every side on the first sessions only (the fewest giving that many
  steps per epoch), each with that subset's own item map, as the official code builds it.
- Settings: the official paramfiles rsc15_xe_shared_100_best.py and diginetica_bprmax_shared_best.py (their
  values below, as official parameter strings; ``--param-file`` reads a paramfile instead).
- cpu: the real user path, Trainer(...).fit(SessionData) with its SampleStore and schedule. A short fit on the
  first ``--warmup-sessions`` sessions runs first, so Numba compilation is in ``warmup_s``, not the timing.
- backend: the cpu backend alone on the same schedule: every epoch's chunks and samples are built first, then
  only ``CpuBackend.train_chunk`` is timed; ``fit_over_backend`` = cpu / backend mini-batches/s (fit's own cost:
  schedule, sampling, loss bookkeeping).
- Official (``$GRU4REC_OFFICIAL``, bench/peers/official.py): GRU4Rec(..., device=cpu).fit(DataFrame); its own
  epoch timer (loop only) gives the seconds, as ``history`` does for ours. Recorded "not installed" when absent.
- numpy: the reference is slow, so it trains on the first sessions giving about ``--numpy-steps`` steps (the
  JSON says so); the cpu backend trains on the same subset too, and both losses are recorded (they should agree).
- The sides alternate ``--repeats`` times (cpu, official, backend, cpu, official, backend, ...), so that all see
  the same machine load; the JSON keeps every round, the medians and the ratios per round, and the load average
  at start and end (other jobs on a 2-core machine skew every figure).

Writes bench/results/train_throughput_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def backend_only(cfg, train, warm_chunks: int = 2) -> dict:
    """The cpu backend alone on fit's schedule: all epochs' chunks and samples built first (as fit builds them:
    EpochSchedule chunks of 256 steps, SampleStore.next_many), then only train_chunk timed."""
    from gru4rec_kernels.backends.cpu import CpuBackend
    from gru4rec_kernels.batching import EpochSchedule
    from gru4rec_kernels.layout import init_params
    from gru4rec_kernels.sampling import SampleStore
    from gru4rec_kernels.trainer import logq_columns
    support = train.item_support()
    sampler = SampleStore(support, cfg.sample_alpha, cfg.sample_store_size, cfg.n_sample, cfg.seed)
    lq = logq_columns(cfg, support) if cfg.logq > 0 else (None, None)
    epochs = []
    for _ in range(cfg.n_epochs):
        sched, chunks = EpochSchedule(train.offsets, train.items, cfg.batch_size), []
        while (c := sched.next_chunk(256)) is not None:
            chunks.append((c.inputs, c.targets, c.active, c.reset, sampler.next_many(c.n_steps)))
        epochs.append(chunks)
    be = CpuBackend(cfg, train.n_items, init_params(cfg, train.n_items)[1], *lq)
    be.warmup(cfg.batch_size, cfg.n_sample)
    for c in epochs[0][:warm_chunks]:  # buffers, caches
        be.train_chunk(*c, 0)
    steps, t0 = 0, time.perf_counter()
    for chunks in epochs:
        be.reset_hidden()
        for c in chunks:
            be.train_chunk(*c, steps)
            steps += c[0].shape[0]
    secs = time.perf_counter() - t0
    return {"backend": "cpu backend alone (train_chunk over fit's schedule)", "steps": steps, "seconds": secs,
            "mb_per_s": steps / secs}


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
    warmup_s = None
    if df_warm is not None:
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


def openblas_core() -> str | None:
    """The OpenBLAS kernel numpy's bundled OpenBLAS chose at run time (e.g. "Haswell", "Zen"; OPENBLAS_CORETYPE
    overrides it), asked from the library itself through ctypes (``*openblas*_get_corename*``)."""
    import ctypes
    import glob
    base = os.path.dirname(np.__file__)
    for path in glob.glob(os.path.join(base, "..", "numpy.libs", "*openblas*")) + glob.glob(
            os.path.join(base, ".dylibs", "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def machine_info() -> dict:
    import numba
    info = {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "cpu_model": None, "python": sys.version.split()[0], "numpy": np.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": None, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"), "numpy_openblas_core": openblas_core(),
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
        info["torch_blas"] = next((p.split("=", 1)[1] for p in torch.__config__.show().replace(",", "\n").split()
                                   if p.startswith("BLAS_INFO=")), None)
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


def median_of(rounds: list, key: str):
    vals = [r[key] for r in rounds if key in r]
    return statistics.median(vals) if vals else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(FILES), default="rsc15")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--backends", nargs="+", choices=("cpu", "backend", "numpy", "official"),
                    default=["cpu", "backend", "official"])
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the alternating sides")
    ap.add_argument("--numpy-steps", type=int, default=150, help="about this many steps for the numpy reference")
    ap.add_argument("--max-sessions", type=int, default=None, help="train every side on the first N sessions")
    ap.add_argument("--max-steps", type=int, default=None, help="train on the first sessions giving N steps/epoch")
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
    B = cfg.batch_size
    full = g.SessionData.from_pandas(df_train)
    k = args.max_sessions or (sessions_for_steps(full, B, args.max_steps) if args.max_steps else None)
    frame = frame_of(df_train, first_sessions(full, k)) if k else df_train
    train = g.SessionData.from_pandas(frame) if k else full  # a subset gets its own item map (the official's)
    # the official iterator needs more sessions than batch_size slots
    warm = first_sessions(train, min(max(args.warmup_sessions, 3 * B), train.n_sessions))
    test = g.SessionData.from_pandas(df_test) if args.evaluate else None
    res = {"what": "training throughput, Trainer.fit (ours) vs official GRU4Rec PyTorch fit, CPU, one process",
           "command": "python bench/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "train_file": FILES[args.dataset][0], "n_items": train.n_items,
           "train_sessions": train.n_sessions, "train_events": train.n_events,
           "config_source": cfg_source, "config": cfg.to_dict(), "backends": {}, "rounds": [],
           "machine": machine_info(), "commit": commit()}
    R = res["backends"]
    mod = None
    if "official" in args.backends:
        mod, why = official.load()
        if mod is None:
            R["official"] = {"status": why}
        else:
            t0 = time.perf_counter()
            official.fit(mod, frame_of(frame, warm), cfg.replace(n_epochs=1))
            res["official_warmup_s"] = time.perf_counter() - t0
    # it processes every (input, target) pair of every session once per epoch, as ours does
    pairs = (train.n_events - int(np.count_nonzero(np.diff(train.offsets)))) * args.epochs
    for rnd in range(args.repeats):
        row = {"round": rnd, "loadavg": os.getloadavg()}
        if "cpu" in args.backends:
            r, _ = fit_ours("cpu", cfg, train, warm, test if rnd == 0 else None)
            R.setdefault("cpu", r)
            row["cpu_mb_per_s"], row["cpu_events_per_s"] = r["mb_per_s"], r["events_per_s"]
        if mod is not None:
            r, _ = fit_official(mod, cfg, frame, None, df_test if (args.evaluate and rnd == 0) else None)
            r["events"], r["events_per_s"] = pairs, pairs / r["seconds"]
            R.setdefault("official", r)
            row["official_mb_per_s"], row["official_events_per_s"] = r["mb_per_s"], r["events_per_s"]
        if "backend" in args.backends:
            r = backend_only(cfg, train)
            R.setdefault("backend", r)
            row["backend_mb_per_s"] = r["mb_per_s"]
        if "cpu_mb_per_s" in row and "official_mb_per_s" in row:
            row["cpu_over_official"] = row["cpu_mb_per_s"] / row["official_mb_per_s"]
        if "cpu_mb_per_s" in row and "backend_mb_per_s" in row:
            row["fit_over_backend"] = row["cpu_mb_per_s"] / row["backend_mb_per_s"]
        res["rounds"].append(row)
        print({k2: (round(v, 2) if isinstance(v, float) else v) for k2, v in row.items()})
    for name in ("cpu", "official", "backend"):
        if name in R and "status" not in R[name]:
            R[name]["mb_per_s_median"] = median_of(res["rounds"], f"{name}_mb_per_s")
    if "numpy" in args.backends:
        kn = min(sessions_for_steps(train, B, args.numpy_steps), train.n_sessions)
        sub = first_sessions(train, kn)
        print(f"numpy: first {kn} sessions ({sub.n_events} events), about {args.numpy_steps} steps per epoch")
        R["numpy"], _ = fit_ours("numpy", cfg, sub, warm)
        R["numpy"]["subset"] = (f"first {kn} of {train.n_sessions} sessions: the numpy reference is timed over "
                                f"about --numpy-steps={args.numpy_steps} steps per epoch, not the full data")
        check, _ = fit_ours("cpu", cfg, sub, warm)  # same subset on cpu: the losses should agree
        R["numpy"]["cpu_on_same_subset"] = {k2: check[k2] for k2 in ("final_loss", "mb_per_s", "events_per_s")}
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    res["ratios"] = {"cpu_over_official_mb_per_s": median_of(res["rounds"], "cpu_over_official"),
                     "cpu_fit_over_backend_alone": median_of(res["rounds"], "fit_over_backend"),
                     "cpu_over_numpy_mb_per_s": ratio(R.get("numpy", {}).get("cpu_on_same_subset"), R.get("numpy")),
                     "note": "medians over the rounds of per-round mini-batches/s ratios (sides alternate within "
                             "a round); cpu/numpy compares both on the numpy subset"}
    out = args.out or os.path.join(HERE, "results", f"train_throughput_{args.dataset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(f"{args.dataset}: {train.n_sessions} sessions, {train.n_events} events, {train.n_items} items; "
          f"{cfg.loss} layers={cfg.layers} B={B} n_sample={cfg.n_sample}; epochs={args.epochs}; load "
          f"{res['machine']['loadavg_at_start'][0]:.1f} -> {res['machine']['loadavg_at_end'][0]:.1f}")
    print(f"{'backend':9s} {'steps':>6s} {'seconds':>8s} {'mb/s':>8s} {'events/s':>9s} {'loss':>8s}"
          + ("  recall@20  mrr@20" if args.evaluate else ""))
    for name, r in R.items():
        if "status" in r:
            print(f"{name:9s} {r['status']}")
            continue
        ev = r.get("events_per_s")
        print(f"{name:9s} {r['steps']:6d} {r['seconds']:8.2f} {r['mb_per_s']:8.1f} "
              f"{'-' if ev is None else round(ev):>9} {r.get('final_loss', float('nan')):8.4f}"
              + (f"  {r['recall@20']:.4f}     {r['mrr@20']:.4f}" if "recall@20" in r else ""))
    print("ratios:", {k2: (round(v, 2) if isinstance(v, float) else v) for k2, v in res["ratios"].items()})
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
