"""The p-RNN end to end on the numpy reference: Trainer fit = a loop over reference_prnn steps, the strategies'
frozen subnets, the ID architecture = GRU4Rec, evaluate / recommend / serving / model file, the CLI, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from gru4rec_kernels import reference_prnn as rp
from gru4rec_kernels.backends.prnn_numpy import PRNNNumpyBackend
from gru4rec_kernels.batching import EpochSchedule
from gru4rec_kernels.config import TrainConfig
from gru4rec_kernels.data import SessionData
from gru4rec_kernels.evaluate import evaluate
from gru4rec_kernels.features import ItemFeatures
from gru4rec_kernels.model import Model, ModelFileError
from gru4rec_kernels.modelfile import decode_safetensors, encode_safetensors
from gru4rec_kernels.prnn_config import PRNNConfig
from gru4rec_kernels.prnn_layout import PRNNLayout, init_prnn_params
from gru4rec_kernels.reference import StepInputs, zeros_like_params
from gru4rec_kernels.sampling import SampleStore
from gru4rec_kernels.serving import SessionRecommender
from gru4rec_kernels.synthetic import generate_category_clicks
from gru4rec_kernels.trainer import Trainer

STRATEGIES = ("simultaneous", "alternating", "interleaving", "residual")


@pytest.fixture(scope="module")
def data():
    clicks, cats = generate_category_clicks(n_items=120, n_categories=8, n_sessions=150, seed=4)
    train = SessionData.from_pandas(clicks)
    cat = ItemFeatures.from_frame(cats, train.item_ids, item_key="ItemId", name="category")
    rng = np.random.default_rng(0)
    img = ItemFeatures.from_matrix(rng.normal(size=(train.n_items, 3)), train.item_ids, train.item_ids, name="img")
    return train, cat, img, clicks, cats


def small_cfg(**kw):
    base = dict(layers=[6], batch_size=8, n_sample=5, n_epochs=2, embedding=0, constrained_embedding=True,
                momentum=0.3, dropout_p_hidden=0.2, dropout_p_embed=0.1, logq=0.5, sample_store_size=97)
    return TrainConfig(**{**base, **kw})


def fit(train, cfg, prnn, features, **kw):
    return Trainer(cfg, backend="numpy", show_progress=False, prnn=prnn, features=features, **kw).fit(train)


def loop_reference(train, layout: PRNNLayout, dtype=np.float32):
    """The trainer's run written as a loop over reference_prnn.train_step: same init, sampler, logq columns,
    masks and the strategy's phase at every global step. (params, per-epoch losses)."""
    from gru4rec_kernels.trainer import logq_columns
    cfg, prnn = layout.cfg, layout.prnn
    _, params = init_prnn_params(layout, dtype)
    opt = {"acc": zeros_like_params(params), "mom": zeros_like_params(params)}
    support = train.item_support()
    store = SampleStore(support, cfg.sample_alpha, cfg.sample_store_size, cfg.n_sample, cfg.seed)
    lq_t, lq_s = logq_columns(cfg, support)
    B, step, epoch_losses = cfg.batch_size, 0, []
    for epoch in range(cfg.n_epochs):
        H = [[np.zeros((B, h), dtype) for h in sub.layers] for sub in layout.subnets]
        loss_sum, n_events = 0.0, 0
        for ch in EpochSchedule(train.offsets, train.items, B).chunks(3):
            samples = store.next_many(ch.n_steps)
            for t in range(ch.n_steps):
                Y = np.concatenate([ch.targets[t], samples[t]]).astype(np.int64)
                col_logq = np.concatenate([lq_t[Y[:B]], lq_s[Y[B:]]]).astype(dtype)
                st = StepInputs(X=ch.inputs[t].astype(np.int64), Y=Y, active=ch.active[t], reset=ch.reset[t],
                                col_logq=col_logq)
                loss, H = rp.train_step(params, opt, layout, H, st, rp.dropout_masks(layout, step, B, dtype),
                                        prnn.phase(epoch, step, cfg.n_epochs))
                loss_sum += loss
                step += 1
            n_events += int(ch.n_events)
        epoch_losses.append(loss_sum * B / n_events)
    store.close()
    return params, epoch_losses


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fit_equals_reference_loop(data, strategy):
    """Trainer + PRNNNumpyBackend (chunks of 5 steps, so interleaving's phase changes fall inside chunks) give
    the reference loop's parameters and epoch losses bit for bit; both feature kinds, dropout, logq, momentum."""
    train, cat, img, *_ = data
    cfg = small_cfg(n_epochs=3 if strategy == "residual" else 2)
    prnn = PRNNConfig.for_architecture("parallel", ["category", "img"], layers=[[6], [4], [3]],
                                       scales=[1.0, 0.7, 1.3], strategy=strategy)
    model = Trainer(cfg, backend="numpy", show_progress=False, chunk_steps=5, prnn=prnn,
                    features=[cat, img]).fit(train)
    want, losses = loop_reference(train, PRNNLayout(cfg, prnn, train.n_items, [cat, img]))
    assert set(model.params) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)
    assert [h["loss"] for h in model.history] == losses


def test_backend_chunk_equals_reference_steps_float64(data):
    """The backend's train_chunk in float64 = reference_prnn steps in float64, bit for bit, phases per step."""
    train, cat, img, *_ = data
    cfg = small_cfg(logq=0.0)
    prnn = PRNNConfig.for_architecture("parallel", ["category", "img"], strategy="interleaving")
    layout = PRNNLayout(cfg, prnn, train.n_items, [cat, img])
    _, params = init_prnn_params(layout, np.float64)
    be = PRNNNumpyBackend(layout, params, dtype=np.float64)
    ref_p = {k: v.copy() for k, v in params.items()}
    opt = {"acc": zeros_like_params(ref_p), "mom": zeros_like_params(ref_p)}
    ch = EpochSchedule(train.offsets, train.items, cfg.batch_size).next_chunk(7)
    samples = np.random.default_rng(1).integers(0, train.n_items, (ch.n_steps, cfg.n_sample)).astype(np.int32)
    phases = [prnn.phase(0, 10 + t, cfg.n_epochs) for t in range(ch.n_steps)]
    be.set_phases(phases)
    losses = be.train_chunk(ch.inputs, ch.targets, ch.active, ch.reset, samples, 10)
    H = [[np.zeros((cfg.batch_size, h)) for h in sub.layers] for sub in layout.subnets]
    for t in range(ch.n_steps):
        Y = np.concatenate([ch.targets[t], samples[t]]).astype(np.int64)
        st = StepInputs(X=ch.inputs[t].astype(np.int64), Y=Y, active=ch.active[t], reset=ch.reset[t])
        loss, H = rp.train_step(ref_p, opt, layout, H, st, rp.dropout_masks(layout, 10 + t, cfg.batch_size,
                                                                           np.float64), phases[t])
        assert loss == losses[t]
    for k in ref_p:
        np.testing.assert_array_equal(be.params[k], ref_p[k], err_msg=k)
    with pytest.raises(ValueError, match="needs 7 phases"):  # a plan is used once
        be.train_chunk(ch.inputs, ch.targets, ch.active, ch.reset, samples, 17)


@pytest.mark.parametrize("strategy", ["alternating", "residual"])
def test_frozen_subnets_do_not_move_during_fit(data, strategy, monkeypatch):
    """Parameters after each epoch (snapshotted when the next epoch resets the hidden state): in epoch e only
    the subnet of that epoch's phase moves; the others, and their block of Wy, stay bit for bit."""
    train, cat, *_ = data
    cfg = small_cfg(n_epochs=2)
    prnn = PRNNConfig.for_architecture("parallel", ["category"], strategy=strategy)
    layout = PRNNLayout(cfg, prnn, train.n_items, [cat])
    snaps = []
    orig = PRNNNumpyBackend.reset_hidden

    def reset_and_snap(self):
        snaps.append(self.get_params())
        orig(self)
    monkeypatch.setattr(PRNNNumpyBackend, "reset_hidden", reset_and_snap)
    model = fit(train, cfg, prnn, [cat])
    snaps.append(model.params)
    assert len(snaps) == 3
    for e in range(2):
        before, after = snaps[e], snaps[e + 1]
        trained = prnn.phase(e, 0, cfg.n_epochs).trainable
        for k in range(2):
            names = layout.subnet_param_names(k)
            c0, c1 = layout.cols[k]
            moved = [not np.array_equal(before[n], after[n]) for n in names]
            moved.append(not np.array_equal(before["Wy"][:, c0:c1], after["Wy"][:, c0:c1]))
            assert all(moved) if k in trained else not any(moved), (e, k, moved)
    assert model.scoring is None  # the last phase scores with both


def test_id_architecture_equals_gru4rec_fit(data):
    """PRNNConfig 'id' trained by the Trainer = GRU4Rec on the numpy backend, bit for bit (names prefixed s0.)."""
    train, *_ = data
    cfg = small_cfg()
    g = Trainer(cfg, backend="numpy", show_progress=False).fit(train)
    p = fit(train, cfg, PRNNConfig.for_architecture("id"), None)
    assert {k.removeprefix("s0."): None for k in p.params}.keys() == g.params.keys()
    for k, v in p.params.items():
        np.testing.assert_array_equal(v, g.params[k.removeprefix("s0.")], err_msg=k)
    assert [h["loss"] for h in p.history] == [h["loss"] for h in g.history]
    ev_g, ev_p = evaluate(g, train, backend="numpy"), evaluate(p, train)
    assert ev_g["mrr"] == ev_p["mrr"] and ev_g["recall"] == ev_p["recall"]


# ------------------------------------------------------------------------------------------------ using a model
@pytest.fixture(scope="module")
def model(data):
    train, cat, img, *_ = data
    prnn = PRNNConfig.for_architecture("parallel", ["category", "img"], layers=[[6], [4], [3]], strategy="residual",
                                       epochs_per_phase=(1, 1, 1))
    return fit(train, small_cfg(n_epochs=3), prnn, [cat, img])


def test_evaluate_equals_reference_ranks(data, model):
    from prnn_steps import rank_reference
    train, *_ = data
    res = evaluate(model, train, cutoffs=(5, 20), return_ranks=True, batch_size=16)
    ranks, _ = rank_reference(model.params, model.layout, train, batch_size=16)
    np.testing.assert_array_equal(np.where(np.isinf(res["ranks"]), -1, res["ranks"]), ranks)
    assert res["mrr"][20] == pytest.approx(np.mean(np.where(ranks <= 20, 1.0 / ranks, 0.0)))


def test_recommend_and_serving_equal_reference_scores(data, model):
    train, *_ = data
    sess = train.item_ids[[3, 17, 3, 40]]
    H = model.hidden_state(model.item_index(sess)[0])
    scores = rp.score_all(model.params, model.layout, H)[0]
    order = np.lexsort((np.arange(scores.size), -scores))[:5]
    ids, sc = model.recommend(sess, k=5)
    np.testing.assert_array_equal(ids, train.item_ids[order])
    np.testing.assert_allclose(sc, scores[order], rtol=1e-5)
    bids, _ = model.recommend_batch([sess, [], sess[:1]], k=5)
    np.testing.assert_array_equal(bids[0], ids)
    np.testing.assert_array_equal(bids[2], model.recommend(sess[:1], k=5)[0])
    sr = SessionRecommender(model)
    for i in sess:
        sr.click("s", i)
    np.testing.assert_array_equal(sr.recommend("s", k=5)[0], ids)
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(model.recommend([*sess, -12345], k=5)[0], ids)  # unknown: skipped


def test_batch_sees_in_place_edits_and_takes_read_only_arrays(data, model):
    """recommend_batch of a p-RNN replays on the model's own arrays: an in-place edit of a GRU weight changes its
    results as the reference says; a model whose arrays are read-only (memory-mapped) is served from copies."""
    train, *_ = data
    sessions = [train.item_ids[[3, 17, 3, 40]], train.item_ids[[5]], train.item_ids[[8, 9, 10]]]

    def reference_top(m, s, k=5):
        H = m.hidden_state(m.item_index(s)[0])
        scores = rp.score_all(m.params, m.layout, H)[0]
        return train.item_ids[np.lexsort((np.arange(scores.size), -scores))[:k]]

    params = {k: v.copy() for k, v in model.params.items()}
    m = Model(model.cfg, model.item_ids, params, item_support=model.item_support, prnn=model.prnn,
              features=model.features)
    before = m.recommend_batch(sessions, k=5)[0]
    name = next(k for k in params if "Wrz" in k)
    params[name] *= np.float32(-3.0)  # in place: the engine is not rebuilt
    after = m.recommend_batch(sessions, k=5)[0]
    assert not np.array_equal(before, after)
    for j, s in enumerate(sessions):
        np.testing.assert_array_equal(after[j], reference_top(m, s))
    ro = {k: v.copy() for k, v in params.items()}
    for v in ro.values():
        v.setflags(write=False)
    m_ro = Model(model.cfg, model.item_ids, ro, item_support=model.item_support, prnn=model.prnn,
                 features=model.features)
    np.testing.assert_array_equal(m_ro.recommend_batch(sessions, k=5)[0], after)


def test_save_load_round_trip_and_checksum_refusal(data, model, tmp_path):
    train, cat, img, *_ = data
    path = tmp_path / "m.safetensors"
    model.save(path)
    m2 = Model.load(path)
    assert m2.prnn == model.prnn and m2.scoring == model.scoring
    for name, f in model.features.items():
        g = m2.features[name]
        assert g.sparse == f.sparse and g.columns == f.columns and g.n_missing == f.n_missing
        a, b = (f.matrix.toarray(), g.matrix.toarray()) if f.sparse else (f.matrix, g.matrix)
        np.testing.assert_array_equal(a, b)
    for k in model.params:
        np.testing.assert_array_equal(m2.params[k], model.params[k])
    assert evaluate(m2, train)["mrr"] == evaluate(model, train)["mrr"]
    # a file whose container checksums are right but whose feature arrays changed: refused by their own CRC
    arrays, meta = decode_safetensors(path.read_bytes(), "m")
    arrays["feature.category.data"] = arrays["feature.category.data"] * 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"".join(bytes(c) for c in encode_safetensors(arrays, meta)))
    with pytest.raises(ModelFileError, match="'category' fail their checksum"):
        Model.load(bad)


def test_scoring_subset_of_a_residual_model(data):
    """A model taken during residual phase 1 scores with subnet 0 only (the later subnets have not run)."""
    train, cat, *_ = data
    prnn = PRNNConfig.for_architecture("parallel", ["category"], strategy="residual")
    cfg = small_cfg(n_epochs=2)
    trainer = Trainer(cfg, backend="numpy", show_progress=False, prnn=prnn, features=cat)
    layout = PRNNLayout(cfg, prnn, train.n_items, [cat])
    m = trainer._model(train, fit(train, cfg, prnn, [cat]).params, [], train.item_support(), layout, 1, 1)
    assert m.scoring == (0,)
    H = m.hidden_state(np.array([1, 2]))
    ids, sc = m.recommend(train.item_ids[[1, 2]], k=3)
    s0 = rp.score_all(m.params, m.layout, H, subnets=(0,))[0]
    np.testing.assert_allclose(sc, np.sort(s0)[::-1][:3], rtol=1e-5)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_train_evaluate_recommend(data, tmp_path, capsys):
    from gru4rec_kernels.cli import main
    *_, clicks, cats = data
    clicks.to_csv(tmp_path / "c.csv", index=False)
    cats.to_csv(tmp_path / "f.tsv", sep="\t", index=False)
    out = tmp_path / "m.safetensors"
    assert main(["train", "--train", str(tmp_path / "c.csv"), "--item-features", str(tmp_path / "f.tsv"),
                 "--feature-columns", "Category", "--architecture", "parallel", "--strategy", "alternating",
                 "--subnet-layers", "6", "4", "--n-epochs", "2", "--batch-size", "8", "--n-sample", "4",
                 "--save", str(out), "--no-progress"]) == 0
    m = Model.load(out)
    assert m.prnn.strategy == "alternating" and [s.layers for s in m.layout.subnets] == [(6,), (4,)]
    assert m.features["Category"].sparse
    res = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(out), "--test", str(tmp_path / "c.csv"), "--json", str(res)]) == 0
    r = json.loads(res.read_text())
    assert r and "mrr" in json.dumps(r)
    printed = capsys.readouterr().out
    assert "p-RNN (parallel)" in printed and "GRU4Rec" not in printed  # the metrics name the model they measured
    first = str(m.item_ids[0])
    assert main(["recommend", "--model", str(out), "--session", first, "-k", "3", "--json"]) == 0
    printed = capsys.readouterr().out
    for i in m.recommend(m.item_ids[:1], k=3)[0]:
        assert str(i) in printed


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input(data):
    train, cat, img, *_ = data
    prnn = PRNNConfig.for_architecture("parallel", ["category"])
    with pytest.raises(ValueError, match="reads feature source"):
        Trainer(small_cfg(), backend="numpy", prnn=prnn)
    with pytest.raises(ValueError, match="but the features given are"):
        fit(train, small_cfg(), prnn, [img])
    with pytest.raises(ValueError, match="backend must be one of"):
        Trainer(small_cfg(), backend="tpu", prnn=prnn, features=cat)
    with pytest.raises(ValueError, match="give prnn="):
        Trainer(small_cfg(), backend="numpy", features=cat)
    other = ItemFeatures.from_matrix(sp.eye(5, format="csr"), train.item_ids[:5], train.item_ids[:5],
                                     name="category")
    with pytest.raises(ValueError, match="other item ids"):
        fit(train, small_cfg(), prnn, [other])
    # feature ids unknown to the clicks: dropped and counted, the model trains
    import pandas as pd
    *_, cats = data
    extra = pd.concat([cats, pd.DataFrame({"ItemId": [10**9], "Category": ["c0"]})])
    m = fit(train, small_cfg(n_epochs=1), prnn, [(extra, {"item_key": "ItemId", "name": "category"})])
    assert m.features["category"].n_unknown == len(cats) - train.n_items + 1  # never-clicked items too
