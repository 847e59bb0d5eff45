"""SessionRecommender: equal to a replay, fallback, LRU / TTL / history cap, continuation, threads, memory."""
from __future__ import annotations

import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.recommend import continue_sequence, recommend_one


# ------------------------------------------------------------------------------------------------ naive references
def naive_replay_recommend(model, clicks, k, exclude_seen=False):
    """What serving must return: recommend_one over every item the session clicked (the whole replay)."""
    return recommend_one(model, clicks, k=k, exclude=clicks if exclude_seen else None)


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


# ------------------------------------------------------------------------------------------------ fixtures
def make_model(n_items=120, layers=(8,), seed=0):
    cfg = g.TrainConfig(layers=list(layers))
    _, params = init_params(cfg, n_items, seed=seed)
    rng = np.random.default_rng(seed)
    params["By"][:] = rng.normal(0, 0.5, n_items)
    support = rng.integers(0, 50, n_items).astype(np.float64)
    return g.Model(cfg, 500 + 3 * np.arange(n_items), params, item_support=support)


@pytest.fixture(scope="module")
def model():
    return make_model()


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("layers", [(8,), (6, 5)])
def test_serving_equals_replay_of_the_whole_session(layers):
    model = make_model(layers=layers)
    srv = g.SessionRecommender(model)
    rng = np.random.default_rng(0)
    clicks = {sid: [] for sid in range(6)}
    for _ in range(60):  # interleaved sessions, repeats included
        sid = int(rng.integers(0, 6))
        item = int(model.item_ids[rng.integers(0, model.n_items)])
        assert srv.click(sid, item)
        clicks[sid].append(item)
        ids, scores = srv.recommend(sid, k=10)
        want_i, want_s = naive_replay_recommend(model, clicks[sid], 10)
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_array_equal(scores, want_s)  # bit for bit: the same GRU step code
    for sid, c in clicks.items():
        if c:
            ids, scores = srv.recommend(sid, k=15, exclude_seen=True)
            want_i, want_s = naive_replay_recommend(model, c, 15, exclude_seen=True)
            np.testing.assert_array_equal(ids, want_i)
            np.testing.assert_array_equal(scores, want_s)
            np.testing.assert_array_equal(srv.history(sid), c)


def test_unknown_click_warns_and_leaves_the_state_unchanged(model):
    srv = g.SessionRecommender(model)
    srv.click("a", int(model.item_ids[3]))
    before = srv.hidden_state("a")
    with pytest.warns(UserWarning, match="unknown"):
        assert srv.click("a", 1) is False
    np.testing.assert_array_equal(srv.hidden_state("a"), before)
    assert srv.history("a").tolist() == [model.item_ids[3]]
    strict = g.SessionRecommender(model, on_unknown="raise")
    with pytest.raises(g.UnknownItemError):
        strict.click("a", 1)
    quiet = g.SessionRecommender(model, on_unknown="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quiet.click("a", 1) is False
    assert "a" not in quiet  # an unknown first click does not create the session


def test_unknown_empty_and_ended_sessions_get_the_popularity_fallback(model):
    srv = g.SessionRecommender(model)
    pop_i, pop_s = recommend_one(model, [], k=7)
    np.testing.assert_array_equal(pop_i, model.item_ids[np.lexsort((np.arange(model.n_items),
                                                                    -model.item_support))[:7]])
    for sid in ("never-seen", 42, None):
        ids, scores = srv.recommend(sid, k=7)
        np.testing.assert_array_equal(ids, pop_i)
        np.testing.assert_array_equal(scores, pop_s)
    srv.click(1, int(model.item_ids[0]))
    assert srv.end(1) is True and srv.end(1) is False
    np.testing.assert_array_equal(srv.recommend(1, k=7)[0], pop_i)


def test_lru_eviction(model):
    srv = g.SessionRecommender(model, max_sessions=3)
    it = int(model.item_ids[0])
    for sid in "abc":
        srv.click(sid, it)
    srv.recommend("a")  # an access: "b" is now the least recently used
    srv.click("d", it)
    assert len(srv) == 3 and "b" not in srv and {"a", "c", "d"} <= {s for s in "abcd" if s in srv}
    assert srv.n_evicted == 1
    srv.click("e", it)
    assert "c" not in srv


def test_ttl_expiry_with_an_injected_clock(model):
    clock = FakeClock()
    srv = g.SessionRecommender(model, ttl_seconds=10, clock=clock)
    it = int(model.item_ids[5])
    srv.click("old", it)
    clock.t = 6
    srv.click("new", it)
    clock.t = 12  # "old" idle for 12 s > 10, "new" for 6 s
    assert "old" not in srv and "new" in srv and len(srv) == 1
    np.testing.assert_array_equal(srv.recommend("old", k=5)[0], recommend_one(model, [], k=5)[0])
    clock.t = 15
    srv.recommend("new")  # access at 15 keeps it alive until 25
    clock.t = 24
    assert "new" in srv
    clock.t = 25.5
    assert "new" not in srv
    srv.click("old", it)  # starts afresh
    np.testing.assert_array_equal(srv.recommend("old", k=5)[0], recommend_one(model, [it], k=5)[0])
    assert srv.n_expired == 2


def test_history_cap_keeps_the_full_state(model):
    srv = g.SessionRecommender(model, max_history=2)
    clicks = [int(x) for x in model.item_ids[[1, 2, 3, 4]]]
    for c in clicks:
        srv.click("s", c)
    assert srv.history("s").tolist() == clicks[-2:]
    ids, _ = srv.recommend("s", k=10)
    np.testing.assert_array_equal(ids, recommend_one(model, clicks, k=10)[0])  # state = whole session
    ids, _ = srv.recommend("s", k=10, exclude_seen=True)  # only the kept history is excluded
    np.testing.assert_array_equal(ids, recommend_one(model, clicks, k=10, exclude=clicks[-2:])[0])
    none = g.SessionRecommender(model, max_history=0)
    none.click("s", clicks[0])
    assert none.history("s").size == 0


def test_continue_sequence_does_not_modify_the_session(model):
    srv = g.SessionRecommender(model)
    clicks = [int(x) for x in model.item_ids[[7, 8, 9]]]
    for c in clicks:
        srv.click("s", c)
    before = srv.hidden_state("s")
    got = srv.continue_sequence("s", 5)
    np.testing.assert_array_equal(got, continue_sequence(model, clicks, 5))
    np.testing.assert_array_equal(srv.hidden_state("s"), before)
    assert srv.history("s").tolist() == clicks
    got = srv.continue_sequence("s", 5, exclude_seen=True)
    assert len(set(got.tolist()) | set(clicks)) == 8
    np.testing.assert_array_equal(srv.continue_sequence("nobody", 3), continue_sequence(model, [], 3))


def test_bad_arguments(model):
    for kw in (dict(max_sessions=0), dict(ttl_seconds=-1), dict(max_history=-2), dict(on_unknown="x"),
               dict(max_sessions=2.5)):
        with pytest.raises(ValueError):
            g.SessionRecommender(model, **kw)
    srv = g.SessionRecommender(model)
    with pytest.raises(ValueError, match="hashable"):
        srv.click(["list"], int(model.item_ids[0]))
    with pytest.raises(ValueError, match="integer"):
        srv.click("s", "item-1")
    with pytest.raises(ValueError, match="integer"):
        srv.click("s", 1.5)
    with pytest.raises(ValueError, match="k must be"):
        srv.recommend("s", k=0)


def test_threads_give_the_same_results_as_one_thread(model):
    rng = np.random.default_rng(1)
    n_threads, per_thread = 4, 6
    plans = {t: [(f"t{t}-s{j}", int(model.item_ids[i])) for j in range(per_thread)
                 for i in rng.integers(0, model.n_items, 5)] for t in range(n_threads)}
    for p in plans.values():
        rng.shuffle(p)

    def run(srv, plan, out):
        for sid, item in plan:
            srv.click(sid, item)
            out[sid] = srv.recommend(sid, k=10)

    single = g.SessionRecommender(model)
    want = {}
    for t in range(n_threads):
        run(single, plans[t], want)
    multi = g.SessionRecommender(model)
    got: dict = {}
    threads = [threading.Thread(target=run, args=(multi, plans[t], got)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert set(got) == set(want)
    for sid in want:
        np.testing.assert_array_equal(got[sid][0], want[sid][0])
        np.testing.assert_array_equal(got[sid][1], want[sid][1])
        np.testing.assert_array_equal(multi.hidden_state(sid), single.hidden_state(sid))
    # many threads on ONE session: no click is lost (the order among threads is free)
    shared = g.SessionRecommender(model)
    item = int(model.item_ids[0])
    ths = [threading.Thread(target=lambda: [shared.click("x", item) for _ in range(50)]) for _ in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert shared.history("x").size == 200
    np.testing.assert_array_equal(shared.recommend("x", k=5)[0], recommend_one(model, [item] * 200, k=5)[0])


def test_memory_stays_flat_under_the_lru_bound():
    model = make_model(n_items=50, layers=(4,))
    srv = g.SessionRecommender(model, max_sessions=1000, max_history=4)
    item = int(model.item_ids[1])
    for sid in range(2000):  # warm up: the dict reaches its bound, the kernels are compiled
        srv.click(sid, item)
    tracemalloc.start()
    try:
        for sid in range(2000, 4000):  # the whole live set is replaced under tracing: that is the steady state
            srv.click(sid, item)
        base, _ = tracemalloc.get_traced_memory()
        for sid in range(4000, 200_000):
            srv.click(sid, item)
        now, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(srv) == 1000 and srv.n_evicted == 199_000
    assert now - base < 64 * 1024, f"memory grew by {now - base} bytes over 196,000 new sessions"
