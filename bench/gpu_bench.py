"""GPU benchmark: gru4rec_kernels' cuda backend vs a plain eager PyTorch step, W1-W3, plus all-item evaluation.

MEASURED on a real GPU (never the CUDA simulator). Without a usable GPU (cupy + numba.cuda + a device) it prints
"no GPU: skipped (<reason>)" and exits 0, so it can sit in any script.

For each workload (the same as bench/roofline.py's MODEL):
    W1: B=32,  H=100, S=2048, cross-entropy, constrained embedding, N=37,483 items
    W2: B=48,  H=480, S=2048, cross-entropy, constrained
    W3: B=128, H=512, S=2048, bpr-max (elu-1, bpreg 0.9), constrained
it first checks correctness on its own inputs (a few steps of the cuda backend and of the torch step against the
numpy reference backend, same parameters and schedule), then, after a warm-up chunk (compilation, graph capture),
times ``CudaBackend.train_chunk`` over a random schedule chunk of T steps with CUDA events (and the wall clock), and
the PyTorch step over the same chunk. Then all-item evaluation: ``CudaBackend.reset_eval`` / ``eval_step`` over
100k events against 700k items (H=100), and the same in PyTorch.

Run:   python bench/gpu_bench.py [--workloads W1 W2 W3] [--steps 1024] [--repeats 5] [--no-torch]
                                 [--eval-items 700000 --eval-events 100000 --eval-batch 512] [--out PATH]
Writes bench/results/gpu_bench_<device>.json (device, git commit, versions, per-workload timings; ``us_per_step``:
the cuda backend's median µs per step of each workload, beside ``model_us_per_step``, the roofline MODEL's).
Exit 1 if a correctness check fails (timings are still written).
torch is optional and imported lazily (pip install torch); cupy comes with the gpu extra.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def _load(name: str, path: Path):
    """A module from a file of bench/ (bench/ is scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


WORKLOADS = {
    "W1": dict(B=32, H=100, S=2048, loss="cross-entropy", final_act="linear", bpreg=1.0),
    "W2": dict(B=48, H=480, S=2048, loss="cross-entropy", final_act="linear", bpreg=1.0),
    "W3": dict(B=128, H=512, S=2048, loss="bpr-max", final_act="elu-1", bpreg=0.9),
}
N_ITEMS = 37_483
CHECK_STEPS = 3
CHECK_RTOL = 2e-3  # float32 step losses vs the float32 numpy reference
TORCH_DEVICE = "cuda"


# --------------------------------------------------------------------------------------------- environment
def gpu_status() -> tuple[bool, str]:
    """(usable, reason). The CUDA simulator does not count: this script measures a real device; otherwise the
    library's own probe (cupy, a device, numba.cuda)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False, "NUMBA_ENABLE_CUDASIM is set (the simulator is not a GPU)"
    try:
        from gru4rec_kernels.backends import cuda_usable
    except Exception as e:
        return False, f"gru4rec_kernels is not importable ({type(e).__name__}: {e})"
    return cuda_usable()


def git_info() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def device_info() -> dict:
    import cupy
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None
    return {
        "name": name, "compute_capability": f"{props['major']}.{props['minor']}",
        "sm_count": props["multiProcessorCount"], "memory_bytes": props["totalGlobalMem"],
        "driver": cupy.cuda.runtime.driverGetVersion(), "runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cupy": cupy.__version__, "numba_cuda": version("numba-cuda"), "torch": version("torch"),
    }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# --------------------------------------------------------------------------------------------- inputs
def make_cfg(w: dict, **kw):
    from gru4rec_kernels.config import TrainConfig
    return TrainConfig(layers=[w["H"]], loss=w["loss"], final_act=w["final_act"], bpreg=w["bpreg"],
                       batch_size=w["B"], n_sample=w["S"], constrained_embedding=True, embedding=0,
                       learning_rate=0.05, momentum=0.0, **kw)


def random_schedule(T: int, B: int, S: int, N: int, seed: int, reset_p: float = 0.1, ids: str = "zipf") -> dict:
    """A random session-parallel chunk: inputs / targets / active / reset [T, B], samples [T, S].

    ids "zipf" (default): items drawn like real click data, inputs and targets from a Zipf (s = 1) popularity
    over a random permutation of the items, samples from popularity^0.5 as the sampler does (duplicate ids:
    what the sparse update pays for on real data); "uniform": every item equally likely (few duplicates)."""
    rng = np.random.default_rng(seed)
    reset = rng.random((T, B)) < reset_p
    reset[0] = True
    if ids == "uniform":
        draw = lambda p, shape: rng.integers(0, N, shape, dtype=np.int32)  # noqa: E731
    elif ids == "zipf":
        pop = rng.permutation(1.0 / np.arange(1, N + 1))
        draw = lambda p, shape: rng.choice(N, shape, p=pop ** p / (pop ** p).sum()).astype(np.int32)  # noqa: E731
    else:
        raise ValueError(f"ids must be 'zipf' or 'uniform'; got {ids!r}")
    return {"inputs": draw(1.0, (T, B)), "targets": draw(1.0, (T, B)), "active": np.ones((T, B), dtype=bool),
            "reset": reset, "samples": draw(0.5, (T, S))}


def _sched_args(s: dict):
    return s["inputs"], s["targets"], s["active"], s["reset"], s["samples"]


# --------------------------------------------------------------------------------------------- timing
class Timer:
    """CUDA events on the default stream around a call, plus the wall clock. The calls timed here return host
    arrays (train_chunk's losses, eval_step's counts), so their work has finished when the end event is recorded,
    whatever stream the backend uses: the figure is end-to-end throughput, host work included."""

    def __init__(self):
        import cupy
        self.cupy = cupy

    def __call__(self, fn):
        cp = self.cupy
        cp.cuda.runtime.deviceSynchronize()
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        t0 = time.perf_counter()
        e0.record(cp.cuda.Stream.null)
        out = fn()
        e1.record(cp.cuda.Stream.null)
        e1.synchronize()
        cp.cuda.runtime.deviceSynchronize()
        wall = time.perf_counter() - t0
        return out, cp.cuda.get_elapsed_time(e0, e1) * 1e-3, wall


def _stats(per_step_s: list[float]) -> dict:
    a = np.asarray(per_step_s)
    return {"us_per_step_median": float(np.median(a) * 1e6), "us_per_step_min": float(a.min() * 1e6),
            "us_per_step_all": [float(x * 1e6) for x in a], "steps_per_s": float(1.0 / np.median(a))}


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


# --------------------------------------------------------------------------------------------- training
def check_workload(name: str, w: dict, torch_mod) -> dict:
    """Step losses of the cuda backend (and the torch step) vs the numpy reference backend on the same inputs."""
    from gru4rec_kernels.backends.cuda import CudaBackend
    from gru4rec_kernels.backends.numpy import NumpyBackend
    from gru4rec_kernels.layout import init_params

    cfg = make_cfg(w)
    s = random_schedule(CHECK_STEPS, w["B"], w["S"], N_ITEMS, seed=7)
    _, params = init_params(cfg, N_ITEMS)
    ref = NumpyBackend(cfg, N_ITEMS, {k: v.copy() for k, v in params.items()})
    ref_losses = ref.train_chunk(*_sched_args(s), 0)
    ref_params = ref.get_params()
    out = {"steps": CHECK_STEPS, "reference_losses": [float(x) for x in ref_losses]}
    be = CudaBackend(cfg, N_ITEMS, {k: v.copy() for k, v in params.items()})
    try:
        got = be.train_chunk(*_sched_args(s), 0)
        got_params = be.get_params()
    finally:
        be.close()
    out["cuda_losses"] = [float(x) for x in got]
    out["cuda_loss_rel_err"] = _rel_err(got, ref_losses)
    out["cuda_param_max_abs_err"] = max(float(np.max(np.abs(got_params[k] - ref_params[k]))) for k in ref_params)
    out["cuda_ok"] = bool(out["cuda_loss_rel_err"] <= CHECK_RTOL and out["cuda_param_max_abs_err"] <= 1e-3)
    if torch_mod is not None:
        m = torch_mod.TorchGRU4Rec({k: v.copy() for k, v in params.items()}, cfg, device=TORCH_DEVICE)
        tl = m.train_chunk(*_sched_args(s)).cpu().numpy()
        tp = m.get_params()
        out["torch_losses"] = [float(x) for x in tl]
        out["torch_loss_rel_err"] = _rel_err(tl, ref_losses)
        out["torch_param_max_abs_err"] = max(float(np.max(np.abs(tp[k] - ref_params[k]))) for k in ref_params)
        out["torch_ok"] = bool(out["torch_loss_rel_err"] <= CHECK_RTOL and out["torch_param_max_abs_err"] <= 1e-3)
    return out


def bench_workload(name: str, w: dict, steps: int, repeats: int, torch_mod, timer: Timer, ids: str = "zipf") -> dict:
    from gru4rec_kernels.backends.cuda import CudaBackend
    from gru4rec_kernels.layout import init_params

    cfg = make_cfg(w)
    _, params = init_params(cfg, N_ITEMS)
    s = random_schedule(steps, w["B"], w["S"], N_ITEMS, seed=11, ids=ids)
    res: dict = {"config": cfg.to_dict(), "n_items": N_ITEMS, "steps_per_chunk": steps, "repeats": repeats,
                 "ids": ids}

    be = CudaBackend(cfg, N_ITEMS, {k: v.copy() for k, v in params.items()})
    try:
        t0 = time.perf_counter()
        be.train_chunk(*_sched_args(s), 0)  # compile, allocate, capture
        warmup = time.perf_counter() - t0
        ev, wall = [], []
        for r in range(repeats):
            losses, t_ev, t_wall = timer(lambda r=r: be.train_chunk(*_sched_args(s), (r + 1) * steps))
            ev.append(t_ev / steps)
            wall.append(t_wall / steps)
        res["gru4rec_kernels"] = _stats(ev) | {"wall_us_per_step_median": float(np.median(wall) * 1e6),
                                               "warmup_s": warmup, "last_loss": float(np.asarray(losses)[-1])}
    finally:
        be.close()

    if torch_mod is not None:
        import torch
        m = torch_mod.TorchGRU4Rec({k: v.copy() for k, v in params.items()}, cfg, device=TORCH_DEVICE)
        up = m.upload_chunk(*_sched_args(s))
        warm = min(steps, 20)
        m.train_chunk(None, None, None, None, None, uploaded=tuple(a[:warm] for a in up))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ev, wall = [], []
        for _ in range(repeats):
            losses, t_ev, t_wall = timer(lambda: m.train_chunk(None, None, None, None, None, uploaded=up).cpu())
            ev.append(t_ev / steps)
            wall.append(t_wall / steps)
        res["torch_eager"] = _stats(ev) | {"wall_us_per_step_median": float(np.median(wall) * 1e6),
                                           "last_loss": float(losses[-1])}
        res["speedup_vs_torch"] = (res["torch_eager"]["us_per_step_median"]
                                   / res["gru4rec_kernels"]["us_per_step_median"])
        del m
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------------------------- evaluation
def bench_eval(n_items: int, n_events: int, batch: int, torch_mod, timer: Timer) -> dict:
    from gru4rec_kernels.backends.cuda import CudaBackend
    from gru4rec_kernels.layout import init_params

    cfg = make_cfg(dict(B=batch, H=100, S=0, loss="cross-entropy", final_act="linear", bpreg=1.0))
    _, params = init_params(cfg, n_items)
    n_steps = math.ceil(n_events / batch)
    rng = np.random.default_rng(5)
    X = rng.integers(0, n_items, (n_steps, batch), dtype=np.int32)
    T = rng.integers(0, n_items, (n_steps, batch), dtype=np.int32)
    reset = rng.random((n_steps, batch)) < 0.2
    reset[0] = True
    active = np.ones(batch, dtype=bool)
    res = {"n_items": n_items, "n_events": n_events, "batch": batch, "steps": n_steps, "H": 100}

    be = CudaBackend(cfg, n_items, params)
    try:
        be.reset_eval(batch)
        be.eval_step(X[0], T[0], reset[0], active)  # warm-up: compile
        be.reset_eval(batch)

        def run():
            total = 0
            for t in range(n_steps):
                gt, _ = be.eval_step(X[t], T[t], reset[t], active)
                total += int(gt[0])
            return total
        _, t_ev, t_wall = timer(run)
        res["gru4rec_kernels"] = {"seconds": t_wall, "seconds_events": t_ev, "events_per_s": n_events / t_wall}
    finally:
        be.close()

    if torch_mod is not None:
        import torch
        m = torch_mod.TorchGRU4Rec(params, cfg, device=TORCH_DEVICE)
        Xt = torch.as_tensor(X, dtype=torch.int64, device=TORCH_DEVICE)
        Tt = torch.as_tensor(T, dtype=torch.int64, device=TORCH_DEVICE)
        Rt = torch.as_tensor(reset, device=TORCH_DEVICE)
        h = torch.zeros(batch, 100, device=TORCH_DEVICE)
        m.eval_counts(h, Xt[0], Tt[0], Rt[0])

        def run_torch():
            hh = torch.zeros(batch, 100, device=TORCH_DEVICE)
            counts = []
            for t in range(n_steps):
                hh, gt, _ = m.eval_counts(hh, Xt[t], Tt[t], Rt[t])
                counts.append(gt)
            return torch.stack(counts).cpu()
        _, t_ev, t_wall = timer(run_torch)
        res["torch_eager"] = {"seconds": t_wall, "seconds_events": t_ev, "events_per_s": n_events / t_wall}
        del m
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------------------------- main
def load_torch_peer(disabled: bool):
    if disabled:
        return None, "disabled (--no-torch)"
    try:
        import torch
        if not torch.cuda.is_available():
            return None, "torch is installed but torch.cuda.is_available() is False"
        torch_step = _load("gru4rec_bench_torch_step", REPO / "bench" / "peers" / "torch_step.py")
        return torch_step, f"torch {torch.__version__}"
    except ImportError as e:
        return None, f"torch is not installed ({e}); pip install torch to time the PyTorch peer"


def model_prediction(ids: str = "zipf") -> dict:
    """The roofline MODEL's µs per step for the tree being measured, to print beside the measurement. The model
    traces the step in the CUDA simulator, which cannot share a process with a real GPU: a subprocess."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "roofline.json"
            env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
            subprocess.run([sys.executable, str(REPO / "bench" / "roofline.py"), "--ids", ids, "--out", str(out)],
                           env=env, check=True, capture_output=True, timeout=300)
            m = json.loads(out.read_text())
        return {n: wr["step_s"] * 1e6 for n, wr in m["workloads"].items()} | {"ids": ids, "label": m["label"]}
    except Exception as e:  # the model is a bonus next to the measurement
        return {"error": str(e)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time gru4rec_kernels' cuda backend against eager PyTorch on a GPU.")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--steps", type=int, default=1024, help="steps per timed chunk (default 1024)")
    ap.add_argument("--repeats", type=int, default=5, help="timed chunks per workload (median reported)")
    ap.add_argument("--ids", choices=["zipf", "uniform"], default="zipf",
                    help="item ids of the timed steps: zipf (like real clicks, default) or uniform")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check against the reference")
    ap.add_argument("--no-eval", action="store_true", help="skip the all-item evaluation benchmark")
    ap.add_argument("--eval-items", type=int, default=700_000)
    ap.add_argument("--eval-events", type=int, default=100_000)
    ap.add_argument("--eval-batch", type=int, default=512)
    ap.add_argument("--out", type=Path, help="JSON output (default: bench/results/gpu_bench_<device>.json)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.eval_batch < 1:
        ap.error("--steps, --repeats and --eval-batch must be >= 1")

    ok, why = gpu_status()
    if not ok:
        print(f"gpu_bench: no GPU: skipped ({why})")
        return 0
    torch_mod, torch_note = load_torch_peer(args.no_torch)
    dev = device_info()
    result = {"label": "MEASURED", "device": dev, "git": git_info(),
              "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "args": {k: str(v) for k, v in vars(args).items()}, "torch_peer": torch_note,
              "us_per_step": {}, "model_us_per_step": model_prediction(args.ids), "workloads": {}, "errors": []}
    print(f"gpu_bench: {dev['name']} (cc {dev['compute_capability']}), commit {result['git']['commit']}"
          f"{' (dirty)' if result['git']['dirty'] else ''}; torch peer: {torch_note}")
    timer = Timer()
    failed = False
    for name in args.workloads:
        w = WORKLOADS[name]
        entry: dict = {}
        try:
            if not args.no_check:
                entry["check"] = c = check_workload(name, w, torch_mod)
                failed |= not c["cuda_ok"] or not c.get("torch_ok", True)
                print(f"  {name} check vs the numpy reference: cuda loss rel err {c['cuda_loss_rel_err']:.2e} "
                      f"({'ok' if c['cuda_ok'] else 'MISMATCH'})"
                      + (f", torch {c['torch_loss_rel_err']:.2e} ({'ok' if c['torch_ok'] else 'MISMATCH'})"
                         if "torch_ok" in c else ""))
            entry |= bench_workload(name, w, args.steps, args.repeats, torch_mod, timer, ids=args.ids)
            g = entry["gru4rec_kernels"]
            result["us_per_step"][name] = g["us_per_step_median"]
            line = f"  {name}: gru4rec_kernels {g['us_per_step_median']:8.1f} us/step ({g['steps_per_s']:,.0f} steps/s)"
            if "torch_eager" in entry:
                t = entry["torch_eager"]
                line += (f" | torch eager {t['us_per_step_median']:8.1f} us/step ({t['steps_per_s']:,.0f} steps/s)"
                         f" | speedup {entry['speedup_vs_torch']:.1f}x")
            model = result["model_us_per_step"].get(name)
            if isinstance(model, float):
                line += f" | MODEL {model:.1f} us"
            print(line)
        except Exception as e:
            failed = True
            entry["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            result["errors"].append(f"{name}: {type(e).__name__}: {e}")
            print(f"  {name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        result["workloads"][name] = entry
    if not args.no_eval:
        try:
            ev = bench_eval(args.eval_items, args.eval_events, args.eval_batch, torch_mod, timer)
            result["eval"] = ev
            line = (f"  eval {ev['n_events']:,} events x {ev['n_items']:,} items (batch {ev['batch']}): "
                    f"gru4rec_kernels {ev['gru4rec_kernels']['seconds']:.3f} s")
            if "torch_eager" in ev:
                line += f" | torch eager {ev['torch_eager']['seconds']:.3f} s"
            print(line)
        except Exception as e:
            failed = True
            result["eval"] = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
            result["errors"].append(f"eval: {type(e).__name__}: {e}")
            print(f"  eval: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
    out = args.out or RESULTS / f"gpu_bench_{_slug(dev['name'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
