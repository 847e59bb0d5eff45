"""p-RNN checkpoints: a run resumed from any of its checkpoints (mid-epoch or at an epoch end) ends bit for bit
where the uninterrupted run ends, on the numpy backend in float32, for the strategies whose phase depends on the
epoch (alternating, residual) or on the global step (interleaving); a checkpoint of another model (GRU4Rec, or
another PRNNConfig, or other features) is refused naming the difference; crafted p-RNN checkpoints are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gru4rec_kernels import checkpoint as ckpt
from gru4rec_kernels.config import TrainConfig
from gru4rec_kernels.data import SessionData
from gru4rec_kernels.features import ItemFeatures
from gru4rec_kernels.modelfile import decode_safetensors, encode_safetensors
from gru4rec_kernels.prnn_config import PRNNConfig
from gru4rec_kernels.synthetic import generate_category_clicks
from gru4rec_kernels.trainer import Trainer

EVERY = 7  # odd: the checkpoints fall on both parities of interleaving's step, and inside chunks of 5


@pytest.fixture(scope="module")
def data():
    clicks, cats = generate_category_clicks(n_items=120, n_categories=8, n_sessions=150, seed=4)
    train = SessionData.from_pandas(clicks)
    cat = ItemFeatures.from_frame(cats, train.item_ids, item_key="ItemId", name="category")
    return train, cat, cats


def small_cfg(**kw):
    base = dict(layers=[6], batch_size=8, n_sample=5, n_epochs=2, embedding=0, constrained_embedding=True,
                momentum=0.3, dropout_p_hidden=0.2, dropout_p_embed=0.1, logq=0.5, sample_store_size=97)
    return TrainConfig(**{**base, **kw})


def prnn_of(strategy, layers=((6,), (4,))):
    return PRNNConfig.for_architecture("parallel", ["category"], layers=[list(h) for h in layers], strategy=strategy)


def trainer(cfg, prnn, features):
    return Trainer(cfg, backend="numpy", show_progress=False, chunk_steps=5, prnn=prnn, features=features)


def assert_same_run(a, b):
    assert set(a.params) == set(b.params)
    for k, v in a.params.items():
        np.testing.assert_array_equal(v, b.params[k], err_msg=k)
    keys = ("epoch", "loss", "steps", "events")
    assert [{k: h[k] for k in keys} for h in a.history] == [{k: h[k] for k in keys} for h in b.history]
    assert a.scoring == b.scoring


@pytest.mark.parametrize("strategy", ["alternating", "interleaving", "residual"])
def test_resume_from_every_kind_of_checkpoint_is_bit_exact(data, strategy, tmp_path):
    """Checkpoints every 7 steps (each epoch is 101 steps): resumed from one mid-epoch 1, the end of epoch 1 and
    one mid-epoch 2 (another phase for alternating and residual), each run ends equal to the uninterrupted one.
    The checkpointing run itself equals a run without checkpoints."""
    train, cat, _ = data
    cfg, prnn = small_cfg(), prnn_of(strategy)
    plain = trainer(cfg, prnn, cat).fit(train)
    ck = trainer(cfg, prnn, cat).fit(train, checkpoint_dir=tmp_path, checkpoint_every=EVERY, keep_checkpoints=1000)
    assert_same_run(ck, plain)
    states = [ckpt.load(p) for p in ckpt.list_checkpoints(str(tmp_path))]
    mid1 = next(s for s in states if s["epoch"] == 1 and s["sched"] is not None and s["step"] > 40)
    end1 = next(s for s in states if s["epoch"] == 1 and s["sched"] is None)
    mid2 = next(s for s in states if s["epoch"] == 2 and s["sched"] is not None and s["step"] % 2 == 1)
    assert end1["step"] == plain.history[0]["steps"] and end1["step"] % EVERY != 0  # not also a step checkpoint
    for s in (mid1, end1, mid2):
        assert s["prnn"] == prnn and [e["name"] for e in s["features"]] == ["category"]
        assert len(s["hidden"]) == 2 and [h.shape[1] for h in s["hidden"]] == [6, 4]
        resumed = trainer(cfg, prnn, cat).fit(train, resume=s["path"])
        assert_same_run(resumed, plain)


def test_resume_then_train_longer_equals_the_longer_run(data, tmp_path):
    """n_epochs may grow on resume (as for GRU4Rec): interleaving's phase keeps following the global step."""
    train, cat, _ = data
    prnn = prnn_of("interleaving")
    trainer(small_cfg(n_epochs=1), prnn, cat).fit(train, checkpoint_dir=tmp_path)
    longer = trainer(small_cfg(n_epochs=2), prnn, cat).fit(train, resume=tmp_path)
    assert_same_run(longer, trainer(small_cfg(n_epochs=2), prnn, cat).fit(train))


def test_train_longer_keeps_the_residual_phases_already_trained(data, tmp_path):
    """Residual's default plan splits n_epochs: 2 epochs are (1, 1), 4 are (2, 2). After epoch 1 (phase 0 under
    both) resuming with 4 epochs equals the 4-epoch run; after epoch 2 (trained as phase 1, phase 0 under 4
    epochs) it is refused, naming the plans."""
    train, cat, _ = data
    prnn = prnn_of("residual")
    trainer(small_cfg(n_epochs=2), prnn, cat).fit(train, checkpoint_dir=tmp_path, keep_checkpoints=10)
    after1, after2 = ckpt.list_checkpoints(str(tmp_path))
    longer = trainer(small_cfg(n_epochs=4), prnn, cat).fit(train, resume=after1)
    assert_same_run(longer, trainer(small_cfg(n_epochs=4), prnn, cat).fit(train))
    with pytest.raises(ckpt.CheckpointError, match=r"residual phases .* \[\(0,\), \(1,\)\] -> \[\(0,\), \(0,\)\]"):
        trainer(small_cfg(n_epochs=4), prnn, cat).fit(train, resume=after2)


@pytest.fixture(scope="module")
def written(data, tmp_path_factory):
    """(p-RNN checkpoint, GRU4Rec checkpoint) of the same TrainConfig and data, at the end of epoch 1."""
    train, cat, _ = data
    d = tmp_path_factory.mktemp("ck")
    trainer(small_cfg(n_epochs=1), prnn_of("alternating"), cat).fit(train, checkpoint_dir=d / "prnn")
    Trainer(small_cfg(n_epochs=1), backend="numpy", show_progress=False).fit(train, checkpoint_dir=d / "gru")
    return ckpt.list_checkpoints(str(d / "prnn"))[-1], ckpt.list_checkpoints(str(d / "gru"))[-1]


def test_versions_and_metadata(written):
    """p-RNN checkpoints are version 2 (a reader that predates them refuses a newer version); GRU4Rec
    checkpoints are still version 1 with no p-RNN metadata, and load as before."""
    p, g = written
    _, meta_p = decode_safetensors(open(p, "rb").read())
    _, meta_g = decode_safetensors(open(g, "rb").read())
    assert meta_p["format_version"] == "2" and PRNNConfig.from_json(meta_p["prnn"]) == prnn_of("alternating")
    entry = json.loads(meta_p["features"])[0]
    assert entry["kind"] == "sparse" and len(entry["crc32"]) == 8
    assert meta_g["format_version"] == "1" and "prnn" not in meta_g and "features" not in meta_g
    assert ckpt.load(g)["prnn"] is None


def test_checkpoint_of_another_model_is_refused(data, written, tmp_path):
    train, cat, cats = data
    p, g = written
    cfg = small_cfg(n_epochs=2)
    with pytest.raises(ckpt.CheckpointError, match="is a GRU4Rec checkpoint; this run trains a p-RNN"):
        trainer(cfg, prnn_of("alternating"), cat).fit(train, resume=g)
    with pytest.raises(ckpt.CheckpointError, match="is a p-RNN checkpoint .*this run trains GRU4Rec"):
        Trainer(cfg, backend="numpy", show_progress=False).fit(train, resume=p)
    with pytest.raises(ckpt.CheckpointError, match=r"another p-RNN config .*'strategy': \('alternating', 'resid"):
        trainer(cfg, prnn_of("residual"), cat).fit(train, resume=p)
    with pytest.raises(ckpt.CheckpointError, match=r"'subnets\[1\].layers': \(\[4\], \[5\]\)"):
        trainer(cfg, prnn_of("alternating", ((6,), (5,))), cat).fit(train, resume=p)
    # the same shape, columns and name, another assignment of items to categories: the checksum differs
    shuffled = cats.assign(Category=cats["Category"].sample(frac=1, random_state=0).to_numpy())
    other = ItemFeatures.from_frame(shuffled, train.item_ids, item_key="ItemId", name="category")
    with pytest.raises(ckpt.CheckpointError, match=r"other features 'category' .*'crc32'"):
        trainer(cfg, prnn_of("alternating"), other).fit(train, resume=p)
    dense = ItemFeatures.from_frame(cats, train.item_ids, item_key="ItemId", name="category", sparse=False)
    with pytest.raises(ckpt.CheckpointError, match=r"other features 'category' .*'kind': \('sparse', 'dense'\)"):
        trainer(cfg, prnn_of("alternating"), dense).fit(train, resume=p)
    with pytest.raises(ckpt.CheckpointError, match="another config"):  # TrainConfig still checked too
        trainer(cfg.replace(learning_rate=0.01), prnn_of("alternating"), cat).fit(train, resume=p)


@pytest.mark.parametrize("craft,msg", [
    ("shape", "the config needs"), ("missing", "do not match"), ("hidden", "hidden-state tensors for 2 layers"),
    ("features", "malformed features entry"), ("prnn", "invalid metadata"),
])
def test_crafted_prnn_checkpoints_are_refused(written, tmp_path, craft, msg):
    """Tensors are checked against the layout of the stored PRNNConfig and feature shapes, before any use."""
    p, _ = written
    arrays, meta = decode_safetensors(open(p, "rb").read())
    if craft == "shape":
        arrays["s1.Wf.category"] = arrays["s1.Wf.category"][:3].copy()
    elif craft == "missing":
        del arrays["acc.s1.Wrz0"]
    elif craft == "hidden":
        meta["n_hidden"] = "1"
        del arrays["hidden.1"]
    elif craft == "features":
        meta["features"] = json.dumps([{"name": "category", "kind": "image", "shape": [1, 2]}])
    else:
        meta["prnn"] = json.dumps({"subnets": [], "strategy": "alternating"})
    bad = tmp_path / "ckpt-000000000001.safetensors"
    with open(bad, "wb") as f:
        for chunk in encode_safetensors(arrays, meta):
            f.write(chunk)
    with pytest.raises(ckpt.CheckpointError, match=msg):
        ckpt.load(bad)
