"""Trainer edges: checkpoints at the epoch's last step, finite divergence, early stopping, longer resumes."""
import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.synthetic import generate_clicks


@pytest.fixture(scope="module")
def data():
    df = generate_clicks(n_items=80, n_sessions=200, seed=1)
    sessions = df["SessionId"].unique()
    return (g.SessionData.from_pandas(df[df["SessionId"].isin(sessions[:160])]),
            g.SessionData.from_pandas(df[df["SessionId"].isin(sessions[160:])]))


def cfg(**kw):
    base = dict(layers=[8], n_sample=8, batch_size=8, n_epochs=2, sample_store_size=1000)
    base.update(kw)
    return g.TrainConfig(**base)


def steps_per_epoch(train, c):
    from gru4rec_kernels.batching import EpochSchedule
    return EpochSchedule(train.offsets, train.items, c.batch_size).n_steps_total


@pytest.mark.parametrize("every", ["one", "epoch_steps"])
def test_checkpoint_every_dividing_the_epoch(tmp_path, data, every):
    train, _ = data
    c = cfg()
    n = 1 if every == "one" else steps_per_epoch(train, c)
    tr = g.Trainer(c, backend="numpy", show_progress=False)
    m = tr.fit(train, checkpoint_dir=tmp_path, checkpoint_every=n)
    assert len(m.history) == 2
    # resuming from the final checkpoint with the same value finishes cleanly too
    m2 = g.Trainer(c, backend="numpy", show_progress=False).fit(train, checkpoint_dir=tmp_path, checkpoint_every=n,
                                                                resume=tmp_path)
    assert len(m2.history) == 2


def test_resume_may_raise_n_epochs(tmp_path, data):
    train, _ = data
    g.Trainer(cfg(n_epochs=1), backend="numpy", show_progress=False).fit(train, checkpoint_dir=tmp_path)
    more = g.Trainer(cfg(n_epochs=2), backend="numpy", show_progress=False).fit(train, resume=tmp_path)
    full = g.Trainer(cfg(n_epochs=2), backend="numpy", show_progress=False).fit(train)
    assert [h["epoch"] for h in more.history] == [1, 2]
    np.testing.assert_allclose(more.history[-1]["loss"], full.history[-1]["loss"], rtol=1e-6)
    with pytest.raises(Exception, match="another config"):
        g.Trainer(cfg(n_epochs=3, layers=[9]), backend="numpy", show_progress=False).fit(train, resume=tmp_path)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_finite_divergence_is_detected(data, loss):
    train, _ = data
    c = cfg(loss=loss, learning_rate=1e30, n_epochs=1, grad_cap=1.0 if loss == "bpr-max" else 0.0)
    with pytest.raises(g.TrainingDivergedError, match="Lower learning_rate"):
        g.Trainer(c, backend="numpy", show_progress=False).fit(train)


def test_early_stopping_keeps_the_best_epoch(data):
    train, valid = data
    c = cfg(n_epochs=6, learning_rate=0.3)
    m = g.Trainer(c, backend="numpy", show_progress=False).fit(train, valid=valid, eval_cutoffs=(5, 20),
                                                               patience=1, metric="ndcg@20")
    vals = [h["ndcg@20"] for h in m.history]
    best = int(np.argmax(vals))
    assert m.best_epoch == m.history[best]["epoch"]
    assert len(vals) == 6 or len(vals) == best + 2  # stopped one epoch after the best
    res = g.evaluate(m, valid, cutoffs=(20,), backend="numpy")
    assert res["ndcg"][20] == pytest.approx(vals[best], rel=1e-6)


@pytest.mark.parametrize("kw,msg", [
    (dict(patience=0), "patience must be a positive int"),
    (dict(patience=2, valid=None), "needs valid data"),
    (dict(metric="mrr@7"), "metric must be"),
    (dict(metric="auc@20"), "metric must be"),
])
def test_early_stopping_argument_errors(data, kw, msg):
    train, valid = data
    kw = {"valid": valid, **kw}
    with pytest.raises(ValueError, match=msg):
        g.Trainer(cfg(), backend="numpy", show_progress=False).fit(train, **kw)


@pytest.mark.parametrize("kw,msg", [(dict(batch_size=10**12), "needs at least"),
                                    (dict(layers=[10**9]), "needs at least")])
def test_huge_configs_get_a_memory_error_that_says_how_much(data, kw, msg):
    train, _ = data
    with pytest.raises(ValueError, match=msg):
        g.Trainer(cfg(**kw), backend="numpy", show_progress=False).fit(train)


def test_config_fields_are_validated_when_set():
    c = g.TrainConfig()
    with pytest.raises(ValueError, match="layers"):
        c.layers = [0]
    with pytest.raises(ValueError, match="loss"):
        c.loss = "mse"
    assert c.layers == [100] and c.loss == "cross-entropy"
    c.learning_rate = 0.1
    assert c.learning_rate == 0.1


def test_logq_follows_the_official_code():
    """O - logq * log(cat(P0[targets], P0[samples] ** alpha)) with P0 the raw support (official PyTorch code)."""
    from gru4rec_kernels.trainer import logq_columns
    support = np.array([1.0, 4.0, 100.0])
    t, s = logq_columns(g.TrainConfig(logq=0.7, sample_alpha=0.3), support)
    np.testing.assert_allclose(t, 0.7 * np.log(support))
    np.testing.assert_allclose(s, 0.7 * np.log(support ** 0.3))


def test_warmup_changes_nothing_and_is_timed(data):
    """A zero-step chunk compiles the cpu kernels and leaves every state as it was."""
    from gru4rec_kernels.backends.cpu import CpuBackend
    from gru4rec_kernels.layout import init_params
    train, _ = data
    c = cfg()
    _, params = init_params(c, train.n_items)
    be = CpuBackend(c, train.n_items, params)
    before = (be.get_params(), be.get_opt_state())
    be.warmup(c.batch_size, c.n_sample)
    after = (be.get_params(), be.get_opt_state())
    def same(x, y):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                same(x[k], y[k])
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    same({"p": before[0], "o": before[1]}, {"p": after[0], "o": after[1]})
    tr = g.Trainer(c, backend="cpu", show_progress=False)
    tr.fit(train)
    assert tr.compile_seconds >= 0


@pytest.mark.parametrize("craft,msg", [
    ("shape", "the config needs"), ("missing", "do not match"), ("epoch", "negative epoch"), ("nan", "NaN"),
])
def test_crafted_checkpoints_are_refused(tmp_path, data, craft, msg):
    from gru4rec_kernels import checkpoint as ckpt
    from gru4rec_kernels.modelfile import decode_safetensors, encode_safetensors
    train, _ = data
    g.Trainer(cfg(n_epochs=1), backend="numpy", show_progress=False).fit(train, checkpoint_dir=tmp_path)
    path = ckpt.list_checkpoints(str(tmp_path))[-1]
    arrays, meta = decode_safetensors(open(path, "rb").read())
    if craft == "shape":
        arrays["Bh0"] = arrays["Bh0"][:1].copy()  # would broadcast if not checked
    elif craft == "missing":
        del arrays["acc.Wy"]
    elif craft == "epoch":
        meta["epoch"] = "-3"
    else:
        arrays["Wy"][0, 0] = np.nan
    with open(path, "wb") as f:
        for chunk in encode_safetensors(arrays, meta):
            f.write(chunk)
    with pytest.raises(ckpt.CheckpointError, match=msg):
        ckpt.load(path)


def test_from_csv_passes_nrows(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("SessionId,ItemId,Time\n" + "".join(f"{i // 3},{i % 5},{i}\n" for i in range(30)))
    assert g.SessionData.from_csv(p, nrows=12).n_events == 12


def test_validation_split_by_days_and_sessions():
    from gru4rec_kernels.preprocess import validation_split
    rows = [(s, (s * 7 + k) % 20, s * 3600.0 + k) for s in range(40) for k in range(4)]
    import pandas as pd
    d = g.SessionData.from_pandas(pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]))
    tr, va = validation_split(d, sessions=5)
    assert va.n_sessions == 5 and set(va.session_ids) == set(range(35, 40)) and tr.n_sessions == 35
    tr, va = validation_split(d, days=2.5 / 24)  # sessions ending in the last 2.5 hours
    assert set(va.session_ids) == {37, 38, 39}
    with pytest.raises(ValueError, match="exactly one"):
        validation_split(d)


def test_validation_split_on_arrays_equals_the_official_frame_split(tmp_path, monkeypatch):
    """validation_split works on the arrays (a memory-mapped log is never turned into a DataFrame) and keeps
    exactly the events, sessions and order of the official DataFrame splits; valid is in train's item map."""
    import pandas as pd

    from gru4rec_kernels.preprocess import split_by_sessions, split_by_time, validation_split
    rng = np.random.default_rng(5)
    rows = []
    for s in range(300):  # uneven sessions, some one-event, times overlapping between sessions
        t0 = rng.uniform(0, 6 * 86400)
        for k in range(int(rng.integers(1, 7))):
            rows.append((s, int(rng.zipf(1.6)) % 200, t0 + 60 * k))
    df = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    data = g.SessionData.from_pandas(df)
    data.save(tmp_path / "log")
    mapped = g.SessionData.open(tmp_path / "log")
    monkeypatch.setattr(g.SessionData, "to_pandas", lambda self: pytest.fail("validation_split used pandas"))
    for kw, official in (({"days": 1.0}, lambda f: split_by_time(f, days=1.0)),
                         ({"sessions": 40}, lambda f: split_by_sessions(f, 40))):
        tr, va = validation_split(mapped, **kw)
        want_tr, want_va = (g.SessionData.from_pandas(f) for f in official(df))
        np.testing.assert_array_equal(tr.item_ids, want_tr.item_ids)
        for got, want in ((tr, want_tr), (va, want_va)):
            np.testing.assert_array_equal(got.session_ids, want.session_ids)
            np.testing.assert_array_equal(got.offsets, want.offsets)
            np.testing.assert_array_equal(got.times, want.times)
            np.testing.assert_array_equal(got.item_ids[got.items], want.item_ids[want.items])
        np.testing.assert_array_equal(va.item_ids, tr.item_ids)
