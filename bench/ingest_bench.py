"""Out-of-core ingestion (``gru4rec ingest``, DuckDB) against the in-memory path: wall time, peak memory, disk.

1. Generates a synthetic click log as hive-partitioned Parquet, ``day=YYYY-MM-DD/part-0.parquet`` (cached:
   regenerated only when the parameters change): ``N`` events over ``--days`` days, item popularity Zipf
   (exponent 1.0) over ``N**0.75`` items (1.8e5 at 10^7, 10^6 at 10^8) with shuffled ids, session lengths
   round(lognormal(1.0, 0.8)) clipped to [1, 200] (mean ~3.9; about a quarter are one-event sessions, as in
   RSC15), session starts uniform over the day, 60 s mean gaps between clicks. Rows are in time order within
   a day (a raw log); a session stays in the partition of its start day. Columns SessionId int64, ItemId
   int64, Time float64 seconds.
2. Ingests it in a fresh subprocess (``ingest()`` with ``--memory-limit``, default 2GB), which reports its
   wall time, its peak resident set (VmHWM from /proc/self/status; the parent cross-checks with the child's
   ``ru_maxrss`` from ``os.wait4``: DuckDB runs in-process, so this covers it) and the peak size of its work
   directory (the DuckDB database and spill files, sampled every 50 ms).
3. The in-memory path in another fresh subprocess: ``pd.read_parquet`` + ``preprocess.preprocess`` +
   ``SessionData.from_pandas`` (train, and test remapped to train's items), same measurements; then, outside
   the measured part, it checks that the ingest artifacts equal its result array for array. It runs only
   when its estimated peak (bytes per event measured at 10^7, or 200 B/event) fits in half the available
   memory; ``--no-in-memory`` skips it.
4. Bytes per event of the artifacts, per file, over the raw and the kept events.

    python bench/ingest_bench.py                    # 10^7 events (a few minutes on 2 cores)
    python bench/ingest_bench.py --events 1e8       # 10^8 (tens of minutes on 2 cores; ~2 GB of Parquet)

Writes bench/results/ingest_<N>.json (MEASURED, with the machine and its load average).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GEN_VERSION = 1


# ---------------------------------------------------------------------------------------------------- generation
def generate(root: str, n_events: int, n_days: int, seed: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    params = {"version": GEN_VERSION, "events": n_events, "days": n_days, "seed": seed}
    stamp = os.path.join(root, "_generated.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            info = json.load(f)
        if info.get("params") == params:
            return info
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(seed)
    n_items = int(n_events ** 0.75)
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1))
    cdf /= cdf[-1]
    item_id = rng.permutation(n_items).astype(np.int64) + 1_000_000  # popularity rank -> id
    t0 = 1_396_310_400.0  # 2014-04-01 UTC, as RSC15
    per_day = n_events // n_days
    next_session = 1
    written = 0
    t_start = time.perf_counter()
    for d in range(n_days):
        want = per_day if d < n_days - 1 else n_events - per_day * (n_days - 1)
        lens = np.clip(np.rint(rng.lognormal(1.0, 0.8, size=int(want / 3.0) + 1000)), 1, 200).astype(np.int64)
        lens = lens[:np.searchsorted(np.cumsum(lens), want) + 1]
        lens[-1] -= int(lens.sum()) - want
        lens = lens[lens > 0]
        n_s, n = lens.size, int(lens.sum())
        sess = np.repeat(np.arange(next_session, next_session + n_s, dtype=np.int64), lens)
        next_session += n_s
        first = np.zeros(n, dtype=bool)
        first[np.concatenate([[0], np.cumsum(lens)[:-1]])] = True
        gaps = rng.exponential(60.0, size=n)
        gaps[first] = 0.0
        cum = np.cumsum(gaps)
        cum -= np.repeat(cum[first], lens)  # time since the session's start
        t = np.round(t0 + d * 86400.0 + np.repeat(rng.uniform(0, 86400.0, n_s), lens) + cum, 3)
        items = item_id[np.searchsorted(cdf, rng.random(n))]
        order = np.argsort(t, kind="stable")
        day = time.strftime("%Y-%m-%d", time.gmtime(t0 + d * 86400.0))
        os.makedirs(os.path.join(root, f"day={day}"))
        pq.write_table(pa.table({"SessionId": sess[order], "ItemId": items[order], "Time": t[order]}),
                       os.path.join(root, f"day={day}", "part-0.parquet"), row_group_size=1 << 20)
        written += n
    info = {"params": params, "events": written, "sessions": next_session - 1, "items": n_items,
            "bytes": _dir_bytes(root), "seconds": round(time.perf_counter() - t_start, 1)}
    with open(stamp, "w") as f:
        json.dump(info, f)
    return info


def _dir_bytes(path: str) -> int:
    total = 0
    for r, _, names in os.walk(path):
        for n in names:
            try:
                total += os.path.getsize(os.path.join(r, n))
            except OSError:
                pass
    return total


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------------------- children
def child_ingest(a) -> dict:
    sys.path.insert(0, ROOT)
    from gru4rec_kernels.ingest import ingest
    base = _vm("VmRSS")
    work = os.path.join(os.path.dirname(os.path.abspath(a.out)), f".{os.path.basename(a.out)}.ingest")
    peak_disk, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak_disk[0] = max(peak_disk[0], _dir_bytes(work))
            time.sleep(0.05)
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t = time.perf_counter()
    rep = ingest(a.data, a.out, memory_limit=a.memory_limit, threads=a.threads, progress=False)
    wall = time.perf_counter() - t
    stop.set()
    th.join()
    return {"wall_s": wall, "peak_rss": _vm("VmHWM"), "baseline_rss": base, "peak_work_dir_bytes": peak_disk[0],
            "report": rep}


def child_in_memory(a) -> dict:
    sys.path.insert(0, ROOT)
    import numpy as np
    import pandas as pd

    from gru4rec_kernels.data import SessionData
    from gru4rec_kernels.preprocess import preprocess
    base = _vm("VmRSS")
    t = time.perf_counter()
    df = pd.read_parquet(a.data, columns=["SessionId", "ItemId", "Time"])
    splits = preprocess(df)
    del df
    train = SessionData.from_pandas(splits.pop("train_full"))
    test, _ = SessionData.from_pandas(splits.pop("test")).remap(train.item_ids)
    wall = time.perf_counter() - t
    out = {"wall_s": wall, "peak_rss": _vm("VmHWM"), "baseline_rss": base}
    del splits
    if a.out and os.path.isdir(a.out):  # outside the measured part: the artifacts must equal this result
        equal = {}
        for name, ref in (("train", train), ("test", test)):
            got = SessionData.open(os.path.join(a.out, name))
            equal[name] = all(np.array_equal(getattr(got, k), getattr(ref, k))
                              for k in ("items", "offsets", "times", "item_ids", "session_ids"))
        out["artifacts_equal"] = equal
    return out


# ---------------------------------------------------------------------------------------------------- parent
def run_child(mode: str, a, out: str | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--data", a.data_dir, "--memory-limit",
           a.memory_limit] + (["--out", out] if out else []) + (["--threads", str(a.threads)] if a.threads else [])
    with tempfile.TemporaryFile("w+") as res:
        p = subprocess.Popen(cmd, stdout=res, stderr=sys.stderr)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            raise SystemExit(f"{mode} child failed with exit code {p.returncode}")
        res.seek(0)
        r = json.loads(res.read().strip().splitlines()[-1])
    r["ru_maxrss"] = ru.ru_maxrss * 1024
    return r


def artifact_sizes(out: str) -> dict:
    sizes = {}
    for split in sorted(os.listdir(out)):
        d = os.path.join(out, split)
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                sizes[f"{split}/{f}"] = os.path.getsize(os.path.join(d, f))
    return sizes


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        with open("/proc/meminfo") as f:
            mem = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        info["total_ram_bytes"], info["available_ram_bytes"] = mem["MemTotal"], mem["MemAvailable"]
    except (OSError, StopIteration, KeyError):
        pass
    import duckdb
    import pandas
    import pyarrow
    info.update(duckdb=duckdb.__version__, pandas=pandas.__version__, pyarrow=pyarrow.__version__)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=float, default=1e7)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-limit", default="2GB")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "gru4rec-ingest-bench"),
                   help="where the generated log and the artifacts go (kept for reruns)")
    p.add_argument("--no-in-memory", action="store_true", help="skip the in-memory path")
    p.add_argument("--in-memory-bytes-per-event", type=float, default=None,
                   help="estimated peak of the in-memory path, to decide whether it fits (default: as measured in "
                        "results/ingest_1e7.json, else 200)")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/ingest_<N>.json)")
    p.add_argument("--child", choices=["ingest", "in-memory"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        r = child_ingest(a) if a.child == "ingest" else child_in_memory(a)
        print(json.dumps(r, default=str))
        return 0
    n = int(a.events)
    tag = f"{n:.0e}".replace("+0", "").replace("+", "")
    a.data_dir = os.path.join(a.work, f"log_{tag}")
    out = os.path.join(a.work, f"artifacts_{tag}")
    print(f"generating {n:,} events into {a.data_dir} ...", flush=True)
    gen = generate(a.data_dir, n, a.days, a.seed)
    print(f"  {gen['events']:,} events, {gen['sessions']:,} sessions, {gen['items']:,} items, "
          f"{gen['bytes'] / 1e9:.2f} GB of Parquet ({gen['seconds']} s)", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()
    print(f"ingesting (memory limit {a.memory_limit}) ...", flush=True)
    ing = run_child("ingest", a, out)
    rep = ing.pop("report")
    sizes = artifact_sizes(out)
    kept = rep["counts"]["train"]["events"] + rep["counts"]["test"]["events"]
    result = {
        "kind": "MEASURED", "what": "gru4rec ingest (DuckDB, out of core) vs pd.read_parquet + preprocess + "
                                    "SessionData.from_pandas", "command": " ".join([os.path.basename(sys.argv[0])]
                                                                                  + (argv or sys.argv[1:])),
        "machine": machine(), "load_average_before": load_before, "generated": gen,
        "ingest": {**ing, "memory_limit": a.memory_limit, "threads": a.threads, "stages_s": rep["seconds"],
                   "counts": rep["counts"], "filter_passes": rep["filter_passes"], "work_bytes_at_end":
                   rep.get("work_bytes"), "events_per_s": gen["events"] / ing["wall_s"],
                   "peak_rss_gb": ing["peak_rss"] / 1e9, "peak_work_dir_bytes_per_event":
                   ing["peak_work_dir_bytes"] / gen["events"]},
        "artifacts": {"bytes": sizes, "total_bytes": sum(sizes.values()),
                      "bytes_per_raw_event": sum(sizes.values()) / gen["events"],
                      "bytes_per_kept_event": sum(sizes.values()) / kept},
    }
    print(f"  {ing['wall_s']:.1f} s, peak RSS {ing['peak_rss'] / 1e9:.2f} GB (ru_maxrss {ing['ru_maxrss'] / 1e9:.2f}"
          f" GB), work dir peak {ing['peak_work_dir_bytes'] / 1e9:.2f} GB, stages {rep['seconds']}", flush=True)
    per_event = a.in_memory_bytes_per_event
    if per_event is None:  # the in-memory path's peak per event measured at 10^7, if that ran here
        try:
            with open(os.path.join(HERE, "results", "ingest_1e7.json")) as f:
                per_event = json.load(f)["in_memory"]["peak_bytes_per_event"]
        except (OSError, KeyError, ValueError):
            per_event = 200.0
    est = per_event * gen["events"]
    avail = result["machine"].get("available_ram_bytes", 0)
    if a.no_in_memory:
        result["in_memory"] = {"skipped": "--no-in-memory"}
    elif est > avail / 2:
        result["in_memory"] = {"skipped": f"estimated peak {est / 1e9:.1f} GB ({per_event:.0f} B/event) exceeds "
                                          f"half the available {avail / 1e9:.1f} GB"}
    else:
        print("in-memory path ...", flush=True)
        mem = run_child("in-memory", a, out)
        mem["peak_rss_gb"] = mem["peak_rss"] / 1e9
        mem["peak_bytes_per_event"] = (mem["peak_rss"] - mem["baseline_rss"]) / gen["events"]
        result["in_memory"] = mem
        result["ingest_vs_in_memory"] = {"wall_ratio": ing["wall_s"] / mem["wall_s"],
                                         "peak_rss_ratio": ing["peak_rss"] / mem["peak_rss"]}
        print(f"  {mem['wall_s']:.1f} s, peak RSS {mem['peak_rss'] / 1e9:.2f} GB, artifacts equal: "
              f"{mem.get('artifacts_equal')}", flush=True)
    result["load_average_after"] = os.getloadavg()
    path = a.out or os.path.join(HERE, "results", f"ingest_{tag}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
