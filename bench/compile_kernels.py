"""Compile every numba.cuda kernel to PTX for sm_80 and sm_90 and run it through ``ptxas -v``.

No GPU is needed: ``numba.cuda.compile_ptx`` runs NVVM on the host, and ``ptxas`` (from the
``nvidia-cuda-nvcc`` wheel, the one that matches numba-cuda's NVVM) assembles the PTX and reports each kernel's
registers, spill stores / loads, shared memory and stack frame. A kernel that does not compile, or that ptxas
rejects, is an error; a kernel that spills is recorded (tests/test_kernels_compile.py fails on spills in the
kernels a module marks as default).

Every kernel module ``kernels/<family>.py`` exposes

    KERNELS: dict[str, tuple[pyfunc, list[str]]]   kernel name -> (undecorated function, numba signatures)
    DEFAULT_KERNELS: set[str]                      optional; the kernels the cuda backend uses by default
                                                   (absent: every kernel of the module counts as default)

Run (from the repository root, after ``pip install -e ".[test]"``):

    python bench/compile_kernels.py                          # all of kernels/*.py, sm_80 and sm_90
    python bench/compile_kernels.py --modules gru /tmp/k.py  # a family name, a dotted module, or a .py file
    python bench/compile_kernels.py --arch sm_90 --out /tmp/kernels.json

Writes ``bench/results/kernels.json``: a list of records, one per (module, kernel, signature, arch):
module, kernel, sig_index, signature, arch, default, ok, registers, spill_stores, spill_loads, smem, stack,
barriers, ptxas_version, nvvm_release, numba_version, numba_cuda_version, and on failure stage + error.

Exit status: 0 all compiled and no default kernel spills; 1 a kernel failed to import / compile / assemble;
2 the toolchain is missing (numba-cuda or the nvcc wheel's ptxas); 3 no kernel modules found;
4 everything compiled but a default kernel spills.

The CUDA simulator must be off for compile_ptx (under NUMBA_ENABLE_CUDASIM=1 ``numba.cuda`` is the simulator):
if the variable is set, the script re-runs itself in a fresh process without it.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNELS_DIR = REPO / "gru4rec_kernels" / "kernels"
DEFAULT_OUT = REPO / "bench" / "results" / "kernels.json"
ARCHS = ("sm_80", "sm_90")
# The families docs/kernels.md names, plus gemm (the step's GEMMs; cuBLAS cannot be graph-captured through
# CuPy), step (the device step counter) and the p-RNN's features and subnets; the compile test requires each.
FAMILIES = ("gru", "scores_loss", "adagrad", "embedding", "evaluate", "gemm", "step", "features", "subnets")
PACKAGE = "gru4rec_kernels.kernels"


# --------------------------------------------------------------------------------------------- toolchain
def find_ptxas() -> Path | None:
    """ptxas of the ``nvidia-cuda-nvcc`` wheel (``<site-packages>/nvidia/cu13/bin/ptxas``; cu12 wheels keep it
    under ``nvidia/cuda_nvcc/bin``). Never the system /usr/local/cuda one: it may be older than numba-cuda's
    NVVM, whose PTX an older ptxas rejects."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for sub in ("cu13", "cu12", "cuda_nvcc"):
            p = Path(root) / sub / "bin" / ("ptxas.exe" if os.name == "nt" else "ptxas")
            if p.is_file() and os.access(p, os.X_OK):
                return p
    return None


def numba_cuda_version() -> str | None:
    try:
        return importlib.metadata.version("numba-cuda")
    except importlib.metadata.PackageNotFoundError:
        return None


def ptxas_version(ptxas: Path) -> str:
    out = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else out.strip().splitlines()[-1] if out.strip() else "unknown"


def toolchain_problem() -> str | None:
    """Why the compile check cannot run here, or None."""
    if importlib.util.find_spec("numba_cuda") is None or numba_cuda_version() is None:
        return "numba-cuda is not installed (pip install 'numba-cuda[cu13]')"
    if find_ptxas() is None:
        return ("ptxas from the nvidia-cuda-nvcc wheel was not found under <site-packages>/nvidia/*/bin "
                "(pip install nvidia-cuda-nvcc matching numba-cuda's NVVM)")
    return None


# --------------------------------------------------------------------------------------------- ptxas output
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARRIERS = re.compile(r"used (\d+) barriers")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(text: str) -> dict:
    """Registers, spills, shared memory, stack and barriers of the entry function in ``ptxas -v`` output.

    Spill bytes are summed over every function in the PTX (a non-inlined device function spills too); stack is
    the largest frame; registers / smem / barriers are the entry function's ("Used ..." line).
    """
    rec = {"registers": None, "spill_stores": 0, "spill_loads": 0, "smem": 0, "stack": 0, "barriers": 0,
           "entry": None, "warnings": []}
    for line in text.splitlines():
        if "Compiling entry function" in line:
            m = re.search(r"entry function '([^']+)'", line)
            rec["entry"] = m.group(1) if m else None
        if "ptxas warning" in line:
            rec["warnings"].append(line.split(":", 1)[-1].strip())
        m = _PROPS.search(line)
        if m:
            rec["stack"] = max(rec["stack"], int(m.group(1)))
            rec["spill_stores"] += int(m.group(2))
            rec["spill_loads"] += int(m.group(3))
        m = _USED.search(line)
        if m:
            rec["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            rec["smem"] = int(s.group(1)) if s else 0
            b = _BARRIERS.search(line)
            rec["barriers"] = int(b.group(1)) if b else 0
    return rec


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    """numba highlights its error messages with terminal colour codes; the JSON and the test want plain text."""
    return _ANSI.sub("", text)


def nvvm_release(ptx: str) -> str | None:
    m = re.search(r"Cuda compilation tools, release ([\d.]+)", ptx[:2000])
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------- modules
def discover(kernels_dir: Path = KERNELS_DIR) -> list[str]:
    """The kernel modules in kernels_dir: every ``*.py`` but ``__init__`` and private ``_*`` helpers, as
    ``gru4rec_kernels.kernels.<name>`` for the package directory, else as file paths."""
    kernels_dir = Path(kernels_dir)
    if not kernels_dir.is_dir():
        return []
    names = sorted(p.stem for p in kernels_dir.glob("*.py") if not p.stem.startswith("_"))
    if kernels_dir.resolve() == KERNELS_DIR.resolve():
        return [f"{PACKAGE}.{n}" for n in names]
    return [str(kernels_dir / f"{n}.py") for n in names]


def resolve_module_arg(arg: str) -> str:
    """A family name (``gru``), a dotted module name, or a path to a .py file."""
    if arg.endswith(".py") or os.sep in arg:
        return str(Path(arg).resolve())
    if "." not in arg:
        return f"{PACKAGE}.{arg}"
    return arg


def short_name(module: str) -> str:
    if module.endswith(".py"):
        return Path(module).stem
    return module.rsplit(".", 1)[-1]


def _ensure_kernels_package() -> None:
    """Make ``gru4rec_kernels.kernels`` importable from a source checkout that was not ``pip install -e``-ed
    (or whose kernels/ has no __init__.py yet): a package whose path is the top-level kernels/ directory."""
    try:
        importlib.import_module(PACKAGE)
        return
    except ImportError:
        pass
    import types
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    parent = importlib.import_module("gru4rec_kernels")
    init = KERNELS_DIR / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(KERNELS_DIR)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pkg
        spec.loader.exec_module(pkg)
    else:
        pkg = types.ModuleType(PACKAGE)
        pkg.__path__ = [str(KERNELS_DIR)]
        sys.modules[PACKAGE] = pkg
    parent.kernels = pkg


def load_module(module: str):
    if module.endswith(".py"):
        path = Path(module)
        name = f"_compile_check_{path.stem}"
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    if module.startswith(PACKAGE + "."):
        _ensure_kernels_package()
    return importlib.import_module(module)


def kernel_table(mod) -> tuple[dict | None, set]:
    """(KERNELS, default kernel names) of a module; (None, set()) for a helper module without KERNELS (e.g.
    device functions only); ValueError if KERNELS is malformed."""
    if not hasattr(mod, "KERNELS"):
        return None, set()
    kernels = mod.KERNELS
    if not isinstance(kernels, dict):
        raise ValueError(f"module {mod.__name__} does not expose KERNELS: dict[str, (pyfunc, [signatures])]")
    for name, entry in kernels.items():
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and callable(entry[0])
                and isinstance(entry[1], (list, tuple)) and len(entry[1]) > 0):
            raise ValueError(f"KERNELS[{name!r}] of {mod.__name__} must be (pyfunc, [signature, ...]); got {entry!r}")
    default = getattr(mod, "DEFAULT_KERNELS", None)
    default = set(kernels) if default is None else set(default)
    unknown = default - set(kernels)
    if unknown:
        raise ValueError(f"DEFAULT_KERNELS of {mod.__name__} names kernels not in KERNELS: {sorted(unknown)}")
    return kernels, default


# --------------------------------------------------------------------------------------------- compiling
def compile_one(pyfunc, sig, arch: str, ptxas: Path, workdir: Path, stem: str) -> dict:
    """compile_ptx + ptxas -v of one kernel signature for one arch: a partial record (ok, stage, error, ...)."""
    from numba import cuda

    cc = (int(arch[3:-1]), int(arch[-1]))
    pyfunc = getattr(pyfunc, "py_func", pyfunc)  # tolerate an already-decorated dispatcher
    try:
        ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=cc)
    except Exception as e:  # numba's TypingError / LoweringError / NVVM errors: keep the whole message
        return {"ok": False, "stage": "compile_ptx", "error": strip_ansi(f"{type(e).__name__}: {e}")}
    ptx_path = workdir / f"{stem}.{arch}.ptx"
    ptx_path.write_text(ptx)
    proc = subprocess.run([str(ptxas), "-v", f"-arch={arch}", str(ptx_path), "-o", str(ptx_path.with_suffix(".cubin"))],
                          capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    rel = nvvm_release(ptx)
    if proc.returncode != 0:
        hint = ""
        if "Unsupported .version" in text or "not supported" in text.lower():
            hint = (f" (hint: the PTX is from NVVM {rel}; ptxas must be at least as new: use the nvidia-cuda-nvcc "
                    "wheel that matches numba-cuda, not an older system CUDA)")
        return {"ok": False, "stage": "ptxas", "error": text.strip() + hint, "nvvm_release": rel}
    rec = parse_ptxas(text)
    if rec["registers"] is None:
        return {"ok": False, "stage": "ptxas", "error": f"could not parse ptxas -v output:\n{text}",
                "nvvm_release": rel}
    rec.update(ok=True, nvvm_release=rel, ptx_bytes=len(ptx))
    return rec


def compile_module(module: str, archs, ptxas: str) -> tuple[list[dict], list[str]]:
    """Every kernel x signature x arch of one module: (records, notes); errors are records, never raised.

    A module without KERNELS is a helper (a note) unless it is one of the FAMILIES (an error)."""
    import numba

    ptxas = Path(ptxas)
    base = {"module": short_name(module), "module_path": module, "ptxas_version": ptxas_version(ptxas),
            "numba_version": numba.__version__, "numba_cuda_version": numba_cuda_version()}
    try:
        mod = load_module(module)
        kernels, default = kernel_table(mod)
        if kernels is None and base["module"] in FAMILIES:
            raise ValueError(f"kernel family module {mod.__name__} does not expose "
                             "KERNELS: dict[str, (pyfunc, [signature, ...])]")
    except Exception as e:
        tb = traceback.format_exc(limit=-3)
        return [dict(base, kernel=None, sig_index=None, signature=None, arch=None, default=True, ok=False,
                     stage="import", error=strip_ansi(f"{type(e).__name__}: {e}\n{tb}"))], []
    if kernels is None:
        return [], [f"{module}: no KERNELS (helper module), skipped"]
    records = []
    with tempfile.TemporaryDirectory(prefix="gru4rec_ptx_") as tmp:
        for name, (pyfunc, sigs) in kernels.items():
            for i, sig in enumerate(sigs):
                for arch in archs:
                    rec = dict(base, kernel=name, sig_index=i, signature=str(sig), arch=arch, default=name in default)
                    rec.update(compile_one(pyfunc, sig, arch, ptxas, Path(tmp), f"{base['module']}.{name}.{i}"))
                    records.append(rec)
    return records, []


def compile_modules(modules: list[str], archs=ARCHS, ptxas: Path | None = None, jobs: int = 1
                    ) -> tuple[list[dict], list[str]]:
    """(records, notes) for every kernel of every module (module names as resolve_module_arg returns them).

    jobs > 1 compiles modules in parallel worker processes (spawned: each imports numba afresh)."""
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise RuntimeError(toolchain_problem())
    archs = tuple(archs)
    if jobs <= 1 or len(modules) <= 1:
        parts = [compile_module(m, archs, str(ptxas)) for m in modules]
    else:
        import multiprocessing as mp
        with ProcessPoolExecutor(max_workers=min(jobs, len(modules)), mp_context=mp.get_context("spawn")) as ex:
            parts = list(ex.map(compile_module, modules, [archs] * len(modules), [str(ptxas)] * len(modules)))
    return [r for recs, _ in parts for r in recs], [n for _, notes in parts for n in notes]


# --------------------------------------------------------------------------------------------- reporting
def failures(records: list[dict]) -> list[dict]:
    return [r for r in records if not r["ok"]]


def default_spills(records: list[dict]) -> list[dict]:
    return [r for r in records if r["ok"] and r["default"] and (r["spill_stores"] or r["spill_loads"])]


def format_table(records: list[dict]) -> str:
    head = f"{'module':<12} {'kernel':<28} {'sig':>3} {'arch':<5} {'regs':>4} {'spillST':>7} {'spillLD':>7} " \
           f"{'smem':>6} {'stack':>5} {'dflt':>4}  status"
    lines = [head, "-" * len(head)]
    for r in records:
        if r["ok"]:
            status = "ok" if not (r["spill_stores"] or r["spill_loads"]) else "SPILLS"
            lines.append(f"{r['module']:<12} {r['kernel']:<28} {r['sig_index']:>3} {r['arch']:<5} {r['registers']:>4} "
                         f"{r['spill_stores']:>7} {r['spill_loads']:>7} {r['smem']:>6} {r['stack']:>5} "
                         f"{'yes' if r['default'] else 'no':>4}  {status}")
        else:
            first = (r["error"] or "").strip().splitlines()[0] if r.get("error") else ""
            lines.append(f"{r['module']:<12} {r['kernel']!s:<28} {r['sig_index']!s:>3} {r['arch']!s:<5} "
                         f"FAILED at {r['stage']}: {first[:120]}")
    return "\n".join(lines)


def format_failure(r: dict, max_lines: int = 40) -> str:
    msg = (r.get("error") or "").strip().splitlines()
    if len(msg) > max_lines:
        msg = msg[:max_lines] + [f"... ({len(msg) - max_lines} more lines in the JSON)"]
    where = f"{r['module']}.{r['kernel']}" if r["kernel"] else r["module"]
    sig = f" signature {r['sig_index']} {r['signature']!r}" if r["kernel"] else ""
    return f"{where}{sig} [{r['arch'] or 'import'}] failed at {r['stage']}:\n    " + "\n    ".join(msg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="+", help="family names, dotted modules or .py files (default: kernels/*.py)")
    ap.add_argument("--kernels-dir", type=Path, default=KERNELS_DIR, help="where to discover kernel modules")
    ap.add_argument("--arch", nargs="+", default=list(ARCHS), help="target architectures (default: sm_80 sm_90)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    ap.add_argument("--ptxas", type=Path, help="ptxas to use (default: the nvidia-cuda-nvcc wheel's)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = ap.parse_args(argv)

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        print("compile_kernels: NUMBA_ENABLE_CUDASIM is set; re-running without it (compile_ptx needs the real "
              "numba.cuda, not the simulator)", file=sys.stderr)
        args = argv if argv is not None else sys.argv[1:]
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *args],
                               env=env)
    for a in args.arch:
        if not re.fullmatch(r"sm_\d\d", a):
            ap.error(f"--arch must look like sm_80; got {a!r}")

    problem = None if args.ptxas else toolchain_problem()
    if problem:
        print(f"compile_kernels: toolchain missing: {problem}", file=sys.stderr)
        return 2
    ptxas = args.ptxas or find_ptxas()
    modules = [resolve_module_arg(m) for m in args.modules] if args.modules else discover(args.kernels_dir)
    if not modules:
        print(f"compile_kernels: no kernel modules found in {args.kernels_dir} (expected kernels/<family>.py for "
              f"{', '.join(FAMILIES)})", file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("[]\n")
        return 3

    print(f"compile_kernels: {len(modules)} module(s), archs {' '.join(args.arch)}, ptxas {ptxas} "
          f"({ptxas_version(ptxas)}), numba-cuda {numba_cuda_version()}")
    records, notes = compile_modules(modules, args.arch, ptxas, jobs=args.jobs)
    for n in notes:
        print(f"note: {n}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(format_table(records))
    print(f"wrote {args.out}")

    bad = failures(records)
    for r in bad:
        print("\nFAILED " + format_failure(r), file=sys.stderr)
    spills = default_spills(records)
    for r in spills:
        print(f"SPILL {r['module']}.{r['kernel']} sig {r['sig_index']} [{r['arch']}]: "
              f"{r['spill_stores']} bytes stores, "
              f"{r['spill_loads']} bytes loads (a default kernel must not spill)", file=sys.stderr)
    n_ok = len(records) - len(bad)
    print(f"{n_ok}/{len(records)} compiled; {len(bad)} failed; {len(spills)} default-kernel spill(s)")
    if bad:
        return 1
    return 4 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
