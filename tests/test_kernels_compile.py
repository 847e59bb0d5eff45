"""Every numba.cuda kernel compiles to PTX for sm_80 and sm_90 and through ``ptxas -v``; default kernels do not spill.

No GPU is needed (docs/kernels.md). The compile check runs ``bench/compile_kernels.py`` in a fresh process
with NUMBA_ENABLE_CUDASIM removed from its environment: under the simulator ``numba.cuda`` cannot compile to PTX,
and the simulator may be switched on for the rest of the test session. Skipped only when numba-cuda or the
nvidia-cuda-nvcc wheel (its ptxas) is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "compile_kernels.py"


def _load_script():
    """The script as a module (it imports neither numba nor numba.cuda at import time)."""
    spec = importlib.util.spec_from_file_location("compile_kernels_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ck = _load_script()


def naive_expected_records(kernels_by_module: dict[str, dict[str, int]], archs) -> set:
    """Every (module, kernel, signature index, arch) the check must report: module -> kernel -> n signatures."""
    return {(m, k, i, a) for m, ks in kernels_by_module.items() for k, n in ks.items() for i in range(n) for a in archs}


def _needs_toolchain():
    problem = ck.toolchain_problem()
    if problem:
        pytest.skip(f"kernel compile check needs numba-cuda and the nvidia-cuda-nvcc wheel: {problem}")


def _run(args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One run of the compile check over every module in kernels/: (process, records)."""
    _needs_toolchain()
    out = tmp_path_factory.mktemp("compile") / "kernels.json"
    proc = _run(["--out", out])
    records = json.loads(out.read_text()) if out.is_file() else None
    return proc, records


def _kernel_inventory(records) -> dict[str, dict[str, int]]:
    inv: dict[str, dict[str, int]] = {}
    for r in records:
        if r["kernel"] is not None:
            k = inv.setdefault(r["module"], {})
            k[r["kernel"]] = max(k.get(r["kernel"], 0), r["sig_index"] + 1)
    return inv


# --------------------------------------------------------------------------------------------- the real kernels
def test_kernel_modules_found():
    found = {Path(m).stem if m.endswith(".py") else m.rsplit(".", 1)[-1] for m in ck.discover()}
    assert found, (f"no kernel modules found in {ck.KERNELS_DIR}: expected kernels/<family>.py for "
                   f"{', '.join(ck.FAMILIES)}")
    missing = [f for f in ck.FAMILIES if f not in found]
    assert not missing, f"kernel family modules missing from kernels/: {missing} (found {sorted(found)})"


def test_every_kernel_compiles_for_every_arch(compiled):
    proc, records = compiled
    assert proc.returncode != 3, f"no kernel modules found:\n{proc.stderr}"
    assert records is not None, (f"compile_kernels.py wrote no JSON (exit {proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
    failed = ck.failures(records)
    assert not failed, "kernels failed to compile:\n\n" + "\n\n".join(ck.format_failure(r) for r in failed)
    got = {(r["module"], r["kernel"], r["sig_index"], r["arch"]) for r in records}
    want = naive_expected_records(_kernel_inventory(records), ck.ARCHS)
    assert got == want, f"missing (module, kernel, signature, arch): {sorted(want - got)}"
    for m in ck.FAMILIES:
        if (REPO / "gru4rec_kernels" / "kernels" / f"{m}.py").is_file():
            assert any(r["module"] == m for r in records), f"kernels/{m}.py produced no compiled kernel"
    assert all(r["registers"] > 0 for r in records)
    assert proc.returncode in (0, 4), f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


# The kernels of the training step's families (GRU4Rec's and the p-RNN's; the others, adagrad and evaluate, are
# checked by inventory only):
# a kernel added, renamed or removed must show up here and in docs/kernels.md.
STEP_KERNELS = {
    "gemm": {"gemm_nn", "gemm_nt", "gemm_tn", "gemm_grouped"},
    "step": {"step_begin", "step_end"},
    "gru": {"hidden_reset", "gru_fwd_rz", "gru_fwd_out", "gru_bwd_cz", "gru_bwd_r", "dropout_inplace"},
    "embedding": {"gather_rows", "scatter_add_rows"},
    "scores_loss": {"row_loss_partial", "row_loss_grad"},
    "features": {"sparse_input_product", "sparse_input_grad"},
    "subnets": {"concat_hidden", "split_hidden_grad"},
}


def test_step_kernels_are_the_listed_ones(compiled):
    proc, records = compiled
    assert records, f"no kernels were compiled (exit {proc.returncode}):\n{proc.stderr}"
    inv = _kernel_inventory(records)
    for module, names in STEP_KERNELS.items():
        assert set(inv.get(module, {})) == names, f"kernels/{module}.py: compiled {sorted(inv.get(module, {}))}"


def test_default_kernels_do_not_spill(compiled):
    proc, records = compiled
    assert records, f"no kernels were compiled (exit {proc.returncode}):\n{proc.stderr}"
    spills = ck.default_spills(records)
    assert not spills, "default kernels spill to local memory:\n" + "\n".join(
        f"  {r['module']}.{r['kernel']} sig {r['sig_index']} [{r['arch']}]: {r['spill_stores']} B stores, "
        f"{r['spill_loads']} B loads, {r['registers']} registers" for r in spills)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


# The evaluation kernels (kernels/evaluate.py), one by one: all used by the cuda backend's evaluation step.
EVAL_KERNELS = ("eval_step_begin", "target_scores", "rank_counts", "eval_step_end")


def test_evaluation_kernels_compile_without_spills(compiled):
    _, records = compiled
    assert records, "no kernels were compiled"
    for kernel in EVAL_KERNELS:
        for arch in ck.ARCHS:
            rs = [r for r in records if r["module"] == "evaluate" and r["kernel"] == kernel and r["arch"] == arch]
            assert rs, f"evaluate.{kernel} was not compiled for {arch}"
            for r in rs:
                assert r["ok"] and r["default"], r
                assert not (r["spill_stores"] or r["spill_loads"]), f"evaluate.{kernel} [{arch}] spills: {r}"


FMA_SCRIPT = textwrap.dedent(r"""
    import json, re, sys
    from numba import cuda
    from gru4rec_kernels.kernels import evaluate as kev, gemm as kgm
    out = {}
    for arch in sys.argv[1:]:
        cc = (int(arch[3]), int(arch[4:]))
        for name, (fn, sigs) in (("target_scores", kev.KERNELS["target_scores"]),
                                 ("gemm_nt", kgm.KERNELS["gemm_nt"])):
            ptx, _ = cuda.compile_ptx(fn, sigs[0], cc=cc)
            out[f"{name}/{arch}"] = re.findall(r"\b(fma\.rn\.f32|mul(?:\.rn)?\.f32|add(?:\.rn)?\.f32)\b", ptx)
    print(json.dumps(out))
""")


def test_target_score_dot_is_the_gemm_fma_chain():
    """Ties are exact only if the target's score (target_scores' dot) has the bits of the GEMM's element for the
    target's column: both must be one fused multiply-add per k, in the same order (kernels/evaluate.py). In the
    PTX: the GEMM's products are all FMAs (no separate f32 multiply), and target_scores' float ops up to the bias
    add are FMAs only."""
    _needs_toolchain()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", FMA_SCRIPT, *ck.ARCHS], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ops = json.loads(proc.stdout.strip().splitlines()[-1])
    for arch in ck.ARCHS:
        gemm = ops[f"gemm_nt/{arch}"]
        assert "fma.rn.f32" in gemm and not any(o.startswith("mul") for o in gemm), gemm
        dot = ops[f"target_scores/{arch}"]
        first_add = next(i for i, o in enumerate(dot) if o.startswith("add"))
        assert first_add > 0 and set(dot[:first_add]) == {"fma.rn.f32"}, dot


# --------------------------------------------------------------------------------------------- the checker itself
GOOD = '''
from numba import cuda, float32

def scale_rows(out, x, a):
    """out[i, j] = a * x[i, j]; one block per row, a shared-memory copy to exercise smem."""
    buf = cuda.shared.array(64, float32)
    i = cuda.blockIdx.x
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        buf[j % 64] = x[i, j]
        cuda.syncthreads()
        out[i, j] = a * buf[j % 64]

def helper_only(out):
    out[0] = 1.0

KERNELS = {
    "scale_rows": (scale_rows, ["void(float32[:, ::1], float32[:, ::1], float32)",
                                "void(float64[:, ::1], float64[:, ::1], float64)"]),
    "helper_only": (helper_only, ["void(float32[::1])"]),
}
DEFAULT_KERNELS = {"scale_rows"}
'''

BROKEN = '''
from numba import cuda

def fine(out):
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = 2.0

def broken_gate_kernel(out, x):
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = no_such_device_function(x[i])

KERNELS = {"fine": (fine, ["void(float32[::1])"]),
           "broken_gate_kernel": (broken_gate_kernel, ["void(float32[::1], float32[::1])"])}
'''


def _write(tmp_path, name, src):
    p = tmp_path / f"{name}.py"
    p.write_text(textwrap.dedent(src))
    return p


def test_parse_ptxas_output():
    text = """ptxas info    : 8 bytes gmem
ptxas info    : Function properties for helper
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function '_Z6kernel' for 'sm_90'
ptxas info    : Function properties for _Z6kernel
    32 bytes stack frame, 24 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 2048 bytes smem, 380 bytes cmem[0]
"""
    r = ck.parse_ptxas(text)
    assert (r["registers"], r["smem"], r["barriers"], r["stack"]) == (255, 2048, 1, 32)
    assert (r["spill_stores"], r["spill_loads"]) == (32, 24) and r["entry"] == "_Z6kernel"


def test_checker_on_a_small_module(tmp_path):
    _needs_toolchain()
    mod = _write(tmp_path, "small_family", GOOD)
    out = tmp_path / "k.json"
    proc = _run(["--modules", mod, "--out", out, "--jobs", "1"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = json.loads(out.read_text())
    got = {(r["module"], r["kernel"], r["sig_index"], r["arch"]) for r in recs}
    assert got == naive_expected_records({"small_family": {"scale_rows": 2, "helper_only": 1}}, ck.ARCHS)
    by = {(r["kernel"], r["sig_index"], r["arch"]): r for r in recs}
    # a float32 buffer in both
    assert by[("scale_rows", 0, "sm_90")]["smem"] == 64 * 4 and by[("scale_rows", 1, "sm_80")]["smem"] == 64 * 4
    assert by[("scale_rows", 0, "sm_80")]["default"] and not by[("helper_only", 0, "sm_80")]["default"]
    for r in recs:
        assert r["ok"] and r["registers"] > 0 and r["ptxas_version"] and r["numba_cuda_version"]
    assert "scale_rows" in proc.stdout  # the table


def test_broken_kernel_fails_with_name_and_compiler_message(tmp_path):
    _needs_toolchain()
    mod = _write(tmp_path, "broken_family", BROKEN)
    out = tmp_path / "k.json"
    proc = _run(["--modules", mod, "--out", out, "--jobs", "1", "--arch", "sm_90"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "broken_family.broken_gate_kernel" in proc.stderr
    assert "no_such_device_function" in proc.stderr and "compile_ptx" in proc.stderr
    recs = {r["kernel"]: r for r in json.loads(out.read_text())}
    assert recs["fine"]["ok"] and not recs["broken_gate_kernel"]["ok"]
    assert "no_such_device_function" in recs["broken_gate_kernel"]["error"]
    assert "\x1b[" not in recs["broken_gate_kernel"]["error"]  # plain text, no terminal colours


def test_module_import_error_is_reported(tmp_path):
    _needs_toolchain()
    mod = _write(tmp_path, "scores_loss", "import numpy as np\nKERNELS = {'k': (np.sum,)}\n")
    proc = _run(["--modules", mod, "--out", tmp_path / "k.json", "--jobs", "1"])
    assert proc.returncode == 1 and "KERNELS['k']" in proc.stderr, proc.stderr


def test_no_kernel_modules_is_an_error(tmp_path):
    _needs_toolchain()
    (tmp_path / "kernels").mkdir()
    proc = _run(["--kernels-dir", tmp_path / "kernels", "--out", tmp_path / "k.json"])
    assert proc.returncode == 3 and "no kernel modules found" in proc.stderr


def test_simulator_environment_is_dropped(tmp_path):
    """Run with NUMBA_ENABLE_CUDASIM=1: the script re-runs itself without it and still compiles."""
    _needs_toolchain()
    mod = _write(tmp_path, "small_family", GOOD)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--modules", str(mod), "--out", str(tmp_path / "k.json"),
                           "--arch", "sm_80", "--jobs", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "re-running without it" in proc.stderr
