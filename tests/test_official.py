"""Official parameter strings, files (read as data, never executed) and JSON-lines search spaces."""
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.official import parse_param_string, read_param_file, read_param_space

BPRMAX_FILE = """from collections import OrderedDict
gru4rec_params = OrderedDict([
('loss', 'bpr-max'),
('constrained_embedding', True),
('embedding', 0),
('elu_param', 1),
('layers', [512]),
('n_epochs', 10),
('batch_size', 128),
('dropout_p_embed', 0.5),
('dropout_p_hidden', 0.3),
('learning_rate', 0.05),
('momentum', 0.15),
('n_sample', 2048),
('sample_alpha', 0.3),
('bpreg', 0.9),
('logq', 0.0)
])
"""

SPACE = """{"name":"layers", "dtype":"int", "values":[64,512], "step":32}
{"name":"learning_rate", "dtype":"float", "values":[0.01, 0.25], "step":0.005}
{"name":"elu_param", "dtype":"categorical", "values":[0.5, 1, 0]}
"""


def test_param_string():
    d = parse_param_string("loss=bpr-max,layers=100/50,elu_param=0.5,n_sample=2048,constrained_embedding=False")
    assert d == {"loss": "bpr-max", "layers": [100, 50], "final_act": "elu-0.5", "n_sample": 2048,
                 "constrained_embedding": False}
    cfg = g.TrainConfig(**d)
    assert cfg.layers == [100, 50] and cfg.final_act == "elu-0.5"


def test_param_file_is_read_not_run(tmp_path):
    p = tmp_path / "bprmax.py"
    p.write_text(BPRMAX_FILE)
    cfg = g.TrainConfig(**read_param_file(p))
    assert (cfg.loss, cfg.layers, cfg.final_act, cfg.batch_size, cfg.bpreg) == ("bpr-max", [512], "elu-1", 128, 0.9)
    evil = tmp_path / "evil.py"
    marker = tmp_path / "ran"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\ngru4rec_params = dict([('loss', __import__('os'))])\n")
    with pytest.raises(ValueError, match="literal"):
        read_param_file(evil)
    assert not marker.exists()


def test_theano_names(tmp_path):
    d = parse_param_string("final_act=softmax,hidden_act=tanh,adapt=adagrad,loss=cross-entropy")
    assert d == {"final_act": "linear", "loss": "cross-entropy"}
    with pytest.raises(ValueError, match="hidden_act"):
        parse_param_string("hidden_act=relu")


@pytest.mark.parametrize("text,msg", [
    ("loss", "name=value"), ("foo=1", "unknown parameter 'foo'"), ("layers=a/b", "layers must be ints"),
    ("loss=bpr,loss=top1", "twice"), ("", "parameter string"),
])
def test_bad_param_strings(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_param_string(text)


def test_param_space():
    space = read_param_space(SPACE)
    assert space["layers"] == {"type": "int", "low": 64, "high": 512, "step": 32}
    assert space["final_act"]["choices"] == ["elu-0.5", "elu-1", "linear"]
    from gru4rec_kernels.tune import validate_search_space
    validate_search_space(space)


def test_space_is_checked_against_the_base_config():
    from gru4rec_kernels.tune import validate_search_space
    base = g.TrainConfig(constrained_embedding=False)
    # embedding > 0 is invalid with the default (constrained) config, valid with this base
    space = validate_search_space({"embedding": {"type": "categorical", "choices": [0, 64]}}, base)
    assert space["embedding"]["choices"] == [0, 64]
    with pytest.raises(ValueError, match="embedding"):
        validate_search_space({"embedding": {"type": "categorical", "choices": [-1]}}, base)
