"""POP, S-POP and item-kNN on hand-computed toys, the vectorised item-kNN against a naive one, and the shared
evaluation protocol (the baselines and the model count and rank the same way)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import dataset

import gru4rec_kernels as g
from gru4rec_kernels.evaluate import evaluate, evaluate_scorer


# ------------------------------------------------------------------------------------------------ naive references
def naive_cooccurrence_sim(sessions, n_items, lmbd):
    """sim[i, j] = #sessions with both / (sqrt(#with i * #with j) + lmbd), sim[i, i] = 0; Python loops."""
    n = np.zeros(n_items)
    both = np.zeros((n_items, n_items))
    for s in sessions:
        u = sorted(set(s))
        for i in u:
            n[i] += 1
            for j in u:
                if i != j:
                    both[i, j] += 1
    sim = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            if i != j and both[i, j] > 0:
                sim[i, j] = both[i, j] / (math.sqrt(n[i] * n[j]) + lmbd)
    return sim


def naive_keep_top(sim, n_neighbors):
    out = np.zeros_like(sim)
    for i in range(sim.shape[0]):
        nz = [j for j in range(sim.shape[1]) if sim[i, j] != 0]
        nz.sort(key=lambda j: (-sim[i, j], j))
        for j in nz[:n_neighbors]:
            out[i, j] = sim[i, j]
    return out


# ------------------------------------------------------------------------------------------------ the toy
A, B, C, D = 10, 20, 30, 40


def toy_train():
    """s1: A B | s2: A B C | s3: B C | s4: C D C.
    Events (support): A 2, B 3, C 4, D 1. Sessions containing: A 2, B 3, C 3, D 1.
    Co-occurring sessions: AB 2 (s1, s2), AC 1 (s2), BC 2 (s2, s3), CD 1 (s4), AD 0, BD 0."""
    return g.SessionData.from_arrays([1, 1, 2, 2, 2, 3, 3, 4, 4, 4], [A, B, A, B, C, B, C, C, D, C],
                                     np.arange(10.0))


def toy_test():
    """t1: A B C (evaluated: A -> B, A B -> C); t2: A X (X unknown: dropped, then the session is too short)."""
    return g.SessionData.from_arrays([7, 7, 7, 8, 8], [A, B, C, A, 99], [100.0, 101, 102, 103, 104])


# ------------------------------------------------------------------------------------------------ POP
def test_pop_hand_computed():
    pop = g.POP().fit(toy_train())
    ids, scores = pop.recommend([A], k=10)
    assert ids.tolist() == [C, B, A, D] and scores.tolist() == [4, 3, 2, 1]
    ids, _ = pop.recommend([D, D], k=2, exclude=[C])
    assert ids.tolist() == [B, A]
    ids, _ = pop.recommend([], k=2, candidates=[A, D, 99])
    assert ids.tolist() == [A, D]
    # ranks: A -> B: C beats B, rank 2; A B -> C: rank 1
    res = pop.evaluate(toy_test(), cutoffs=(1, 2), return_ranks=True)
    assert res["ranks"].tolist() == [2.0, 1.0]
    assert res["recall"] == {1: 0.5, 2: 1.0} and res["mrr"] == {1: 0.5, 2: 0.75}
    assert res["n_events"] == 2 and res["unknown_events"] == 1 and res["dropped_sessions"] == 1


# ------------------------------------------------------------------------------------------------ S-POP
def test_spop_hand_computed():
    spop = g.SPOP().fit(toy_train())
    # base = support / (max support + 1) = support / 5: A .4, B .6, C .8, D .2
    # session D A D: counts D 2, A 1 -> D 2.2, A 1.4, C 0.8, B 0.6
    ids, scores = spop.recommend([D, A, D], k=4)
    assert ids.tolist() == [D, A, C, B]
    np.testing.assert_allclose(scores, [2.2, 1.4, 0.8, 0.6])
    # a tie in the session count is broken by popularity: A B -> B 1.6, A 1.4, then C .8, D .2
    assert spop.recommend([A, B], k=4)[0].tolist() == [B, A, C, D]
    assert spop.recommend([], k=4)[0].tolist() == [C, B, A, D]  # empty session: global popularity
    # ranks: prefix A: A 1.4 > C .8 > B .6 -> B rank 3; prefix A B: A 1.4, B 1.6 > C .8 -> C rank 3
    res = spop.evaluate(toy_test(), cutoffs=(2, 3), return_ranks=True)
    assert res["ranks"].tolist() == [3.0, 3.0]
    assert res["recall"] == {2: 0.0, 3: 1.0}
    assert res["mrr"][3] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ item-kNN
def test_itemknn_hand_computed_cosine():
    knn = g.ItemKNN(lmbd=0.0).fit(toy_train())
    s6 = math.sqrt(6)
    # from the last item only: session ... C -> B 2/3, D 1/sqrt3, A 1/sqrt6, C itself 0
    ids, scores = knn.recommend([A, C], k=4)
    assert ids.tolist() == [B, D, A, C]
    np.testing.assert_allclose(scores, [2 / 3, 1 / math.sqrt(3), 1 / s6, 0.0])
    ids, scores = knn.recommend([C, A], k=3)  # last item A: B 2/sqrt6, C 1/sqrt6, then D 0 (tie with A: by id)
    assert ids.tolist() == [B, C, A]
    np.testing.assert_allclose(scores, [2 / s6, 1 / s6, 0.0])
    nb_ids, nb_sims = knn.neighbors(B)
    assert nb_ids.tolist() == [A, C]
    np.testing.assert_allclose(nb_sims, [2 / s6, 2 / 3])
    # ranks: last A -> B best, rank 1; last B -> A 2/sqrt6 > C 2/3 -> rank 2
    res = knn.evaluate(toy_test(), cutoffs=(1, 2), return_ranks=True)
    assert res["ranks"].tolist() == [1.0, 2.0]
    assert res["mrr"] == {1: 0.5, 2: 0.75}


def test_itemknn_regularisation_and_neighbour_cut():
    knn = g.ItemKNN(lmbd=1.0).fit(toy_train())
    s6 = math.sqrt(6)
    # lambda 1: C -> B 2/(3+1) = .5, D 1/(sqrt3+1), A 1/(sqrt6+1)
    ids, scores = knn.recommend([C], k=3)
    assert ids.tolist() == [B, D, A]
    np.testing.assert_allclose(scores, [0.5, 1 / (math.sqrt(3) + 1), 1 / (s6 + 1)])
    one = g.ItemKNN(n_neighbors=1, lmbd=1.0).fit(toy_train())
    ids, scores = one.recommend([C], k=4)  # only B is kept for C; the rest tie at 0, by id
    assert ids.tolist() == [B, A, C, D]
    np.testing.assert_allclose(scores, [0.5, 0, 0, 0])


@pytest.mark.parametrize("lmbd,n_neighbors", [(0.0, 100), (20.0, 3)])
def test_itemknn_vectorised_equals_naive(lmbd, n_neighbors):
    from gru4rec_kernels.synthetic import generate_clicks
    df = generate_clicks(n_items=60, n_sessions=400, seed=3)
    train = g.SessionData.from_pandas(df)
    knn = g.ItemKNN(n_neighbors=n_neighbors, lmbd=lmbd).fit(train)
    sessions = [train.items[train.offsets[s]:train.offsets[s + 1]] for s in range(train.n_sessions)]
    want = naive_keep_top(naive_cooccurrence_sim(sessions, train.n_items, lmbd), n_neighbors)
    np.testing.assert_allclose(knn.sim.toarray(), want, rtol=1e-12, atol=0)


def test_baseline_input_rules():
    pop = g.POP()
    with pytest.raises(RuntimeError, match="fit"):
        pop.recommend([A])
    with pytest.raises(TypeError, match="SessionData"):
        pop.fit([[A, B]])
    pop.fit(toy_train())
    with pytest.warns(UserWarning, match="unknown"):
        pop.recommend([A, 99])
    with pytest.raises(g.UnknownItemError):
        pop.recommend([99], on_unknown="raise")
    with pytest.raises(ValueError, match="k must be"):
        pop.recommend([A], k=0)
    with pytest.raises(ValueError):
        pop.recommend([[A], [B, C]])
    for kw in (dict(n_neighbors=0), dict(lmbd=-1), dict(lmbd=float("nan"))):
        with pytest.raises(ValueError):
            g.ItemKNN(**kw)
    assert g.ItemKNN().fit(toy_train()).recommend([99], k=2, on_unknown="ignore")[0].tolist() == [C, B]


# ------------------------------------------------------------------------------------------------ the shared protocol
def test_baselines_and_model_share_the_protocol():
    """A scorer that replays the model through the numpy reference, evaluated with evaluate_scorer, gives the
    model's own evaluate() result: same counts of dropped events / sessions, same ranks, same metrics."""
    from gru4rec_kernels import reference as ref
    from gru4rec_kernels.layout import init_params
    from gru4rec_kernels.synthetic import default_split
    tr, te = default_split(n_items=80, n_sessions=600)
    train, test = g.SessionData.from_pandas(tr), g.SessionData.from_pandas(te)
    # make some test items unknown to the model: its item map lacks the 5 most popular training items
    keep = np.sort(np.argsort(-train.item_support(), kind="stable")[5:])
    cfg = g.TrainConfig(layers=[6])
    _, params = init_params(cfg, keep.size)
    model = g.Model(cfg, train.item_ids[keep], params, item_support=train.item_support()[keep])

    def scorer(data, sess, ends):
        out = []
        for s, e in zip(sess, ends):
            H = model.hidden_state(data.items[data.offsets[s]:e])
            out.append(ref.score_all(model.params, cfg, H[-1])[0])
        return np.array(out)

    for mode in ("standard", "conservative", "median"):
        a = evaluate(model, test, cutoffs=(5, 20), mode=mode, backend="numpy", return_ranks=True)
        b = evaluate_scorer(scorer, model.item_ids, test, cutoffs=(5, 20), mode=mode, return_ranks=True)
        assert set(a) == set(b)
        for key in ("n_events", "unknown_events", "dropped_sessions", "mode", "cutoffs"):
            assert a[key] == b[key]
        assert a["unknown_events"] > 0 and a["dropped_sessions"] > 0
        np.testing.assert_allclose(np.sort(a["ranks"]), np.sort(b["ranks"]))
        assert a["recall"] == pytest.approx(b["recall"]) and a["mrr"] == pytest.approx(b["mrr"])
    pop = g.POP().fit(train).evaluate(test, cutoffs=(5, 20))
    assert set(pop) == set(a) - {"ranks"}
    # candidates restrict the ranking the same way for everyone
    cand = train.item_ids[np.argsort(-train.item_support())[:40]]
    a = evaluate(model, test, cutoffs=(5,), backend="numpy", candidates=cand, return_ranks=True)
    b = evaluate_scorer(scorer, model.item_ids, test, cutoffs=(5,), candidates=cand, return_ranks=True)
    np.testing.assert_allclose(np.sort(a["ranks"]), np.sort(b["ranks"]))


def test_real_data_baselines_in_the_expected_order():
    import os
    d = str(dataset("rsc15_100k_sessionrec"))
    if not os.path.isdir(d):
        pytest.skip("shared rsc15 sample not available")
    train = g.SessionData.from_csv(os.path.join(d, "yoochoose-clicks-100k_train_full.txt.gz"), sep="\t")
    test = g.SessionData.from_csv(os.path.join(d, "yoochoose-clicks-100k_test.txt.gz"), sep="\t")
    r = {b.name: b.fit(train).evaluate(test, cutoffs=(20,)) for b in (g.POP(), g.SPOP(), g.ItemKNN())}
    # the ordering reported for RSC15 in the GRU4Rec paper: POP << S-POP < item-kNN on recall@20
    assert r["POP"]["recall"][20] < r["S-POP"]["recall"][20] < r["item-kNN"]["recall"][20]
    assert r["POP"]["n_events"] == r["item-kNN"]["n_events"] > 10_000
