"""Hyperparameter search with Optuna (optional extra: ``pip install 'gru4rec-kernels[tune]'``).

The search space is JSON, one entry per TrainConfig field::

    {"learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": true},
     "layers":        {"type": "categorical", "choices": [[64], [100]]},
     "loss":          {"type": "categorical", "choices": ["cross-entropy", "bpr-max"]},
     "n_sample":      {"type": "int", "low": 0, "high": 2048, "step": 512},
     "n_epochs":      3}                 <- a plain value (or {"type": "fixed", "value": 3}) fixes the field

Every trial trains on the training split and scores ``metric`` ("mrr@20", "recall@20", any cutoff) on a
validation split: the one given, or else the sessions of the training log's last ``valid_days`` days split off
it (the official time split; time in seconds). The best config (the base config with the best trial's values)
is what ``tune`` returns and what ``gru4rec tune --out FILE`` writes: ``gru4rec train --config FILE`` reads it.
A trial whose combination of values is not a valid TrainConfig (e.g. logq with bpr-max) is pruned; a trial that
raises (a diverged training) is recorded as failed with its reason, and the search goes on.
A bad space (unknown field, unknown type, low >= high, a value TrainConfig rejects) is a ValueError naming it.

Trials in parallel (docs/design.md, "Parallel tuning"): ``n_jobs=P`` runs P spawned worker processes, or, under
``mpiexec -n P`` with mpi4py, every rank is one (``comm=mpi_world()``). They share one Optuna study in a journal
file (``storage``) and the data: the splits are saved once as SessionData directories (or used where they
were opened from) and every worker memory-maps them. The study is created with ``n_trials`` queued trials and
a worker runs a trial only by claiming one, so exactly ``n_trials`` run. Each worker gets cores // P threads.
Reproducible against the serial run with the same seed and trial count: with ``sampler="random"`` the set of
configs, their values and the best config (values are computed identically in any process); with "tpe" the
first 10 (random start-up) configs, then only the rule: the result is the best of the trials that ran.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from .comm import _MPI_SIZE_VARS, mpi_world  # noqa: F401 - part of this module's API
from .config import TrainConfig

log = logging.getLogger("gru4rec_kernels")

__all__ = ["load_search_space", "validate_search_space", "tune", "TuneResult", "TuneWorkerError", "split_validation",
           "parse_metric", "mpi_world", "usable_cores", "SAMPLERS", "STUDY_NAME"]

SAMPLERS = ("tpe", "random")
STUDY_NAME = "gru4rec-tune"
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_TYPES = ("float", "int", "categorical", "fixed")


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise RuntimeError("hyperparameter tuning needs optuna, an optional extra: "
                           "pip install 'gru4rec-kernels[tune]' (or pip install optuna)") from None
    return optuna


def parse_metric(metric: str) -> tuple[str, int]:
    """'mrr@20' -> ('mrr', 20)."""
    if isinstance(metric, str) and "@" in metric:
        name, _, k = metric.partition("@")
        if name in ("mrr", "recall") and k.isdigit() and int(k) >= 1:
            return name, int(k)
    raise ValueError(f"metric must be 'mrr@K' or 'recall@K' (e.g. 'mrr@20'); got {metric!r}")


def load_search_space(spec, base: TrainConfig | None = None) -> dict:
    """A search space from a dict, a JSON string, or a path to a JSON file; validated against ``base``."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if not text.lstrip().startswith("{"):
            if not os.path.exists(text):
                raise FileNotFoundError(f"search space file not found: {text}")
            with open(text) as f:
                text = f.read()
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"search space is not valid JSON: {e}") from None
    return validate_search_space(spec, base)


def _check_value(name: str, value, base: TrainConfig, what: str):
    """A value is refused only when no context accepts it: the base config (with the space's fixed values) or
    the default one. A value valid alone but not with the base's other fields (logq with a base loss of
    bpr-max while the space also varies the loss) is left to the trial, which is pruned if the mix is invalid."""
    err = None
    for ctx in (base, TrainConfig()):
        try:
            ctx.replace(**{name: value})
            return
        except (ValueError, TypeError) as e:
            err = err or e
    raise ValueError(f"search space field {name!r}: {what} {value!r} is not a valid value: {err}") from None


def validate_search_space(space, base: TrainConfig | None = None) -> dict:
    """Check every entry; returns a normalised copy. ValueError naming the field on any problem."""
    if not isinstance(space, dict) or not space:
        raise ValueError("the search space must be a non-empty JSON object mapping TrainConfig fields to specs")
    base = base or TrainConfig()
    fixed = {k: v for k, v in space.items() if not isinstance(v, dict) and k in _FIELDS}
    fixed.update({k: v["value"] for k, v in space.items()
                  if isinstance(v, dict) and v.get("type") == "fixed" and "value" in v and k in _FIELDS})
    try:
        base = base.replace(**fixed)
    except (ValueError, TypeError):
        pass  # the offending fixed value is named below, field by field
    out = {}
    for name, spec in space.items():
        if name not in _FIELDS:
            raise ValueError(f"search space: unknown field {name!r}; TrainConfig fields: {sorted(_FIELDS)}")
        if not isinstance(spec, dict):
            _check_value(name, spec, base, "fixed value")
            out[name] = {"type": "fixed", "value": spec}
            continue
        typ = spec.get("type")
        if typ not in _TYPES:
            raise ValueError(f"search space field {name!r}: 'type' must be one of {_TYPES}; got {typ!r}")
        allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
                   "categorical": {"type", "choices"}, "fixed": {"type", "value"}}[typ]
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ValueError(f"search space field {name!r}: unknown key(s) {extra} for type {typ!r} "
                             f"(allowed: {sorted(allowed)})")
        if typ == "fixed":
            if "value" not in spec:
                raise ValueError(f"search space field {name!r}: type 'fixed' needs a 'value'")
            _check_value(name, spec["value"], base, "fixed value")
            out[name] = {"type": "fixed", "value": spec["value"]}
            continue
        if typ == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"search space field {name!r}: 'choices' must be a non-empty list")
            for c in choices:
                _check_value(name, c, base, "choice")
            out[name] = {"type": typ, "choices": list(choices)}
            continue
        lo, hi = spec.get("low"), spec.get("high")
        num = numbers.Integral if typ == "int" else numbers.Real
        for key, v in (("low", lo), ("high", hi)):
            if not isinstance(v, num) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"search space field {name!r}: {key!r} must be a finite "
                                 f"{'int' if typ == 'int' else 'number'}; got {v!r}")
        if not lo < hi:
            raise ValueError(f"search space field {name!r}: low must be < high; got low={lo!r}, high={hi!r}")
        log_ = spec.get("log", False)
        if not isinstance(log_, bool):
            raise ValueError(f"search space field {name!r}: 'log' must be true or false; got {log_!r}")
        if log_ and lo <= 0:
            raise ValueError(f"search space field {name!r}: a log scale needs low > 0; got {lo!r}")
        step = spec.get("step")
        if step is not None:
            if not isinstance(step, num) or isinstance(step, bool) or not step > 0:
                raise ValueError(f"search space field {name!r}: 'step' must be a positive "
                                 f"{'int' if typ == 'int' else 'number'}; got {step!r}")
            if log_:
                raise ValueError(f"search space field {name!r}: 'step' and 'log' cannot be combined")
        for v in (lo, hi):
            _check_value(name, v, base, "bound")
        out[name] = {"type": typ, "low": lo, "high": hi, "log": log_, "step": step}
    return out


def _suggest(trial, space: dict) -> dict:
    params = {}
    for name, s in space.items():
        t = s["type"]
        if t == "fixed":
            params[name] = s["value"]
        elif t == "float":
            params[name] = trial.suggest_float(name, s["low"], s["high"], log=s["log"], step=s["step"])
        elif t == "int":
            params[name] = trial.suggest_int(name, s["low"], s["high"], log=s["log"], step=s["step"] or 1)
        else:
            # Optuna choices must be scalars: lists (layers) travel as their JSON text
            enc = [json.dumps(c) for c in s["choices"]]
            params[name] = json.loads(trial.suggest_categorical(name, enc))
    return params


def split_validation(train, valid_days: float = 1.0):
    """(train_tr, valid): the sessions ending in the last ``valid_days`` days split off (validation_split)."""
    from .preprocess import validation_split
    return validation_split(train, days=valid_days)


@dataclass
class TuneResult:
    best_config: TrainConfig
    best_value: float
    metric: str
    trials: list = field(default_factory=list)  # dicts: number, state, value, params, seconds, worker, reason

    def to_dict(self) -> dict:
        return {"metric": self.metric, "best_value": self.best_value, "best_config": self.best_config.to_dict(),
                "trials": self.trials}


class TuneWorkerError(RuntimeError):
    """A tuning worker process died or failed outside a trial; the other workers were stopped."""


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs besides the data and the storage (small, pickled once per worker)."""
    space: dict
    base: TrainConfig
    metric: str
    backend: str
    seed: int
    sampler: str
    eval_batch_size: int
    n_trials: int | None
    deadline: float | None  # time.time() after which no trial starts
    show_progress: bool = False
    log_level: int = logging.INFO


def tune(train, space, valid=None, base_config: TrainConfig | None = None, metric: str = "mrr@20",
         n_trials: int | None = 20, timeout: float | None = None, backend: str = "auto", seed: int = 0,
         valid_days: float = 1.0, eval_batch_size: int = 512, show_progress: bool = False, *,
         sampler: str = "tpe", n_jobs: int = 1, storage: str | os.PathLike | None = None,
         work_dir: str | os.PathLike | None = None, comm=None) -> TuneResult:
    """Optuna search maximising ``metric`` on the validation split. See the module docstring.

    ``sampler``: "tpe" or "random" (both seeded by ``seed``). ``n_jobs``: worker processes (at most the usable
    cores). ``storage``: the Optuna journal file to keep the study in (must not exist yet; default: in memory
    for one job, a temporary file for several). ``work_dir``: where the temporary files go (default: the
    system's temp folder). ``comm``: an mpi4py communicator of more than one rank makes every rank a worker
    (rank 0 passes the data; the others may pass ``train=None``); see ``mpi_world``."""
    _import_optuna()
    base = base_config or TrainConfig()
    space = validate_search_space(space, base)
    parse_metric(metric)
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"n_trials must be a positive int or None; got {n_trials!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None; got {timeout!r}")
    if n_trials is None and timeout is None:
        raise ValueError("give n_trials or timeout (or both)")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive int; got {n_jobs!r}")
    parallel_mpi = comm is not None and comm.Get_size() > 1
    if parallel_mpi and n_jobs > 1:
        raise ValueError(f"n_jobs={n_jobs} under MPI: every rank is one worker already (use one or the other)")
    storage = None if storage is None else os.path.abspath(os.fspath(storage))
    job = _Job(space=space, base=base, metric=metric, backend=backend, seed=int(seed), sampler=sampler,
               eval_batch_size=eval_batch_size, n_trials=n_trials,
               deadline=None if timeout is None else time.time() + timeout, show_progress=show_progress,
               log_level=log.getEffectiveLevel())
    if parallel_mpi:
        return _tune_mpi(job, comm, train, valid, valid_days, storage, work_dir)
    _check_paths(storage, work_dir)
    if n_jobs > 1:
        return _tune_processes(job, n_jobs, train, valid, valid_days, storage, work_dir)
    if valid is None:
        train, valid = split_validation(train, valid_days)
    store = _journal(storage) if storage else _import_optuna().storages.InMemoryStorage()
    study = _create_study(store, job)
    _work(study, store, job, train, valid, worker=0)
    return _result(study, job)


def _check_paths(storage: str | None, work_dir) -> None:
    """The filesystem checks (under MPI on rank 0 only: the others would see the journal rank 0 just created)."""
    if storage is not None:
        if os.path.exists(storage) and os.path.getsize(storage) > 0:
            raise ValueError(f"storage {storage} exists and holds an earlier study: delete it or give a new path")
        if not os.path.isdir(os.path.dirname(storage)):
            raise ValueError(f"storage: the folder {os.path.dirname(storage)} does not exist")
    if work_dir is not None and not os.path.isdir(work_dir):
        raise ValueError(f"work_dir {work_dir} is not a directory")


# ------------------------------------------------------------------------------------------------ the study
def _journal(path: str):
    """The shared storage: an append-only Optuna journal file. Each worker replays the log (incrementally) and
    appends its own operations under a lock file, which works wherever creating a file is atomic (local
    disks, NFS: the reason to prefer it to SQLite, whose fcntl locks break on NFS and which reports 'database
    is locked' under concurrent writers). A lock left by a killed worker is broken after 30 s."""
    from optuna.storages import JournalStorage
    try:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    except ImportError:  # Optuna < 4.0 names the backend JournalFileStorage
        from optuna.storages import JournalFileOpenLock
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path, grace_period=30)))


def _sampler(job: _Job, worker: int):
    from .tune_samplers import KeyedStartupTPESampler, TrialKeyedRandomSampler
    if job.sampler == "random":
        return TrialKeyedRandomSampler(job.seed)
    return KeyedStartupTPESampler(job.seed, worker=worker)


def _create_study(storage, job: _Job):
    """The study, with ``n_trials`` waiting trials queued: a worker starts a trial only by claiming one of them,
    so the study ends with exactly ``n_trials`` trials however many workers race for the last one."""
    optuna = _import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize",
                                sampler=_sampler(job, 0))
    for _ in range(job.n_trials or 0):
        study.enqueue_trial({})
    return study


def _load_study(storage, job: _Job, worker: int):
    optuna = _import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=_sampler(job, worker))


def _claim(study, storage, study_id: int):
    """The lowest-numbered waiting trial, now running in this process; None when none is left. The storage's
    WAITING -> RUNNING transition is atomic: of two workers claiming one trial, one gets False and tries the
    next (what Optuna's own queue does, without creating a new trial when the queue is empty)."""
    optuna = _import_optuna()
    from optuna.trial import TrialState
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return optuna.trial.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _work(study, storage, job: _Job, train, valid, worker: int, keep_going=None) -> int:
    """Run trials until none is left (or the deadline passes, or ``keep_going()`` says stop). Returns how many."""
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    n = 0
    while (keep_going is None or keep_going()) and (job.deadline is None or time.time() < job.deadline):
        trial = _claim(study, storage, study_id) if job.n_trials is not None else study.ask()
        if trial is None:
            break
        _run_trial(study, trial, job, train, valid, worker)
        n += 1
    return n


def _run_trial(study, trial, job: _Job, train, valid, worker: int) -> None:
    """Train and score one trial. An invalid combination of values is pruned; a trial that raises (diverged,
    out of memory, ...) is recorded as failed with its reason, and the study goes on."""
    from optuna.trial import TrialState

    from .evaluate import evaluate
    from .trainer import Trainer
    mname, k = parse_metric(job.metric)
    t0 = time.perf_counter()
    trial.set_user_attr("worker", worker)
    params = _suggest(trial, job.space)
    try:
        cfg = job.base.replace(**params)
    except (ValueError, TypeError) as e:
        log.info("trial %d: invalid combination %s (%s): pruned", trial.number, params, e)
        trial.set_user_attr("reason", f"invalid combination: {e}")
        study.tell(trial, state=TrialState.PRUNED)
        return
    try:
        model = Trainer(cfg, backend=job.backend, show_progress=job.show_progress).fit(train)
        res = evaluate(model, valid, cutoffs=(k,), batch_size=job.eval_batch_size, backend=job.backend)
        value = float(res[mname][k])
        if not math.isfinite(value):
            raise ValueError(f"{job.metric} is {value}")
    except Exception as e:
        log.warning("trial %d failed (%s: %s): recorded as failed, the study goes on", trial.number,
                    type(e).__name__, e)
        trial.set_user_attr("reason", f"{type(e).__name__}: {e}"[:2000])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_user_attr("seconds", time.perf_counter() - t0)
    study.tell(trial, value)
    log.info("trial %d: %s=%.5f  %s", trial.number, job.metric, value, params)


def _result(study, job: _Job) -> TuneResult:
    optuna = _import_optuna()
    from optuna.trial import TrialState
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:  # never started (the timeout came first)
            continue
        try:
            params = _suggest(optuna.trial.FixedTrial(t.params), job.space)
        except ValueError:  # a trial cut off before it had all its values
            params = dict(t.params)
        rec = {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": params}
        rec.update({k: t.user_attrs[k] for k in ("seconds", "worker", "reason") if k in t.user_attrs})
        trials.append(rec)
    done = [t for t in trials if t["state"] == "complete"]
    if not done:
        why = "; ".join(f"trial {t['number']}: {t['reason']}" for t in trials[:3] if "reason" in t)
        raise RuntimeError("no trial completed (every combination was invalid or failed, or the timeout was too "
                           "short)" + (f": {why}" if why else ""))
    best = study.best_trial  # the first trial (by number) with the best value
    best_params = _suggest(optuna.trial.FixedTrial(best.params), job.space)
    return TuneResult(best_config=job.base.replace(**best_params), best_value=float(best.value), metric=job.metric,
                      trials=trials)


def _release_stale_lock(path: str) -> None:
    """Every worker has exited: a journal lock still held is a dead worker's; free it now instead of after the
    30 s grace period."""
    try:
        from optuna.storages.journal import JournalFileOpenLock
    except ImportError:  # Optuna < 4.0
        from optuna.storages import JournalFileOpenLock
    try:
        JournalFileOpenLock(path).release()
    except RuntimeError:  # not held
        pass


def _fail_orphans(storage, reason: str) -> None:
    """Trials left running by a dead worker: failed, with the reason (all workers have stopped)."""
    from optuna.trial import TrialState
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "reason", reason[:2000])
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


# ------------------------------------------------------------------------------------------------ workers
def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _threads_per_worker(n_workers: int) -> int:
    cores = usable_cores()
    if n_workers > cores:
        raise ValueError(f"n_jobs={n_workers} is more than the {cores} cores this process may use: the workers "
                         f"would oversubscribe the machine")
    return cores // n_workers


def _worker_env(threads: int, worker: int) -> dict:
    """Thread pools sized before the worker imports numpy and Numba (they read these once, at load)."""
    env = {v: str(threads) for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "MKL_NUM_THREADS")}
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if len(gpus) > 1:  # one GPU per worker, round robin over the visible ones
        env["CUDA_VISIBLE_DEVICES"] = gpus[worker % len(gpus)]
    return env


@contextlib.contextmanager
def _environ(env: dict):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _limit_threads(threads: int) -> None:
    import numba
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _open_worker_data(train_dir: str, valid_dir: str):
    """Both splits memory-mapped from their directories: the pages are shared by every worker."""
    from .data import SessionData
    return SessionData.open(train_dir, mmap=True), SessionData.open(valid_dir, mmap=True)


def _register(study, worker: int, train, valid) -> None:
    """What this worker runs with, in the study's user attrs (``worker N``): its process, its Numba threads and
    BLAS thread setting, and how it holds the data (``mapped``: the arrays are memory maps of the directory,
    not copies)."""
    import socket

    import numba
    import numpy as np

    def where(d):
        return {"path": getattr(d, "path", None), "mapped": isinstance(d.items, np.memmap)
                and isinstance(d.offsets, np.memmap), "type": type(d).__name__}
    study.set_user_attr(f"worker {worker}", {
        "pid": os.getpid(), "host": socket.gethostname(), "numba_threads": numba.get_num_threads(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "train": where(train), "valid": where(valid)})


def _stage_data(train, valid, valid_days: float, work: str) -> tuple[str, str]:
    """The two splits as SessionData directories: a directory the data was opened from is used as it is; data in
    memory is saved once into ``work``. Workers open them by path: no array is pickled to a worker."""
    from .data import SessionData
    from .datadir import MappedSessionData
    if not isinstance(train, SessionData) or not (valid is None or isinstance(valid, SessionData)):
        raise TypeError("train and valid must be SessionData (read with SessionData.from_* or SessionData.open)")
    if valid is None:
        train, valid = split_validation(train, valid_days)

    def on_disk(d, name):
        return d.path if isinstance(d, MappedSessionData) else d.save(os.path.join(work, name))
    return on_disk(train, "train"), on_disk(valid, "valid")


def _process_worker(worker: int, threads: int, job: _Job, storage_path: str, train_dir: str, valid_dir: str,
                    conn, parent_pid: int) -> None:
    """A spawned worker: open the data by memory map, run trials, report ('done', n) or ('error', text)."""
    try:
        _limit_threads(threads)
        logging.basicConfig(level=job.log_level, format=f"[tune worker {worker}] %(message)s", stream=sys.stderr)
        train, valid = _open_worker_data(train_dir, valid_dir)
        storage = _journal(storage_path)
        study = _load_study(storage, job, worker)
        _register(study, worker, train, valid)
        # an orphaned worker (its parent killed) stops after its current trial
        n = _work(study, storage, job, train, valid, worker, keep_going=lambda: os.getppid() == parent_pid)
        conn.send(("done", n))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"[:4000]))  # small: a full pipe would block the exit
        raise


def _describe_exit(worker: int, proc, error: str | None) -> str:
    code = proc.exitcode
    how = f"exit code {code}" if code is None or code >= 0 else f"signal {signal.Signals(-code).name}"
    what = f": {error}" if error else (" (killed, or crashed in native code)" if code else
                                       " without reporting its trials")
    return f"tuning worker {worker} (pid {proc.pid}) ended with {how}{what}; the other workers were stopped"


def _last_word(conn):
    """The message a finished worker left in its pipe, or None (it died before sending one: the pipe is at EOF)."""
    try:
        return conn.recv() if conn.poll() else None
    except EOFError:
        return None


def _run_workers(job: _Job, n_jobs: int, threads: int, storage_path: str, train_dir: str,
                 valid_dir: str) -> str | None:
    """Start ``n_jobs`` spawned workers and wait for all; the first one that dies or fails stops the others.
    Returns None when all finished, else what went wrong."""
    import multiprocessing as mp
    from multiprocessing.connection import wait
    ctx = mp.get_context("spawn")  # no fork: a forked Numba / OpenMP / CUDA runtime is not safe to use
    procs, pipes = {}, {}
    try:
        for w in range(n_jobs):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_process_worker, name=f"gru4rec-tune-{w}", daemon=True,
                            args=(w, threads, job, storage_path, train_dir, valid_dir, send, os.getpid()))
            with _environ(_worker_env(threads, w)):
                p.start()
            send.close()
            procs[w], pipes[w] = p, recv
        live = dict(procs)
        while live:
            ready = wait([p.sentinel for p in live.values()])
            for w, p in list(live.items()):
                if p.sentinel not in ready:
                    continue
                p.join()
                del live[w]
                msg = _last_word(pipes[w])
                if p.exitcode != 0 or msg is None or msg[0] != "done":
                    return _describe_exit(w, p, msg[1] if msg and msg[0] == "error" else None)
                log.debug("tune worker %d ran %d trials", w, msg[1])
        return None
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def _tune_processes(job: _Job, n_jobs: int, train, valid, valid_days: float, storage: str | None,
                    work_dir) -> TuneResult:
    threads = _threads_per_worker(n_jobs)
    work = tempfile.mkdtemp(prefix="gru4rec-tune-", dir=work_dir)
    try:
        train_dir, valid_dir = _stage_data(train, valid, valid_days, work)
        storage_path = storage or os.path.join(work, "study.journal")
        store = _journal(storage_path)
        study = _create_study(store, job)
        log.info("tuning with %d worker processes x %d threads; study in %s", n_jobs, threads, storage_path)
        # no progress bars: P of them would garble one terminal
        failure = _run_workers(dataclasses.replace(job, show_progress=False), n_jobs, threads, storage_path,
                               train_dir, valid_dir)
        if failure:
            _release_stale_lock(storage_path)
            _fail_orphans(store, failure)
            raise TuneWorkerError(failure + (f"; the study is kept in {storage_path}" if storage else ""))
        return _result(study, job)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ MPI
def _idle_barrier(comm, poll: float = 0.05) -> None:
    """A barrier that sleeps while it waits: MPI's blocking collectives spin a core, which a rank still
    working on the same node needs."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll)


def root_first(comm, fn):
    """Rank 0 runs ``fn()`` while the other ranks wait (idle); an exception on rank 0 is raised on every rank,
    so none is left waiting for a rank that gave up. Returns ``fn()``'s value on rank 0, None elsewhere."""
    out, err = None, None
    if comm.Get_rank() == 0:
        try:
            out = fn()
        except Exception as e:
            err = e
    _idle_barrier(comm)
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    return out


def _tune_mpi(job: _Job, comm, train, valid, valid_days: float, storage: str | None, work_dir) -> TuneResult:
    """Every rank is a worker. Rank 0 stages the data and creates the study; a barrier; all ranks run trials
    from the shared storage; a barrier; rank 0 reads the result, removes its temporary files and sends the
    result to every rank. A rank that fails outside a trial aborts the whole job (MPI_Abort) instead of leaving
    the others waiting."""
    from mpi4py import MPI
    rank = comm.Get_rank()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    cores = usable_cores()
    if local_size > cores:
        log.warning("%d ranks on a node with %d usable cores: the ranks oversubscribe it", local_size, cores)
    threads = max(1, cores // local_size)

    def prepare():
        _check_paths(storage, work_dir)
        work = tempfile.mkdtemp(prefix="gru4rec-tune-", dir=work_dir)
        try:
            if train is None:
                raise ValueError("rank 0 must pass the training data")
            train_dir, valid_dir = _stage_data(train, valid, valid_days, work)
            storage_path = storage or os.path.join(work, "study.journal")
            _create_study(_journal(storage_path), job)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return job, work, storage_path, train_dir, valid_dir
    # the data and the study exist before any rank opens them; every rank uses rank 0's job (its deadline)
    job, work, storage_path, train_dir, valid_dir = comm.bcast(root_first(comm, prepare), root=0)
    study = None
    try:
        _limit_threads(threads)
        gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        if len(gpus) > 1:  # before the backend touches CUDA: one GPU per rank on the node
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[local_rank % len(gpus)]
        for p in (storage_path, train_dir, valid_dir):
            if not os.path.exists(p):
                raise FileNotFoundError(f"rank {rank} cannot see {p}: give --storage and --work-dir on a "
                                        f"filesystem every rank shares")
        mapped_train, mapped_valid = _open_worker_data(train_dir, valid_dir)
        store = _journal(storage_path)
        study = _load_study(store, job, rank)
        _register(study, rank, mapped_train, mapped_valid)
        _work(study, store, dataclasses.replace(job, show_progress=False), mapped_train, mapped_valid, rank)
    except BaseException:
        traceback.print_exc()
        print(f"gru4rec tune: rank {rank} failed outside a trial: aborting the MPI job", file=sys.stderr,
              flush=True)
        comm.Abort(1)
    _idle_barrier(comm)  # every trial has ended

    def result():
        try:
            return _result(study, job)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return comm.bcast(root_first(comm, result), root=0)
