"""Training throughput of the Numba CPU backend against the numpy reference backend, at the headline workload:
B=32, H=100 (one layer), n_sample=2048 (O = 2080 output columns), cross-entropy, constrained embedding,
40,000 items, random data (no dataset needed).

    python -m pytest bench/test_bench_cpu_step.py --benchmark-enable

Each benchmark first checks a step against the other backend on its own inputs, warms up (Numba compilation is
not timed), then times ``train_chunk`` over a chunk of steps; steps/s is recorded in ``benchmark.extra_info``.
Without ``--benchmark-enable`` (the default in pyproject) the functions run once, as a smoke test.
"""
import numpy as np
import pytest

from gru4rec_kernels.backends.cpu import CpuBackend
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.config import TrainConfig
from gru4rec_kernels.layout import init_params

B, H, S, N_ITEMS = 32, 100, 2048, 40_000
T_CPU, T_NUMPY = 200, 20  # steps per timed chunk


def _workload(T, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, N_ITEMS, (T, B)).astype(np.int32), rng.integers(0, N_ITEMS, (T, B)).astype(np.int32),
            np.ones((T, B), dtype=bool), rng.random((T, B)) < 0.1, rng.integers(0, N_ITEMS, (T, S)).astype(np.int32))


@pytest.fixture(scope="module")
def setup():
    cfg = TrainConfig(layers=[H], loss="cross-entropy", constrained_embedding=True, batch_size=B, n_sample=S)
    _, params = init_params(cfg, N_ITEMS)
    # correctness on this workload: a few steps of both backends from the same parameters agree
    cpu, ref = CpuBackend(cfg, N_ITEMS, params), NumpyBackend(cfg, N_ITEMS, params)
    chunk = _workload(3, seed=1)
    lc = cpu.train_chunk(*chunk, 0)
    lr = ref.train_chunk(*chunk, 0)
    assert np.all(np.isfinite(lc)) and np.all(np.isfinite(lr))
    np.testing.assert_allclose(lc, lr, rtol=1e-5)
    pc, pr = cpu.get_params(), ref.get_params()
    for k in pr:
        np.testing.assert_allclose(pc[k], pr[k], atol=1e-5, err_msg=k)
    return cfg, params


def _bench(benchmark, backend, T, rounds):
    chunk = _workload(T, seed=2)
    backend.train_chunk(*_workload(2, seed=3), 0)  # warm-up: compilation, buffers
    step = [1000]

    def run():
        step[0] += T
        return backend.train_chunk(*chunk, step[0])

    losses = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
    assert np.all(np.isfinite(losses))
    benchmark.extra_info.update(B=B, H=H, n_sample=S, n_items=N_ITEMS, steps_per_round=T, backend=backend.name)
    if benchmark.stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["steps_per_s"] = T / benchmark.stats.stats.min
        benchmark.extra_info["steps_per_s_median"] = T / benchmark.stats.stats.median


def test_cpu_train_chunk(benchmark, setup):
    cfg, params = setup
    _bench(benchmark, CpuBackend(cfg, N_ITEMS, params), T_CPU, rounds=10)


def test_numpy_train_chunk(benchmark, setup):
    cfg, params = setup
    _bench(benchmark, NumpyBackend(cfg, N_ITEMS, params), T_NUMPY, rounds=5)
