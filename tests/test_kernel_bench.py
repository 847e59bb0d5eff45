"""bench/kernel_bench.py: skips cleanly without a GPU, and in the simulator (tiny shapes) checks the step and every
GEMM launch, lists the step's launches in the order the roofline MODEL prices them, and catches a wrong GEMM."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gru4rec_kernels.kernels import common as kc

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "kernel_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("kernel_bench_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_without_a_gpu_it_skips_cleanly():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    try:
        import cupy

        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        has_gpu = False
    if has_gpu:
        pytest.skip("a GPU is usable here: the skip path does not apply")
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("no GPU: skipped"), proc.stdout


@pytest.mark.skipif(not kc.SIM, reason="the --sim mode runs in the CUDA simulator")
def test_sim_run_checks_every_launch_and_matches_the_model(tmp_path):
    kb = _load()
    out = tmp_path / "kb.json"
    assert kb.main(["--sim", "--workloads", "W1", "W3", "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["sim"] and res["label"].startswith("SIMULATOR")
    for name in ("W1", "W3"):
        e = res["workloads"][name]
        assert e["check"]["ok"] and e["check"]["gemm_ok"]
        assert e["check"]["gemm_launches"] >= 3 * 5  # every step's GEMM launches, every product of each group
        names = [x["name"] for x in e["launches"]]
        assert names[0] == "step_begin" and names[-1] == "step_end" and len(names) == e["launches_per_step"]
        assert e["model_matches_launches"], names
        assert all("model_us" in x for x in e["launches"])


@pytest.mark.skipif(not kc.SIM, reason="the GEMM checker is exercised on simulator arrays")
def test_gemm_checker_catches_a_wrong_product():
    kb = _load()
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    C = (A @ B).astype(np.float32)
    chk = kb.GemmChecker()
    args = (C, A, B, np.int32(0))
    chk.after("gemm_nn", args, chk.before("gemm_nn", args))
    assert chk.results[-1]["ok"]
    C[1, 2] += 1e-2  # one element off
    chk.after("gemm_nn", args, chk.before("gemm_nn", args))
    assert not chk.results[-1]["ok"]
    # transposed operands are read as launched: gemm_tn's A is [K, M]
    At = np.ascontiguousarray(A.T)
    C2 = (A @ B).astype(np.float32)
    args = (C2, At, B, np.int32(0))
    chk.after("gemm_tn", args, chk.before("gemm_tn", args))
    assert chk.results[-1]["ok"] and chk.results[-1]["ta"]
