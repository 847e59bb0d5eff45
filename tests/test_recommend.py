"""recommend_one / recommend_batch / continue_sequence against the numpy reference, and every input rule."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gru4rec_kernels as g
from gru4rec_kernels import reference as ref
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.recommend import continue_sequence, recommend_batch, recommend_one


# ------------------------------------------------------------------------------------------------ naive references
def naive_scores(model, session_ids):
    """Reference scores of every item after the session (original ids; unknown ones dropped)."""
    pos = np.searchsorted(model.item_ids, session_ids)
    pos = np.minimum(pos, model.n_items - 1)
    idx = pos[model.item_ids[pos] == np.asarray(session_ids)]
    H = model.hidden_state(idx)
    return ref.score_all(model.params, model.cfg, H[-1])[0].astype(np.float64)


def naive_topk(scores, k, allowed=None):
    """Indices of the k best by (score desc, index asc) among ``allowed`` (bool mask) or all."""
    idx = np.arange(scores.size) if allowed is None else np.flatnonzero(allowed)
    order = np.lexsort((idx, -scores[idx]))
    return idx[order][:k]


def assert_matches_reference(model, ids, scores, ref_scores, k, allowed=None, tol=2e-5):
    """The returned list is a top-k of the reference scores, up to float32 rounding: position j's reference
    score equals the j-th best reference score, and the returned scores equal the reference ones."""
    want = naive_topk(ref_scores, k, allowed)
    assert ids.shape == want.shape and scores.dtype == np.float32 and ids.dtype == np.int64
    got_idx = np.searchsorted(model.item_ids, ids)
    np.testing.assert_allclose(ref_scores[got_idx], ref_scores[want], rtol=tol, atol=tol)
    np.testing.assert_allclose(scores, ref_scores[got_idx], rtol=tol, atol=tol)
    assert np.all(np.diff(scores) <= 0)
    if allowed is not None:
        assert allowed[got_idx].all()


# ------------------------------------------------------------------------------------------------ fixtures
def make_model(n_items=97, layers=(7,), mode="constrained", final_act="linear", seed=0, support=None):
    kw = {"constrained": dict(constrained_embedding=True),
          "onehot": dict(constrained_embedding=False, embedding=0),
          "embedding": dict(constrained_embedding=False, embedding=6)}[mode]
    cfg = g.TrainConfig(layers=list(layers), final_act=final_act, **kw)
    _, params = init_params(cfg, n_items, seed=seed)
    rng = np.random.default_rng(seed)
    params["By"][:] = rng.normal(0, 0.5, n_items)
    for k in params:
        if k.startswith("Bh"):
            params[k][:] = rng.normal(0, 0.3, params[k].shape)
    if support is None:
        support = rng.integers(0, 20, n_items).astype(np.float64)
    item_ids = 1000 + 7 * np.arange(n_items)  # not 0..n-1
    return g.Model(cfg, item_ids, params, item_support=support)


@pytest.fixture(scope="module")
def model():
    return make_model()


# ------------------------------------------------------------------------------------------------ correctness
@pytest.mark.parametrize("mode,layers,act", [
    ("constrained", (7,), "linear"), ("onehot", (5, 4), "tanh"), ("embedding", (6,), "elu-0.5"),
    ("constrained", (3, 5), "leaky-0.1"), ("onehot", (8,), "relu"),
])
def test_recommend_one_matches_reference(mode, layers, act):
    m = make_model(layers=layers, mode=mode, final_act=act)
    rng = np.random.default_rng(1)
    for L in (1, 2, 6):
        sess = m.item_ids[rng.integers(0, m.n_items, L)]
        ids, scores = recommend_one(m, sess, k=10)
        assert_matches_reference(m, ids, scores, naive_scores(m, sess), 10)


def test_hidden_state_matches_reference_replay(model):
    from gru4rec_kernels.recommend import engine_for
    rng = np.random.default_rng(2)
    idx = rng.integers(0, model.n_items, 9)
    st_ = engine_for(model).replay(idx)
    np.testing.assert_allclose(st_, model.hidden_state(idx)[0][0], atol=1e-6)


def test_model_recommend_delegates(model):
    sess = model.item_ids[[3, 5, 8]]
    a = model.recommend(sess, k=5)
    b = recommend_one(model, sess, k=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_ties_are_broken_by_item_id():
    m = make_model(n_items=30)
    m.params["Wy"][10:20] = m.params["Wy"][5]  # items 5 and 10..19 score exactly the same
    m.params["By"][10:20] = m.params["By"][5]
    m.params["By"][5] += 100.0  # ... except item 5, which is far ahead
    m.params["By"][10:20] += 50.0  # the ten tied items come right after it
    ids, scores = recommend_one(m, m.item_ids[[1, 2]], k=6)
    np.testing.assert_array_equal(ids, m.item_ids[[5, 10, 11, 12, 13, 14]])
    assert len(set(scores[1:].tolist())) == 1
    bi, bs = recommend_batch(m, [m.item_ids[[1, 2]]] * 3, k=6)
    np.testing.assert_array_equal(bi, np.tile(m.item_ids[[5, 10, 11, 12, 13, 14]], (3, 1)))


def test_results_do_not_depend_on_thread_count(model):
    import numba
    sess = model.item_ids[[4, 40, 60]]
    a = recommend_one(model, sess, k=20)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        b = recommend_one(model, sess, k=20)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sess=st.lists(st.integers(0, 96), min_size=1, max_size=8), k=st.integers(1, 120),
       excl=st.lists(st.integers(0, 96), max_size=10), use_cand=st.booleans(),
       cand=st.lists(st.integers(0, 96), min_size=1, max_size=40))
def test_property_top_k_is_the_reference_top_k(model, sess, k, excl, use_cand, cand):
    ids = model.item_ids[sess]
    allowed = np.zeros(model.n_items, bool)
    if use_cand:
        allowed[cand] = True
    else:
        allowed[:] = True
    allowed[excl] = False
    got_i, got_s = recommend_one(model, ids, k=k, exclude=model.item_ids[excl],
                                 candidates=model.item_ids[cand] if use_cand else None)
    assert got_i.size == min(k, int(allowed.sum()))
    assert_matches_reference(model, got_i, got_s, naive_scores(model, ids), k, allowed)


# ------------------------------------------------------------------------------------------------ rules
def test_unknown_ids_warn_raise_or_ignore(model):
    known = list(model.item_ids[[1, 2]])
    with pytest.warns(UserWarning, match="unknown"):
        a = recommend_one(model, [known[0], 5, known[1]], k=5)
    b = recommend_one(model, known, k=5)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(g.UnknownItemError):
        recommend_one(model, [known[0], 5], on_unknown="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recommend_one(model, [known[0], 5], on_unknown="ignore")
    with pytest.raises(ValueError, match="on_unknown"):
        recommend_one(model, known, on_unknown="skip")


def test_exclude_and_candidates(model):
    sess = model.item_ids[[0, 9]]
    top, _ = recommend_one(model, sess, k=5)
    ids, _ = recommend_one(model, sess, k=5, exclude=top[:2])
    assert not set(top[:2]) & set(ids)
    np.testing.assert_array_equal(ids[:3], top[2:])
    cand = model.item_ids[[3, 7, 11, 50, 60]]
    ids, scores = recommend_one(model, sess, k=10, candidates=list(cand) + [999_999])  # unknown candidate ignored
    assert ids.size == 5 and set(ids) == set(cand)
    ids, _ = recommend_one(model, sess, k=10, candidates=cand, exclude=cand[:2])
    assert set(ids) == set(cand[2:])
    ids, scores = recommend_one(model, sess, k=3, candidates=[5, 6])  # no candidate known: nothing to rank
    assert ids.size == 0 and scores.size == 0


def test_k_larger_than_items(model):
    ids, scores = recommend_one(model, model.item_ids[[1]], k=1000)
    assert ids.size == model.n_items and np.unique(ids).size == model.n_items
    ids, _ = recommend_one(model, model.item_ids[[1]], k=1000, exclude=model.item_ids[:10])
    assert ids.size == model.n_items - 10


def test_popularity_fallback_for_empty_and_unknown_sessions():
    support = np.zeros(97)
    support[[5, 6, 7, 40]] = [3, 9, 9, 1]  # 6 and 7 tie: by id
    m = make_model(support=support)
    for sess in ([], [1, 2, 3], np.array([], dtype=np.int64)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids, scores = recommend_one(m, sess, k=4)
        np.testing.assert_array_equal(ids, m.item_ids[[6, 7, 5, 40]])
        np.testing.assert_array_equal(scores, np.float32([9, 9, 3, 1]))
    ids, _ = recommend_one(m, [], k=3, exclude=m.item_ids[[6]])
    np.testing.assert_array_equal(ids, m.item_ids[[7, 5, 40]])
    ids, _ = recommend_one(m, [], k=3, candidates=m.item_ids[[40, 5, 0]])
    np.testing.assert_array_equal(ids, m.item_ids[[5, 40, 0]])


@pytest.mark.parametrize("bad,match", [
    ("abc", "sequence"), ([[1, 2], [3]], "flat"), ([[1, 2], [3, 4]], "1-D"), ([1.5], "non-integer"),
    ([True, False], "boolean"), (None, "sequence"), (5, "sequence"), (["a"], "integer"), ([1, None], "element 1"),
])
def test_bad_session_input_is_a_clear_value_error(model, bad, match):
    with pytest.raises(ValueError, match=match):
        recommend_one(model, bad)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_bad_k(model, k):
    with pytest.raises(ValueError, match="k must be"):
        recommend_one(model, model.item_ids[[1]], k=k)
    with pytest.raises(ValueError, match="k must be"):
        recommend_batch(model, [model.item_ids[[1]]], k=k)


def test_float_ids_that_are_integers_are_accepted(model):
    a = recommend_one(model, model.item_ids[[1, 2]].astype(np.float64), k=3)
    b = recommend_one(model, model.item_ids[[1, 2]], k=3)
    np.testing.assert_array_equal(a[0], b[0])


# ------------------------------------------------------------------------------------------------ batch
def test_batch_equals_one_by_one(model):
    rng = np.random.default_rng(3)
    sessions = [model.item_ids[rng.integers(0, model.n_items, L)] for L in (3, 1, 0, 7, 2, 12, 1)]
    sessions.append([1, 2])  # all unknown: fallback
    with pytest.warns(UserWarning):
        bi, bs = recommend_batch(model, sessions, k=15)
    assert bi.shape == bs.shape == (len(sessions), 15)
    for j, s in enumerate(sessions):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            oi, os_ = recommend_one(model, s, k=15)
        np.testing.assert_array_equal(bi[j], oi)
        np.testing.assert_allclose(bs[j], os_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,layers", [("onehot", (5, 4)), ("embedding", (6,))])
def test_batch_other_input_modes(mode, layers):
    m = make_model(layers=layers, mode=mode, final_act="tanh")
    rng = np.random.default_rng(4)
    sessions = [m.item_ids[rng.integers(0, m.n_items, L)] for L in (4, 1, 9)]
    bi, bs = recommend_batch(m, np.array(sessions, dtype=object), k=8)
    for j, s in enumerate(sessions):
        assert_matches_reference(m, bi[j], bs[j], naive_scores(m, s), 8)


def test_batch_exclude_candidates_and_padding(model):
    rng = np.random.default_rng(5)
    sessions = [model.item_ids[rng.integers(0, model.n_items, 4)] for _ in range(4)] + [[]]
    # one exclusion list per session: the session's own items
    bi, bs = recommend_batch(model, sessions, k=10, exclude=sessions)
    for j, s in enumerate(sessions):
        oi, _ = recommend_one(model, s, k=10, exclude=s)
        np.testing.assert_array_equal(bi[j], oi)
    # global exclusion + candidates; a row with fewer candidates left is padded with -1 / nan
    cand = model.item_ids[:6]
    bi, bs = recommend_batch(model, sessions, k=10, candidates=cand, exclude=cand[:1])
    assert bi.shape == (5, 5) and set(bi[0]) == set(cand[1:])
    bi, bs = recommend_batch(model, [sessions[0], cand[:3]], k=6, candidates=cand, exclude=[[], cand[:3]])
    assert bi.shape == (2, 6)
    np.testing.assert_array_equal(bi[1, 3:], [-1, -1, -1])
    assert np.isnan(bs[1, 3:]).all() and not np.isnan(bs[1, :3]).any()
    ids, scores = recommend_batch(model, [], k=5)
    assert ids.shape == (0, 5)


def test_batch_bad_input(model):
    with pytest.raises(ValueError, match="sequence of sessions"):
        recommend_batch(model, [1, 2, 3])
    with pytest.raises(ValueError, match="sessions"):
        recommend_batch(model, "1 2 3")
    with pytest.raises(ValueError, match=r"sessions\[1\]"):
        recommend_batch(model, [[1], ["x"]])
    with pytest.raises(ValueError, match="one sequence per session"):
        recommend_batch(model, [[1], [2]], exclude=[[1]])


def test_batch_many_rows_and_items_crosses_tiles_and_chunks():
    from gru4rec_kernels import recommend as R
    m = make_model(n_items=3 * R.MIN_CHUNK_ITEMS + 37, layers=(4,), final_act="elu-1")
    rng = np.random.default_rng(6)
    n = 2 * R.ROWS_PER_TASK + 3  # full 4-row groups and left-over rows
    sessions = [m.item_ids[rng.integers(0, m.n_items, rng.integers(1, 5))] for _ in range(n)]
    excl = m.item_ids[rng.integers(0, m.n_items, 50)]
    for exclude in (excl, [m.item_ids[rng.integers(0, m.n_items, 30)] for _ in range(n)]):
        bi, bs = recommend_batch(m, sessions, k=7, exclude=exclude)
        for j in (0, 5, n - 2, n - 1):
            ex = exclude if exclude is excl else exclude[j]
            oi, os_ = recommend_one(m, sessions[j], k=7, exclude=ex)
            np.testing.assert_array_equal(bi[j], oi)
            np.testing.assert_allclose(bs[j], os_, rtol=1e-5, atol=1e-6)
    # a small batch is split over item chunks instead of row blocks
    bi, bs = recommend_batch(m, sessions[:2], k=9, candidates=m.item_ids[::3])
    for j in range(2):
        np.testing.assert_array_equal(bi[j], recommend_one(m, sessions[j], k=9, candidates=m.item_ids[::3])[0])


def test_batch_is_the_reference_top_k_for_every_row_of_many_blocks():
    """Every row of a batch spanning several row blocks (ROWS_PER_TASK) and item chunks, with per-row
    exclusions and candidates, gets a top-k of the reference scores (float64, from its own hidden state):
    catches a score tile read from the wrong rows, a threshold that drops a true top-k item, an exclusion
    missed or applied to the wrong row. Three calls: the kernel's scratch must not alias freed memory."""
    from gru4rec_kernels import recommend as R
    m = make_model(n_items=2 * R.MIN_CHUNK_ITEMS + 333, layers=(24,), final_act="elu-1", seed=3)
    m.params["By"] *= 0.02  # so that the rows' hidden states, not the shared bias, decide their top-k
    rng = np.random.default_rng(8)
    n = 3 * R.ROWS_PER_TASK + 5
    sessions = [m.item_ids[rng.integers(0, m.n_items, rng.integers(1, 6))] for _ in range(n)]
    ref_scores = [naive_scores(m, s) for s in sessions]
    # row j excludes its own best j % 4 items (so a missed exclusion changes its top-k), some rows random ones too
    exclude = [np.concatenate([m.item_ids[naive_topk(ref_scores[j], j % 4)],
                               m.item_ids[rng.integers(0, m.n_items, 30 * (j % 3 == 1))]]) for j in range(n)]
    cand = np.sort(m.item_ids[rng.choice(m.n_items, 600, replace=False)])
    for candidates in (None, cand):
        for _ in range(3):
            bi, bs = recommend_batch(m, sessions, k=12, exclude=exclude, candidates=candidates)
            for j in range(n):
                allowed = ~np.isin(m.item_ids, exclude[j])
                if candidates is not None:
                    allowed &= np.isin(m.item_ids, candidates)
                assert_matches_reference(m, bi[j], bs[j], ref_scores[j], 12, allowed)


# ------------------------------------------------------------------------------------------------ continuation
def test_continue_sequence_is_greedy_top1(model):
    sess = list(model.item_ids[[2, 30]])
    got = continue_sequence(model, sess, 4)
    cur = list(sess)
    for j in range(4):
        top, _ = recommend_one(model, cur, k=1)
        assert got[j] == top[0]
        cur.append(top[0])
    got = continue_sequence(model, sess, 6, exclude_seen=True)
    assert len(set(got)) == 6 and not set(got) & set(sess)
    assert continue_sequence(model, sess, 0).size == 0
    start = continue_sequence(model, [], 2)  # empty session: starts with the most popular item
    assert start[0] == recommend_one(model, [], k=1)[0][0]
    with pytest.raises(ValueError, match="n must be"):
        continue_sequence(model, sess, -1)


def test_trained_model_recommends_plausible_items():
    """On the synthetic log (strong successor structure), a briefly trained model's top-20 after a session
    contains the true next item far more often than popularity does."""
    from gru4rec_kernels.synthetic import default_split
    tr, te = default_split(n_items=300, n_sessions=3000)
    train = g.SessionData.from_pandas(tr)
    cfg = g.TrainConfig(layers=[16], n_sample=32, batch_size=16, n_epochs=1, learning_rate=0.1)
    m = g.Trainer(cfg, backend="numpy", show_progress=False).fit(train)
    test = g.SessionData.from_pandas(te).remap(m.item_ids)[0]
    sessions, targets = [], []
    for s in range(min(test.n_sessions, 300)):
        items = test.session(s)
        sessions.append(items[:-1])
        targets.append(items[-1])
    ids, _ = recommend_batch(m, sessions, k=20)
    hit = np.mean([t in row for t, row in zip(targets, ids)])
    pop_ids, _ = recommend_one(m, [], k=20)
    pop_hit = np.mean([t in pop_ids for t in targets])
    assert hit > pop_hit + 0.05, (hit, pop_hit)


def test_replacing_a_parameter_array_is_seen():
    m = make_model(n_items=40)
    sess = m.item_ids[[1, 2]]
    before, _ = recommend_one(m, sess, k=3)
    by = m.params["By"].copy()
    by[37] = 1e6
    m.params["By"] = by  # a new array: the cached engine is rebuilt
    after, _ = recommend_one(m, sess, k=3)
    assert after[0] == m.item_ids[37] and before[0] != m.item_ids[37]
    m.params["By"][36] = 2e6  # in place: seen as well (the engine holds references, not copies)
    assert recommend_one(m, sess, k=1)[0][0] == m.item_ids[36]
