"""Every kernel of the cuda training step, checked and then timed at full size, in the manner of llm.c's dev/cuda.

The kernels are taken from the step as built (CudaBackend._step), not from a hand-kept list: a hook around Numba's
kernel launch sees every launch of a real step with its real operands. Per workload (bench/roofline.py's W1-W3,
ids drawn like real clicks: Zipf inputs/targets, popularity^0.5 samples):

1. check, whole step: CHECK_STEPS steps of the cuda backend against the numpy backend (float32) on the same
   chunk: losses and every parameter. Every kernel of the step runs here at its full shape.
2. check, per launch: every GEMM launch (single, split-K or grouped: the family whose grids, splits and tickets
   change with the shape) against numpy on that launch's own operands, snapshotted just before it ran.
3. time, per launch: CUDA events around each launch of eager steps (median over REPEATS steps), beside the
   roofline MODEL's prediction for the same launch (same order, same name), and the step as a replayed CUDA graph
   (train_chunk) for the node overhead the per-launch sum does not see.

On a machine without a usable GPU it prints "no GPU: skipped" and exits 0. ``--sim`` runs the same code in the
CUDA simulator at tiny shapes (checks only: the simulator's wall clock says nothing about a GPU), which is how
tests/test_kernel_bench.py exercises it.

Run:  python bench/kernel_bench.py [--workloads W1 W2 W3] [--repeats 20] [--out bench/results/kernel_bench.json]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHECK_STEPS = 3
LOSS_RTOL = 1e-4  # float32 step against the float32 numpy backend, summed in other orders
PARAM_ATOL = 1e-3
GEMM_RTOL = 1e-4  # |C - A B| <= GEMM_RTOL * (|A| |B|): the float32 error bound of a K-term sum, with margin


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def gpu_usable() -> tuple[bool, str]:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False, "NUMBA_ENABLE_CUDASIM=1 (the simulator): use --sim"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "no CUDA device"
    except Exception as e:  # cupy missing, no driver
        return False, f"cupy / CUDA unavailable ({type(e).__name__}: {e})"
    return True, "ok"


# ============================================================================================ the launch hook
class LaunchHook:
    """Wraps every kernel launch (real GPU: numba's _LaunchConfiguration; simulator: FakeCUDAKernel) with
    ``before(name, args)`` / ``after(name, args, token)`` callbacks."""

    def __init__(self, before, after, sim: bool):
        self.before, self.after, self.sim = before, after, sim

    def __enter__(self):
        if self.sim:
            from numba.cuda.simulator import kernel as simk

            self._cls, attr = simk.FakeCUDAKernel, "__call__"
            orig = self._cls.__call__
            before, after = self.before, self.after

            def call(kern, *args):
                if kern._device or simk._kernel_context:
                    return orig(kern, *args)
                tok = before(kern.fn.__name__, args)
                out = orig(kern, *args)
                after(kern.fn.__name__, args, tok)
                return out
        else:  # pragma: no cover - needs a GPU
            from numba.cuda import dispatcher

            self._cls, attr = dispatcher._LaunchConfiguration, "__call__"
            orig = self._cls.__call__
            before, after = self.before, self.after

            def call(cfg, *args):
                name = cfg.dispatcher.py_func.__name__
                tok = before(name, args)
                out = orig(cfg, *args)
                after(name, args, tok)
                return out
        self._orig = orig
        setattr(self._cls, attr, call)
        return self

    def __exit__(self, *exc):
        self._cls.__call__ = self._orig
        return False


def _host(a) -> np.ndarray:
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if hasattr(a, "get"):
        return a.get()
    return np.array(a, copy=True)


def _gemm_products(name: str, args) -> list:
    """[(C, A, B, ta, tb, accumulate)] of a GEMM launch (single or grouped), operands as launched."""
    from gru4rec_kernels.kernels import gemm as kgm

    if name == "gemm_grouped":
        Cs, As, Bs, desc = args[0], args[1], args[2], _host(args[3])
        out = []
        for p in range(len(Cs)):
            d = desc[p * kgm._ND:(p + 1) * kgm._ND]
            if d[kgm._END] > d[kgm._START]:
                f = int(d[kgm._FLAGS])
                out.append((Cs[p], As[p], Bs[p], bool(f & kgm._TA), bool(f & kgm._TB), bool(f & kgm._ACC)))
        return out
    return [(args[0], args[1], args[2], name == "gemm_tn", name == "gemm_nt", bool(int(args[3])))]


class GemmChecker:
    """Snapshots each GEMM launch's operands and checks its result against numpy (float64)."""

    def __init__(self):
        self.results: list[dict] = []

    def before(self, name, args):
        if not name.startswith("gemm"):
            return None
        return [(C, _host(A), _host(B), ta, tb, acc, _host(C) if acc else None)
                for C, A, B, ta, tb, acc in _gemm_products(name, args)]

    def after(self, name, args, snap):
        if snap is None:
            return
        for C, A, B, ta, tb, acc, C0 in snap:
            a = A.T if ta else A
            b = B.T if tb else B
            want = a.astype(np.float64) @ b.astype(np.float64)
            bound = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
            if acc:
                want += C0
                bound += np.abs(C0)
            got = _host(C).astype(np.float64)
            err = np.abs(got - want)
            ratio = float(np.max(err / np.maximum(bound, 1e-30))) if err.size else 0.0
            self.results.append({"kernel": name, "shape": [int(v) for v in want.shape] + [int(a.shape[1])],
                                 "ta": ta, "tb": tb, "accumulate": acc, "max_rel_to_bound": ratio,
                                 "ok": bool(ratio <= GEMM_RTOL)})


class LaunchTimer:
    """Per launch: CUDA events on the backend's stream (GPU) or the wall clock (simulator: meaningless)."""

    def __init__(self, stream, sim: bool):
        self.stream, self.sim = stream, sim
        self.records: list = []

    def before(self, name, args):
        if self.sim:
            return time.perf_counter()
        import cupy  # pragma: no cover - needs a GPU

        e = cupy.cuda.Event()  # pragma: no cover
        e.record(self.stream)  # pragma: no cover
        return e  # pragma: no cover

    def after(self, name, args, t0):
        if self.sim:
            self.records.append((name, time.perf_counter() - t0))
            return
        import cupy  # pragma: no cover - needs a GPU

        e1 = cupy.cuda.Event()  # pragma: no cover
        e1.record(self.stream)  # pragma: no cover
        self.records.append((name, (t0, e1)))  # pragma: no cover

    def seconds(self) -> list:
        if self.sim:
            return self.records
        import cupy  # pragma: no cover - needs a GPU

        self.records[-1][1][1].synchronize()  # pragma: no cover
        return [(n, cupy.cuda.get_elapsed_time(e0, e1) * 1e-3) for n, (e0, e1) in self.records]  # pragma: no cover


# ============================================================================================ per workload
def _chunk(w, T: int, seed: int):
    rl = sys.modules["kb_roofline"]
    steps = [rl.step_ids(w, "zipf", seed=seed + t) for t in range(T)]
    X = np.stack([s["X"] for s in steps]).astype(np.int32)
    Y = np.stack([s["Y"] for s in steps]).astype(np.int32)
    smp = np.stack([s["samples"] for s in steps]).astype(np.int32)
    reset = np.zeros_like(X, bool)
    reset[0] = True
    return X, Y, np.ones_like(X, bool), reset, smp


def bench_workload(w, repeats: int, sim: bool) -> dict:
    from gru4rec_kernels.backends.cuda import CudaBackend
    from gru4rec_kernels.backends.numpy import NumpyBackend
    from gru4rec_kernels.layout import init_params

    cfg = w.config()
    _, params = init_params(cfg, w.N)
    out: dict = {"workload": {k: getattr(w, k) for k in ("name", "B", "H", "S", "N", "loss", "final_act")}}
    # 1 + 2: the whole step against numpy, every GEMM launch against numpy
    chunk = _chunk(w, CHECK_STEPS, seed=1)
    ref = NumpyBackend(cfg, w.N, {k: v.copy() for k, v in params.items()})
    ref_losses = ref.train_chunk(*chunk, 0)
    ref_params = ref.get_params()
    be = CudaBackend(cfg, w.N, {k: v.copy() for k, v in params.items()}, graph_steps=0)
    checker = GemmChecker()
    try:
        with LaunchHook(checker.before, checker.after, sim):
            got = be.train_chunk(*chunk, 0)
        got_params = be.get_params()
    finally:
        be.close()
    loss_err = float(np.max(np.abs(got - ref_losses) / np.maximum(np.abs(ref_losses), 1e-12)))
    param_err = max(float(np.max(np.abs(got_params[k] - ref_params[k]))) for k in ref_params)
    out["check"] = {"steps": CHECK_STEPS, "loss_max_rel_err": loss_err, "param_max_abs_err": param_err,
                    "ok": bool(loss_err <= LOSS_RTOL and param_err <= PARAM_ATOL),
                    "gemm_launches": len(checker.results), "gemm_ok": all(r["ok"] for r in checker.results),
                    "gemm_worst": max(checker.results, key=lambda r: r["max_rel_to_bound"]) if checker.results
                    else None}
    # 3: every launch of eager steps, then the step as a graph
    T = max(repeats, 1) + 1
    chunk = _chunk(w, T, seed=100)
    be = CudaBackend(cfg, w.N, {k: v.copy() for k, v in params.items()}, graph_steps=0)
    try:
        be.train_chunk(*[a[:1] for a in chunk], 0)  # compile and allocate
        timer = LaunchTimer(be._stream, sim)
        with LaunchHook(timer.before, timer.after, sim):
            be.train_chunk(*[a[1:] for a in chunk], 1)
        recs = timer.seconds()
    finally:
        be.close()
    per_step = len(recs) // (T - 1)
    names = [n for n, _ in recs[:per_step]]
    times = np.array([t for _, t in recs], np.float64).reshape(T - 1, per_step)
    med = np.median(times, axis=0)
    out["launches"] = [{"index": i, "name": n, "us_median": float(med[i] * 1e6)} for i, n in enumerate(names)]
    out["launches_per_step"] = per_step
    out["sum_of_launches_us"] = float(med.sum() * 1e6)
    if not sim:  # pragma: no cover - needs a GPU
        be = CudaBackend(cfg, w.N, {k: v.copy() for k, v in params.items()})
        try:
            be.train_chunk(*[a[:1] for a in chunk], 0)
            import cupy

            cupy.cuda.runtime.deviceSynchronize()
            t0 = time.perf_counter()
            be.train_chunk(*[a[1:] for a in chunk], 1)
            out["graph_us_per_step"] = (time.perf_counter() - t0) / (T - 1) * 1e6
        finally:
            be.close()
    return out


def attach_model(res: dict, workloads, sim: bool) -> None:
    """The roofline MODEL's per-launch prediction beside each timed launch (matched by position and name)."""
    try:
        if sim:
            rl = sys.modules["kb_roofline"]
            models = {w.name: rl.model_step(w, rl.Device(), "zipf") for w in workloads}
        else:  # pragma: no cover - needs a GPU: the model traces in the simulator, in its own process
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "roofline.json"
                subprocess.run([sys.executable, str(REPO / "bench" / "roofline.py"), "--out", str(p),
                                "--workloads", *[w.name for w in workloads]],
                               env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), check=True, capture_output=True,
                               timeout=300)
                models = json.loads(p.read_text())["workloads"]
    except Exception as e:  # the model is a bonus beside the measurement
        res["model_error"] = f"{type(e).__name__}: {e}"
        return
    for w in workloads:
        entry, m = res["workloads"].get(w.name), models.get(w.name)
        if not entry or "launches" not in entry or not m:
            continue
        ks = m["kernels"]
        entry["model_step_us"] = m["step_s"] * 1e6
        entry["model_matches_launches"] = [k["name"] for k in ks] == [x["name"] for x in entry["launches"]]
        if entry["model_matches_launches"]:
            for x, k in zip(entry["launches"], ks):
                x["model_us"] = k["time_s"] * 1e6
                x["model_bound"] = k["bound"]


def report(res: dict) -> str:
    lines = [f"kernel_bench on {res['device']} ({'SIMULATOR: timings meaningless' if res['sim'] else 'MEASURED'})"]
    for name, e in res["workloads"].items():
        if "error" in e:
            lines.append(f"--- {name}: FAILED: {e['error']}")
            continue
        c = e["check"]
        lines.append(f"--- {name}: step check {'ok' if c['ok'] else 'FAILED'} (loss rel {c['loss_max_rel_err']:.1e}, "
                     f"param abs {c['param_max_abs_err']:.1e}); {c['gemm_launches']} GEMM launch checks "
                     f"{'ok' if c['gemm_ok'] else 'FAILED'}; {e['launches_per_step']} launches per step, sum "
                     f"{e['sum_of_launches_us']:.1f} us" + (f", as a graph {e['graph_us_per_step']:.1f} us/step"
                                                            if "graph_us_per_step" in e else "")
                     + (f"; MODEL {e['model_step_us']:.1f} us" if "model_step_us" in e else ""))
        for x in e["launches"]:
            lines.append(f"  {x['index']:>2} {x['name']:<22} {x['us_median']:10.2f} us"
                         + (f"   model {x['model_us']:8.2f} us ({x['model_bound']})" if "model_us" in x else ""))
    return "\n".join(lines)


TINY = {"B": 3, "H": 4, "S": 5, "N": 13}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Check, then time, every kernel launch of the cuda training step.")
    ap.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3"])
    ap.add_argument("--repeats", type=int, default=20, help="eager steps timed per workload (median per launch)")
    ap.add_argument("--sim", action="store_true", help="run in the CUDA simulator at tiny shapes (checks only)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kernel_bench.json")
    args = ap.parse_args(argv)
    if args.sim:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        ok, why = gpu_usable()
        if not ok:
            print(f"no GPU: skipped ({why})")
            return 0
    rl = _load("kb_roofline", REPO / "bench" / "roofline.py")
    from dataclasses import replace

    ws = [w for w in rl.WORKLOADS if w.name in args.workloads]
    if args.sim:
        ws = [replace(w, **TINY) for w in ws]
        args.repeats = min(args.repeats, 2)
        device = "CUDA simulator"
    else:  # pragma: no cover - needs a GPU
        import cupy

        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    res = {"label": "SIMULATOR (checks only)" if args.sim else "MEASURED", "device": device, "sim": args.sim,
           "workloads": {}}
    failed = False
    for w in ws:
        try:
            res["workloads"][w.name] = bench_workload(w, args.repeats, args.sim)
            c = res["workloads"][w.name]["check"]
            failed |= not (c["ok"] and c["gemm_ok"])
        except Exception as e:
            import traceback

            failed = True
            res["workloads"][w.name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    with contextlib.suppress(Exception):
        attach_model(res, ws, args.sim)
    print(report(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
