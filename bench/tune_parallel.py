"""Trial-parallel tuning: wall time of ``gru4rec tune --n-jobs 2`` against the serial run, for the same trials.

- Data: rsc15_100k (``train_tr`` to train, ``train_valid`` to score) from ``$GRU4REC_DATA`` (default
  ../shared/data beside the repository); without it the bench says so and exits 0.
- Search: the random sampler with one seed, so both runs evaluate the same configs (the bench checks it: same
  config per trial number, same best config) and the comparison is like for like. The cpu backend.
- Each run is a fresh ``gru4rec tune`` process (the CLI), timed from start to exit: both include the start-up
  (imports, loading the compiled kernels from Numba's cache), which the parallel run pays once per worker, and
  the parallel run also saves the two splits once for its workers to map. The Numba cache is warmed first by
  an untimed one-trial run.
- What a parallel run can gain on C cores: the serial run gives one trial all C Numba threads, the parallel one
  gives each of 2 workers C / 2; trials that do not scale to all cores (small models, the Python and evaluation
  parts) gain, ones that do gain nothing. On a machine busy with other jobs, a parallel region's threads also
  wait for whichever of them was descheduled, which single-threaded workers never do; the control run (serial,
  with a worker's share of the threads) separates that from the trial parallelism.

    python bench/tune_parallel.py                 # 8 trials, 2 workers (a few minutes on 2 busy cores)
    python bench/tune_parallel.py --n-trials 12 --n-jobs 2
    python bench/tune_parallel.py --search official  # the official space's shape: trials of several seconds

Writes bench/results/tune_parallel_rsc15.json (MEASURED, with the machine's cores and its load average before
and after: on a shared machine the figure moves with the other load).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAIN = "rsc15_100k_sessionrec/yoochoose-clicks-100k_train_tr.txt.gz"
VALID = "rsc15_100k_sessionrec/yoochoose-clicks-100k_train_valid.txt.gz"
# Searches. "small": trials of ~0.5 s, shorter than a worker's start-up (a floor for the overhead). "official": the
# official rsc15 cross-entropy paramspace's shape (H 100, 2,048 samples, logQ, dropout and momentum searched,
# 3 epochs): trials of several seconds, what a real 100-200 trial search runs.
SEARCHES = {
    "small": ({"learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
               "layers": {"type": "categorical", "choices": [[32], [64]]},
               "momentum": {"type": "float", "low": 0.0, "high": 0.5},
               "loss": "cross-entropy", "n_epochs": 1},
              ["--batch-size", "32", "--n-sample", "256", "--backend", "cpu"]),
    "official": ({"learning_rate": {"type": "float", "low": 0.05, "high": 0.4, "log": True},
               "momentum": {"type": "float", "low": 0.0, "high": 0.5},
               "dropout_p_hidden": {"type": "float", "low": 0.0, "high": 0.5},
               "logq": {"type": "categorical", "choices": [0.0, 1.0]},
               "layers": [100], "loss": "cross-entropy", "n_epochs": 3},
              ["--batch-size", "32", "--n-sample", "2048", "--backend", "cpu"]),
}
SPACE, BASE = SEARCHES["small"]


def data_dir() -> str:
    return os.environ.get("GRU4REC_DATA") or os.path.join(ROOT, "..", "shared", "data")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_tune(work: str, name: str, n_trials: int, n_jobs: int, seed: int, threads: int | None = None) -> dict:
    """One `gru4rec tune` process; its wall time and the trials it wrote. ``threads``: cap its thread pools."""
    out, trials = os.path.join(work, f"{name}.best.json"), os.path.join(work, f"{name}.trials.json")
    cmd = [sys.executable, "-m", "gru4rec_kernels.cli", "tune", "--train", os.path.join(data_dir(), TRAIN),
           "--valid", os.path.join(data_dir(), VALID), "--space", json.dumps(SPACE), "--out", out,
           "--trials-json", trials, "--n-trials", str(n_trials), "--n-jobs", str(n_jobs), "--sampler", "random",
           "--tune-seed", str(seed), "--work-dir", work, *BASE]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads is not None:
        env.update({v: str(threads) for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    load0 = load_average()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name}: gru4rec tune failed ({r.returncode}):\n{r.stderr[-3000:]}")
    with open(trials) as f:
        res = json.load(f)
    return {"n_jobs": n_jobs, "threads": threads, "wall_s": round(wall, 2), "load_average_before": load0,
            "load_average_after": load_average(),
            "trial_seconds_sum": round(sum(t.get("seconds", 0.0) for t in res["trials"]), 2),
            "best_value": res["best_value"], "best_config": res["best_config"], "trials": res["trials"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-trials", type=int, default=8)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search", choices=sorted(SEARCHES), default="small",
                    help="small: ~0.5 s trials (start-up dominates); official: the official rsc15 space's shape, "
                         "trials of several seconds")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the control run: serial with a worker's share of the threads, which tells how much "
                         "of the speed-up is trial parallelism and how much is threads scaling badly")
    ap.add_argument("--out", default=None,
                    help="default bench/results/tune_parallel_rsc15.json (small) or tune_parallel_rsc15_<search>.json")
    args = ap.parse_args()
    global SPACE, BASE
    SPACE, BASE = SEARCHES[args.search]
    if args.out is None:
        name = "tune_parallel_rsc15.json" if args.search == "small" else f"tune_parallel_rsc15_{args.search}.json"
        args.out = os.path.join(HERE, "results", name)
    if not all(os.path.exists(os.path.join(data_dir(), p)) for p in (TRAIN, VALID)):
        print(f"skipped: rsc15_100k not found under {data_dir()} (set GRU4REC_DATA)")
        return 0
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("skipped: optuna is not installed (pip install 'gru4rec-kernels[tune]')")
        return 0
    from gru4rec_kernels.tune import usable_cores
    cores = usable_cores()
    if args.n_jobs > cores:
        raise SystemExit(f"--n-jobs {args.n_jobs} is more than the {cores} usable cores")
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as work:
        print("warming Numba's cache (one untimed trial) ...", flush=True)
        run_tune(work, "warm", 1, 1, args.seed)
        print(f"serial: {args.n_trials} trials ...", flush=True)
        serial = run_tune(work, "serial", args.n_trials, 1, args.seed)
        print(f"  {serial['wall_s']} s", flush=True)
        print(f"parallel: {args.n_trials} trials, {args.n_jobs} workers ...", flush=True)
        parallel = run_tune(work, "parallel", args.n_trials, args.n_jobs, args.seed)
        print(f"  {parallel['wall_s']} s", flush=True)
        one = None
        if not args.no_control:
            print(f"control: serial, {cores // args.n_jobs} thread(s) (a worker's share) ...", flush=True)
            one = run_tune(work, "serial_1", args.n_trials, 1, args.seed, threads=cores // args.n_jobs)
            print(f"  {one['wall_s']} s", flush=True)
    # the bench's own check: the same trials were run, and they scored the same
    key = lambda r: {t["number"]: json.dumps(t["params"], sort_keys=True) for t in r["trials"]}
    same_configs = key(serial) == key(parallel)
    if one is not None:
        same_configs = same_configs and key(one) == key(serial)
    if not same_configs or serial["best_config"] != parallel["best_config"]:
        raise SystemExit("the serial and the parallel run evaluated different configs: not comparable")
    values = {t["number"]: t["value"] for t in serial["trials"]}
    rel = max(abs(t["value"] - values[t["number"]]) / max(abs(values[t["number"]]), 1e-12)
              for r in (parallel, one or parallel) for t in r["trials"])
    speedup = serial["wall_s"] / parallel["wall_s"]
    result = {
        "label": "MEASURED",
        "search": args.search,
        "what": f"gru4rec tune, {args.n_trials} trials of the random sampler (seed {args.seed}), serial vs "
                f"--n-jobs {args.n_jobs}; wall time of a fresh CLI process each, start-up included",
        "data": {"train": TRAIN, "valid": VALID},
        "space": SPACE, "base_options": BASE,
        "machine": {"usable_cores": cores, "cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version(),
                    "note": "2 cores shared with other jobs: the load average shows how busy it was"},
        "serial": {k: v for k, v in serial.items() if k != "trials"},
        "parallel": {k: v for k, v in parallel.items() if k != "trials"},
        "speedup_wall": round(speedup, 3),
        "control_serial_worker_threads": None if one is None else {k: v for k, v in one.items() if k != "trials"},
        "speedup_wall_vs_control": None if one is None else round(one["wall_s"] / parallel["wall_s"], 3),
        "same_configs_and_best": True,
        "max_rel_value_diff": rel,
        "trials": {"serial": serial["trials"], "parallel": parallel["trials"],
                   "control": None if one is None else one["trials"]},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"serial {serial['wall_s']} s, {args.n_jobs} workers {parallel['wall_s']} s: speed-up x{speedup:.2f} "
          f"(same configs; values differ by at most {rel:.1e} relative); load average "
          f"{serial['load_average_before']} -> {parallel['load_average_after']}")
    if one is not None:
        print(f"control: serial with {one['threads']} thread(s) {one['wall_s']} s "
              f"(x{one['wall_s'] / parallel['wall_s']:.2f} for the parallel run against it)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
