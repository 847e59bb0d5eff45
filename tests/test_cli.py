"""The command line: the README's first command on the built-in data, evaluate, preprocess, bad input."""
import json

import pytest

from gru4rec_kernels.cli import main


def test_train_on_builtin_data_prints_metrics_and_saves(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    out = tmp_path / "run.json"
    rc = main(["train", "--n-epochs", "1", "--layers", "32", "--n-sample", "64", "--batch-size", "32",
               "--no-progress", "--save", str(model), "--json", str(out), "--cutoffs", "20"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "SYNTHETIC" in text and "recall@20=" in text and "mrr@20=" in text and "POP:" in text
    assert json.loads(out.read_text())["test"]["recall"]["20"] > 0
    test = tmp_path / "test.tsv"
    from gru4rec_kernels.synthetic import default_split
    _, te = default_split()
    te.to_csv(test, sep="\t", index=False)
    rc = main(["evaluate", "--model", str(model), "--test", str(test), "--cutoffs", "5", "20"])
    assert rc == 0
    assert "recall@20=" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("SessionId\tItem\tTime\n1\t2\t3\n")
    assert main(["train", "--train", str(bad), "--n-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "ItemId" in err and "error" in err
    assert main(["train", "--learning-rate", "-1"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--loss"])  # argparse: missing value


def test_config_file_and_override(tmp_path, capsys):
    from gru4rec_kernels.cli import build_parser, config_from_args
    cfgf = tmp_path / "best.json"
    cfgf.write_text(json.dumps({"layers": [64], "loss": "bpr-max", "final_act": "elu-1", "learning_rate": 0.1}))
    args = build_parser().parse_args(["train", "--config", str(cfgf), "--learning-rate", "0.2"])
    cfg = config_from_args(args)
    assert cfg.layers == [64] and cfg.loss == "bpr-max" and cfg.learning_rate == 0.2
