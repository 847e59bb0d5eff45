"""bench/prnn_table.py on tiny synthetic data: the JSON's shape, finite metrics in [0, 1], the ranks' event
order (the support buckets' events add up), and the clean skip without the dataset."""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import prnn_table  # noqa: E402

TINY = ["--dataset", "synthetic", "--synthetic-items", "150", "--synthetic-sessions", "200", "--hidden", "6",
        "--n-sample", "8", "--batch-size", "8", "--epochs", "2", "--backend", "numpy", "--max-test-sessions", "30"]
MODELS = ["id", "concat", "prnn-residual-total", "prnn-interleaving-per-subnet"]


def in_unit(x):
    return isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0


def test_main_writes_the_table(tmp_path):
    out = tmp_path / "t.json"
    assert prnn_table.main([*TINY, "--models", *MODELS, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "python bench/prnn_table.py --dataset synthetic" in res["command"]
    assert "load average" in res["uptime_at_start"] and res["backend"] == "numpy"
    assert [r["name"] for r in res["models"]] == MODELS
    n_buckets = len(res["buckets"]["target_support"])
    n_events = res["models"][0]["n_events"]
    assert sum(b["n_events"] for b in res["buckets"]["target_support"]) == n_events
    assert sum(b["n_events"] for b in res["buckets"]["input_support"]) == n_events
    for r in res["models"]:
        for m in ("recall@20", "mrr@20", "ndcg@20"):
            assert in_unit(r[m]), (r["name"], m, r[m])
        assert r["mrr@20"] <= r["ndcg@20"] <= r["recall@20"]
        assert r["train_seconds"] > 0 and len(r["losses"]) == 2 and all(map(math.isfinite, r["losses"]))
        assert len(r["by_target_support"]) == n_buckets
        # the buckets' recalls, weighted by their events, give back the overall recall
        got = sum(b["recall@20"] * s["n_events"] for b, s in zip(r["by_target_support"],
                                                                 res["buckets"]["target_support"]))
        assert got / n_events == pytest.approx(r["recall@20"])
        for b in r["by_target_support"] + r["by_input_support"]:
            assert all(in_unit(v) for v in b.values())
        if r["architecture"] == "parallel":
            assert set(r["ablation"]) == {"id subnet only", "category subnet only"}
            assert all(in_unit(v) for a in r["ablation"].values() for v in a.values())
        else:
            assert "ablation" not in r
    assert res["models"][2]["subnet_layers"] == [[3], [3]] and res["models"][3]["subnet_layers"] == [[6], [6]]
    assert len(res["table"]) == 2 + len(MODELS)


def test_most_recent_sessions_keeps_whole_sessions():
    import pandas as pd
    df = pd.DataFrame({"SessionId": np.repeat([1, 2, 3, 4], [3, 2, 4, 1]), "ItemId": np.arange(10)})
    assert prnn_table.most_recent_sessions(df, 6)["SessionId"].tolist() == [3] * 4 + [4]
    assert prnn_table.most_recent_sessions(df, 7)["SessionId"].tolist() == [2] * 2 + [3] * 4 + [4]
    assert len(prnn_table.most_recent_sessions(df, None)) == 10


def test_skips_without_the_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRU4REC_DATA", str(tmp_path))
    assert prnn_table.main(["--backend", "numpy", "--out", str(tmp_path / "x.json")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "x.json").exists()
