"""bench/scaling_model.py, a MODEL of data-parallel scaling: its JSON's arithmetic checked by hand on one row."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("scaling_model_under_test", REPO / "bench" / "scaling_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


sm = _load()
RES = json.loads((REPO / "bench" / "results" / "scaling_model.json").read_text())


def test_the_result_is_labelled_a_model():
    assert RES["label"].startswith("MODEL") and "not a measurement" in RES["label"]
    assert {(r["workload"], r["P"], r["link"]) for r in RES["rows"]} == \
        {(w, P, k.name) for w in sm.WORKLOADS for P in sm.RANKS for k in sm.LINKS}


def test_one_row_by_hand():
    """W3 (B_g = 128, H = 512, S = 2048, one layer, constrained embedding) on 4 ranks over InfiniBand NDR."""
    H, B, S = 512, 128, 2048
    O = B + S
    floats = (H * 3 * H + H * 2 * H + H * H + 3 * H) + O * H + O + B * H + 1  # dense | Wy | By | inputs | loss
    w3 = next(w for w in sm.rl.WORKLOADS if w.name == "W3")
    assert sm.grad_buffer_bytes(w3) == 4 * floats == RES["workloads"]["W3"]["buffer_bytes"]
    rw = sm.rank_workload(w3, 4)
    assert (rw.B, rw.B + rw.S) == (32, O)  # a rank's rows against the global step's columns
    row = next(r for r in RES["rows"] if (r["workload"], r["P"], r["link"]) == ("W3", 4, "IB-NDR400"))
    allreduce = 8.4e-6 + 2 * 3 / 4 * 4 * floats / 45e9 + 2 * 3 * 9.6e-6
    assert row["allreduce_us"] == pytest.approx(allreduce * 1e6, rel=1e-12)
    rank_step = RES["workloads"]["W3"]["rank_step"]["4"]["step_s"]
    step = rank_step + 2 * 4 * floats / 3.35e12 + allreduce
    assert row["step_us"] == pytest.approx(step * 1e6, rel=1e-12)
    assert row["speedup"] == pytest.approx(RES["workloads"]["W3"]["step_1gpu_s"] / step, rel=1e-12)
    assert row["efficiency"] == pytest.approx(row["speedup"] / 4, rel=1e-12)


def test_ring_formula_and_splits():
    link = sm.Link("x", 1e9, 1e-6, "")
    assert sm.ring_allreduce_s(1e6, 1, link) == 0.0
    assert sm.ring_allreduce_s(1e6, 2, link) == pytest.approx(8.4e-6 + 1e-3 + 2e-6)
    with pytest.raises(ValueError, match="not divisible"):
        sm.rank_workload(sm.rl.WORKLOADS[0], 3)
