"""CpuBackend: the Numba CPU backend's Python side (state, buffers, argument checks); the kernels are in the
sibling modules, one family each, like ``gru4rec_kernels/kernels``."""
from __future__ import annotations

import numpy as np

from ...layout import allocate, dense_size
from ...parallel import parallel_region
from ...rng import dropout_key
from ..base import Backend, DictStateMixin, FlatHiddenMixin
from .buffers import (
    Chunk,
    Grads,
    OptState,
    Params,
    grad_slots,
    layer_params,
    make_hyper,
    make_workspace,
    placeholder,
    sx_name,
)
from .evaluate import eval_chunk_steps
from .gemm import VW
from .step import apply_grads, step_grads, train_chunk_steps


class CpuBackend(DictStateMixin, FlatHiddenMixin, Backend):
    """Numba parallel CPU backend (float32). Same constructor as NumpyBackend minus ``dtype``."""

    name = "cpu"

    def __init__(self, cfg, n_items, params, logq_target=None, logq_sample=None):
        super().__init__(cfg, n_items, params, logq_target, logq_sample)
        self.layer_widths = tuple(cfg.layers)
        specs = self.specs
        # parameters, their gradients, Adagrad accumulators and momenta: dense ones are views into one flat
        # buffer each (layout order)
        self.flat, self.params = allocate(specs, np.float32)
        self.acc_flat, self.acc = allocate(specs, np.float32)
        self.mom_flat, self.mom = allocate(specs, np.float32)
        self.gflat, gdense = allocate(specs, np.float32)
        for s in specs:
            given = np.asarray(params[s.name])
            if given.shape != tuple(s.shape):
                raise ValueError(f"params[{s.name!r}] has shape {given.shape}; expected {tuple(s.shape)}")
            self.params[s.name][...] = given
        self._ndense = dense_size(specs)
        L = len(cfg.layers)
        onehot = cfg.input_mode == "onehot"
        self._sx_name = sx_name(cfg)
        pick = (lambda d: d[self._sx_name]) if self._sx_name else (lambda d: placeholder())
        self._sx_cols = self.params[self._sx_name].shape[1] if self._sx_name else 0
        self._p = Params(self.flat, self.params["Wy"], self.params["By"], pick(self.params),
                         layer_params(self.params, L, onehot))
        self._grad_layers = layer_params(gdense, L, onehot)
        self._opt = OptState(self.acc_flat, self.mom_flat, self.acc["Wy"], self.mom["Wy"], self.acc["By"],
                             self.mom["By"], pick(self.acc), pick(self.mom))
        self._act = cfg.final_act_code
        keys = np.array([dropout_key(cfg.seed, l) for l in range(-1, L)], dtype=np.int64)
        self._hyper = make_hyper(cfg, keys, logq_target, logq_sample)
        self._head = np.full(self.n_items, -1, dtype=np.int32)
        self._train = None  # training buffers: B rows, S samples, global batch Bg (data parallelism; else B)
        self._hid = None  # flat hidden state of training, or None (= zeros at the next step)
        self._eval = None  # evaluation buffers for one batch size

    def _buffers(self, B, S, Bg=None):
        """The training buffers of B rows and S samples (a data-parallel rank: B of a global batch of Bg rows)."""
        Bg = B if Bg is None else Bg
        tr = self._train
        if tr is not None and (tr["B"], tr["S"], tr["Bg"]) == (B, S, Bg):
            return tr
        work = make_workspace(self.cfg, B, S, self._sx_cols, self._ndense, self._head, global_batch=Bg)
        gWy, gBy, gSx = grad_slots(self.cfg, B, S, self._sx_cols, global_batch=Bg)
        self._train = dict(B=B, S=S, Bg=Bg, work=work, grads=Grads(self.gflat, gWy, gBy, gSx, self._grad_layers),
                           n_hid=B * sum(self.cfg.layers))
        return self._train

    def _hidden_for(self, buf):
        """The training hidden state, as one [B, H_l] array per layer of buf's B rows (zeros when unset or when
        the batch changed)."""
        if self._hid is not None and self._hid.shape[0] != buf["n_hid"]:
            self._hid = None
        if self._hid is None:
            self._hid = np.zeros(buf["n_hid"], dtype=np.float32)
        return tuple(self._split_hidden(self._hid, buf["B"]))

    # ------------------------------------------------------------------ training
    def warmup(self, batch_size: int, n_sample: int) -> None:
        """A chunk of zero steps: Numba types and compiles the whole call graph of the step (or loads it from
        its cache) and no step runs, so parameters, optimizer state and the hidden state are untouched."""
        B, S = int(batch_size), int(n_sample)
        z = np.zeros((0, B), dtype=np.int32)
        self.train_chunk(z, z, z.astype(np.bool_), z.astype(np.bool_), np.zeros((0, S), dtype=np.int32), 0)

    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        T, B, S = self.check_chunk_shapes(inputs, targets, active, reset, samples)
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        active = np.ascontiguousarray(active, dtype=np.bool_)
        reset = np.ascontiguousarray(reset, dtype=np.bool_)
        samples = np.ascontiguousarray(samples, dtype=np.int32).reshape(T, S)
        self.check_ids(inputs, "inputs")
        self.check_ids(targets, "targets")
        self.check_ids(samples, "samples")
        buf = self._buffers(B, S)
        hid = self._hidden_for(buf)
        losses = np.empty(T, dtype=np.float64)
        chunk = Chunk(inputs, targets, active, reset, samples, np.int64(step0))
        with parallel_region():
            train_chunk_steps(self._p, buf["grads"], self._opt, buf["work"], self._hyper, hid, chunk, losses)
        return losses

    def train_step(self, X, Y, active, reset, step: int) -> float:
        X = np.asarray(X)
        B = X.shape[0]
        Y = np.asarray(Y)
        self.check_step_y(X, Y)
        return float(self.train_chunk(X[None], Y[None, :B], np.asarray(active)[None], np.asarray(reset)[None],
                                      Y[None, B:], step)[0])

    # ------------------------------------------------------------------ data parallelism (dataparallel.py)
    def grad_step(self, X, Y, active, reset, step, row0, col_active, buf) -> None:
        """Backend.grad_step: ``step.step_grads`` on this rank's rows, then its slots packed into the host float32
        ``buf`` in GradLayout order (the flat dense gradients are already in that order)."""
        lay = self.grad_layout()
        X = np.ascontiguousarray(X, dtype=np.int32)
        Y = np.ascontiguousarray(Y, dtype=np.int32)
        active = np.ascontiguousarray(active, dtype=np.bool_)
        reset = np.ascontiguousarray(reset, dtype=np.bool_)
        col_active = np.ascontiguousarray(col_active, dtype=np.bool_)
        B, Bg, O = self.check_grad_step(X, Y, active, reset, row0, col_active, lay)
        self.check_grad_buffer(buf, lay)
        self.check_ids(X, "X")
        self.check_ids(Y, "Y")
        tr = self._buffers(B, O - Bg, Bg)
        hid = self._hidden_for(tr)
        work, grads = tr["work"], tr["grads"]
        work.ids[:O] = Y
        jobs = np.zeros((4, 11), dtype=np.int64)
        with parallel_region():
            loss = step_grads(self._p, grads, work, self._hyper, hid, X, O, active, reset, col_active, int(row0),
                              int(step), jobs)
        buf[:lay.wy] = self.gflat
        buf[lay.wy:lay.by] = grads.Wy[:O].reshape(-1)
        buf[lay.by:lay.inp] = grads.By
        inp = buf[lay.inp:lay.loss].reshape(Bg, lay.in_width)
        inp[:row0] = 0.0
        inp[row0:row0 + B] = grads.Wy[O:O + B] if lay.in_name == "Wy" else grads.Sx[:B, :lay.in_width]
        inp[row0 + B:] = 0.0
        buf[lay.loss] = np.float32(loss)

    def apply_grad_buffer(self, buf, X_global, Y) -> float:
        """Backend.apply_grad_buffer: ``buf`` unpacked into the slots of the global step ([Y | X_global] for Wy
        in constrained mode), then ``step.apply_grads``, as the one-process step applies its own slots."""
        lay = self.grad_layout()
        self.check_grad_buffer(buf, lay)
        X = np.ascontiguousarray(X_global, dtype=np.int32)
        Y = np.ascontiguousarray(Y, dtype=np.int32)
        Bg, O = self.check_apply_ids(X, Y, lay)
        self.check_ids(X, "X_global")
        self.check_ids(Y, "Y")
        tr = self._train
        if tr is None or (tr["S"], tr["Bg"]) != (O - Bg, Bg):  # no grad_step at this shape yet
            tr = self._buffers(Bg, O - Bg, Bg)
        work, grads = tr["work"], tr["grads"]
        self.gflat[:] = buf[:lay.wy]
        grads.Wy[:O] = buf[lay.wy:lay.by].reshape(O, lay.top_width)
        grads.By[:] = buf[lay.by:lay.inp]
        inp = buf[lay.inp:lay.loss].reshape(Bg, lay.in_width)
        work.ids[:O] = Y
        if lay.in_name == "Wy":
            grads.Wy[O:O + Bg] = inp
            work.ids[O:O + Bg] = X
        else:
            grads.Sx[:Bg, :lay.in_width] = inp
        with parallel_region():
            apply_grads(self._p, grads, self._opt, work, self._hyper, X, O)
        return float(buf[lay.loss])

    # ------------------------------------------------------------------ state exchange
    @property
    def opt(self) -> dict:
        """The Adagrad accumulators and momenta as DictStateMixin reads them (views into the flat buffers)."""
        return {"acc": self.acc, "mom": self.mom}

    # ------------------------------------------------------------------ evaluation
    def reset_eval(self, batch_size: int) -> None:
        Bp = (batch_size + VW - 1) // VW * VW
        work = make_workspace(self.cfg, batch_size, 0, self._sx_cols, self._ndense, self._head, with_scores=False)
        self._eval = dict(B=batch_size, work=work, hid=np.zeros(batch_size * sum(self.cfg.layers), np.float32),
                          tscore=np.zeros(batch_size, np.float32),
                          hT=np.zeros((self.cfg.layers[-1], Bp), np.float32))

    def eval_step(self, X, targets, reset, active, candidates=None):
        """Backend.eval_step: ``eval_chunk`` of one step (counts 0 on inactive rows)."""
        gt, eq = self.eval_chunk(np.asarray(X)[None], np.asarray(targets)[None], np.asarray(reset)[None],
                                 np.asarray(active)[None], candidates=candidates)
        return gt[0], eq[0]

    def eval_chunk(self, inputs, targets, reset, active, candidates=None):
        """T evaluation steps in one Numba call (``evaluate.eval_chunk_steps``): inputs / targets / reset / active
        [T, B]; returns (n_greater [T, B], n_equal [T, B]) int64, 0 on inactive lanes."""
        if self._eval is None:
            raise RuntimeError("call reset_eval(batch_size) before eval_chunk")
        ev = self._eval
        T, B, inputs, targets, reset, active, items = self.eval_chunk_inputs(ev, inputs, targets, reset, active,
                                                                             candidates)
        n_gt = np.zeros((T, B), np.int64)
        n_eq = np.zeros((T, B), np.int64)
        with parallel_region():
            eval_chunk_steps(self._p, self._hyper, ev["work"], tuple(self._split_hidden(ev["hid"], B)), inputs,
                             targets, reset, active, items, self._act[0], self._act[1], ev["hT"].reshape(-1),
                             ev["tscore"], n_gt, n_eq)
        self.count_target_once(n_eq, active, candidates)
        return n_gt, n_eq
