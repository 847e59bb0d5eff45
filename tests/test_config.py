import pytest

from gru4rec_kernels.config import TrainConfig, parse_final_act


def test_official_defaults():
    c = TrainConfig()
    assert c.layers == [100] and c.loss == "cross-entropy" and c.final_act == "linear"
    assert c.constrained_embedding and c.embedding == 0 and c.n_sample == 2048 and c.sample_alpha == 0.5
    assert c.learning_rate == 0.05 and c.momentum == 0.0 and c.batch_size == 64 and c.n_epochs == 10
    assert c.sample_store_size == 10_000_000 and c.bpreg == 1.0 and c.logq == 0.0


@pytest.mark.parametrize("field,value", [
    ("layers", []), ("layers", [0]), ("layers", [10, -1]), ("layers", "100"), ("loss", "mse"),
    ("final_act", "softmax"), ("final_act", "elu-x"), ("final_act", "leaky--1"), ("embedding", -1),
    ("dropout_p_embed", 1.0), ("dropout_p_hidden", -0.1), ("learning_rate", 0), ("learning_rate", float("nan")),
    ("momentum", 1.0), ("n_sample", -1), ("sample_alpha", 1.5), ("batch_size", 0), ("n_epochs", 0),
    ("seed", -1), ("bpreg", -1), ("grad_cap", float("inf")), ("batch_size", 2.5), ("constrained_embedding", 1),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_cross_field_rules():
    with pytest.raises(ValueError, match="embedding"):
        TrainConfig(embedding=16, constrained_embedding=True)
    with pytest.raises(ValueError, match="logq"):
        TrainConfig(loss="bpr-max", logq=1.0)
    with pytest.raises(ValueError, match="sample_store_size"):
        TrainConfig(n_sample=100, sample_store_size=10)


def test_json_roundtrip_and_unknown_fields():
    c = TrainConfig(layers=[32, 16], loss="bpr-max", final_act="elu-0.5", seed=3)
    assert TrainConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"layer": [3]})
    with pytest.raises(ValueError, match="TrainConfig JSON is not valid JSON"):
        TrainConfig.from_json('{"layers": [3]')
    with pytest.raises(ValueError, match="a TrainConfig is read from a JSON object; got str"):
        TrainConfig.from_json('"layers"')


def test_final_act_parsing():
    assert parse_final_act("elu-0.5") == (3, 0.5)
    assert parse_final_act("leaky-0.01") == (4, 0.01)
    assert parse_final_act("linear") == (0, 0.0)
