"""Bad inputs get a clear error that names the problem, before any work, and nothing is written.

Table-driven over the command line (in process: ``cli.main`` returns 2 and prints ``gru4rec CMD: error: ...``).
"""
import os

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels import cli
from gru4rec_kernels.layout import init_params


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    cfg = g.TrainConfig(layers=[4], n_sample=0)
    _, params = init_params(cfg, 5)
    model = g.Model(cfg, np.arange(10, 15), params, item_support=np.ones(5))
    model.save(d / "m.safetensors")
    (d / "a_file").write_text("x")
    (d / "a_dir").mkdir()
    (d / "bad_results.json").write_text('{"recall": 1}')
    (d / "not_json.json").write_text("{")
    (d / "clicks.dat").write_text("1,2014-04-01T10:00:00.000Z,5,0\n")
    return d


# (argv with {d} for the folder, message fragment, path that must not exist afterwards or None)
CASES = [
    ("train --save {d}/missing/m.safetensors", "--save: the folder", "{d}/missing/m.safetensors"),
    ("train --json {d}/a_dir", "--json: {d}/a_dir is a directory", None),
    ("train --cutoffs 0 5", "--cutoffs must be positive", None),
    ("train --checkpoint-dir {d}/a_file", "not a directory", None),
    ("train --checkpoint-every 5", "--checkpoint-every needs --checkpoint-dir", None),
    ("train --config {d}/a_dir", "--config: {d}/a_dir is a directory", None),
    ("train --params foo=1", "unknown parameter 'foo'", None),
    ("train --param-file {d}/missing.py", "no such file", None),
    ("train --train {d}/missing.tsv --save {d}/x.safetensors", "no such file", "{d}/x.safetensors"),
    ("train --resume {d}/missing_ckpt", "--resume: no such checkpoint", None),
    ("train --patience 2", "needs valid data", None),
    ("train --layers 0", "layers", None),
    ("evaluate --model {d}/m.safetensors --test {d}/a_dir", "is a directory", None),
    ("evaluate --model {d}/a_dir --test {d}/a_file", "is a directory", None),
    ("recommend --model {d}/m.safetensors --session 99999999999999999999", "out of the 64-bit", None),
    ("recommend --model {d}/m.safetensors --sessions {d}/a_dir", "--sessions: {d}/a_dir is a directory", None),
    ("recommend --model {d}/m.safetensors --session 1 --sessions {d}/a_file", "exactly one of", None),
    ("report --results {d}/a_dir", "--results: {d}/a_dir is a directory", None),
    ("report --results {d}/bad_results.json", "expected the JSON", None),
    ("report --results {d}/not_json.json", "not valid JSON", None),
    ("preprocess {d}/clicks.dat --out {d}/a_file", "--out: {d}/a_file exists and is not a directory", None),
    ("preprocess {d}/clicks.dat --out {d}/pp --test-days -1", "--test-days", "{d}/pp"),
    ("preprocess {d}/clicks.dat --out {d}/pp --test-days nan", "--test-days", "{d}/pp"),
    ("preprocess {d}/clicks.dat --out {d}/pp --test-days 1000", "--test-days", "{d}/pp"),
    ("preprocess {d}/clicks.dat --out {d}/pp --min-item-support 0", "--min-item-support must be >= 1", "{d}/pp"),
    ("tune --space {{}} --out {d}/a_dir", "--out: {d}/a_dir is a directory", None),
    ("tune --space {d}/a_dir --out {d}/best.json", "--space: {d}/a_dir is a directory", "{d}/best.json"),
]


@pytest.mark.parametrize("argv,msg,absent", CASES, ids=[c[0].split(" {d}")[0][:60] for c in CASES])
def test_cli_bad_input(files, capsys, argv, msg, absent):
    d = str(files)
    rc = cli.main(argv.format(d=d).split())
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and msg.format(d=d) in err, err
    assert "Traceback" not in err
    if absent:
        assert not os.path.exists(absent.format(d=d))
