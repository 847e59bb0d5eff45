"""supp^alpha sample store: distribution, counter-keyed determinism, worker thread, resume."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy.stats import chisquare

from gru4rec_kernels.rng import MASK32, STREAM_SAMPLES, philox2x32_np
from gru4rec_kernels.sampling import SampleStore, draw_samples_np, sample_probabilities


def _support(n=40, seed=0):
    sup = np.random.default_rng(seed).integers(0, 200, n).astype(np.float64)
    sup[[3, 17]] = 0.0  # zero-support items must never be drawn
    return sup


def test_probabilities():
    sup = _support()
    for alpha in (0.0, 0.5, 1.0):
        p = SampleStore(sup, alpha, 0, 1, 0).probabilities()
        assert p.dtype == np.float64 and abs(p.sum() - 1) < 1e-12 and p[3] == 0 and p[17] == 0
    p0 = sample_probabilities(sup, 0.0)
    np.testing.assert_allclose(p0[sup > 0], 1.0 / (sup > 0).sum())
    np.testing.assert_allclose(sample_probabilities(sup, 1.0), sup / sup.sum())
    np.testing.assert_allclose(sample_probabilities(sup, 0.5), np.sqrt(sup) / np.sqrt(sup).sum())


def test_store_is_the_counter_keyed_stream():
    sup = _support(1000, 1)
    seed = 123
    s = SampleStore(sup, 0.5, 50_000, 100, seed)
    # by hand: element i of refill r = searchsorted(cdf, uniform53(philox(i, r, key)), right)
    key = (seed ^ STREAM_SAMPLES) & MASK32
    x0, x1 = philox2x32_np(np.arange(50_000, dtype=np.uint64), np.uint64(0), key)
    u = ((x0 >> np.uint64(5)).astype(np.float64) * 67108864.0 + (x1 >> np.uint64(6)).astype(np.float64)) / 2.0 ** 53
    p = sample_probabilities(sup, 0.5)
    cdf = np.cumsum(p) / np.cumsum(p)[-1]
    expect = np.searchsorted(cdf, u, side="right").astype(np.int32)
    got = np.concatenate([s.next() for _ in range(500)])
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(s.next(), draw_samples_np(sup, 0.5, seed, 1, 100))  # refill 1 begins
    assert s.state() == {"refill": 1, "pos": 100}


def test_chi_square_goodness_of_fit():
    sup = _support(60, 2)
    for alpha in (0.0, 0.5, 1.0):
        s = SampleStore(sup, alpha, 300_000, 1000, seed=7)
        draws = np.concatenate([s.next() for _ in range(300)])
        counts = np.bincount(draws, minlength=sup.size)
        p = s.probabilities()
        assert counts[p == 0].sum() == 0
        pos = p > 0
        stat = chisquare(counts[pos], p[pos] * draws.size)
        assert stat.pvalue > 1e-3, (alpha, stat)
    # alpha moves mass towards popular items: the top item's empirical share grows with alpha
    top = int(np.argmax(sup))
    shares = []
    for alpha in (0.0, 0.5, 1.0):
        d = SampleStore(sup, alpha, 100_000, 100_000, seed=1).next()
        shares.append(np.mean(d == top))
    assert shares[0] < shares[1] < shares[2]
    np.testing.assert_allclose(shares, [sample_probabilities(sup, a)[top] for a in (0.0, 0.5, 1.0)], rtol=0.1)


def test_independent_of_thread_count():
    sup = _support(5000, 3)
    before = numba.get_num_threads()
    outs = []
    try:
        for nt in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(nt)
            s = SampleStore(sup, 0.75, 200_000, 10_000, seed=9)
            outs.append(s.next_many(20))  # 20 x 10,000 = the first full refill
    finally:
        numba.set_num_threads(before)
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)
    np.testing.assert_array_equal(outs[0].ravel(), draw_samples_np(sup, 0.75, 9, 0, 200_000))


@pytest.mark.parametrize("T", [1, 3, 16])
def test_next_many_equals_successive_next(T):
    sup = _support(300, 4)
    one, many = SampleStore(sup, 0.5, 1000, 64, seed=5), SampleStore(sup, 0.5, 1000, 64, seed=5)
    rows = [one.next() for _ in range(80)]  # 15 draws per store of 1000 (the 40-id tail is skipped): ~5 refills
    got = np.concatenate([many.next_many(min(T, 80 - t)) for t in range(0, 80, T)])
    np.testing.assert_array_equal(np.stack(rows), got)
    assert one.state() == many.state() == {"refill": 5, "pos": 5 * 64}


def test_no_thread_and_no_store_memory():
    import threading
    n0 = threading.active_count()
    s = SampleStore(_support(1000, 1), 0.5, 10_000_000, 2048, seed=1)
    s.next_many(4)
    assert threading.active_count() == n0  # nothing runs beside the training thread
    assert sum(getattr(v, "nbytes", 0) for v in vars(s).values()) < 100_000  # no 40 MB store is held


def test_tail_skip_and_fresh_rows():
    sup = _support(50, 5)
    s = SampleStore(sup, 0.5, 10, 4, seed=3)
    store0 = draw_samples_np(sup, 0.5, 3, 0, 10)
    store1 = draw_samples_np(sup, 0.5, 3, 1, 10)
    a, b, c = s.next(), s.next(), s.next()
    np.testing.assert_array_equal(a, store0[0:4])
    np.testing.assert_array_equal(b, store0[4:8])
    np.testing.assert_array_equal(c, store1[0:4])  # store0[8:10] is skipped
    assert a.dtype == np.int32 and a.shape == (4,)
    a[0] = -1  # each row is the caller's own array: writing to it changes no later draw
    s.set_state({"refill": 0, "pos": 0})
    np.testing.assert_array_equal(s.next(), store0[0:4])
    s.close()


def test_state_resume():
    sup = _support(200, 6)
    s = SampleStore(sup, 0.5, 1000, 96, seed=11)
    for _ in range(25):
        s.next()
    st = s.state()
    ahead = [s.next().copy() for _ in range(30)]
    r = SampleStore(sup, 0.5, 1000, 96, seed=11)
    r.set_state(st)
    assert r.state() == st
    for a in ahead:
        np.testing.assert_array_equal(r.next(), a)
    # jump back on the same object
    s.set_state(st)
    np.testing.assert_array_equal(s.next(), ahead[0])
    with pytest.raises(ValueError, match="state"):
        s.set_state({"refill": -1, "pos": 0})
    with pytest.raises(ValueError, match="not a SampleStore state"):
        s.set_state({})
    s.close()
    r.close()


def test_store_size_zero_draws_fresh():
    sup = _support(100, 7)
    s = SampleStore(sup, 0.5, 0, 32, seed=2)
    a, b = s.next(), s.next()
    np.testing.assert_array_equal(a, draw_samples_np(sup, 0.5, 2, 0, 32))
    np.testing.assert_array_equal(b, draw_samples_np(sup, 0.5, 2, 1, 32))
    assert not np.array_equal(a, b) and s.state() == {"refill": 2, "pos": 0}
    r = SampleStore(sup, 0.5, 0, 32, seed=2)
    r.set_state({"refill": 1, "pos": 0})
    np.testing.assert_array_equal(r.next(), b)
    assert SampleStore(sup, 0.5, 0, 0, seed=2).next().shape == (0,)
    assert SampleStore(sup, 0.5, 100, 0, seed=2).next().shape == (0,)


def test_seed_changes_stream():
    sup = _support(100, 8)
    a = SampleStore(sup, 0.5, 500, 500, seed=1).next()
    b = SampleStore(sup, 0.5, 500, 500, seed=2).next()
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("support,msg", [
    (np.ones((2, 3)), "1-D"),
    (np.array([1.0, np.nan]), "non-finite"),
    (np.array([1.0, np.inf]), "non-finite"),
    (np.array([1.0, -1.0]), "negative"),
    (np.zeros(4), "positive"),
    (np.array([]), "empty"),
    (np.array(["a", "b"]), "numeric"),
])
def test_bad_support(support, msg):
    with pytest.raises(ValueError, match=msg):
        SampleStore(support, 0.5, 10, 2, 0)


def test_bad_arguments():
    sup = np.ones(5)
    with pytest.raises(ValueError, match="alpha"):
        SampleStore(sup, -0.5, 10, 2, 0)
    with pytest.raises(ValueError, match="store_size"):
        SampleStore(sup, 0.5, 5, 10, 0)
    with pytest.raises(ValueError, match="store_size"):
        SampleStore(sup, 0.5, -1, 10, 0)
    with pytest.raises(ValueError, match="n_sample"):
        SampleStore(sup, 0.5, 10, -1, 0)
