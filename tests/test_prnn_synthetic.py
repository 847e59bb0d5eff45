"""The synthetic log with category-driven behaviour: its properties, and a feature subnet that helps where IDs
cannot learn (events whose input item is rare), trained with the reference at tiny sizes."""
import warnings

import numpy as np
import pytest
from prnn_steps import fit_reference, rank_reference

from gru4rec_kernels.config import TrainConfig
from gru4rec_kernels.data import SessionData
from gru4rec_kernels.features import ItemFeatures
from gru4rec_kernels.preprocess import filter_support, split_by_time
from gru4rec_kernels.prnn_config import PRNNConfig
from gru4rec_kernels.prnn_layout import PRNNLayout
from gru4rec_kernels.synthetic import generate_category_clicks


def test_category_clicks_follow_the_successor_category():
    clicks, cats = generate_category_clicks(n_items=500, n_categories=10, n_sessions=3000, seed=5, p_category=0.8)
    again, cats2 = generate_category_clicks(n_items=500, n_categories=10, n_sessions=3000, seed=5, p_category=0.8)
    assert clicks.equals(again) and cats.equals(cats2)
    assert cats["ItemId"].is_unique and len(cats) == 500 and cats["Category"].nunique() == 10
    assert set(clicks["ItemId"]) <= set(cats["ItemId"])
    cat = dict(zip(cats["ItemId"], cats["Category"]))
    same = clicks["SessionId"].to_numpy()[1:] == clicks["SessionId"].to_numpy()[:-1]
    a = np.array([cat[i] for i in clicks["ItemId"].to_numpy()[:-1][same]])
    b = np.array([cat[i] for i in clicks["ItemId"].to_numpy()[1:][same]])
    # the most frequent next category of each category takes ~p_category plus chance of the transitions
    share = np.mean([np.max(np.unique(b[a == c], return_counts=True)[1]) / (a == c).sum() for c in np.unique(a)])
    assert 0.78 < share < 0.9
    counts = clicks["ItemId"].value_counts()
    assert (counts <= 5).mean() > 0.15  # a long tail of rare items


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="n_categories"):
        generate_category_clicks(n_items=5, n_categories=6)
    with pytest.raises(ValueError, match="p_category"):
        generate_category_clicks(p_category=0.8, p_successor=0.3)


def test_a_feature_subnet_helps_where_ids_cannot_learn():
    clicks, cats = generate_category_clicks(n_items=2000, n_categories=20, n_sessions=2000, seed=3)
    train, test = split_by_time(filter_support(clicks, 1, 2), 2.5, min_session_length=2)
    train = SessionData.from_pandas(train)
    test, _ = SessionData.from_pandas(test).remap(train.item_ids)
    with warnings.catch_warnings():  # items of the catalogue never clicked in train are not in the map
        warnings.simplefilter("error")
        feat = ItemFeatures.from_frame(cats, train.item_ids, columns=["Category"], name="category")
    assert feat.n_missing == 0 and feat.n_unknown > 0
    cfg = TrainConfig(layers=[16], batch_size=32, n_sample=32, learning_rate=0.1, n_epochs=1)
    rare = train.item_support() <= 5
    recall = {}
    for arch in ("id", "parallel"):
        prnn = PRNNConfig.for_architecture(arch, [] if arch == "id" else ["category"])
        layout = PRNNLayout(cfg, prnn, train.n_items, [] if arch == "id" else [feat])
        ranks, inputs = rank_reference(fit_reference(layout, train), layout, test)
        hit = ranks <= 20
        recall[arch] = (hit.mean(), hit[rare[inputs]].mean())
    assert rare[inputs].sum() > 300
    # measured at this seed: recall@20 after a rare input 0.40 (ID) vs 0.58 (p-RNN), all events 0.53 vs 0.64;
    # generator seeds 1, 2 and 4 gave rare-input gaps of 0.13 to 0.21 and all-event gaps of 0.06 to 0.10
    assert recall["parallel"][1] > recall["id"][1] + 0.08, recall
    assert recall["parallel"][0] > recall["id"][0] + 0.03, recall
