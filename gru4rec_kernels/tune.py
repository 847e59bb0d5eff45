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
A trial whose combination of values is not a valid TrainConfig (e.g. logq with bpr-max) is pruned.
A bad space (unknown field, unknown type, low >= high, a value TrainConfig rejects) is a ValueError naming it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field

from .config import TrainConfig

log = logging.getLogger("gru4rec_kernels")

__all__ = ["load_search_space", "validate_search_space", "tune", "TuneResult", "split_validation", "parse_metric"]

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
    trials: list = field(default_factory=list)  # dicts: number, state, value, params, seconds

    def to_dict(self) -> dict:
        return {"metric": self.metric, "best_value": self.best_value, "best_config": self.best_config.to_dict(),
                "trials": self.trials}


def tune(train, space, valid=None, base_config: TrainConfig | None = None, metric: str = "mrr@20",
         n_trials: int | None = 20, timeout: float | None = None, backend: str = "auto", seed: int = 0,
         valid_days: float = 1.0, eval_batch_size: int = 512, show_progress: bool = False) -> TuneResult:
    """Optuna TPE search (seeded) maximising ``metric`` on the validation split. See the module docstring."""
    optuna = _import_optuna()
    from .evaluate import evaluate
    from .trainer import Trainer

    base = base_config or TrainConfig()
    space = validate_search_space(space, base)
    mname, k = parse_metric(metric)
    if n_trials is not None and (not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"n_trials must be a positive int or None; got {n_trials!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None; got {timeout!r}")
    if n_trials is None and timeout is None:
        raise ValueError("give n_trials or timeout (or both)")
    if valid is None:
        train, valid = split_validation(train, valid_days)
    trials: list = []

    def objective(trial):
        params = _suggest(trial, space)
        try:
            cfg = base.replace(**params)
        except ValueError as e:
            log.info("trial %d: invalid combination %s (%s): pruned", trial.number, params, e)
            trials.append({"number": trial.number, "state": "pruned", "value": None, "params": params,
                           "reason": str(e)})
            raise optuna.TrialPruned(str(e)) from None
        import time
        t0 = time.perf_counter()
        model = Trainer(cfg, backend=backend, show_progress=show_progress).fit(train)
        res = evaluate(model, valid, cutoffs=(k,), batch_size=eval_batch_size, backend=backend)
        value = float(res[mname][k])
        trials.append({"number": trial.number, "state": "complete", "value": value, "params": params,
                       "seconds": time.perf_counter() - t0})
        log.info("trial %d: %s=%.5f  %s", trial.number, metric, value, params)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError("no trial completed (every combination was invalid, or the timeout was too short)")
    best = study.best_trial
    best_params = _suggest(optuna.trial.FixedTrial(best.params), space)
    return TuneResult(best_config=base.replace(**best_params), best_value=float(best.value), metric=metric,
                      trials=trials)
