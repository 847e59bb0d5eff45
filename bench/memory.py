"""Peak memory (resident set) of loading a click log into SessionData and of training at 10^6 items.

Every measurement runs in a fresh Python subprocess. Inside it, the peak resident set is read from
``/proc/self/status`` (VmHWM); the parent cross-checks it with the child's own ``ru_maxrss`` from ``os.wait4``
(per child, unlike ``getrusage(RUSAGE_CHILDREN)``, which is the maximum over all children so far).

(a) load: the child imports numpy / pandas / gru4rec_kernels (``baseline`` = VmRSS then), generates an
    ``N``-event log as numpy arrays (SessionId int64, ItemId int64, Time float64: 24 bytes/event, made in
    chunks so generation itself needs no more), then calls ``SessionData.from_arrays``. Reported:
      peak_bytes_per_event  = (VmHWM - baseline) / N        (the input arrays included)
      build_bytes_per_event = (VmHWM during the build - RSS with the inputs) / N   (the build's own overhead;
                              VmHWM is reset through /proc/self/clear_refs after generation, where allowed)
      steady_bytes_per_event = nbytes of the SessionData arrays / N
    ``parquet``: the same log written once to a parquet file (in row groups, in a separate child) and loaded
    with ``SessionData.from_parquet``; baseline includes pyarrow.
    Log shape: ~N/5.5 sessions (lengths 1 + geometric, mean 5.5), 10^6 items (Zipf-like), sessions in
    start-time order with random (non-monotone) session ids, rows grouped by session (the GRU4Rec file
    format); ``--order time``: rows in time order (sessions interleaved, as a raw log); ``--order shuffled``:
    a random row order (the worst case for the sorts).
(b) train: TrainConfig(layers=[100], n_sample=2048, batch_size=32, n_epochs=1) on the "cpu" backend when
    gru4rec_kernels/backends/cpu/ imports, else "numpy"; a SessionData over an item map of 10^6 ids (built
    with the SessionData constructor: a ~20k-event log can only touch ~20k distinct items) and ~20k events,
    so one epoch is a few hundred steps. Reported: peak - baseline, per item, against the analytic minimum
    2 * (H + 1) * 4 bytes/item (Wy, By and their Adagrad accumulators, float32; momenta would add as much).

    python bench/memory.py                       # 1e7 and 3e7 events (+ extrapolation to 1e8), parquet, train
    python bench/memory.py --events 1e7,3e7,1e8  # also measure 1e8 directly (about 9 GB peak, minutes)

Writes bench/results/memory.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE_ROOT = ROOT  # where the children import gru4rec_kernels from (--package-root)
N_ITEMS_LOG = 1_000_000
GEN_CHUNK = 4_000_000


# ---------------------------------------------------------------------------------------------------- in the child
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def generate_log(n: int, seed: int = 0, order: str = "grouped"):
    """(session_ids int64, item_ids int64, times float64) of ``n`` events, built chunk by chunk."""
    import numpy as np
    rng = np.random.default_rng(seed)
    # session lengths 1 + geometric(p): mean 1 + (1-p)/p = 5.5; enough sessions to cover n events
    p = 1.0 / 5.5
    n_sess_guess = int(n / 5.5 * 1.05) + 16
    lens = rng.geometric(p, size=n_sess_guess).astype(np.int64)
    cum = np.cumsum(lens)
    n_sess = int(np.searchsorted(cum, n) + 1)
    lens = lens[:n_sess]
    lens[-1] -= int(cum[n_sess - 1] - n)  # the last session ends exactly at n events
    del cum
    # sessions in start-time order, with random distinct ids (as a hash of a counter would give)
    sids = rng.permutation(np.int64(n_sess) * 7)[:n_sess]
    start = np.sort(rng.uniform(0, 30 * 86400.0, n_sess)) + 1.6e9
    sess = np.empty(n, np.int64)
    items = np.empty(n, np.int64)
    times = np.empty(n, np.float64)
    offs = np.zeros(n_sess + 1, np.int64)
    np.cumsum(lens, out=offs[1:])
    for e0 in range(0, n, GEN_CHUNK):  # chunked: the temporaries stay at GEN_CHUNK elements
        e1 = min(e0 + GEN_CHUNK, n)
        s1 = int(np.searchsorted(offs, e1, side="left"))
        s_lo = int(np.searchsorted(offs, e0, side="right")) - 1
        sidx = np.repeat(np.arange(s_lo, s1, dtype=np.int64), np.diff(np.clip(offs[s_lo:s1 + 1], e0, e1)))
        sess[e0:e1] = sids[sidx]
        within = np.arange(e0, e1, dtype=np.int64) - offs[sidx]
        times[e0:e1] = start[sidx] + within * 30.0 + rng.uniform(0, 29.0, e1 - e0)
        # Zipf-like popularity over 10^6 item ids (ids scattered over a wider range, like real ids)
        r = np.floor(N_ITEMS_LOG * rng.random(e1 - e0) ** 3).astype(np.int64)
        items[e0:e1] = r * 13 + 1000
    del sids, start, offs, lens
    if order in ("shuffled", "time"):
        perm = rng.permutation(n) if order == "shuffled" else np.argsort(times, kind="stable")
        for a in (sess, items, times):
            a[:] = a[perm]  # one temporary of n elements at a time
        del perm
    return sess, items, times


def _child_load(n: int, source: str, path: str | None, order: str) -> dict:
    import gc

    import numpy as np  # noqa: F401  (imported before the baseline is read)
    import pandas  # noqa: F401
    if source == "parquet":
        import pyarrow.parquet  # noqa: F401
    from gru4rec_kernels.data import SessionData
    base = _status()["VmRSS"]
    res: dict = {"events": n, "source": source, "order": order, "baseline_rss": base}
    t0 = time.perf_counter()
    if source == "arrays":
        sess, items, times = generate_log(n, order=order)
        res["generate_s"] = time.perf_counter() - t0
        st = _status()
        res["rss_with_inputs"] = st["VmRSS"]
        res["peak_generate"] = st["VmHWM"]
        res["input_bytes"] = int(sess.nbytes + items.nbytes + times.nbytes)
        res["peak_reset"] = _reset_peak()
        t0 = time.perf_counter()
        d = SessionData.from_arrays(sess, items, times)
    else:
        res["rss_with_inputs"] = base
        res["input_bytes"] = 0
        res["peak_reset"] = False
        d = SessionData.from_parquet(path)
    res["build_s"] = time.perf_counter() - t0
    st = _status()
    res["peak_build"] = st["VmHWM"]
    res["peak_rss"] = max(st["VmHWM"], res.get("peak_generate", 0))
    res["rss_after_build"] = st["VmRSS"]
    res["steady_bytes"] = int(sum(getattr(d, k).nbytes for k in ("items", "offsets", "session_ids", "times",
                                                                   "item_ids")))
    res["n_sessions"], res["n_items"] = d.n_sessions, d.n_items
    res["dtypes"] = {k: str(getattr(d, k).dtype) for k in ("items", "offsets", "session_ids", "times", "item_ids")}
    if source == "arrays":
        del sess, items, times
    gc.collect()
    res["rss_data_only"] = _status()["VmRSS"]
    res["peak_bytes_per_event"] = (res["peak_rss"] - base) / n
    res["build_bytes_per_event"] = (res["peak_build"] - res["rss_with_inputs"]) / n
    res["steady_bytes_per_event"] = res["steady_bytes"] / n
    res["data_only_bytes_per_event"] = (res["rss_data_only"] - base) / n
    return res


def _child_write_parquet(n: int, path: str, order: str) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    t0 = time.perf_counter()
    sess, items, times = generate_log(n, order=order)
    schema = pa.schema([("SessionId", pa.int64()), ("ItemId", pa.int64()), ("Time", pa.float64())])
    with pq.ParquetWriter(path, schema) as w:
        for e0 in range(0, n, GEN_CHUNK):
            e1 = min(e0 + GEN_CHUNK, n)
            w.write_table(pa.table({"SessionId": sess[e0:e1], "ItemId": items[e0:e1], "Time": times[e0:e1]},
                                   schema=schema))
    return {"write_s": time.perf_counter() - t0, "file_bytes": os.path.getsize(path), "events": n,
            "peak_rss": _status()["VmHWM"], "numpy": np.__version__}


def _cpu_backend_available() -> bool:
    try:
        from gru4rec_kernels.backends.cpu import CpuBackend  # noqa: F401
        return True
    except Exception:
        return False


def _train_log(n_items: int, n_events: int, seed: int = 0):
    """A SessionData over an item map of ``n_items`` ids with ``n_events`` events (Zipf-like items)."""
    import numpy as np

    import gru4rec_kernels as g
    rng = np.random.default_rng(seed)
    lens = 1 + rng.geometric(1 / 4.5, size=n_events)
    lens = lens[:np.searchsorted(np.cumsum(lens), n_events) + 1]
    lens[-1] -= int(lens.sum() - n_events)
    lens = lens[lens > 0]
    offsets = np.zeros(lens.size + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    items = np.floor(n_items * rng.random(n_events) ** 3).astype(np.int32)
    if n_events >= n_items:  # a log that covers every item (each at least once), in a random place
        items[rng.permutation(n_events)[:n_items]] = rng.permutation(n_items).astype(np.int32)
    return g.SessionData(np.arange(n_items, dtype=np.int64) * 3 + 7, items, offsets,
                         np.arange(lens.size, dtype=np.int64), np.arange(n_events, dtype=np.float64))


def _child_train(n_items: int, n_events: int, H: int, backend: str | None) -> dict:
    import gc

    import numpy as np

    import gru4rec_kernels as g
    from gru4rec_kernels.backends import backend_class
    from gru4rec_kernels.layout import init_params
    backend = backend or ("cpu" if _cpu_backend_available() else "numpy")
    backend_class(backend)  # import the backend module before the baseline
    cfg = g.TrainConfig(layers=[H], n_sample=2048, batch_size=32, n_epochs=1)
    base_cold = _status()["VmRSS"]
    # warm-up on a small log with the same config: Numba compilation (a fixed cost) happens before the baseline
    t0 = time.perf_counter()
    g.Trainer(cfg, backend=backend, show_progress=False).fit(_train_log(5000, 2000, seed=1))
    warmup_s = time.perf_counter() - t0
    gc.collect()
    base = _status()["VmRSS"]
    data = _train_log(n_items, n_events)
    rss_data = _status()["VmRSS"]
    # where the memory goes: init_params alone, then a backend on those parameters (diagnostics)
    reset = _reset_peak()
    _, params = init_params(cfg, n_items)
    st = _status()
    stage = {"init_params_peak": st["VmHWM"] - rss_data, "init_params_rss": st["VmRSS"] - rss_data}
    be = backend_class(backend)(cfg, n_items, params)
    stage["params_plus_backend_rss"] = _status()["VmRSS"] - rss_data
    be.close()
    del be, params
    gc.collect()
    # the measurement: one Trainer.fit
    _reset_peak()
    rss_before_fit = _status()["VmRSS"]
    t0 = time.perf_counter()
    model = g.Trainer(cfg, backend=backend, show_progress=False).fit(data)
    fit_s = time.perf_counter() - t0
    st = _status()
    peak = st["VmHWM"] if reset else max(st["VmHWM"], 0)
    analytic = 2 * (H + 1) * 4 * n_items * (2 if cfg.momentum > 0 else 1)
    return {"backend": backend, "n_items": n_items, "H": H, "n_events": int(data.n_events),
            "n_sessions": data.n_sessions, "distinct_items_in_log": int(np.unique(data.items).size),
            "steps": int(model.history[0]["steps"]), "fit_s": fit_s, "warmup_s": warmup_s,
            "baseline_rss_cold": base_cold, "baseline_rss": base, "rss_with_data": rss_data,
            "rss_before_fit": rss_before_fit, "peak_reset": reset,
            "peak_rss": peak, "rss_after_fit": st["VmRSS"],
            "peak_bytes_per_item": (peak - base) / n_items,
            "peak_bytes_per_item_incl_jit": (peak - base_cold) / n_items,
            "stages_bytes_per_item": {k: v / n_items for k, v in stage.items()},
            "model_param_bytes": int(sum(v.nbytes for v in model.params.values())),
            "analytic_min_bytes": analytic, "analytic_min_bytes_per_item": analytic / n_items,
            "peak_over_analytic": (peak - base) / analytic,
            "sample_store_bytes": 2 * int(cfg.sample_store_size) * 4,
            "note": ("the item map has n_items ids but a log of n_events events touches only "
                     "distinct_items_in_log of them (built with the SessionData constructor); every per-item "
                     "array is allocated for all n_items. Baseline = RSS after a warm-up fit on a small log "
                     "(Numba compilation excluded); *_incl_jit counts from before the warm-up. The sample store "
                     "holds 2 x sample_store_size int32 ids (current + prefetched refill), a fixed cost.")}


# ---------------------------------------------------------------------------------------------------- the parent
def run_child(args: list[str], timeout: float) -> dict:
    """Run ``memory.py --child ...`` in a fresh interpreter; return its JSON plus its ru_maxrss (os.wait4)."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    t0 = time.perf_counter()
    # read the pipes ourselves, then reap with wait4 to get this child's own rusage
    buf: dict[str, str] = {}

    def drain(name, stream):
        buf[name] = stream.read()

    ts = [threading.Thread(target=drain, args=(k, s)) for k, s in (("out", p.stdout), ("err", p.stderr))]
    for t in ts:
        t.start()
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    for t in ts:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": f"child exited with {p.returncode}", "stderr": buf.get("err", "")[-3000:],
                "args": args, "wall_s": wall, "ru_maxrss": ru.ru_maxrss * 1024}
    res = json.loads(buf["out"].strip().splitlines()[-1])
    res["ru_maxrss"] = ru.ru_maxrss * 1024  # Linux reports KiB
    res["wall_s"] = wall
    return res


def machine_info() -> dict:
    import numpy as np
    import pandas as pd
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
            "numpy": np.__version__, "pandas": pd.__version__}
    try:
        import pyarrow
        info["pyarrow"] = pyarrow.__version__
    except ImportError:
        pass
    try:
        import numba
        info["numba"] = numba.__version__
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["total_ram_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=ROOT).stdout.strip()
    except OSError:
        pass
    return info


def extrapolate(rows: list[dict], n_target: int, key: str = "peak_rss") -> dict | None:
    """Linear fit ``key = a + b * events`` through the two largest measured sizes, evaluated at n_target."""
    pts = sorted((r["events"], r[key]) for r in rows if "error" not in r)
    if len(pts) < 2:
        return None
    (n0, y0), (n1, y1) = pts[-2], pts[-1]
    b = (y1 - y0) / (n1 - n0)
    a = y0 - b * n0
    return {"events": n_target, key: a + b * n_target, "slope_bytes_per_event": b, "intercept_bytes": a,
            "from_events": [n0, n1]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--events", default="1e7,3e7", help="comma separated event counts for (a), e.g. 1e7,3e7,1e8")
    ap.add_argument("--parquet", default="1e7", help="event counts for the parquet load ('' = skip)")
    ap.add_argument("--order", default="grouped",
                    help="row order(s) of the generated log, comma separated: grouped, time, shuffled")
    ap.add_argument("--order-max-events", type=float, default=None,
                    help="measure the orders after the first one only up to this many events")
    ap.add_argument("--train-items", type=int, default=1_000_000)
    ap.add_argument("--train-events", default="20000",
                    help="events of the training log(s), comma separated (>= --train-items: every item occurs)")
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--backend", default=None, help="training backend (default: cpu if it imports, else numpy)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
    ap.add_argument("--label", default=None, help="tag stored with the results (e.g. 'before' / 'after')")
    ap.add_argument("--before", default=None, help="a results file of an earlier run to embed as 'before'")
    ap.add_argument("--package-root", default=None, help="import gru4rec_kernels from here in the children")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "memory.json"))
    args = ap.parse_args(argv)
    global PACKAGE_ROOT
    if args.package_root:
        PACKAGE_ROOT = os.path.abspath(args.package_root)

    if args.child:
        kind, rest = args.child[0], args.child[1:]
        if kind == "load":
            res = _child_load(int(float(rest[0])), rest[1], rest[2] if rest[2] != "-" else None, rest[3])
        elif kind == "write_parquet":
            res = _child_write_parquet(int(float(rest[0])), rest[1], rest[2])
        elif kind == "train":
            res = _child_train(int(rest[0]), int(rest[1]), int(rest[2]), None if rest[3] == "-" else rest[3])
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(res))
        return 0

    sizes = [int(float(x)) for x in args.events.split(",") if x.strip()]
    pq_sizes = [int(float(x)) for x in args.parquet.split(",") if x.strip()]
    orders = [o.strip() for o in args.order.split(",") if o.strip()]
    for o in orders:
        if o not in ("grouped", "time", "shuffled"):
            raise SystemExit(f"unknown order {o!r}")
    results: dict = {"machine": machine_info(), "label": args.label, "orders": orders,
                     "package_root": PACKAGE_ROOT,
                     "command": "python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "load_arrays": [], "load_parquet": [], "train": None}
    for order in orders:
        for n in sizes:
            if order != orders[0] and args.order_max_events and n > args.order_max_events:
                continue
            print(f"[a] from_arrays, {n:.0e} events, rows {order} ...", flush=True)
            r = run_child(["load", str(n), "arrays", "-", order], args.timeout)
            results["load_arrays"].append(r)
            if "error" in r:
                print("   ", r["error"], r["stderr"][-500:])
    if 10 ** 8 not in sizes:
        ex = extrapolate([r for r in results["load_arrays"] if r.get("order") == orders[0]], 10 ** 8)
        if ex is not None:
            base = min(r["baseline_rss"] for r in results["load_arrays"] if "error" not in r)
            ex["peak_bytes_per_event"] = (ex["peak_rss"] - base) / 1e8
            ex["note"] = ("10^8 events not measured here: peak RSS extrapolated linearly from the two largest "
                          "measured sizes")
            results["extrapolated_1e8"] = ex
    with tempfile.TemporaryDirectory(prefix="gru4rec-mem-") as tmp:
        for n in pq_sizes:
            path = os.path.join(tmp, f"log_{n}.parquet")
            print(f"[a] from_parquet, {n:.0e} events (writing the file) ...", flush=True)
            w = run_child(["write_parquet", str(n), path, orders[0]], args.timeout)
            if "error" in w:
                results["load_parquet"].append(w)
                print("   ", w["error"], w["stderr"][-500:])
                continue
            r = run_child(["load", str(n), "parquet", path, orders[0]], args.timeout)
            r["file_bytes"], r["write_s"] = w["file_bytes"], w["write_s"]
            results["load_parquet"].append(r)
            if "error" in r:
                print("   ", r["error"], r["stderr"][-500:])
    if not args.no_train:
        results["train_runs"] = []
        for n_ev in [int(float(x)) for x in args.train_events.split(",") if x.strip()]:
            print(f"[b] training, {args.train_items:.0e} items, H={args.hidden}, {n_ev} events ...", flush=True)
            r = run_child(["train", str(args.train_items), str(n_ev), str(args.hidden), args.backend or "-"],
                          args.timeout)
            results["train_runs"].append(r)
            if "error" in r:
                print("   ", r["error"], r["stderr"][-800:])
        results["train"] = results["train_runs"][0] if results["train_runs"] else None

    results["notes"] = NOTES
    if args.before:
        with open(args.before) as f:
            before = json.load(f)
        results["before"] = {k: before.get(k) for k in ("label", "command", "package_root", "orders", "load_arrays",
                                                         "load_parquet", "extrapolated_1e8", "train")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


NOTES = [
    "peak_rss is the whole child's peak: max(generation, build). At 1e7 events the generator's chunk "
    "temporaries (GEN_CHUNK rows) can exceed the build's own peak, so peak_bytes_per_event is inflated at small "
    "sizes; build_bytes_per_event (peak during the build over the RSS with the inputs, VmHWM reset through "
    "/proc/self/clear_refs) is the loading cost proper.",
    "ru_maxrss comes from os.wait4 for that child alone; after the clear_refs reset it is the build-phase peak.",
    "'after' = RSS once the input arrays are freed: above 'steady' where the allocator keeps freed memory "
    "(glibc heap for chunk-sized temporaries, Arrow's pool) -- reusable by the process, not a leak.",
    "training: per-item = (peak during Trainer.fit - RSS after a warm-up fit) / n_items; the analytic minimum "
    "counts Wy, By and their Adagrad accumulators (float32); the sample store (2 x sample_store_size int32) and "
    "per-item float64 support / probability / cdf arrays are extra.",
]


def _load_rows(title: str, rows: list[dict], extrapolated: dict | None) -> None:
    print(f"\n{title}")
    print(f"{'source':8s} {'rows':9s} {'events':>7s} {'base':>6s} {'peak':>6s} {'ru_max':>6s} {'peak-base':>9s} "
          f"{'build':>6s} {'steady':>6s} {'after':>6s} {'build s':>7s}")
    print(f"{'':8s} {'':9s} {'':>7s} {'GiB':>6s} {'GiB':>6s} {'GiB':>6s} {'B/event':>9s} {'B/ev':>6s} {'B/ev':>6s} "
          f"{'B/ev':>6s}")
    for r in rows:
        if "error" in r:
            print(f"  error: {r['error']} ({r.get('args')})")
            continue
        print(f"{r['source']:8s} {r.get('order', '-'):9s} {r['events']:7.0e} {r['baseline_rss'] / 2 ** 30:6.2f} "
              f"{r['peak_rss'] / 2 ** 30:6.2f} {r['ru_maxrss'] / 2 ** 30:6.2f} {r['peak_bytes_per_event']:9.1f} "
              f"{r['build_bytes_per_event']:6.1f} {r['steady_bytes_per_event']:6.1f} "
              f"{r['data_only_bytes_per_event']:6.1f} {r['build_s']:7.1f}")
    if extrapolated:
        ex = extrapolated
        print(f"extrapolated to 1e8 events (linear fit through {ex['from_events']}): peak "
              f"{ex['peak_rss'] / 2 ** 30:.2f} GiB, {ex['peak_bytes_per_event']:.1f} bytes/event")


def print_table(results: dict) -> None:
    m = results["machine"]
    print(f"\nmachine: {m.get('cpu_count')} cpus, {m.get('total_ram_bytes', 0) / 2 ** 30:.1f} GiB RAM, "
          f"python {m['python']}, numpy {m['numpy']}, pandas {m['pandas']}, pyarrow {m.get('pyarrow')}")
    print("columns: peak-base = (peak RSS - interpreter baseline) / events, input arrays (24 B/event) included; "
          "build = (peak during the build - RSS with the inputs) / events; steady = nbytes of the SessionData "
          "arrays / events; after = RSS once the inputs are freed, minus baseline, / events")
    b = results.get("before")
    if b:
        _load_rows(f"(a) BEFORE: {b.get('label')}", (b.get("load_arrays") or []) + (b.get("load_parquet") or []),
                   b.get("extrapolated_1e8"))
    _load_rows(f"(a) {'AFTER: ' if b else ''}{results.get('label') or ''}",
               results["load_arrays"] + results["load_parquet"], results.get("extrapolated_1e8"))
    for t in results.get("train_runs") or []:
        if "error" in t:
            print(f"\n(b) training: error {t['error']}")
            continue
        print(f"\n(b) training: backend {t['backend']}, {t['n_items']:.0e} items, H={t['H']}, {t['steps']} steps "
              f"({t['n_events']} events), fit {t['fit_s']:.1f} s")
        print(f"  baseline (warm) {t['baseline_rss'] / 2 ** 30:.2f} GiB  peak {t['peak_rss'] / 2 ** 30:.2f} GiB  "
              f"(ru_maxrss {t['ru_maxrss'] / 2 ** 30:.2f})  peak-baseline = {t['peak_bytes_per_item']:.0f} bytes/item "
              f"({t['peak_bytes_per_item_incl_jit']:.0f} with Numba compilation)")
        print("  stages: " + ", ".join(f"{k} {v:.0f}" for k, v in t["stages_bytes_per_item"].items()) +
              " bytes/item")
        print(f"  analytic minimum 2*(H+1)*4 = {t['analytic_min_bytes_per_item']:.0f} bytes/item "
              f"-> peak is {t['peak_over_analytic']:.2f}x the minimum")


if __name__ == "__main__":
    sys.exit(main())
