"""pytest-benchmark wrapper of bench/memory.py: peak resident memory of SessionData loading and of training.

Runs only with ``--benchmark-enable`` (the project's default is ``--benchmark-disable``); each measurement is a
fresh subprocess, as in the script. Sizes are smaller than the script's defaults so a run takes about a minute:

    python -m pytest bench/test_bench_memory.py --benchmark-enable -q
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import memory  # noqa: E402


@pytest.fixture(autouse=True)
def _only_with_benchmarks(request):
    opt = request.config.getoption
    if opt("benchmark_disable", default=True) and not opt("benchmark_enable", default=False):
        pytest.skip("memory benchmarks run only with --benchmark-enable")


def _record(benchmark, res: dict, keys) -> None:
    assert "error" not in res, res.get("stderr")
    benchmark.extra_info.update({k: res[k] for k in keys if k in res})


@pytest.mark.parametrize("order", ["grouped", "shuffled"])
def test_memory_load_arrays(benchmark, order):
    n = 10 ** 7
    res = benchmark.pedantic(memory.run_child, args=(["load", str(n), "arrays", "-", order], 1800.0),
                             rounds=1, iterations=1)
    _record(benchmark, res, ("events", "peak_rss", "ru_maxrss", "baseline_rss", "peak_bytes_per_event",
                             "build_bytes_per_event", "steady_bytes_per_event", "build_s"))
    # the arrays themselves: items int32 + times float64 + per-session int64 offsets and ids
    assert 12 <= res["steady_bytes_per_event"] < 20
    # inputs (24 B/event) + the build's own peak: one int32 permutation, the outputs, per-session arrays
    assert res["build_bytes_per_event"] < 40
    assert res["dtypes"]["items"] == "int32" and res["dtypes"]["offsets"] == "int64"


def test_memory_load_parquet(benchmark, tmp_path):
    n = 3 * 10 ** 6
    path = str(tmp_path / "log.parquet")
    w = memory.run_child(["write_parquet", str(n), path, "grouped"], 1800.0)
    assert "error" not in w, w.get("stderr")
    res = benchmark.pedantic(memory.run_child, args=(["load", str(n), "parquet", path, "grouped"], 1800.0),
                             rounds=1, iterations=1)
    _record(benchmark, res, ("events", "peak_rss", "baseline_rss", "peak_bytes_per_event", "build_s"))
    assert res["peak_bytes_per_event"] < 120


def test_memory_train_1m_items(benchmark):
    res = benchmark.pedantic(memory.run_child, args=(["train", "1000000", "20000", "100", "-"], 1800.0),
                             rounds=1, iterations=1)
    _record(benchmark, res, ("backend", "n_items", "steps", "peak_rss", "baseline_rss", "peak_bytes_per_item",
                             "analytic_min_bytes_per_item", "peak_over_analytic", "fit_s"))
    # at least the parameters Wy, By themselves (float32) are resident; a full copy of them is 4 (H+1) B/item
    assert res["peak_bytes_per_item"] > 4 * (res["H"] + 1)
