"""Recommend latency and throughput (pytest-benchmark; runs only with --benchmark-enable).

    python -m pytest bench/test_bench_recommend.py --benchmark-enable -q -s

Model: H=100, one layer, constrained embedding, random parameters (the speed does not depend on the values),
at 40,000 and 700,000 items. Sessions: random, 1..10 clicks (mean 5.5).
- one session: ``recommend_one(model, session, k=20)`` latency, p50 / p90 / p99 from our own timing loop
  (time.perf_counter_ns around each call; 2,000 calls at 40k items, 300 at 700k), after a warm-up that compiles
  everything; pytest-benchmark's own statistics are reported beside it;
- batches: ``recommend_batch(model, 1,000 sessions, k=20)``, over all items and with each session's own items
  excluded (``exclude_seen``: per-row exclusion lists): sessions per second;
- serving: ``SessionRecommender.click`` + ``recommend`` latency at 40k items;
- cuda: the batch scoring (GEMM + top-k) with CuPy on the GPU; skipped without a usable GPU.
Every test first checks its results against the reference on a few sessions. The numbers, with the machine
(CPU model, cores, Numba threads and threading layer, load average), go to bench/results/recommend_latency.json.
"""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels import reference as ref
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.recommend import recommend_batch, recommend_one

H = 100
K = 20
RESULTS_PATH = os.path.join(os.path.dirname(__file__), "results", "recommend_latency.json")
CALLS = {40_000: 2000, 700_000: 300}
_results: dict = {}


def _machine() -> dict:
    import numba
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    return {"cpu": cpu, "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "threading_layer": layer, "numpy": np.__version__, "numba": numba.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _save(key: str, value: dict) -> None:
    if hasattr(os, "getloadavg"):
        value["load_average_1min_after"] = os.getloadavg()[0]  # other work on the machine skews the tail
    _results[key] = value
    os.makedirs(os.path.dirname(RESULTS_PATH), exist_ok=True)
    old = {}
    if os.path.exists(RESULTS_PATH):
        try:
            with open(RESULTS_PATH) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            old = {}
    old.setdefault("results", {}).update(_results)
    old["machine"] = _machine()
    old["command"] = "python -m pytest bench/test_bench_recommend.py --benchmark-enable -q -s"
    old["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with open(RESULTS_PATH, "w") as f:
        json.dump(old, f, indent=1)


def _skip_unless_enabled(benchmark) -> None:
    if benchmark.disabled:
        pytest.skip("benchmarks run only with --benchmark-enable")


@pytest.fixture(scope="module", params=[40_000, 700_000], ids=["40k", "700k"])
def model(request):
    n = request.param
    cfg = g.TrainConfig(layers=[H])
    _, params = init_params(cfg, n, seed=1)
    rng = np.random.default_rng(0)
    params["By"][:] = rng.normal(0, 0.1, n).astype(np.float32)
    support = np.floor(1e5 / (1 + rng.permutation(n))).astype(np.float64)
    return g.Model(cfg, 10_000 + 3 * np.arange(n), params, item_support=support)


def _sessions(model, n, seed=0):
    rng = np.random.default_rng(seed)
    return [model.item_ids[rng.integers(0, model.n_items, rng.integers(1, 11))] for _ in range(n)]


def _check(model, sessions, ids, scores):
    """The top-20 of a few sessions equals the reference's (up to float32 rounding)."""
    for s, got_i, got_s in list(zip(sessions, ids, scores))[:3]:
        idx, _ = model.item_index(s)
        sc = ref.score_all(model.params, model.cfg, model.hidden_state(idx)[-1])[0]
        want = np.sort(sc)[::-1][:K]
        np.testing.assert_allclose(sc[np.searchsorted(model.item_ids, got_i)], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_s, want, rtol=1e-5, atol=1e-5)


def _percentiles(ns) -> dict:
    us = np.asarray(ns, dtype=np.float64) / 1e3
    return {"calls": int(us.size), "p50_us": float(np.percentile(us, 50)), "p90_us": float(np.percentile(us, 90)),
            "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean()), "max_us": float(us.max())}


def test_latency_one_session(benchmark, model):
    _skip_unless_enabled(benchmark)
    n_calls = CALLS[model.n_items]
    sessions = _sessions(model, n_calls)
    res = [recommend_one(model, s, k=K) for s in sessions[:3]]
    _check(model, sessions[:3], [r[0] for r in res], [r[1] for r in res])
    for s in sessions[:50]:  # warm-up
        recommend_one(model, s, k=K)
    times = []
    for s in sessions:
        t0 = time.perf_counter_ns()
        recommend_one(model, s, k=K)
        times.append(time.perf_counter_ns() - t0)
    stats = _percentiles(times)
    stats.update(n_items=model.n_items, H=H, k=K, session_length="1..10 (uniform)")
    _save(f"one_session_{model.n_items}", stats)
    print(f"\nrecommend_one N={model.n_items}: p50 {stats['p50_us']:.0f} us  p99 {stats['p99_us']:.0f} us")
    it = iter(sessions * 100)
    benchmark.pedantic(lambda: recommend_one(model, next(it), k=K), rounds=min(n_calls, 500), iterations=1)


@pytest.mark.parametrize("exclude_seen", [False, True], ids=["all", "exclude_seen"])
def test_throughput_batch_of_1000(benchmark, model, exclude_seen):
    _skip_unless_enabled(benchmark)
    sessions = _sessions(model, 1000, seed=1)
    exclude = sessions if exclude_seen else None  # each session never gets its own items back
    ids, scores = recommend_batch(model, sessions[:10], k=K)
    _check(model, sessions[:10], ids, scores)
    recommend_batch(model, sessions, k=K, exclude=exclude)  # warm-up
    reps = 5 if model.n_items < 100_000 else 2
    secs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        recommend_batch(model, sessions, k=K, exclude=exclude)
        secs.append(time.perf_counter() - t0)
    best, med = min(secs), float(np.median(secs))
    key = f"batch_1000_{model.n_items}" + ("_exclude_seen" if exclude_seen else "")
    _save(key, {"n_items": model.n_items, "H": H, "k": K, "batch": 1000, "exclude_seen": exclude_seen, "runs": reps,
                "seconds_median": med, "seconds_best": best, "sessions_per_s_median": 1000 / med})
    print(f"\nrecommend_batch N={model.n_items} exclude_seen={exclude_seen}: 1000 sessions in {med:.3f} s "
          f"({1000 / med:.0f} sessions/s)")
    benchmark.pedantic(lambda: recommend_batch(model, sessions, k=K, exclude=exclude), rounds=reps, iterations=1)


def test_serving_click_and_recommend(benchmark, model):
    _skip_unless_enabled(benchmark)
    if model.n_items > 100_000:
        pytest.skip("serving latency is measured at 40k items")
    srv = g.SessionRecommender(model, max_sessions=10_000)
    rng = np.random.default_rng(2)
    items = model.item_ids[rng.integers(0, model.n_items, 4000)].tolist()
    sids = rng.integers(0, 500, 4000).tolist()
    for s, i in zip(sids[:100], items[:100]):
        srv.click(s, i)
        srv.recommend(s, k=K)
    click_ns, rec_ns = [], []
    for s, i in zip(sids, items):
        t0 = time.perf_counter_ns()
        srv.click(s, i)
        t1 = time.perf_counter_ns()
        srv.recommend(s, k=K)
        t2 = time.perf_counter_ns()
        click_ns.append(t1 - t0)
        rec_ns.append(t2 - t1)
    _save(f"serving_{model.n_items}", {"click": _percentiles(click_ns), "recommend": _percentiles(rec_ns),
                                       "n_items": model.n_items, "H": H, "k": K})
    it = iter(list(zip(sids, items)) * 10)

    def one():
        s, i = next(it)
        srv.click(s, i)
        return srv.recommend(s, k=K)

    benchmark.pedantic(one, rounds=500, iterations=1)


@pytest.mark.parametrize("clients", [1, 8])
def test_serving_under_concurrent_clients(benchmark, model, clients):
    """click + recommend latency when ``clients`` threads serve their own sessions at once (3,000 calls in all):
    the tail that a serving process sees under load. One session is scored on one thread, so requests run side
    by side instead of queueing for a parallel region."""
    import threading
    _skip_unless_enabled(benchmark)
    if model.n_items > 100_000:
        pytest.skip("serving latency is measured at 40k items")
    srv = g.SessionRecommender(model, max_sessions=10_000)
    per = 3000 // clients
    lat: list = [[] for _ in range(clients)]
    for c in range(clients):  # warm-up (compilation) before the clock starts
        srv.click(f"w{c}", int(model.item_ids[c]))
        srv.recommend(f"w{c}", k=K)

    def client(c):
        rng = np.random.default_rng(100 + c)
        items = model.item_ids[rng.integers(0, model.n_items, per)]
        for j in range(per):
            sid = f"c{c}-{j % 50}"
            t0 = time.perf_counter_ns()
            srv.click(sid, int(items[j]))
            srv.recommend(sid, k=K)
            lat[c].append(time.perf_counter_ns() - t0)

    t0 = time.perf_counter()
    ths = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    wall = time.perf_counter() - t0
    stats = _percentiles([x for L in lat for x in L])
    stats.update(clients=clients, calls_per_s=stats["calls"] / wall, n_items=model.n_items, H=H, k=K)
    _save(f"serving_{clients}_clients_{model.n_items}", stats)
    print(f"\nserving, {clients} clients, N={model.n_items}: p50 {stats['p50_us']:.0f} us  p99 {stats['p99_us']:.0f} us"
          f"  max {stats['max_us']:.0f} us  {stats['calls_per_s']:.0f} calls/s")
    benchmark.pedantic(lambda: srv.recommend("c0-0", k=K), rounds=50, iterations=1)


def test_cuda_batch_scoring(benchmark, model):
    """GPU variant: hidden states from the CPU replay, then scores (cuBLAS GEMM through CuPy) and top-k on the
    GPU. Skipped where no GPU is usable (cupy is only imported here)."""
    _skip_unless_enabled(benchmark)
    from gru4rec_kernels.backends import cuda_usable
    ok, why = cuda_usable()
    if not ok or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip(f"no usable GPU: {why}")
    import cupy as cp

    from gru4rec_kernels.recommend import _map_sessions, batch_hidden, engine_for
    sessions = _sessions(model, 1000, seed=3)
    eng = engine_for(model)
    flat, lens = _map_sessions(eng, sessions, "warn")
    Hd = cp.asarray(batch_hidden(eng, flat, lens))
    Wy, By = cp.asarray(model.params["Wy"]), cp.asarray(model.params["By"])

    def run():
        S = Hd @ Wy.T + By
        part = cp.argpartition(-S, K, axis=1)[:, :K]
        top = cp.take_along_axis(S, part, axis=1)
        order = cp.argsort(-top, axis=1)
        out = cp.take_along_axis(part, order, axis=1)
        cp.cuda.get_current_stream().synchronize()
        return out

    got = cp.asnumpy(run())
    want, _ = recommend_batch(model, sessions[:5], k=K)
    assert all(len(set(model.item_ids[got[j]]) & set(want[j])) >= K - 1 for j in range(5))
    run()
    secs = []
    for _ in range(20):
        t0 = time.perf_counter()
        run()
        secs.append(time.perf_counter() - t0)
    med = float(np.median(secs))
    _save(f"cuda_batch_1000_{model.n_items}", {"n_items": model.n_items, "H": H, "k": K, "batch": 1000,
                                               "seconds_median": med, "sessions_per_s_median": 1000 / med,
                                               "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()})
    benchmark.pedantic(run, rounds=20, iterations=1)
