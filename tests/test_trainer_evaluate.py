"""Training lowers the loss, history is complete, evaluation follows the official protocol."""
import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels import reference as ref
from gru4rec_kernels.evaluate import metrics_from_ranks, ranks_from_counts
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.synthetic import default_split


def naive_ranks(model, test, mode):
    """Replay every test session on its own, score all items with the reference, rank the target."""
    data, _ = test.remap(model.item_ids)
    out = []
    for s in range(data.n_sessions):
        items = data.items[data.offsets[s]:data.offsets[s + 1]]
        H = [np.zeros((1, h), np.float32) for h in model.cfg.layers]
        for t in range(len(items) - 1):
            H = ref.hidden_step(model.params, model.cfg, H, items[t:t + 1].astype(np.int64))
            sc = ref.score_all(model.params, model.cfg, H[-1])
            gt, eq = ref.rank_counts(sc, items[t + 1:t + 2])
            out.append(ranks_from_counts(gt, eq, mode)[0])
    return np.array(out)


@pytest.fixture(scope="module")
def synthetic():
    tr, te = default_split()
    return g.SessionData.from_pandas(tr), g.SessionData.from_pandas(te)


def test_ranks_and_metrics_by_hand():
    gt = np.array([0, 2, 0, 30])
    eq = np.array([1, 3, 2, 1])
    np.testing.assert_array_equal(ranks_from_counts(gt, eq, "standard"), [1, 3, 1, 31])
    np.testing.assert_array_equal(ranks_from_counts(gt, eq, "conservative"), [1, 5, 2, 31])
    np.testing.assert_array_equal(ranks_from_counts(gt, eq, "median"), [1, 4, 1.5, 31])
    m = metrics_from_ranks([1, 3, 1.5, 31], cutoffs=(1, 5, 20))
    assert m["recall"] == {1: 0.25, 5: 0.75, 20: 0.75}
    assert m["mrr"][5] == pytest.approx((1 + 1 / 3 + 1 / 1.5) / 4)
    assert m["mrr"][1] == pytest.approx(0.25)


@pytest.mark.parametrize("mode", ["standard", "conservative", "median"])
def test_evaluate_equals_naive_replay(synthetic, mode):
    train, test = synthetic
    cfg = g.TrainConfig(layers=[8], n_sample=16, batch_size=8, final_act="relu")  # relu: real ties
    _, params = init_params(cfg, train.n_items)
    params["By"][:] = np.random.default_rng(0).normal(size=train.n_items)
    model = g.Model(cfg, train.item_ids, params, item_support=train.item_support())
    small = g.SessionData.from_pandas(test.to_pandas().head(300))
    res = g.evaluate(model, small, cutoffs=(1, 5, 20), mode=mode, batch_size=7, backend="numpy", return_ranks=True)
    naive = naive_ranks(model, small, mode)
    np.testing.assert_allclose(np.sort(res["ranks"]), np.sort(naive))
    assert res["n_events"] == naive.size


def test_evaluate_counts_unknown_items_and_dropped_sessions(synthetic):
    train, _ = synthetic
    cfg = g.TrainConfig(layers=[4], n_sample=0, batch_size=4)
    _, params = init_params(cfg, train.n_items)
    model = g.Model(cfg, train.item_ids, params, item_support=train.item_support())
    known = train.item_ids[:3]
    unknown = train.item_ids.max() + 1
    test = g.SessionData.from_arrays([1, 1, 1, 2, 2, 3, 3], [known[0], unknown, known[1], known[2], unknown,
                                                             known[0], known[1]], [0, 1, 2, 3, 4, 5, 6])
    res = g.evaluate(model, test, backend="numpy")
    assert res["unknown_events"] == 2
    assert res["dropped_sessions"] == 1  # session 2 is left with one event
    assert res["n_events"] == 2  # session 1: one pair after dropping; session 3: one pair


def test_fit_lowers_the_loss_and_beats_popularity(synthetic):
    from gru4rec_kernels.baselines import POP
    train, test = synthetic
    cfg = g.TrainConfig(layers=[48], n_sample=128, batch_size=32, n_epochs=2, learning_rate=0.1)
    model = g.Trainer(cfg, backend="cpu", show_progress=False).fit(train, valid=test, eval_cutoffs=(20,))
    h = model.history
    assert [r["epoch"] for r in h] == [1, 2]
    assert h[1]["loss"] < h[0]["loss"]
    for key in ("loss", "mb_per_s", "events_per_s", "recall@20", "mrr@20", "seconds"):
        assert key in h[-1]
    res = g.evaluate(model, test, cutoffs=(20,))
    pop = POP().fit(train).evaluate(test, cutoffs=(20,))
    assert res["recall"][20] > 2 * pop["recall"][20]
    assert res["recall"][20] == pytest.approx(h[-1]["recall@20"])


def test_save_load_roundtrip(tmp_path, synthetic):
    train, test = synthetic
    cfg = g.TrainConfig(layers=[8], n_sample=16, batch_size=8, n_epochs=1)
    model = g.Trainer(cfg, backend="numpy", show_progress=False).fit(
        g.SessionData.from_pandas(train.to_pandas().head(2000)))
    p = tmp_path / "m.safetensors"
    model.save(p)
    m2 = g.Model.load(p)
    assert m2.cfg == model.cfg and m2.history == model.history
    for k in model.params:
        np.testing.assert_array_equal(m2.params[k], model.params[k])
    np.testing.assert_array_equal(m2.item_ids, model.item_ids)
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_load_rejects_misshaped_missing_and_extra_tensors(tmp_path):
    from gru4rec_kernels.modelfile import FORMAT_NAME, encode_safetensors
    cfg = g.TrainConfig(layers=[4], n_sample=0)
    _, params = init_params(cfg, 5)
    base = dict(params, item_ids=np.arange(5, dtype=np.int64), item_support=np.ones(5))
    meta = {"format": FORMAT_NAME, "format_version": 1, "config": cfg.to_json()}
    cases = {
        "missing": ({k: v for k, v in base.items() if k != "Wh0"}, "missing parameter tensor(s) ['Wh0']"),
        "extra": (dict(base, Junk=np.zeros(2, np.float32)), "unexpected tensor(s) ['Junk']"),
        "shape": (dict(base, Wh0=np.zeros((4, 5), np.float32)), "'Wh0' has shape (4, 5)"),
        "dtype": (dict(base, Wh0=np.zeros((4, 4), np.float64)), "'Wh0' has dtype float64"),
        "nan": (dict(base, By=np.full(5, np.nan, np.float32)), "'By' contains NaN"),
    }
    for name, (tensors, msg) in cases.items():
        buf = b"".join(encode_safetensors(tensors, meta))
        with pytest.raises(g.ModelFileError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            g.Model.from_bytes(buf)
    newer = dict(meta, format_version=2)
    with pytest.raises(g.ModelFileError, match="newer"):
        g.Model.from_bytes(b"".join(encode_safetensors(base, newer)))


def test_trainer_rejects_bad_input(synthetic):
    with pytest.raises(TypeError, match="TrainConfig"):
        g.Trainer({"layers": [4]})
    with pytest.raises(ValueError, match="backend"):
        g.Trainer(g.TrainConfig(), backend="tpu")
    with pytest.raises(TypeError, match="SessionData"):
        g.Trainer(g.TrainConfig(), backend="numpy").fit([1, 2, 3])


def test_import_does_not_pull_cupy_or_numba_cuda():
    import subprocess
    import sys
    code = "import sys, gru4rec_kernels; print('cupy' in sys.modules, 'numba.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
