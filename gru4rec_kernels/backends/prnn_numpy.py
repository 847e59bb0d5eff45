"""The p-RNN numpy backend: reference_prnn behind the Backend interface (slow; the oracle for the fast p-RNN
backends, backends/cpu/prnn.py and backends/cuda_prnn.py, listed in PRNN_BUILT).

State: parameters, Adagrad accumulators and momenta under the PRNNLayout names; the hidden state per subnet,
per layer. The training strategy reaches the step through ``set_phases``: the trainer gives the Phase of every
step of the next chunk (``PRNNConfig.phase(epoch, step, n_epochs)``), so a chunk may span an interleaving's
phase changes. For checkpoints the hidden state is exchanged as one flat list (subnet 0's layers, then
subnet 1's, ...).
"""
from __future__ import annotations

import numpy as np

from .. import reference as ref
from .. import reference_prnn as rp
from ..prnn_layout import PRNNLayout
from ..reference import StepInputs
from .base import Backend, DictStateMixin

PRNN_BACKENDS = ("auto", "numpy", "cpu", "cuda")
# The p-RNN steps built so far, by backend name: (module, class). "auto" picks the first built one of
# ("cuda" on a usable GPU, "cpu", "numpy").
PRNN_BUILT = {"numpy": (".prnn_numpy", "PRNNNumpyBackend"),
              "cpu": (".cpu.prnn", "PRNNCpuBackend"),
              "cuda": (".cuda_prnn", "PRNNCudaBackend")}


def resolve_prnn_backend(name: str) -> str:
    """The backend name a p-RNN runs on; a ValueError naming the limitation for one whose p-RNN step is not
    built yet."""
    if name not in PRNN_BACKENDS:
        raise ValueError(f"backend must be one of {PRNN_BACKENDS} for a p-RNN model; got {name!r}")
    if name == "auto":
        from . import resolve
        best = resolve("auto")
        return best if best in PRNN_BUILT else ("cpu" if "cpu" in PRNN_BUILT else "numpy")
    if name not in PRNN_BUILT:
        raise ValueError(f"backend={name!r}: the {name} p-RNN step is not built yet; p-RNN runs on "
                         f"{sorted(PRNN_BUILT)} (or backend='auto')")
    if name == "cuda":
        from . import resolve
        resolve("cuda")  # the clear error when no GPU (or simulator) is usable
    return name


def prnn_backend_class(name: str):
    """The Backend class of a p-RNN on backend ``name`` (resolved first)."""
    import importlib
    module, cls = PRNN_BUILT[resolve_prnn_backend(name)]
    return getattr(importlib.import_module(module, __package__), cls)


class PRNNNumpyBackend(DictStateMixin, Backend):
    name = "numpy"

    def __init__(self, layout: PRNNLayout, params: dict, logq_target=None, logq_sample=None, dtype=np.float32):
        self.layout = layout
        super().__init__(layout.cfg, layout.n_items, params, logq_target, logq_sample, specs=layout.param_specs())
        self.dtype = dtype
        self.params = {s.name: np.array(params[s.name], dtype=dtype) for s in self.specs}
        self.opt = {"acc": ref.zeros_like_params(self.params), "mom": ref.zeros_like_params(self.params)}
        self.H: list | None = None
        self.H_eval: list | None = None
        self.phases: list | None = None
        self.eval_subnets = None  # the subnets that score in evaluation (None: all)

    # ------------------------------------------------------------------ training
    def set_phases(self, phases: list) -> None:
        """The Phase of each step of the next train_chunk (or of the next train_step, one entry)."""
        self.phases = list(phases)

    def _zero_hidden(self, B: int) -> list:
        return [[np.zeros((B, h), dtype=self.dtype) for h in sub.layers] for sub in self.layout.subnets]

    def train_step(self, X, Y, active, reset, step, phase=None):
        if phase is None:
            if not self.phases or len(self.phases) != 1:
                raise ValueError("a p-RNN step needs its phase: call set_phases([phase]) or pass phase=")
            phase = self.phases[0]
        B = len(X)
        if self.H is None or self.H[0][0].shape[0] != B:
            self.H = self._zero_hidden(B)
        st = StepInputs(X=np.asarray(X, np.int64), Y=np.asarray(Y, np.int64), active=np.asarray(active, bool),
                        reset=np.asarray(reset, bool), col_logq=self.col_logq(np.asarray(Y), B))
        loss, self.H = rp.train_step(self.params, self.opt, self.layout, self.H, st,
                                     rp.dropout_masks(self.layout, step, B, self.dtype), phase)
        return loss

    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        T = inputs.shape[0]
        if self.phases is None or len(self.phases) != T:
            raise ValueError(f"train_chunk of {T} steps needs {T} phases (set_phases); got "
                             f"{None if self.phases is None else len(self.phases)}")
        phases, self.phases = self.phases, None  # one use: a stale plan must never train the next chunk
        losses = np.empty(T, dtype=np.float64)
        for t in range(T):
            Y = np.concatenate([targets[t], samples[t]]).astype(np.int32)
            losses[t] = self.train_step(inputs[t], Y, active[t], reset[t], step0 + t, phase=phases[t])
        return losses

    def reset_hidden(self):
        self.H = None

    # ------------------------------------------------------------------ state exchange (params: DictStateMixin)
    def get_hidden(self):
        return [h.copy() for Hk in (self.H or []) for h in Hk]

    def set_hidden(self, H):
        counts = [len(sub.layers) for sub in self.layout.subnets]
        if len(H) != sum(counts):
            raise ValueError(f"a p-RNN hidden state has {sum(counts)} layer arrays; got {len(H)}")
        it = iter(H)
        self.H = [[np.array(next(it), dtype=self.dtype) for _ in range(c)] for c in counts]

    # ------------------------------------------------------------------ evaluation
    def reset_eval(self, batch_size):
        self.H_eval = self._zero_hidden(batch_size)

    def eval_step(self, X, targets, reset, active, candidates=None):
        r = np.asarray(reset)[:, None]
        H = [[np.where(r, 0, h).astype(self.dtype) for h in Hk] for Hk in self.H_eval]
        self.H_eval = rp.hidden_step(self.params, self.layout, H, np.asarray(X, np.int64), self.eval_subnets)
        scores = rp.score_all(self.params, self.layout, self.H_eval, self.eval_subnets)
        if candidates is not None:
            t = scores[np.arange(len(X)), targets][:, None]
            sc = scores[:, candidates]
            return (sc > t).sum(axis=1), np.maximum((sc == t).sum(axis=1), 1)
        return ref.rank_counts(scores, np.asarray(targets))
