"""pytest-benchmark wrapper of bench/train_throughput.py (runs with --benchmark-enable)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import train_throughput as tt  # noqa: E402


@pytest.fixture(scope="module")
def workload():
    name, data = tt.load_real_data()
    if data is None:
        pytest.skip("no dataset under ../shared/data")
    import gru4rec_kernels as g
    return data, g.TrainConfig(layers=[100], n_sample=2048, batch_size=32, n_epochs=1)


@pytest.mark.parametrize("backend,steps", [("cpu", 1000), ("numpy", 60)])
def test_train_throughput(benchmark, workload, backend, steps):
    data, cfg = workload
    r = benchmark.pedantic(tt.measure, args=(backend, data, cfg, steps), rounds=1, iterations=1)
    benchmark.extra_info.update(mb_per_s=r["mb_per_s"], events_per_s=r["events_per_s"])
    assert r["mb_per_s"] > 0
