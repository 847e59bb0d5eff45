"""Trainer(config, backend).fit(train, valid=None): the session-parallel training loop.

Per epoch: the schedule (inputs, targets, active, reset: batching.EpochSchedule) is built in Numba chunk by
chunk; each step takes the next n_sample ids of the sample store; the backend runs whole chunks
(``train_chunk``), so the Python loop runs once per chunk, not once per kernel. The global step counter keys
the dropout masks (rng.dropout_mask_np), so a run is reproducible whatever the backend.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .backends import backend_class, resolve
from .batching import EpochSchedule
from .config import TrainConfig
from .layout import init_params
from .model import Model
from .sampling import SampleStore

log = logging.getLogger("gru4rec_kernels")


class TrainingDivergedError(RuntimeError):
    """The loss or a parameter became NaN/Inf; the message names the epoch, the step and the last checkpoint."""


class Trainer:
    """Trains GRU4Rec v2.

    Parameters
    ----------
    config : TrainConfig
    backend : "auto" | "numpy" | "cpu" | "cuda"
        "auto" picks cuda when a GPU is usable, else the Numba cpu backend.
    show_progress : bool
        tqdm bar with the running loss, mini-batches/s and events/s.
    chunk_steps : int
        Steps per schedule chunk handed to the backend at once (one CUDA graph replay on a GPU).
    """

    def __init__(self, config: TrainConfig, backend: str = "auto", show_progress: bool = True,
                 chunk_steps: int = 256):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
        config.validate()
        if not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ValueError(f"chunk_steps must be a positive int; got {chunk_steps!r}")
        self.cfg = config
        self.backend_name = resolve(backend)
        self.show_progress = show_progress
        self.chunk_steps = chunk_steps

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self, train, valid=None, eval_cutoffs=(5, 10, 20), eval_batch_size: int = 512) -> Model:
        """Train on ``train`` (a SessionData); evaluate on ``valid`` after every epoch when given.

        Returns the trained Model; ``model.history`` has one dict per epoch (epoch, loss, mb_per_s, events_per_s,
        seconds, and recall@k / mrr@k on ``valid``).
        """
        from .data import SessionData

        if not isinstance(train, SessionData):
            raise TypeError(f"train must be a SessionData; got {type(train).__name__}")
        lengths = np.diff(train.offsets)
        if not np.any(lengths >= 2):
            raise ValueError("train has no session with 2 or more events: nothing to learn from")
        cfg = self.cfg
        support = train.item_support()
        _, params = init_params(cfg, train.n_items)
        sampler = None
        logq_t = logq_s = None
        if cfg.n_sample > 0:
            sampler = SampleStore(support, cfg.sample_alpha, cfg.sample_store_size, cfg.n_sample, cfg.seed)
        if cfg.logq > 0:
            p0 = support / support.sum()
            with np.errstate(divide="ignore"):
                logq_t = cfg.logq * np.log(np.maximum(p0, 1e-30))
                ps = sampler.probabilities() if sampler is not None else p0
                logq_s = cfg.logq * np.log(np.maximum(ps, 1e-30))
        be = backend_class(self.backend_name)(cfg, train.n_items, params, logq_t, logq_s)
        history: list[dict] = []
        step = 0
        try:
            for epoch in range(1, cfg.n_epochs + 1):
                rec, step = self._epoch(be, train, sampler, epoch, step)
                model = Model(cfg, train.item_ids, be.get_params(), history=history, item_support=support)
                self._check_finite(model, epoch, step)
                if valid is not None:
                    from .evaluate import evaluate
                    res = evaluate(model, valid, cutoffs=eval_cutoffs, batch_size=eval_batch_size,
                                   backend=self.backend_name)
                    for k in eval_cutoffs:
                        rec[f"recall@{k}"] = res["recall"][k]
                        rec[f"mrr@{k}"] = res["mrr"][k]
                history.append(rec)
                log.info("epoch %d: loss %.4f  %.0f mb/s  %.0f events/s%s", epoch, rec["loss"], rec["mb_per_s"],
                         rec["events_per_s"], "".join(f"  {k} {v:.4f}" for k, v in rec.items()
                                                      if k.startswith(("recall@", "mrr@"))))
        finally:
            be.close()
            if sampler is not None:
                sampler.close()
        return Model(cfg, train.item_ids, be.get_params(), history=history, item_support=support)

    # ------------------------------------------------------------------------------------------------ epoch
    def _epoch(self, be, train, sampler, epoch: int, step: int):
        cfg = self.cfg
        sched = EpochSchedule(train.offsets, train.items, cfg.batch_size)
        be.reset_hidden()
        total_steps = sched.n_steps_total
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total_steps, desc=f"epoch {epoch}/{cfg.n_epochs}", unit="mb", leave=False,
                       dynamic_ncols=True)
        loss_sum = 0.0
        n_events = 0
        n_steps = 0
        t0 = time.perf_counter()
        try:
            while True:
                chunk = sched.next_chunk(self.chunk_steps)
                if chunk is None:
                    break
                T = chunk.inputs.shape[0]
                if sampler is not None:
                    samples = np.stack([sampler.next() for _ in range(T)])
                else:
                    samples = np.zeros((T, 0), dtype=np.int32)
                losses = be.train_chunk(chunk.inputs, chunk.targets, chunk.active, chunk.reset, samples, step)
                if not np.all(np.isfinite(losses)):
                    bad = int(np.flatnonzero(~np.isfinite(losses))[0])
                    raise TrainingDivergedError(
                        f"loss became {losses[bad]} at epoch {epoch}, step {n_steps + bad} (global step "
                        f"{step + bad}); lower learning_rate or set grad_cap")
                # step losses are sums over rows / batch_size: back to a per-event mean
                loss_sum += float(losses.sum()) * cfg.batch_size
                n_events += int(chunk.n_events)
                n_steps += T
                step += T
                if bar is not None:
                    dt = max(time.perf_counter() - t0, 1e-9)
                    bar.update(T)
                    bar.set_postfix(loss=f"{loss_sum / max(n_events, 1):.4f}", mb_s=f"{n_steps / dt:.0f}",
                                    ev_s=f"{n_events / dt:.0f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        dt = max(time.perf_counter() - t0, 1e-9)
        rec = {"epoch": epoch, "loss": loss_sum / max(n_events, 1), "steps": n_steps, "events": n_events,
               "seconds": dt, "mb_per_s": n_steps / dt, "events_per_s": n_events / dt}
        return rec, step

    @staticmethod
    def _check_finite(model: Model, epoch: int, step: int) -> None:
        for k, v in model.params.items():
            if not np.all(np.isfinite(v)):
                raise TrainingDivergedError(f"parameter {k!r} became NaN/Inf by the end of epoch {epoch} "
                                            f"(global step {step}); lower learning_rate or set grad_cap")


def fit(train, config: TrainConfig | None = None, backend: str = "auto", **kw) -> Model:
    """Shortcut: Trainer(config or TrainConfig(), backend).fit(train, **kw)."""
    return Trainer(config or TrainConfig(), backend=backend).fit(train, **kw)

