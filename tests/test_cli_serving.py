"""`gru4rec recommend | evaluate --baselines | report | tune`, in-process through cli.main with tmp files."""
from __future__ import annotations

import json

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.cli import main
from gru4rec_kernels.recommend import recommend_one


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small trained model (2 epochs, validation history), its train / test logs and a train --json file."""
    from gru4rec_kernels.synthetic import default_split
    d = tmp_path_factory.mktemp("cli")
    tr, te = default_split(n_items=200, n_sessions=1500)
    train, test = g.SessionData.from_pandas(tr), g.SessionData.from_pandas(te)
    cfg = g.TrainConfig(layers=[16], n_sample=32, batch_size=16, n_epochs=2, learning_rate=0.1)
    model = g.Trainer(cfg, backend="numpy", show_progress=False).fit(train, valid=test, eval_cutoffs=(5, 20))
    paths = {"model": d / "m.safetensors", "train": d / "train.tsv", "test": d / "test.tsv",
             "run": d / "run.json", "dir": d}
    model.save(paths["model"])
    tr.to_csv(paths["train"], sep="\t", index=False)
    te.to_csv(paths["test"], sep="\t", index=False)
    paths["run"].write_text(json.dumps({"history": model.history, "test": {}}))
    return paths, model, train


# ------------------------------------------------------------------------------------------------ recommend
def test_recommend_one_session_text_and_json(files, capsys):
    p, model, _ = files
    items = [str(i) for i in model.item_ids[[3, 4, 5]]]
    assert main(["recommend", "--model", str(p["model"]), "--session", *items, "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    want_i, want_s = recommend_one(model, [int(i) for i in items], k=5)
    assert lines[0].split("\t") == ["rank", "item_id", "score"] and len(lines) == 6
    assert [int(ln.split("\t")[1]) for ln in lines[1:]] == want_i.tolist()
    assert main(["recommend", "--model", str(p["model"]), "--session", *items, "-k", "5", "--json",
                 "--exclude-seen"]) == 0
    out = json.loads(capsys.readouterr().out)
    want_i, want_s = recommend_one(model, [int(i) for i in items], k=5, exclude=[int(i) for i in items])
    assert out["items"] == want_i.tolist()
    np.testing.assert_allclose(out["scores"], want_s, rtol=1e-6)


def test_recommend_sessions_file_lines_and_click_log(files, capsys):
    p, model, _ = files
    ids = model.item_ids
    f = p["dir"] / "sessions.txt"
    f.write_text(f"{ids[1]} {ids[2]}\n\n{ids[3]},{ids[4]},{ids[5]}\n{ids[6]}\n")
    assert main(["recommend", "--model", str(p["model"]), "--sessions", str(f), "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["session"] for o in out] == [1, 3, 4]  # labelled by line number; blank lines skipped
    assert out[1]["items"] == recommend_one(model, ids[[3, 4, 5]], k=3)[0].tolist()
    log = p["dir"] / "clicks.tsv"
    log.write_text(f"SessionId\tItemId\tTime\n9\t{ids[2]}\t5\n8\t{ids[7]}\t1\n9\t{ids[1]}\t2\n8\t{ids[8]}\t3\n")
    assert main(["recommend", "--model", str(p["model"]), "--sessions", str(log), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # sessions by first time (8 at t=1, then 9 at t=2); events by time: 9 is [ids[1], ids[2]]
    assert [ln.split("\t")[0] for ln in lines] == ["8", "9"]
    got9 = [int(t.split(":")[0]) for t in lines[1].split("\t")[1].split()]
    assert got9 == recommend_one(model, ids[[1, 2]], k=2)[0].tolist()


def test_recommend_bad_input(files, capsys):
    p, model, _ = files
    f = p["dir"] / "bad_sessions.txt"
    f.write_text("1 2\n3 x 4\n")
    assert main(["recommend", "--model", str(p["model"]), "--sessions", str(f)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["recommend", "--model", str(p["model"]), "--session", "1", "2.5"]) == 2
    assert "not an integer" in capsys.readouterr().err
    assert main(["recommend", "--model", str(p["model"])]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["recommend", "--model", str(p["model"]), "--session", "1", "-k", "0"]) == 2
    assert "k must be" in capsys.readouterr().err
    assert main(["recommend", "--model", str(p["dir"] / "missing.safetensors"), "--session", "1"]) == 2


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_with_baselines_prints_a_table_and_writes_json(files, capsys):
    p, model, _ = files
    out = p["dir"] / "eval.json"
    assert main(["evaluate", "--model", str(p["model"]), "--test", str(p["test"]), "--train", str(p["train"]),
                 "--baselines", "--cutoffs", "5", "20", "--json", str(out), "--backend", "numpy"]) == 0
    text = capsys.readouterr().out
    for name in ("GRU4Rec", "POP", "S-POP", "item-kNN"):
        assert any(ln.startswith(name + " ") for ln in text.splitlines()), name
    assert "recall@20" in text and "mrr@5" in text
    res = json.loads(out.read_text())
    assert set(res["baselines"]) == {"POP", "S-POP", "item-kNN"}
    assert res["recall"]["20"] > res["baselines"]["POP"]["recall"]["20"]
    assert res["baselines"]["POP"]["n_events"] == res["n_events"]
    assert main(["report", "--results", str(out)]) == 0
    assert "item-kNN" in capsys.readouterr().out


def test_evaluate_baselines_need_train(files, capsys):
    p, _, _ = files
    assert main(["evaluate", "--model", str(p["model"]), "--test", str(p["test"]), "--baselines"]) == 2
    assert "--train" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ report
def test_report_draws_curves_from_json_and_from_a_model(files, capsys):
    pytest.importorskip("matplotlib")
    p, _, _ = files
    for src in ("run", "model"):
        png = p["dir"] / f"curves_{src}.png"
        assert main(["report", "--history", str(p[src]), "--out", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert "mrr@20=" in capsys.readouterr().out


def test_report_bad_input(files, capsys):
    p, _, _ = files
    bad = p["dir"] / "nohist.json"
    bad.write_text(json.dumps({"test": {}}))
    assert main(["report", "--history", str(bad), "--out", str(p["dir"] / "x.png")]) == 2
    assert "history" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert main(["report", "--history", str(p["dir"] / "none.json"), "--out", "x.png"]) == 2


# ------------------------------------------------------------------------------------------------ tune
def test_tune_writes_a_config_that_train_reads(files, capsys):
    pytest.importorskip("optuna")
    from gru4rec_kernels.cli import build_parser, config_from_args
    p, _, _ = files
    space = p["dir"] / "space.json"
    space.write_text(json.dumps({
        "learning_rate": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
        "layers": {"type": "categorical", "choices": [[8], [12]]},
        "loss": {"type": "categorical", "choices": ["cross-entropy", "bpr-max"]},
        "n_epochs": 1}))
    best = p["dir"] / "best.json"
    trials = p["dir"] / "trials.json"
    rc = main(["tune", "--train", str(p["train"]), "--space", str(space), "--out", str(best), "--n-trials", "2",
               "--backend", "numpy", "--n-sample", "16", "--batch-size", "16", "--metric", "recall@20",
               "--trials-json", str(trials)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "best recall@20=" in text
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(best)]))
    assert cfg.layers in ([8], [12]) and cfg.n_epochs == 1 and cfg.n_sample == 16 and 0.02 <= cfg.learning_rate <= 0.2
    t = json.loads(trials.read_text())
    assert len(t["trials"]) == 2 and t["best_config"] == cfg.to_dict()


@pytest.mark.parametrize("space,match", [
    ({"learning_rat": {"type": "float", "low": 0.1, "high": 0.2}}, "learning_rat"),
    ({"learning_rate": {"type": "float", "low": 0.3, "high": 0.2}}, "low must be < high"),
    ({"learning_rate": {"type": "uniform", "low": 0.1, "high": 0.2}}, "'type'"),
    ({"loss": {"type": "categorical", "choices": ["cross-entropy", "hinge"]}}, "'loss'"),
    ({"layers": {"type": "categorical", "choices": []}}, "'layers'"),
    ({"n_sample": {"type": "int", "low": 0, "high": 10.5}}, "'n_sample'"),
    ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.2, "log": True}}, "log scale"),
    ({"dropout_p_hidden": {"type": "float", "low": 0.0, "high": 0.5, "sigma": 1}}, "sigma"),
    ({}, "non-empty"),
])
def test_tune_bad_search_space_names_the_field(space, match):
    from gru4rec_kernels.tune import validate_search_space
    with pytest.raises(ValueError, match=match):
        validate_search_space(space)


def test_tune_cli_bad_space_is_exit_code_2(files, capsys):
    p, _, _ = files
    space = p["dir"] / "bad_space.json"
    space.write_text(json.dumps({"hidden": {"type": "int", "low": 1, "high": 2}}))
    assert main(["tune", "--train", str(p["train"]), "--space", str(space), "--out", str(p["dir"] / "o.json")]) == 2
    assert "'hidden'" in capsys.readouterr().err
    assert not (p["dir"] / "o.json").exists()
