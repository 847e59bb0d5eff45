"""Metrics by hand, the candidate rule, the tie report, and evaluate's argument errors."""
import math
import warnings

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.evaluate import metrics_from_ranks, recommendation_stats, tie_stats
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.synthetic import default_split


@pytest.fixture(scope="module")
def small():
    tr, te = default_split()
    train = g.SessionData.from_pandas(tr)
    test = g.SessionData.from_pandas(te.head(400))
    cfg = g.TrainConfig(layers=[8], n_sample=16, batch_size=8)
    _, params = init_params(cfg, train.n_items)
    params["By"][:] = np.random.default_rng(0).normal(size=train.n_items)
    return train, test, g.Model(cfg, train.item_ids, params, item_support=train.item_support())


def test_ndcg_hit_rate_mrr_by_hand():
    m = metrics_from_ranks([1, 3, np.inf, 25], cutoffs=(1, 5, 20))
    assert m["ndcg"][1] == pytest.approx(1 / 4)
    assert m["ndcg"][5] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["ndcg"][20] == m["ndcg"][5]
    assert m["hit_rate"] == m["recall"] == {1: 0.25, 5: 0.5, 20: 0.5}
    assert m["mrr"][5] == pytest.approx((1 + 1 / 3) / 4)


def test_recommendation_stats_by_hand():
    top = np.array([[0, 1], [0, 2], [0, -1]])
    support = np.array([10.0, 5.0, 1.0, 0.0])
    st = recommendation_stats(top, support, 4)
    assert st["coverage"] == pytest.approx(3 / 4)
    assert st["popularity"] == pytest.approx((10 * 3 + 5 + 1) / 5 / 10)
    # counts per item [3, 1, 1, 0]: sorted [0, 1, 1, 3], Gini = sum((2i - n - 1) x_i) / (n sum x)
    assert st["gini"] == pytest.approx(((-3) * 0 + (-1) * 1 + 1 * 1 + 3 * 3) / (4 * 5))
    assert recommendation_stats(np.zeros((2, 3), int), support, 4)["gini"] == pytest.approx(0.75)


def test_tie_stats():
    t = tie_stats([1, 2, 1, 50], n_items=100)
    assert t["tie_share"] == 0.5 and t["many_tie_share"] == 0.25 and t["many_tie_threshold"] == 10


def test_target_outside_candidates_is_a_miss(small):
    train, test, model = small
    pop = np.argsort(-train.item_support())[:5]
    cand = train.item_ids[pop]
    res = g.evaluate(model, test, cutoffs=(20,), backend="numpy", candidates=cand, return_ranks=True)
    ranks = res["ranks"]
    n_out = int(np.isinf(ranks).sum())
    assert res["targets_outside_candidates"] == n_out > 0
    # at most 5 candidates: every finite rank is <= 5, and recall@20 is the share of targets that are candidates
    assert np.all(ranks[np.isfinite(ranks)] <= 5)
    assert res["recall"][20] == pytest.approx(1 - n_out / ranks.size)
    assert res["recall"][20] < 1.0
    base = POP_scorer_recall(train, test, cand)
    assert base == pytest.approx(res["recall"][20])


def POP_scorer_recall(train, test, cand):
    """POP through the same protocol: every candidate is within the top 20, so recall = candidate share."""
    return g.POP().fit(train).evaluate(test, cutoffs=(20,), candidates=cand)["recall"][20]


def test_degenerate_model_warns_and_reports_ties(small):
    train, test, model = small
    flat = g.Model(model.cfg, model.item_ids, {k: np.zeros_like(v) for k, v in model.params.items()},
                   item_support=model.item_support)
    with pytest.warns(UserWarning, match="tie"):
        res = g.evaluate(flat, test, cutoffs=(1,), backend="numpy")
    assert res["recall"][1] == 1.0  # the official standard rank, kept
    assert res["tie_share"] == 1.0 and res["many_tie_share"] == 1.0
    cons = g.evaluate(flat, test, cutoffs=(1,), backend="numpy", mode="conservative")
    assert cons["recall"][1] == 0.0


def test_random_model_does_not_warn(small):
    _, test, model = small
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = g.evaluate(model, test, cutoffs=(5,), backend="numpy")
    assert res["tie_share"] == 0.0


@pytest.mark.parametrize("bad,err,msg", [
    ("cutoffs", ValueError, "sequence of positive ints"),
    ("dataframe", TypeError, "SessionData.from_pandas"),
])
def test_evaluate_argument_errors(small, bad, err, msg):
    _, test, model = small
    with pytest.raises(err, match=msg):
        if bad == "cutoffs":
            g.evaluate(model, test, cutoffs=5)
        else:
            g.evaluate(model, test.to_pandas())


def test_beyond_accuracy_of_model_and_baseline(small):
    from gru4rec_kernels.evaluate import beyond_accuracy
    train, test, model = small
    pop = g.POP().fit(train)
    b = beyond_accuracy(pop, test, 5)
    assert b["coverage@5"] == pytest.approx(5 / train.n_items)  # POP recommends the same five items
    assert b["popularity@5"] > 0.5
    params = {k: (np.zeros_like(v) if k == "By" else v * 20) for k, v in model.params.items()}
    varied = g.Model(model.cfg, model.item_ids, params, item_support=model.item_support)
    m = beyond_accuracy(varied, test, 5)
    assert m["coverage@5"] > b["coverage@5"]
    assert 0 <= m["gini@5"] <= 1
