"""The numpy backend: the reference itself behind the Backend interface (slow; the oracle for the others)."""
from __future__ import annotations

import numpy as np

from .. import reference as ref
from ..reference import StepInputs
from .base import Backend, DictStateMixin


class NumpyBackend(DictStateMixin, Backend):
    name = "numpy"

    def __init__(self, cfg, n_items, params, logq_target=None, logq_sample=None, dtype=np.float32):
        super().__init__(cfg, n_items, params, logq_target, logq_sample)
        self.dtype = dtype
        self.params = {k: np.array(v, dtype=dtype) for k, v in params.items()}
        self.opt = {"acc": ref.zeros_like_params(self.params), "mom": ref.zeros_like_params(self.params)}
        self.H: list | None = None
        self.H_eval: list | None = None

    def _hidden(self, B):
        if self.H is None or self.H[0].shape[0] != B:
            self.H = [np.zeros((B, h), dtype=self.dtype) for h in self.cfg.layers]
        return self.H

    def step_inputs(self, X, Y, active, reset, step) -> StepInputs:
        B = len(X)
        emb, hidden = self.dropout_masks(step, B)
        return StepInputs(X=np.asarray(X, np.int64), Y=np.asarray(Y, np.int64), active=np.asarray(active, bool),
                          reset=np.asarray(reset, bool), emb_mask=emb, hidden_masks=hidden,
                          col_logq=self.col_logq(np.asarray(Y), B))

    def train_step(self, X, Y, active, reset, step):
        H = self._hidden(len(X))
        loss, self.H = ref.train_step(self.params, self.opt, self.cfg, H, self.step_inputs(X, Y, active, reset, step))
        return loss

    def grad_buffer(self):
        return self.grad_layout().zeros(self.dtype)

    def grad_step(self, X, Y, active, reset, step, row0, col_active, buf):
        B, Bg = len(X), len(col_active)
        H = self._hidden(B)
        emb, hidden = self.dropout_masks(step, Bg)  # the global step's masks; this rank's rows of them
        rows = slice(row0, row0 + B)
        st = StepInputs(X=np.asarray(X, np.int64), Y=np.asarray(Y, np.int64), active=np.asarray(active, bool),
                        reset=np.asarray(reset, bool), emb_mask=None if emb is None else emb[rows],
                        hidden_masks=None if hidden is None else [m[rows] for m in hidden],
                        col_logq=self.col_logq(np.asarray(Y), Bg), row0=int(row0),
                        col_active=np.asarray(col_active, bool))
        loss, g, self.H = ref.step_grads(self.params, self.cfg, H, st)
        self.grad_layout().pack(buf, loss, g, row0)

    def apply_grad_buffer(self, buf, X_global, Y):
        loss, g = self.grad_layout().unpack(buf, X_global, Y)
        ref.apply_grads(self.params, self.opt, self.cfg, g)
        return loss

    def reset_hidden(self):
        self.H = None

    def get_hidden(self):
        return [h.copy() for h in (self.H or [])]

    def set_hidden(self, H):
        self.H = [np.array(h, dtype=self.dtype) for h in H]

    def reset_eval(self, batch_size):
        self.H_eval = [np.zeros((batch_size, h), dtype=self.dtype) for h in self.cfg.layers]

    def eval_step(self, X, targets, reset, active, candidates=None):
        H = [np.where(np.asarray(reset)[:, None], 0, h).astype(self.dtype) for h in self.H_eval]
        self.H_eval = ref.hidden_step(self.params, self.cfg, H, np.asarray(X, np.int64))
        scores = ref.score_all(self.params, self.cfg, self.H_eval[-1])
        if candidates is not None:
            t = scores[np.arange(len(X)), targets][:, None]
            sc = scores[:, candidates]
            return (sc > t).sum(axis=1), np.maximum((sc == t).sum(axis=1), 1)
        return ref.rank_counts(scores, np.asarray(targets))
