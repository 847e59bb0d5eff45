"""Optuna samplers whose choices do not depend on which process runs a trial (imported only with optuna).

Optuna's own samplers draw from one random stream per sampler object: the values trial 7 gets depend on how
many draws that object made before. In P worker processes, each with its own sampler, trial 7 then gets other
values than in a serial run, and P workers seeded alike draw the same configs P times. Here a random draw is a
function of (seed, trial number, parameter name) only; the storage hands out the trial numbers, so any number of
workers evaluate exactly the configs of the serial run.

- ``TrialKeyedRandomSampler``: random search, reproducible for any number of workers.
- ``KeyedStartupTPESampler``: TPE whose first ``n_startup_trials`` trials (TPE's random start-up) are the keyed
  random draws, so they too equal the serial run's; later trials are TPE's, which depend on which trials had
  finished when they started (timing), so only their number and the best-of-what-ran rule are reproducible.
"""
from __future__ import annotations

import warnings
import zlib

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler, TPESampler

__all__ = ["TrialKeyedRandomSampler", "KeyedStartupTPESampler", "N_STARTUP_TRIALS"]

N_STARTUP_TRIALS = 10  # TPE's default random start-up


def _key(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class TrialKeyedRandomSampler(BaseSampler):
    """Random search: the value of parameter ``name`` in trial number ``k`` is a draw of Optuna's RandomSampler
    seeded with (seed, k, crc32(name)), whatever process runs the trial and whatever ran before it."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        key = _key(self.seed, trial.number, zlib.crc32(param_name.encode()))
        return RandomSampler(seed=key).sample_independent(study, trial, param_name, param_distribution)


class KeyedStartupTPESampler(BaseSampler):
    """TPE after ``n_startup_trials`` keyed random trials (by trial number, not by finished-trial count, so every
    worker agrees which trials are start-up ones). ``worker`` seeds each worker's TPE differently: with one seed,
    two workers that see the same history would propose the same config. The constant liar counts running trials
    as bad ones, so parallel workers spread out instead of piling on one promising point."""

    def __init__(self, seed: int = 0, worker: int = 0, n_startup_trials: int = N_STARTUP_TRIALS):
        self.n_startup_trials = int(n_startup_trials)
        self._startup = TrialKeyedRandomSampler(seed)
        with warnings.catch_warnings():  # constant_liar is 'experimental' in older Optuna releases
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._tpe = TPESampler(seed=_key(seed, worker), n_startup_trials=0, constant_liar=True)

    def _inner(self, trial) -> BaseSampler:
        return self._startup if trial.number < self.n_startup_trials else self._tpe

    def infer_relative_search_space(self, study, trial) -> dict:
        return self._inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict:
        return self._inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)
