"""PRNNConfig: architectures, validation naming the field, resolution against TrainConfig, the phases of every
strategy, JSON; PRNNLayout's checks of the features against the config."""
import pytest
from prnn_steps import make_features

from gru4rec_kernels.config import TrainConfig
from gru4rec_kernels.prnn_config import PRNNConfig, SubnetConfig
from gru4rec_kernels.prnn_layout import PRNNLayout

ID, IMG = SubnetConfig(("id",)), SubnetConfig(("img",))


def test_architectures():
    assert PRNNConfig.for_architecture("id").architecture == "id"
    f = PRNNConfig.for_architecture("feature", ["img", "cat"])
    assert f.architecture == "feature" and f.subnets[0].sources == ("img", "cat")
    c = PRNNConfig.for_architecture("concat", ["img"])
    assert c.architecture == "concat" and c.subnets[0].sources == ("id", "img")
    p = PRNNConfig.for_architecture("parallel", ["img", "cat"], layers=[[8], [4], [2, 3]], scales=[1, 0.5, 2],
                                    strategy="residual")
    assert p.architecture == "parallel" and [s.sources for s in p.subnets] == [("id",), ("img",), ("cat",)]
    assert [s.layers for s in p.subnets] == [(8,), (4,), (2, 3)] and p.subnets[1].scale == 0.5
    assert p.features == ("img", "cat")


@pytest.mark.parametrize("args,kw,match", [
    (("mixed", []), {}, "architecture"),
    (("id", ["img"]), {}, "takes no features"),
    (("parallel", []), {}, "at least one feature"),
    (("parallel", ["img"]), {"layers": [[5]]}, "layers"),
    (("concat", ["img"]), {"scales": [1, 2]}, "scales"),
])
def test_for_architecture_errors(args, kw, match):
    with pytest.raises(ValueError, match=match):
        PRNNConfig.for_architecture(*args, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(sources=()), r"sources"),
    (dict(sources="id"), r"sources"),
    (dict(sources=("id", "id")), r"twice"),
    (dict(sources=(" img",)), r"source name"),
    (dict(sources=("id",), layers=[0]), r"layers"),
    (dict(sources=("id",), layers=[]), r"layers"),
    (dict(sources=("img",), id_input="onehot"), r"id_input"),
    (dict(sources=("id",), id_input="dense"), r"id_input"),
    (dict(sources=("id",), embedding=0), r"embedding"),
    (dict(sources=("id",), id_input="constrained", embedding=8), r"embedding"),
    (dict(sources=("id",), dropout_p_hidden=1.0), r"dropout_p_hidden"),
    (dict(sources=("id",), dropout_p_embed=-0.1), r"dropout_p_embed"),
    (dict(sources=("id",), scale=0), r"scale"),
    (dict(sources=("id",), scale=float("inf")), r"scale"),
])
def test_bad_subnet_values_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        SubnetConfig(**kw)
    with pytest.raises(ValueError, match=r"subnets\[1\]"):  # given as a dict: the message names the subnet
        PRNNConfig(subnets=[ID, kw])


@pytest.mark.parametrize("kw,match", [
    (dict(subnets=()), "subnets"),
    (dict(subnets=ID), "subnets"),
    (dict(subnets=(ID, SubnetConfig(("img", "id")))), "each source feeds one subnet"),
    (dict(subnets=(ID, IMG), strategy="greedy"), "strategy"),
    (dict(subnets=(ID,), strategy="residual"), "needs 2 or more"),
    (dict(subnets=(ID, IMG), order=(0, 0)), "order"),
    (dict(subnets=(ID, IMG), order=(1, 2)), "order"),
    (dict(subnets=(ID, IMG), epochs_per_phase=2), "epochs_per_phase applies"),
    (dict(subnets=(ID, IMG), strategy="alternating", epochs_per_phase=0), "epochs_per_phase"),
    (dict(subnets=(ID, IMG), strategy="alternating", epochs_per_phase=(1, 2, 3)), "epochs_per_phase"),
    (dict(subnets=(ID, IMG), train_bias="sometimes"), "train_bias"),
    (dict(subnets=({"source": ["id"]},)), r"unknown field"),
    (dict(subnets=({"layers": [3]},)), r"sources is missing"),
])
def test_bad_config_values_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        PRNNConfig(**kw)


def test_resolve_takes_trainconfig_values_for_unset_fields():
    cfg = TrainConfig(layers=[7], constrained_embedding=False, embedding=6, dropout_p_embed=0.1,
                      dropout_p_hidden=0.2)
    p = PRNNConfig((ID, SubnetConfig(("img",), layers=(3, 4), dropout_p_hidden=0.0),
                    SubnetConfig(("cat",), scale=2.0)))
    s = p.resolve(cfg)
    assert (s[0].layers, s[0].id_input, s[0].embedding, s[0].dropout_p_embed, s[0].dropout_p_hidden) == \
        ((7,), "embedding", 6, 0.1, 0.2)
    assert (s[1].layers, s[1].id_input, s[1].embedding, s[1].dropout_p_hidden, s[1].hidden) == \
        ((3, 4), None, 0, 0.0, 4)
    assert s[2].scale == 2.0 and s[2].prefix == "s2."
    with pytest.raises(ValueError, match="embedding size"):
        PRNNConfig((SubnetConfig(("id",), id_input="embedding"),)).resolve(TrainConfig())


def test_phases_of_every_strategy():
    two = (ID, IMG)
    sim = PRNNConfig(two)
    assert sim.phase(3, 17, 10) == sim.phase(0, 0, 10)
    assert sim.phase(0, 0, 10).trainable == (0, 1) and sim.phase(0, 0, 10).train_bias

    alt = PRNNConfig(two, strategy="alternating", order=(1, 0), epochs_per_phase=2)
    assert [alt.phase(e, 0, 10).trainable for e in range(6)] == [(1,), (1,), (0,), (0,), (1,), (1,)]
    assert all(alt.phase(e, 0, 10).scoring == (0, 1) for e in range(10))
    alt_b = alt.replace(train_bias="first")
    assert [alt_b.phase(e, 0, 10).train_bias for e in range(4)] == [True, True, False, False]
    uneven = PRNNConfig(two, strategy="alternating", epochs_per_phase=(1, 3))
    assert [uneven.phase(e, 0, 8).trainable for e in range(8)] == [(0,), (1,), (1,), (1,)] * 2

    inter = PRNNConfig(two, strategy="interleaving")
    assert [inter.phase(0, s, 10).trainable for s in range(5)] == [(0,), (1,), (0,), (1,), (0,)]
    assert inter.phase(0, 0, 10).train_bias and inter.phase(0, 1, 10).train_bias

    res = PRNNConfig((ID, IMG, SubnetConfig(("cat",))), strategy="residual", order=(2, 0, 1))
    assert res.phase_epochs(10) == (3, 3, 4)
    got = [res.phase(e, 0, 10) for e in range(10)]
    assert [p.trainable for p in got] == [(2,)] * 3 + [(0,)] * 3 + [(1,)] * 4
    assert [p.scoring for p in got] == [(2,)] * 3 + [(0, 2)] * 3 + [(0, 1, 2)] * 4
    assert [p.train_bias for p in got] == [True] * 3 + [False] * 7  # residual default: the first subnet's
    assert res.replace(train_bias="always").phase(9, 0, 10).train_bias
    assert not res.replace(train_bias="never").phase(0, 0, 10).train_bias
    with pytest.raises(ValueError, match="n_epochs >= 3"):
        res.phase_epochs(2)
    with pytest.raises(ValueError, match="take 6 epochs but n_epochs is 10"):
        res.replace(epochs_per_phase=2).check(TrainConfig(n_epochs=10))
    res.replace(epochs_per_phase=(1, 2, 7)).check(TrainConfig(n_epochs=10))
    with pytest.raises(ValueError, match="epoch"):
        res.phase(10, 0, 10)


def test_json_roundtrip_and_unknown_fields():
    p = PRNNConfig.for_architecture("parallel", ["img"], layers=[[8], [4, 2]], strategy="alternating",
                                    epochs_per_phase=(2, 1), order=(1, 0), train_bias="first")
    assert PRNNConfig.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="unknown PRNNConfig field"):
        PRNNConfig.from_dict({"subnets": [{"sources": ["id"]}], "stratgy": "residual"})
    with pytest.raises(ValueError, match="PRNNConfig JSON is not valid JSON"):
        PRNNConfig.from_json("{")
    with pytest.raises(ValueError, match="PRNNConfig: the field 'subnets' is missing"):
        PRNNConfig.from_dict({"strategy": "residual"})
    with pytest.raises(ValueError, match="a PRNNConfig is read from a JSON object; got list"):
        PRNNConfig.from_json("[1]")


def test_layout_checks_the_features_against_the_config():
    cfg = TrainConfig(layers=[5])
    f = make_features()
    p = PRNNConfig.for_architecture("parallel", ["img", "cat"], layers=[[5], [3], [4]])
    layout = PRNNLayout(cfg, p, 13, [f["img"], f["cat"]])
    assert layout.cols == ((0, 5), (5, 8), (8, 12)) and layout.hidden_total == 12
    assert [s.kind for srcs in layout.sources for s in srcs] == ["id", "dense", "sparse"]
    specs = {s.name: s for s in layout.param_specs()}
    assert specs["s2.Wf.cat"].sparse and not specs["s1.Wf.img"].sparse and specs["Wy"].shape == (13, 12)
    with pytest.raises(ValueError, match=r"reads feature source\(s\) \['cat'\]"):
        PRNNLayout(cfg, p, 13, [f["img"]])
    with pytest.raises(ValueError, match="no subnet reads them"):
        PRNNLayout(cfg, PRNNConfig.for_architecture("feature", ["img"]), 13, [f["img"], f["cat"]])
    with pytest.raises(ValueError, match="13 rows but the model has 14 items"):
        PRNNLayout(cfg, p, 14, [f["img"], f["cat"]])
    with pytest.raises(ValueError, match="two feature sources"):
        PRNNLayout(cfg, PRNNConfig.for_architecture("feature", ["img"]), 13, [f["img"], f["img"]])
