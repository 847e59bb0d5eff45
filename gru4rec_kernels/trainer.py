"""Trainer(config, backend).fit(train, valid=None): the session-parallel training loop.

Per epoch: the schedule (inputs, targets, active, reset: batching.EpochSchedule) is built in Numba chunk by
chunk; each step takes the next n_sample ids of the sample store; the backend runs whole chunks
(``train_chunk``), so the Python loop runs once per chunk, not once per kernel. The global step counter keys
the dropout masks (rng.dropout_mask_np), so a run is reproducible whatever the backend.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from .backends import backend_class, resolve
from .batching import EpochSchedule
from .config import TrainConfig
from .layout import init_params
from .model import Model
from .sampling import SampleStore

log = logging.getLogger("gru4rec_kernels")


# A step loss beyond LOSS_LIMIT, or a parameter beyond PARAM_LIMIT, is divergence even while finite: the
# initial weights are below 1 in magnitude and a sane model's scores stay far below float32 exp's range
# (about 88), so values this large only come from an exploding run.
LOSS_LIMIT = 1e6
PARAM_LIMIT = 1e4
# Adagrad moves each weight by about learning_rate per step whatever the gradient's size, so clipping the
# gradient (grad_cap) does not bound the update; only a smaller learning rate does.
DIVERGENCE_ADVICE = ("Lower learning_rate (try 10x smaller): Adagrad's step is about learning_rate per weight "
                     "whatever the gradient's size, so grad_cap does not bound it.")


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
    prnn : PRNNConfig or None
        Train a p-RNN (docs/prnn.md) instead of GRU4Rec: its subnets and training strategy. It runs on the
        backends whose p-RNN step is built (backends.prnn_numpy.PRNN_BUILT); others are refused.
    features : the item features the p-RNN's subnets read: an ItemFeatures, a list or dict of them, or
        ``(frame_or_path, kwargs)`` pairs built at ``fit`` through the training data's item map
        (``ItemFeatures.from_frame`` for a DataFrame, ``read_item_features`` for a path).
    comm : Communicator or None
        Synchronous data parallelism (docs/distributed.md): every rank of ``comm`` (comm.MPIComm under
        ``mpiexec -n P``, comm.NCCLComm on GPUs) calls ``fit`` with the same config and data; ``batch_size`` is
        the GLOBAL batch and each rank runs batch_size / P of its lanes (dataparallel.py). The result equals one
        process at ``batch_size``. Rank 0 alone logs, shows progress and writes checkpoints; validation shards the
        sessions over the ranks; every rank returns the model. A rank's error during training aborts the job.
    replica_check_every : int or None
        With ``comm``: every this many global steps (and at every epoch end) the ranks compare parameter checksums
        and raise ReplicaDivergedError when they differ. None: at the epoch ends only.
    """

    def __init__(self, config: TrainConfig, backend: str = "auto", show_progress: bool = True,
                 chunk_steps: int = 256, prnn=None, features=None, comm=None, replica_check_every: int | None = 1000):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
        config.validate()
        if not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ValueError(f"chunk_steps must be a positive int; got {chunk_steps!r}")
        if comm is not None:
            from .comm import Communicator
            if not isinstance(comm, Communicator):
                raise TypeError(f"comm must be a gru4rec_kernels.comm.Communicator; got {type(comm).__name__}")
            if prnn is not None:
                raise ValueError("a p-RNN does not train data-parallel (comm=, --distributed) yet: train it in one "
                                 "process")
        if replica_check_every is not None and (isinstance(replica_check_every, bool)
                                                or not isinstance(replica_check_every, int) or replica_check_every < 1):
            raise ValueError(f"replica_check_every must be a positive int or None; got {replica_check_every!r}")
        self.comm = comm
        self.replica_check_every = replica_check_every
        self._dp_step = None
        self.cfg = config
        self.prnn = prnn
        self.features = features
        if prnn is not None:
            from .backends.prnn_numpy import resolve_prnn_backend
            from .prnn_config import PRNNConfig
            if not isinstance(prnn, PRNNConfig):
                raise TypeError(f"prnn must be a PRNNConfig; got {type(prnn).__name__}")
            prnn.check(config)
            if prnn.features and features is None:
                raise ValueError(f"the p-RNN config reads feature source(s) {list(prnn.features)}: give "
                                 "features= (ItemFeatures built with the training data's item map)")
            self.backend_name = resolve_prnn_backend(backend)
        elif features is not None:
            raise ValueError("features= is for a p-RNN: give prnn= (a PRNNConfig) too")
        else:
            self.backend_name = resolve(backend)
        self.show_progress = show_progress and (comm is None or comm.rank == 0)
        self.chunk_steps = chunk_steps

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self, train, valid=None, eval_cutoffs=(5, 10, 20), eval_batch_size: int = 512,
            checkpoint_dir=None, checkpoint_every=None, keep_checkpoints: int = 3, resume=None,
            patience: int | None = None, metric: str | None = None) -> Model:
        """Train on ``train`` (a SessionData); evaluate on ``valid`` after every epoch when given.

        Returns the trained Model; ``model.history`` has one dict per epoch (epoch, loss, mb_per_s, events_per_s,
        seconds, and recall@k / mrr@k on ``valid``).

        checkpoint_dir : write checkpoints here (parameters, optimizer state, hidden state, sampler and schedule
            position, history), atomically, keeping the last ``keep_checkpoints``.
        checkpoint_every : an int (every that many steps) or "epoch" (default when checkpoint_dir is given).
        resume : a checkpoint file, or a directory (its newest checkpoint), to continue from. The run then
            continues exactly where the checkpoint was taken (bit-exact on the cpu backend at a fixed thread count).
            The resumed config must equal the checkpoint's except ``n_epochs``, which may grow (train longer).
        patience : early stopping (needs ``valid``): stop after this many epochs without a better ``metric``
            on ``valid``; the returned model has the best epoch's parameters (``model.best_epoch``).
        metric : the validation metric that early stopping and ``best_epoch`` follow: "recall@k", "mrr@k" or
            "ndcg@k" with k one of ``eval_cutoffs`` (higher is better); default "mrr@20" (mrr at the largest
            cutoff when 20 is not one).

        With ``comm`` (data parallelism) every rank calls ``fit`` alike. A checkpoint holds the global hidden
        state, so it resumes on any number of ranks that divides ``batch_size`` (one process included); another
        global batch is a CheckpointError.
        """
        comm = self.comm
        kw = dict(valid=valid, eval_cutoffs=eval_cutoffs, eval_batch_size=eval_batch_size,
                  checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                  keep_checkpoints=keep_checkpoints, resume=resume, patience=patience, metric=metric)
        if comm is None or comm.size == 1:
            return self._fit(train, **kw)
        from .comm import is_everywhere
        try:
            return self._fit(train, **kw)
        except BaseException as e:
            # the divergence checks read the all-reduced loss and the checked replicas: every rank raises them
            if is_everywhere(e) or isinstance(e, TrainingDivergedError):
                raise
            import traceback
            comm.abort(1, "".join(traceback.format_exception(e)) + f"gru4rec: rank {comm.rank} of {comm.size} "
                       f"failed ({type(e).__name__}: {e}): aborting the job (the other ranks would wait for it)")
            raise  # not reached: abort ends the process

    def _setup(self, train, valid, eval_cutoffs, checkpoint_dir, checkpoint_every, keep_checkpoints, resume,
               patience, metric):
        """Argument checks, the data's support and fingerprint, the checkpoint to resume (checked against this
        run) and the initial parameters: (every, layout, eval_cutoffs, metric, support, fingerprint, state,
        params)."""
        from . import checkpoint as ckpt
        from .data import SessionData

        if not isinstance(train, SessionData):
            raise TypeError(f"train must be a SessionData; got {type(train).__name__}")
        if not np.any(np.diff(train.offsets) >= 2):
            raise ValueError("train has no session with 2 or more events: nothing to learn from")
        every = self._check_checkpoint_args(checkpoint_dir, checkpoint_every, keep_checkpoints)
        layout = feature_ids = None
        if self.prnn is not None:
            layout = self._prnn_layout(train)
            feature_ids = ckpt.feature_entries(layout.features)  # what a p-RNN checkpoint must match
        else:
            check_memory(self.cfg, train.n_items)
        eval_cutoffs, metric = check_early_stopping(valid, eval_cutoffs, patience, metric)
        cfg = self.cfg
        support = train.item_support()
        fingerprint = ckpt.data_fingerprint(train)
        state = None
        if resume is not None:
            state = ckpt.load(resume)
            ckpt.check_model_kind(state, self.prnn, feature_ids)
            ckpt.check_phase_plan(state, self.prnn, cfg.n_epochs)
            self._check_global_batch(state)
            if state["cfg"].replace(n_epochs=cfg.n_epochs) != cfg:
                diff = {k: (v, getattr(cfg, k)) for k, v in state["cfg"].to_dict().items()
                        if getattr(cfg, k) != v and k != "n_epochs"}
                raise ckpt.CheckpointError(f"checkpoint {state['path']!r} was written with another config "
                                           f"(field: (checkpoint, now)): {diff}")
            if state["fingerprint"] != fingerprint:
                raise ckpt.CheckpointError(f"checkpoint {state['path']!r} was written for other training data "
                                           f"({state['fingerprint']} vs {fingerprint})")
            params = state["params"]
        elif layout is not None:
            from .prnn_layout import init_prnn_params
            _, params = init_prnn_params(layout)
        else:
            _, params = init_params(cfg, train.n_items)
        return every, layout, eval_cutoffs, metric, support, fingerprint, state, params

    def _check_global_batch(self, state) -> None:
        """A checkpoint's schedule and hidden state are those of its global batch (P x B_l lanes): resuming needs
        the same batch_size, on any number of ranks that divides it."""
        from .checkpoint import CheckpointError
        P_ck, B_ck = state["n_ranks"], state["cfg"].batch_size
        P = 1 if self.comm is None else self.comm.size
        B = self.cfg.batch_size
        if B_ck != B:
            raise CheckpointError(
                f"checkpoint {state['path']!r} was taken at a global batch of {P_ck} rank(s) x {B_ck // P_ck} lanes "
                f"= {B_ck}; this run has {P} x {B / P:g} = {B}: the checkpoint's schedule and hidden state need "
                f"batch_size={B_ck} (on any number of ranks that divides it)")
        hidden = state["hidden"]
        if hidden and hidden[0].shape[0] != B:
            raise CheckpointError(f"checkpoint {state['path']!r} holds a hidden state of {hidden[0].shape[0]} rows "
                                  f"for a global batch of {B}")

    def _fit(self, train, valid, eval_cutoffs, eval_batch_size, checkpoint_dir, checkpoint_every, keep_checkpoints,
             resume, patience, metric) -> Model:
        from . import checkpoint as ckpt

        comm, cfg = self.comm, self.cfg
        dp = comm is not None
        rows = None

        def setup():
            return self._setup(train, valid, eval_cutoffs, checkpoint_dir, checkpoint_every, keep_checkpoints,
                               resume, patience, metric)

        if not dp:
            every, layout, eval_cutoffs, metric, support, fingerprint, state, params = setup()
        else:
            from .comm import agree, raised_everywhere
            from .dataparallel import DataParallelStep, check_replicas, gather_hidden, lane_slice
            rows = agree(comm, "checking the global batch", lambda: lane_slice(comm.rank, comm.size, cfg.batch_size))
            every, layout, eval_cutoffs, metric, support, fingerprint, state, params = agree(
                comm, "preparing the training (arguments, data, checkpoint)", setup)
            seen = comm.allgather((fingerprint, cfg.to_dict()), "comparing the ranks' data and config")
            for i, what in ((0, "training data (fingerprint"), (1, "config (")):
                odd = [r for r, v in enumerate(seen) if v[i] != seen[0][i]]
                if odd:
                    a, b = seen[0][i], seen[odd[0]][i]
                    diff = ({k: (a[k], b[k]) for k in a if a[k] != b[k]} if i else (a, b))
                    raise raised_everywhere(ValueError(
                        f"rank(s) {odd} have other {what} of rank 0 and rank {odd[0]}: {diff}): every rank must "
                        f"train on the same data with the same config"))
        sampler = None
        logq_t = logq_s = None
        if cfg.n_sample > 0:
            sampler = SampleStore(support, cfg.sample_alpha, cfg.sample_store_size, cfg.n_sample, cfg.seed)
        if cfg.logq > 0:
            logq_t, logq_s = logq_columns(cfg, support)

        def make_backend(params):
            if layout is not None:
                from .backends.prnn_numpy import prnn_backend_class
                return prnn_backend_class(self.backend_name)(layout, params, logq_t, logq_s)
            if dp and self.backend_name == "cuda" and comm.size > 1 and getattr(comm, "device", None) is None:
                from .comm import use_local_gpu
                use_local_gpu(comm)  # one GPU per node-local rank, before the backend makes its context
            be = backend_class(self.backend_name)(cfg, train.n_items, params, logq_t, logq_s)
            if dp:
                try:
                    self._dp_step = DataParallelStep(be, comm, cfg, train.n_items)
                except BaseException:
                    be.close()
                    raise
            return be

        if dp:
            import functools
            be = agree(comm, "making the backend", functools.partial(make_backend, params))
        else:
            be = make_backend(params)
        del params  # the backend holds its own copy
        if state is not None:
            del state["params"]
        history: list[dict] = []
        step, first_epoch, sched, partial = 0, 1, None, None
        self.last_checkpoint = None
        if state is not None:
            be.set_opt_state(state["opt"])
            history, step = state["history"], state["step"]
            if sampler is not None and state["sampler"] is not None:
                sampler.set_state(state["sampler"])
            if state["sched"] is not None:  # taken mid-epoch
                first_epoch = state["epoch"]
                sched = EpochSchedule.from_state(train.offsets, train.items, cfg.batch_size, state["sched"])
                be.set_hidden(state["hidden"] if rows is None else [h[rows] for h in state["hidden"]])
                partial = state["partial"]
            else:
                first_epoch = state["epoch"] + 1
            self.last_checkpoint = state["path"]
            self._info("resuming from %s (epoch %d, global step %d)", state["path"], first_epoch, step)
        if dp:  # one seed and one data set give every rank the same parameters; a rank that differs stops here
            check_replicas(comm, be.get_params(), step)

        def save_checkpoint(epoch, sched_, partial_):
            hidden = be.get_hidden()
            if dp:
                hidden = gather_hidden(comm, hidden, cfg.batch_size)

            def write():
                if dp and comm.rank != 0:
                    return None
                return ckpt.save(
                    checkpoint_dir, cfg=cfg, params=be.get_params(), opt=be.get_opt_state(), hidden=hidden,
                    sched_state=None if sched_ is None else sched_.state(),
                    sampler_state=None if sampler is None else sampler.state(), epoch=epoch, step=step_box[0],
                    partial=partial_ or {}, history=history, fingerprint=fingerprint, keep=keep_checkpoints,
                    prnn=self.prnn, features=None if layout is None else ckpt.feature_entries(layout.features),
                    n_ranks=comm.size if dp else 1)

            if not dp:
                self.last_checkpoint = write()
                return
            # rank 0 writes between two meetings of every rank: the gather above and this agreement
            path = agree(comm, f"writing the checkpoint of global step {step_box[0]}", write)
            self.last_checkpoint = comm.bcast(path, 0, "the checkpoint's path")

        self._warmup(be)
        step_box = [step]
        model = None
        best = {"value": -np.inf, "epoch": None, "params": None, "since": 0, "step": 0}
        try:
            for epoch in range(first_epoch, cfg.n_epochs + 1):
                rec = self._epoch(be, train, sampler, epoch, step_box, sched, partial,
                                  save_checkpoint if every not in (None, "epoch") else None, every)
                sched, partial = None, None
                model = self._model(train, be.get_params(), history, support, layout, epoch, step_box[0])
                if dp:  # the replicas agree before the finiteness check, so every rank decides alike
                    check_replicas(comm, model.params, step_box[0])
                self._check_finite(model, epoch, step_box[0])
                if valid is not None:
                    from .evaluate import evaluate
                    res = evaluate(model, valid, cutoffs=eval_cutoffs, batch_size=eval_batch_size,
                                   backend=self.backend_name, comm=comm)
                    for k in eval_cutoffs:
                        for name in ("recall", "mrr", "ndcg"):
                            rec[f"{name}@{k}"] = res[name][k]
                history.append(rec)
                self._info("epoch %d: loss %.4f  %.0f mb/s  %.0f events/s%s", epoch, rec["loss"], rec["mb_per_s"],
                         rec["events_per_s"], "".join(f"  {k} {v:.4f}" for k, v in rec.items()
                                                      if k.startswith(("recall@", "mrr@"))))
                if every is not None:
                    save_checkpoint(epoch, None, None)
                if valid is not None:
                    if rec[metric] > best["value"]:
                        best.update(value=rec[metric], epoch=epoch, since=0, step=step_box[0],
                                    params=model.params if patience is not None else None)
                    else:
                        best["since"] += 1
                    if patience is not None and best["since"] >= patience:
                        self._info("early stopping after epoch %d: no better %s for %d epochs (best %.4f at epoch %d)",
                                 epoch, metric, patience, best["value"], best["epoch"])
                        break
            if model is None:  # resumed after the last epoch: nothing left to train
                model = self._model(train, be.get_params(), history, support, layout, None, step_box[0])
            if best["params"] is not None and best["epoch"] != history[-1]["epoch"]:
                model = self._model(train, best["params"], history, support, layout, best["epoch"],
                                    best["step"])
        finally:
            be.close()
            self._dp_step = None
            if sampler is not None:
                sampler.close()
        model.history = history
        model.best_epoch = best["epoch"]
        return model

    def _prnn_layout(self, train):
        """The p-RNN's PRNNLayout over the training data's items, its features built through their item map."""
        from .features import ItemFeatures, read_item_features
        from .prnn_layout import PRNNLayout
        feats = self.features
        if feats is None:
            feats = []
        elif isinstance(feats, (ItemFeatures, tuple)):
            feats = [feats]
        elif isinstance(feats, dict):
            feats = list(feats.values())
        built = []
        for f in feats:
            if isinstance(f, tuple):
                if len(f) != 2 or not isinstance(f[1], dict):
                    raise ValueError("a feature source to build must be (DataFrame or path, kwargs dict)")
                src, kw = f
                import pandas as pd
                f = (ItemFeatures.from_frame(src, train.item_ids, **kw) if isinstance(src, pd.DataFrame)
                     else read_item_features(src, train.item_ids, **kw))
            elif isinstance(f, ItemFeatures) and not np.array_equal(np.asarray(f.item_ids), train.item_ids):
                raise ValueError(f"features {f.name!r} are aligned with other item ids than the training data's; "
                                 "build them with train.item_ids (or pass (frame_or_path, kwargs) to build here)")
            built.append(f)
        return PRNNLayout(self.cfg, self.prnn, train.n_items, built)

    def _model(self, train, params, history, support, layout, epoch, step) -> Model:
        """The Model of the parameters after ``epoch`` (a p-RNN scores with the subnets of its last phase)."""
        if layout is None:
            return Model(self.cfg, train.item_ids, params, history=history, item_support=support)
        scoring = None
        if epoch is not None:
            scoring = self.prnn.phase(epoch - 1, max(step - 1, 0), self.cfg.n_epochs).scoring
        return Model(self.cfg, train.item_ids, params, history=history, item_support=support, prnn=self.prnn,
                     features=layout.features, scoring=scoring)

    def _warmup(self, be) -> None:
        """Compile the backend's kernels before the first step and say so: the first use of a backend compiles
        them (tens of seconds; cached on disk afterwards), which must not count in epoch 1's throughput."""
        t0 = time.perf_counter()
        self._info("preparing the %s kernels (compiled on first use, then loaded from Numba's on-disk cache) ...",
                 self.backend_name)
        be.warmup(self.cfg.batch_size, self.cfg.n_sample)
        self.compile_seconds = time.perf_counter() - t0
        self._info("kernels ready in %.1f s", self.compile_seconds)

    def _info(self, msg, *args) -> None:
        """Log on rank 0 only (every rank of a data-parallel run would say the same)."""
        if self.comm is None or self.comm.rank == 0:
            log.info(msg, *args)

    @staticmethod
    def _check_checkpoint_args(checkpoint_dir, checkpoint_every, keep):
        if checkpoint_dir is None:
            if checkpoint_every is not None:
                raise ValueError("checkpoint_every needs checkpoint_dir")
            return None
        if checkpoint_every is None or checkpoint_every == "epoch":
            every = "epoch"
        elif isinstance(checkpoint_every, int) and not isinstance(checkpoint_every, bool) and checkpoint_every >= 1:
            every = checkpoint_every
        else:
            raise ValueError(f"checkpoint_every must be 'epoch' or a positive number of steps; "
                             f"got {checkpoint_every!r}")
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep_checkpoints must be an int >= 1; got {keep!r}")
        return every

    # ------------------------------------------------------------------------------------------------ epoch
    def _epoch(self, be, train, sampler, epoch: int, step_box: list, sched=None, partial=None, save=None,
               every=None):
        cfg = self.cfg
        if sched is None:
            sched = EpochSchedule(train.offsets, train.items, cfg.batch_size)
            be.reset_hidden()
        total_steps = sched.n_steps_total
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total_steps, initial=sched.step, desc=f"epoch {epoch}/{cfg.n_epochs}", unit="mb",
                       leave=False, dynamic_ncols=True)
        p = partial or {}
        loss_sum, n_events, n_steps = p.get("loss_sum", 0.0), p.get("n_events", 0), p.get("n_steps", 0)
        seconds_before = p.get("seconds", 0.0)
        t0 = time.perf_counter()
        since_ckpt = 0
        try:
            while True:
                max_steps = self.chunk_steps if save is None else min(self.chunk_steps, every - since_ckpt)
                check = self.replica_check_every
                if self._dp_step is not None and check:  # chunks end at the replica checks' steps
                    max_steps = min(max_steps, check - step_box[0] % check)
                chunk = sched.next_chunk(max_steps)
                if chunk is None:
                    break
                T = chunk.inputs.shape[0]
                if sampler is not None:
                    samples = sampler.next_many(T)
                else:
                    samples = np.zeros((T, 0), dtype=np.int32)
                if self.prnn is not None:  # the strategy's phase of every step of the chunk
                    be.set_phases([self.prnn.phase(epoch - 1, step_box[0] + t, cfg.n_epochs) for t in range(T)])
                run = be.train_chunk if self._dp_step is None else self._dp_step.train_chunk
                losses = run(chunk.inputs, chunk.targets, chunk.active, chunk.reset, samples, step_box[0])
                diverged = ~np.isfinite(losses) | (np.abs(losses) > LOSS_LIMIT)
                if diverged.any():
                    bad = int(np.flatnonzero(diverged)[0])
                    raise TrainingDivergedError(
                        f"loss became {losses[bad]} at epoch {epoch}, step {chunk.step0 + bad} of the epoch "
                        f"(global step {step_box[0] + bad}); last good checkpoint: {self.last_checkpoint}. "
                        f"{DIVERGENCE_ADVICE}")
                for x in losses.tolist():  # step by step: the sum must not depend on how steps were chunked
                    loss_sum += x
                n_events += int(chunk.n_events)  # the global schedule's events: counted once, not per rank
                n_steps += T
                step_box[0] += T
                if self._dp_step is not None and check and step_box[0] % check == 0:
                    from .dataparallel import check_replicas
                    check_replicas(self.comm, be.get_params(), step_box[0])
                since_ckpt += T
                dt = max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.update(T)
                    bar.set_postfix(loss=f"{loss_sum * cfg.batch_size / max(n_events, 1):.4f}",
                                    mb_s=f"{n_steps / dt:.0f}",
                                    ev_s=f"{n_events / dt:.0f}", refresh=False)
                if save is not None and since_ckpt >= every:
                    if not sched.done:  # the epoch-end checkpoint is written by fit
                        save(epoch, sched, {"loss_sum": loss_sum, "n_events": n_events, "n_steps": n_steps,
                                            "seconds": seconds_before + dt})
                    since_ckpt = 0
        finally:
            if bar is not None:
                bar.close()
        dt = seconds_before + max(time.perf_counter() - t0, 1e-9)
        # step losses are sums over rows / batch_size: back to a per-event mean
        return {"epoch": epoch, "loss": loss_sum * cfg.batch_size / max(n_events, 1), "steps": n_steps,
                "events": n_events,
                "seconds": dt, "mb_per_s": n_steps / dt, "events_per_s": n_events / dt}

    def _check_finite(self, model: Model, epoch: int, step: int) -> None:
        for k, v in model.params.items():
            bad = "NaN/Inf" if not np.all(np.isfinite(v)) else (
                f"larger than {PARAM_LIMIT:g} in magnitude" if np.abs(v).max(initial=0.0) > PARAM_LIMIT else None)
            if bad:
                raise TrainingDivergedError(f"parameter {k!r} became {bad} by the end of epoch {epoch} "
                                            f"(global step {step}); last good checkpoint: {self.last_checkpoint}. "
                                            f"{DIVERGENCE_ADVICE}")


def logq_columns(cfg: TrainConfig, support) -> tuple[np.ndarray, np.ndarray]:
    """The logq correction per item, as the official code subtracts it from the scores: logq * log(supp) for the
    mini-batch target columns and logq * log(supp^alpha) for the extra-sample columns, with the raw (not
    normalised) support. Normalising would shift the target columns against the sample columns by
    logq * (log sum supp - log sum supp^alpha), 1.8-2.7 nats on the public datasets, which changes the softmax."""
    log_supp = np.log(np.maximum(np.asarray(support, dtype=np.float64), 1e-30))
    return cfg.logq * log_supp, cfg.logq * cfg.sample_alpha * log_supp


def training_bytes(cfg: TrainConfig, n_items: int) -> int:
    """A lower bound of the memory training needs: parameters with their Adagrad accumulator, momentum and
    gradient buffers (float32), and the step's [B, B + n_sample] score, probability and gradient matrices."""
    from .layout import param_specs
    n_params = sum(int(np.prod(s.shape, dtype=np.float64)) for s in param_specs(cfg, n_items))
    cols = cfg.batch_size + cfg.n_sample
    return int(4 * (4 * n_params + 3 * cfg.batch_size * cols + 6 * cfg.batch_size * sum(cfg.layers)))


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: TrainConfig, n_items: int) -> None:
    """A clear error, before any allocation, when the config cannot fit in this machine's memory."""
    need, have = training_bytes(cfg, n_items), physical_memory()
    if have is not None and need > have:
        raise ValueError(f"training this config on {n_items:,} items needs at least {need / 2**30:,.1f} GiB "
                         f"(layers={cfg.layers}, batch_size={cfg.batch_size}, n_sample={cfg.n_sample}); this "
                         f"machine has {have / 2**30:,.1f} GiB")


def check_early_stopping(valid, eval_cutoffs, patience, metric):
    """Validate the early-stopping arguments before any step: (cutoffs as a tuple, metric)."""
    from .evaluate import _check_cutoffs
    eval_cutoffs = _check_cutoffs(eval_cutoffs)
    if patience is not None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int (epochs without improvement); got {patience!r}")
        if valid is None:
            raise ValueError("patience (early stopping) needs valid data: fit(train, valid=..., patience=...)")
    if metric is None:
        metric = "mrr@20" if 20 in eval_cutoffs else f"mrr@{max(eval_cutoffs)}"
    name, _, k = str(metric).partition("@")
    if name not in ("recall", "mrr", "ndcg") or not k.isdigit() or int(k) not in eval_cutoffs:
        raise ValueError(f"metric must be 'recall@k', 'mrr@k' or 'ndcg@k' with k in eval_cutoffs {eval_cutoffs}; "
                         f"got {metric!r}")
    return eval_cutoffs, f"{name}@{int(k)}"


def fit(train, config: TrainConfig | None = None, backend: str = "auto", prnn=None, features=None, **kw) -> Model:
    """Shortcut: Trainer(config or TrainConfig(), backend, prnn=, features=).fit(train, **kw)."""
    return Trainer(config or TrainConfig(), backend=backend, prnn=prnn, features=features).fit(train, **kw)

