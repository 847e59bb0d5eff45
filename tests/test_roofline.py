"""The roofline MODEL in bench/roofline.py: its trace is the step as built, its pricing is the stated formula.

The trace runs the cuda backend's own code in the CUDA simulator with kernel execution switched off, so these
tests need the simulator (tests/conftest.py turns it on when no GPU is usable) and skip on a GPU machine.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import cuda

from gru4rec_kernels.kernels import common as kc

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not kc.SIM, reason="the roofline traces the step in the CUDA simulator")


def _load():
    spec = importlib.util.spec_from_file_location("roofline_under_test", REPO / "bench" / "roofline.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


rl = _load()


def hand_gemm_flops(B=32, H=100, S=2048):
    """Every matrix product of one one-layer constrained step, counted by hand from docs/design.md section 2:
    forward x.Wx, h.Wrz, (r*h).Wh; scores h.Wy[Y]^T; backward dh, dWy[Y], drh, dWx, dWrz, dWh, dx; and the bias
    gradients dBy, dBh, which the step computes as products 1^T dZ, 1^T da (kernels/gemm.py)."""
    O = B + S
    g = lambda m, n, k: 2 * m * n * k  # noqa: E731
    fwd = g(B, 3 * H, H) + g(B, 2 * H, H) + g(B, H, H)
    bwd = (g(B, H, O) + g(O, H, B) + g(B, H, H) + g(H, 3 * H, B) + g(H, 2 * H, B) + g(H, H, B) + g(B, H, 3 * H))
    return fwd + g(B, O, H) + bwd + g(1, O, B) + g(1, 3 * H, B)


@pytest.fixture(scope="module")
def w1():
    return rl.model_step(rl.WORKLOADS[0], rl.Device(), "zipf")


def test_recorder_records_and_does_not_run():
    @cuda.jit
    def write_ones(a):
        i = cuda.grid(1)
        if i < a.shape[0]:
            a[i] = 1.0

    a = np.zeros(5, np.float32)
    with rl.Recorder() as rec:
        write_ones[2, 4](a)
    assert not a.any()
    assert [(L.name, L.grid, L.block) for L in rec.launches] == [("write_ones", (2, 1, 1), (4, 1, 1))]
    write_ones[2, 4](a)  # restored on exit
    assert a.all()


def test_every_launch_of_the_step_is_priced(w1):
    assert w1["launches"] == len(w1["kernels"]) > 5
    for k in w1["kernels"]:
        assert k["time_s"] > 0 and k["bound"] in ("memory", "compute", "latency")
    w3 = rl.model_step(rl.WORKLOADS[2], rl.Device(), "uniform")
    assert {k["name"] for k in w3["kernels"]} <= set(rl.COSTS)


def test_traced_gemm_flops_equal_the_hand_count(w1):
    """The traced launches are the step as built: their GEMM FLOPs add up to the products of the equations
    (grouped / split launches count each product once)."""
    gemm = sum(k["flops"] for k in w1["kernels"] if k["name"].startswith("gemm"))
    assert gemm == pytest.approx(hand_gemm_flops(), rel=1e-12)


def test_price_is_the_slowest_limit_plus_node_overhead():
    dev = rl.Device()

    def fixed(cost):
        rl.COSTS["_fixed"] = lambda L, ctx: cost

    try:
        L = rl.Launch("_fixed", (264, 1, 1), (256, 1, 1), [])
        fixed(rl.Cost(flops=67e6, bytes=0.0, chain=0))  # 1 us of compute on every SM
        k = rl.price(L, dev, {})
        assert k["bound"] == "compute" and k["time_s"] == pytest.approx(dev.node_overhead_s + 1e-6)
        L1 = rl.Launch("_fixed", (66, 1, 1), (256, 1, 1), [])  # half the SMs: half the peak
        assert rl.price(L1, dev, {})["t_compute_s"] == pytest.approx(2e-6)
        fixed(rl.Cost(flops=0.0, bytes=6.7e6, chain=0))
        assert rl.price(L, dev, {})["t_memory_s"] == pytest.approx(2e-6)
        fixed(rl.Cost(flops=0.0, bytes=0.0, chain=10, latency="dram"))
        many = rl.Launch("_fixed", (132 * 8 * 3, 1, 1), (256, 1, 1), [])  # 8 resident blocks of 256 per SM
        k = rl.price(many, dev, {})
        assert k["waves"] == 3 and k["t_latency_s"] == pytest.approx(3 * 10 * dev.dram_latency_s)
        fixed(rl.Cost(flops=1.0, bytes=1.0, slabs=7))
        assert rl.price(L, dev, {})["t_latency_s"] == pytest.approx(7 * dev.gemm_slab_s)
    finally:
        rl.COSTS.pop("_fixed", None)
    with pytest.raises(KeyError, match="no cost model"):
        rl.price(rl.Launch("not_a_kernel", (1, 1, 1), (1, 1, 1), []), dev, {})


def test_node_overhead_is_linear(w1):
    slow = rl.model_step(rl.WORKLOADS[0], rl.Device(node_overhead_s=3.0e-6), "zipf")
    assert slow["step_s"] - w1["step_s"] == pytest.approx(w1["launches"] * 1.0e-6)


def test_zipf_ids_have_the_duplicates_of_real_data():
    st = rl.step_ids(rl.WORKLOADS[0], "zipf")
    u = rl.step_ids(rl.WORKLOADS[0], "uniform")
    dup = lambda a: len(a) - len(np.unique(a))  # noqa: E731
    assert dup(st["samples"]) > 1.5 * dup(u["samples"])
    assert np.bincount(st["samples"]).max() >= 4 > np.bincount(u["samples"]).max()


def test_main_writes_labelled_json(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    assert rl.main(["--out", str(out), "--workloads", "W1", "--node-us", "2.5"]) == 0
    text = capsys.readouterr().out
    assert "MODEL" in text and "W1" in text and "bound" in text
    data = json.loads(out.read_text())
    assert data["label"].startswith("MODEL") and data["device"]["node_overhead_s"] == pytest.approx(2.5e-6)
    assert set(data["workloads"]) == {"W1"} and "verdict_W1" in data
    assert math.isfinite(data["workloads"]["W1"]["step_s"])
