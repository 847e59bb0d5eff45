"""Training-step throughput with real-like item ids: the workload of bench/test_bench_cpu_step.py (B=32, H=100,
n_sample=2048, cross-entropy, constrained embedding, 40,000 items) but with Zipf-popular inputs / targets and
negative samples from ``SampleStore(support, 0.5, ...)``, as training draws them, so the sparse Wy / By updates
see the many duplicate rows real data gives (the uniform benchmark has almost none).

    python -m pytest bench/test_bench_cpu_step_zipf.py --benchmark-enable

"zipf": synthetic popularity p(rank r) ~ 1/r over 40,000 items (ids shuffled). "rsc15": the schedule and item
support of the RSC15 sample (2,933 items) when ../shared/data (or $GRU4REC_DATA) has it, else skipped.
Numba compilation is not timed; steps/s and the mean share of distinct ids per step are in ``extra_info``.
Without ``--benchmark-enable`` (the default in pyproject) each function runs once, as a smoke test; plain
``pytest`` does not collect bench/ at all (testpaths = tests).
"""
import os

import numpy as np
import pytest

from gru4rec_kernels.backends.cpu import CpuBackend
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.config import TrainConfig
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.sampling import SampleStore

B, H, S, N_ZIPF = 32, 100, 2048, 40_000
T_CPU, T_NUMPY = 200, 20  # steps per timed chunk


def _zipf_source(seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, N_ZIPF + 1)
    p = p[rng.permutation(N_ZIPF)]  # popular ids spread over the table, not all in the first rows
    support = np.floor(p / p.sum() * 5e6) + 1

    def chunk(T, seed):
        r = np.random.default_rng(seed)
        pick = lambda: r.choice(N_ZIPF, size=(T, B), p=support / support.sum()).astype(np.int32)  # noqa: E731
        return pick(), pick(), np.ones((T, B), dtype=bool), r.random((T, B)) < 0.1
    return N_ZIPF, support, chunk


def _rsc15_source():
    import gru4rec_kernels as g
    from gru4rec_kernels.batching import EpochSchedule
    root = os.environ.get("GRU4REC_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    path = os.path.join(root, "rsc15_100k_sessionrec", "yoochoose-clicks-100k_train_full.txt.gz")
    if not os.path.exists(path):
        pytest.skip(f"no rsc15 sample under {root}")
    data = g.SessionData.from_csv(path, sep="\t")
    sched = EpochSchedule(data.offsets, data.items, B)
    c = sched.next_chunk(T_CPU + 10)  # consecutive real steps; chunks below are slices of it

    def chunk(T, seed):
        o = seed % 10
        return c.inputs[o:o + T], c.targets[o:o + T], c.active[o:o + T], c.reset[o:o + T]
    return data.n_items, data.item_support(), chunk


@pytest.fixture(scope="module", params=["zipf", "rsc15"])
def setup(request):
    n_items, support, chunk = _zipf_source() if request.param == "zipf" else _rsc15_source()
    cfg = TrainConfig(layers=[H], loss="cross-entropy", constrained_embedding=True, batch_size=B, n_sample=S)
    _, params = init_params(cfg, n_items)
    store = SampleStore(support, 0.5, cfg.sample_store_size, S, seed=7)

    def workload(T, seed):
        return (*chunk(T, seed), store.next_many(T))
    # correctness on this duplicate-heavy workload: a few steps of both backends agree
    cpu, ref = CpuBackend(cfg, n_items, params), NumpyBackend(cfg, n_items, params)
    w = workload(3, seed=1)
    np.testing.assert_allclose(cpu.train_chunk(*w, 0), ref.train_chunk(*w, 0), rtol=1e-5)
    pc, pr = cpu.get_params(), ref.get_params()
    for k in pr:
        np.testing.assert_allclose(pc[k], pr[k], atol=1e-5, err_msg=k)
    return request.param, cfg, params, n_items, workload


def _bench(benchmark, setup, cls, T, rounds):
    source, cfg, params, n_items, workload = setup
    backend = cls(cfg, n_items, params)
    chunk = workload(T, seed=2)
    backend.train_chunk(*workload(2, seed=3), 0)  # warm-up: compilation, buffers
    ids = np.concatenate([chunk[1], chunk[4]], axis=1)  # the Wy / By rows each step updates (targets + samples)
    distinct = float(np.mean([np.unique(r).size / r.size for r in ids]))
    step = [1000]

    def run():
        step[0] += T
        return backend.train_chunk(*chunk, step[0])

    losses = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
    assert np.all(np.isfinite(losses))
    benchmark.extra_info.update(source=source, B=B, H=H, n_sample=S, n_items=n_items, steps_per_round=T,
                                backend=backend.name, distinct_output_ids_share=distinct)
    if benchmark.stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["steps_per_s"] = T / benchmark.stats.stats.min
        benchmark.extra_info["steps_per_s_median"] = T / benchmark.stats.stats.median


def test_cpu_train_chunk_zipf(benchmark, setup):
    _bench(benchmark, setup, CpuBackend, T_CPU, rounds=10)


def test_numpy_train_chunk_zipf(benchmark, setup):
    _bench(benchmark, setup, NumpyBackend, T_NUMPY, rounds=5)
