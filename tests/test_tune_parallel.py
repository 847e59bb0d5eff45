"""Trial-parallel tuning (tune.py): spawned workers (n_jobs) and MPI ranks on one Optuna journal.

Tiny synthetic data and the numpy backend (no JIT to wait for; deterministic, so a config scores the same in
any process). Every parallel run uses 2 workers and a few trials. The serial run (n_jobs=1, in process, data in
memory) is the reference the parallel runs must reproduce where Optuna allows it: the random sampler's configs,
values and best config; TPE's first 10 (start-up) configs and its best-of-what-ran rule.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from gru4rec_kernels import SessionData, TrainConfig  # noqa: E402
from gru4rec_kernels import tune as tune_mod  # noqa: E402
from gru4rec_kernels.cli import main  # noqa: E402
from gru4rec_kernels.preprocess import validation_split  # noqa: E402
from gru4rec_kernels.synthetic import generate_clicks  # noqa: E402
from gru4rec_kernels.tune import STUDY_NAME, TuneWorkerError, tune, usable_cores  # noqa: E402
from gru4rec_kernels.tune_samplers import N_STARTUP_TRIALS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
         "layers": {"type": "categorical", "choices": [[8], [16]]}, "n_epochs": 1}
BASE = TrainConfig(batch_size=16, n_sample=16)
CLI_BASE = ["--backend", "numpy", "--batch-size", "16", "--n-sample", "16"]
KW = dict(base_config=BASE, backend="numpy")

needs_two_cores = pytest.mark.skipif(usable_cores() < 2, reason="2 workers need 2 cores (no oversubscription)")


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _study(path):
    return optuna.load_study(study_name=STUDY_NAME, storage=tune_mod._journal(str(path)))


def _workers(study) -> dict:
    return {k: v for k, v in study.user_attrs.items() if k.startswith("worker ")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The click log as CSV (for the CLI), its train / valid split in memory, and the split saved as a
    SessionData folder (train/, valid/) for --data-dir."""
    d = tmp_path_factory.mktemp("tune_par")
    csv = d / "clicks.csv"
    generate_clicks(n_items=150, n_sessions=400, seed=1).to_csv(csv, index=False)
    train, valid = validation_split(SessionData.from_csv(csv), days=1)
    (d / "data").mkdir()
    train.save(d / "data" / "train")
    valid.save(d / "data" / "valid")
    space = d / "space.json"
    space.write_text(json.dumps(SPACE))
    return {"dir": d, "csv": csv, "train": train, "valid": valid, "data_dir": d / "data", "space": space}


@pytest.fixture(scope="module")
def serial_random(data):
    return tune(data["train"], SPACE, valid=data["valid"], n_trials=5, sampler="random", seed=3, **KW)


@pytest.fixture(scope="module")
def parallel_random(data):
    """2 workers on the saved folders, opened by memory map in the parent: the workers must use them in place."""
    storage = data["dir"] / "random.journal"
    res = tune(SessionData.open(data["data_dir"] / "train"), SPACE, valid=SessionData.open(data["data_dir"] / "valid"),
               n_trials=5, sampler="random", seed=3, n_jobs=2, storage=storage, **KW)
    return res, _study(storage)


# ------------------------------------------------------------------------------------------------ n_jobs
@needs_two_cores
def test_study_has_exactly_n_trials_all_finished(parallel_random):
    res, study = parallel_random
    states = [t.state for t in study.trials]
    assert len(states) == 5 and all(s == optuna.trial.TrialState.COMPLETE for s in states)
    assert sorted(t.number for t in study.trials) == list(range(5))
    assert [t["number"] for t in res.trials] == list(range(5))


@needs_two_cores
def test_random_sampler_same_configs_values_and_best_as_serial(parallel_random, serial_random):
    res, _ = parallel_random
    ser = {t["number"]: t for t in serial_random.trials}
    par = {t["number"]: t for t in res.trials}
    assert len({_key(t["params"]) for t in ser.values()}) == 5  # 5 distinct configs, not one drawn 5 times
    assert {n: _key(t["params"]) for n, t in par.items()} == {n: _key(t["params"]) for n, t in ser.items()}
    for n in ser:  # the numpy backend computes the same value in any process
        assert par[n]["value"] == pytest.approx(ser[n]["value"], rel=1e-6), n
    assert res.best_config == serial_random.best_config
    assert res.best_value == pytest.approx(serial_random.best_value, rel=1e-6)


@needs_two_cores
def test_workers_memory_map_the_data_in_place_with_limited_threads(parallel_random, data):
    _, study = parallel_random
    workers = _workers(study)
    assert sorted(workers) == ["worker 0", "worker 1"]
    threads = usable_cores() // 2
    for w in workers.values():
        # a SessionData pickled to the worker would be a plain SessionData of in-memory arrays
        for split in ("train", "valid"):
            assert w[split]["type"] == "MappedSessionData" and w[split]["mapped"] is True, w
            assert w[split]["path"] == str(data["data_dir"] / split)  # opened in place: no copy
        assert w["numba_threads"] == threads and w["blas_threads"] == str(threads)
        assert w["pid"] != os.getpid()
    assert len({w["pid"] for w in workers.values()}) == 2


def test_serial_run_is_one_in_process_worker(serial_random):
    assert {t["worker"] for t in serial_random.trials} == {0}
    assert [t["state"] for t in serial_random.trials] == ["complete"] * 5


@needs_two_cores
def test_tpe_startup_configs_equal_serial_and_best_is_best_of_what_ran(data):
    kw = dict(valid=data["valid"], n_trials=12, sampler="tpe", seed=5, **KW)
    ser = tune(data["train"], SPACE, **kw)
    par = tune(data["train"], SPACE, n_jobs=2, **kw)
    assert [t["number"] for t in par.trials] == list(range(12))
    assert all(t["state"] == "complete" for t in par.trials)
    first = lambda r: [_key(t["params"]) for t in r.trials[:N_STARTUP_TRIALS]]
    assert first(par) == first(ser)
    # later TPE trials depend on what had finished: only the rule holds, the best of the trials that ran
    best = max((t for t in par.trials), key=lambda t: t["value"])
    assert par.best_value == best["value"]
    assert par.best_config == BASE.replace(**best["params"])


@needs_two_cores
def test_failing_and_invalid_trials_are_recorded_and_the_study_goes_on(data, tmp_path, capsys):
    """Through the CLI with a click log: the parent saves the split once, the workers map it."""
    space = tmp_path / "space.json"
    # lr 1e6 diverges (TrainingDivergedError); logq with bpr-max is not a valid TrainConfig (pruned)
    space.write_text(json.dumps({"learning_rate": {"type": "categorical", "choices": [0.05, 1e6]},
                                 "loss": {"type": "categorical", "choices": ["cross-entropy", "bpr-max"]},
                                 "logq": 1.0, "layers": [8], "n_epochs": 1}))
    storage, trials = tmp_path / "s.journal", tmp_path / "trials.json"
    rc = main(["tune", "--train", str(data["csv"]), "--space", str(space), "--out", str(tmp_path / "best.json"),
               "--n-trials", "8", "--sampler", "random", "--tune-seed", "0", "--n-jobs", "2", "--storage",
               str(storage), "--trials-json", str(trials), *CLI_BASE])
    out = capsys.readouterr()
    assert rc == 0, out.err
    t = json.loads(trials.read_text())["trials"]
    assert len(t) == 8
    for rec in t:
        p = rec["params"]
        want = ("pruned" if p["loss"] == "bpr-max" else "fail" if p["learning_rate"] == 1e6 else "complete")
        assert rec["state"] == want, rec
    assert {rec["state"] for rec in t} == {"complete", "fail", "pruned"}  # the seed covers all three
    assert all("TrainingDivergedError" in rec["reason"] for rec in t if rec["state"] == "fail")
    assert "fail" in out.out and "TrainingDivergedError" in out.out
    for w in _workers(_study(storage)).values():  # the in-memory split was saved once and mapped
        assert w["train"]["mapped"] and Path(w["train"]["path"]).name == "train"
        assert not Path(w["train"]["path"]).exists()  # the temporary copy is gone


@needs_two_cores
def test_a_killed_worker_ends_the_job_with_a_clear_error(data, tmp_path):
    storage = tmp_path / "crash.journal"
    box = {}

    def run():
        try:
            box["result"] = tune(data["train"], SPACE, valid=data["valid"], n_trials=60, sampler="random",
                                 n_jobs=2, storage=storage, **KW)
        except BaseException as e:  # noqa: B036 - handed to the test thread
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    t0, pids = time.monotonic(), {}
    while time.monotonic() - t0 < 50 and "worker 1" not in pids and th.is_alive():
        time.sleep(0.2)
        if storage.exists() and storage.stat().st_size:
            pids = {k: v["pid"] for k, v in _workers(_study(storage)).items()}
    assert "worker 1" in pids, f"worker 1 never started: {box}"
    os.kill(pids["worker 1"], signal.SIGKILL)
    th.join(45)  # a lock the killed worker held is broken after 30 s
    assert not th.is_alive(), "the parent hangs after a worker died"
    err = box.get("error")
    assert isinstance(err, TuneWorkerError), box
    assert "worker 1" in str(err) and "SIGKILL" in str(err) and "stopped" in str(err)
    for pid in pids.values():  # both gone: the survivor was stopped and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    study = _study(storage)
    running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert not running  # the killed worker's trial is marked failed with the reason
    assert all("worker 1" in t.user_attrs["reason"] for t in study.trials
               if t.state == optuna.trial.TrialState.FAIL)


# ------------------------------------------------------------------------------------------------ MPI
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")
@needs_two_cores
def test_mpiexec_two_ranks_equal_the_serial_run(data, serial_random, tmp_path):
    pytest.importorskip("mpi4py")
    storage, trials = tmp_path / "mpi.journal", tmp_path / "trials.json"
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "gru4rec_kernels.cli", "tune", "--data-dir",
           str(data["data_dir"]), "--space", str(data["space"]), "--out", str(tmp_path / "best.json"),
           "--n-trials", "5", "--sampler", "random", "--tune-seed", "3", "--storage", str(storage),
           "--trials-json", str(trials), *CLI_BASE]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote the best config") == 1  # rank 0 writes, rank 1 stays quiet
    got = json.loads(trials.read_text())
    assert {t["number"]: _key(t["params"]) for t in got["trials"]} == \
        {t["number"]: _key(t["params"]) for t in serial_random.trials}
    assert got["best_config"] == serial_random.best_config.to_dict()
    workers = _workers(_study(storage))
    assert sorted(workers) == ["worker 0", "worker 1"]
    assert all(w["train"]["mapped"] and w["train"]["path"] == str(data["data_dir"] / "train")
               for w in workers.values())


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")
@pytest.mark.parametrize("case", ["missing data", "old storage"])
def test_mpiexec_bad_input_on_rank_0_ends_every_rank(data, tmp_path, case):
    """Rank 0 fails while reading the data or creating the study: every rank reports it and exits, none waits
    for rank 0 (and no rank mistakes the journal rank 0 just created for an old one)."""
    pytest.importorskip("mpi4py")
    storage = tmp_path / "s.journal"
    if case == "old storage":
        storage.write_text("{}\n")
    where = tmp_path / "missing" if case == "missing data" else data["data_dir"]
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "gru4rec_kernels.cli", "tune", "--data-dir", str(where),
           "--space", str(data["space"]), "--out", str(tmp_path / "best.json"), "--storage", str(storage), *CLI_BASE]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode != 0
    what = "--data-dir: no such directory" if case == "missing data" else "holds an earlier study"
    assert r.stderr.count(what) == 2, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ checks
def test_mpi_world_is_none_outside_mpiexec(monkeypatch):
    for v in tune_mod._MPI_SIZE_VARS:
        monkeypatch.delenv(v, raising=False)
    assert tune_mod.mpi_world() is None


def test_several_ranks_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if absent
    with pytest.raises(RuntimeError, match="mpi4py is not installed"):
        tune_mod.mpi_world()


def test_more_jobs_than_cores_is_refused(data, monkeypatch):
    monkeypatch.setattr(tune_mod, "usable_cores", lambda: 2)
    with pytest.raises(ValueError, match="oversubscribe"):
        tune(data["train"], SPACE, valid=data["valid"], n_trials=2, n_jobs=3, **KW)


@pytest.mark.parametrize("kw,match", [
    (dict(n_jobs=0), "n_jobs"), (dict(sampler="grid"), "sampler"), (dict(n_jobs=True), "n_jobs")])
def test_bad_parallel_arguments(data, kw, match):
    with pytest.raises(ValueError, match=match):
        tune(data["train"], SPACE, valid=data["valid"], n_trials=2, **KW, **kw)


def test_existing_storage_is_refused(data, tmp_path):
    storage = tmp_path / "old.journal"
    storage.write_text("{}\n")
    with pytest.raises(ValueError, match="holds an earlier study"):
        tune(data["train"], SPACE, valid=data["valid"], n_trials=2, storage=storage, **KW)


def test_data_dir_without_train_is_a_clear_cli_error(data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["tune", "--data-dir", str(tmp_path / "empty"), "--space", str(data["space"]), "--out",
                 str(tmp_path / "b.json"), *CLI_BASE]) == 2
    assert "train/" in capsys.readouterr().err


def test_timeout_stops_starting_trials_and_leaves_the_queued_ones_out(data):
    res = tune(data["train"], SPACE, valid=data["valid"], n_trials=500, timeout=2.0, sampler="random", **KW)
    assert 1 <= len(res.trials) < 500
    assert [t["number"] for t in res.trials] == list(range(len(res.trials)))
    assert all(t["state"] == "complete" for t in res.trials)
