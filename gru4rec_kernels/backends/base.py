"""The backend interface: one training step and one evaluation step over the backend's own arrays.

A backend owns the parameters, the Adagrad accumulators and momenta, and the training hidden state, in its own
memory (numpy arrays, Numba-friendly buffers, or CuPy arrays). The trainer only hands it the schedule (input
ids, output ids, active and reset flags) and a global step counter; everything random inside a step (dropout)
is a pure function of (seed, layer, step) through ``rng.dropout_mask_np`` / the Philox kernels, so every
backend draws the same masks and the reference can be given them as arrays.

Contract of ``train_step(X, Y, active, reset, step)`` (see ``reference.train_step``):
    X [B] int32 input item ids (0 on inactive rows), Y [O] int32 = [targets (B) | samples (S)],
    active [B] bool, reset [B] bool (zero this row's hidden state first), step: global step number.
    Runs forward, loss and dZ, backward, (optional) gradient clipping, dense and sparse Adagrad, updates the
    hidden state, and returns the step loss (sum over active rows / batch_size) as a float.
Contract of ``eval_step(X, targets, reset, active)``: advances the evaluation hidden state (no dropout) by one
    step and returns (n_greater [B] int64, n_equal [B] int64): how many items score strictly above / equal to
    the target (target included in n_equal), over all items or ``candidates``. Only the active rows' counts are
    defined (the cuda backend returns 0 on inactive rows).
Contract of ``eval_chunk(inputs, targets, reset, active)``: ``eval_step`` over the T rows of a schedule chunk
    ([T, B] each); returns (n_greater [T, B] int64, n_equal [T, B] int64), 0 on inactive lanes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..config import TrainConfig
from ..layout import embed_width, param_specs
from ..rng import dropout_mask_np


class Backend(ABC):
    name = "base"

    def __init__(self, cfg: TrainConfig, n_items: int, params: dict, logq_target=None, logq_sample=None,
                 specs=None):
        """params: name -> float32 array (host copies are taken). logq_target / logq_sample: [N] arrays of
        ``logq * log q`` for target columns and sample columns (None when logq == 0). specs: the parameters'
        ParamSpecs when they are not GRU4Rec's ``param_specs(cfg, n_items)`` (a p-RNN's layout has its own)."""
        self.cfg = cfg
        self.n_items = int(n_items)
        self.specs = param_specs(cfg, n_items) if specs is None else specs
        missing = {s.name for s in self.specs} - set(params)
        if missing:
            raise ValueError(f"params is missing {sorted(missing)}")
        self.logq_target = logq_target
        self.logq_sample = logq_sample

    # ------------------------------------------------------------------ training
    @abstractmethod
    def train_step(self, X, Y, active, reset, step: int) -> float: ...

    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        """Steps over a schedule chunk: inputs/targets/active/reset [T, B], samples [T, S]. Losses [T]."""
        T = inputs.shape[0]
        losses = np.empty(T, dtype=np.float64)
        for t in range(T):
            Y = np.concatenate([targets[t], samples[t]]).astype(np.int32)
            losses[t] = self.train_step(inputs[t], Y, active[t], reset[t], step0 + t)
        return losses

    def check_ids(self, a, name: str) -> None:
        """ValueError unless every id of ``a`` is an item index in [0, n_items): kernels index without bounds
        checks, so an out-of-range id would read or write outside the parameter arrays."""
        a = np.asarray(a)
        if a.size and (a.min() < 0 or a.max() >= self.n_items):
            raise ValueError(f"{name} holds item ids outside [0, {self.n_items}): min {a.min()}, max {a.max()}")

    @staticmethod
    def check_chunk_shapes(inputs, targets, active, reset, samples) -> tuple[int, int, int]:
        """(T, B, S) of a schedule chunk, or a ValueError naming the argument whose shape does not fit: the
        kernels trust these shapes, so a mismatch must never reach them."""
        shape = np.shape(inputs)
        if len(shape) != 2:
            raise ValueError(f"inputs must be [T, B]; got shape {shape}")
        T, B = shape
        for name, a in (("targets", targets), ("active", active), ("reset", reset)):
            if np.shape(a) != (T, B):
                raise ValueError(f"{name} must have shape {(T, B)} like inputs; got {np.shape(a)}")
        ss = np.shape(samples)
        if len(ss) != 2 or ss[0] != T:
            raise ValueError(f"samples must be [T, S] with T = {T}; got shape {ss}")
        return T, B, ss[1]

    @staticmethod
    def check_step_y(X, Y) -> None:
        if np.ndim(Y) != 1 or np.shape(Y)[0] < np.shape(X)[0]:
            raise ValueError(f"Y must be [O] with O >= B = {np.shape(X)[0]} (targets, then samples); "
                             f"got shape {np.shape(Y)}")

    # ------------------------------------------------------------------ data parallelism (dataparallel.py)
    def grad_step(self, X, Y, active, reset, step: int, row0: int, col_active, buf) -> None:
        """The first half of ``train_step`` for one rank: X / active / reset [B_l] are global batch rows row0 ..
        row0 + B_l - 1, Y [B_g + S] and col_active [B_g] the global step's. Runs forward, loss and backward with
        the rows' dropout masks of the global step, advances this rank's hidden state, and writes the rank's
        gradients and loss into ``buf`` (a dataparallel.GradLayout of the global batch) for the all-reduce:
        every element of it, zeros in the other ranks' input rows.

        ``buf`` lives where ``grad_buffer()`` puts it: host memory on the numpy and cpu backends, device memory on
        the cuda backend (a CuPy array on a GPU, written on the backend's ``stream``, so that NCCL all-reduces it
        in place on that stream without a copy through the host; the simulator's arrays under the simulator)."""
        raise NotImplementedError(f"the {self.name} backend has no data-parallel step")

    def apply_grad_buffer(self, buf, X_global, Y) -> float:
        """The second half: clipping and Adagrad from the all-reduced ``buf`` (identical on every rank; read, not
        written; memory as ``grad_step``), with the step's global inputs X_global [B_g] and Y; returns the step's
        loss (the buffer's summed loss)."""
        raise NotImplementedError(f"the {self.name} backend has no data-parallel step")

    def grad_layout(self):
        """This backend's dataparallel.GradLayout (global batch cfg.batch_size, cfg.n_sample samples), built once."""
        if getattr(self, "_grad_layout", None) is None:
            from ..dataparallel import GradLayout
            self._grad_layout = GradLayout.build(self.cfg, self.n_items)
        return self._grad_layout

    def grad_buffer(self):
        """A zeroed buffer of ``grad_layout()`` where ``grad_step`` and ``apply_grad_buffer`` take it (float32, on
        the host here; the numpy backend uses its dtype, the cuda backend device memory)."""
        return self.grad_layout().zeros(np.float32)

    @staticmethod
    def check_grad_buffer(buf, layout, array_type=np.ndarray, dtype=np.float32) -> None:
        """ValueError unless ``buf`` is a C-contiguous [layout.size] array of ``array_type`` and ``dtype``."""
        if not isinstance(buf, array_type):
            raise ValueError(f"buf must be a {array_type.__module__}.{array_type.__name__} (grad_buffer() makes one); "
                             f"got {type(buf).__module__}.{type(buf).__name__}")
        if buf.dtype != np.dtype(dtype) or buf.shape != (layout.size,) or not buf.flags.c_contiguous:
            raise ValueError(f"buf must be a contiguous {np.dtype(dtype)} vector of the GradLayout's {layout.size} "
                             f"elements; got {buf.dtype} of shape {buf.shape}")

    @staticmethod
    def check_grad_step(X, Y, active, reset, row0, col_active, layout) -> tuple[int, int, int]:
        """(B_l, B_g, O) of a grad_step call, or a ValueError naming the argument that does not fit ``layout``."""
        if np.ndim(X) != 1 or np.shape(X)[0] < 1:
            raise ValueError(f"X must be [B_l] with B_l >= 1 (this rank's rows); got shape {np.shape(X)}")
        B = np.shape(X)[0]
        for name, a in (("active", active), ("reset", reset)):
            if np.shape(a) != (B,):
                raise ValueError(f"{name} must have shape {(B,)} like X; got {np.shape(a)}")
        Bg = layout.global_batch
        if np.shape(col_active) != (Bg,):
            raise ValueError(f"col_active must be [B_g] = ({Bg},) (the global step's active flags); got "
                             f"{np.shape(col_active)}")
        if np.shape(Y) != (layout.n_out,):
            raise ValueError(f"Y must be [B_g + S] = ({layout.n_out},) (the global targets, then the samples); got "
                             f"{np.shape(Y)}")
        if not isinstance(row0, (int, np.integer)) or row0 < 0 or row0 + B > Bg:
            raise ValueError(f"row0 must be an int with 0 <= row0 and row0 + B_l <= B_g ({B} rows of {Bg}); got "
                             f"{row0!r}")
        return B, Bg, layout.n_out

    @staticmethod
    def check_apply_ids(X_global, Y, layout) -> tuple[int, int]:
        """(B_g, O) of an apply_grad_buffer call, or a ValueError naming the argument that does not fit."""
        if np.shape(X_global) != (layout.global_batch,):
            raise ValueError(f"X_global must be [B_g] = ({layout.global_batch},); got {np.shape(X_global)}")
        if np.shape(Y) != (layout.n_out,):
            raise ValueError(f"Y must be [B_g + S] = ({layout.n_out},); got {np.shape(Y)}")
        return layout.global_batch, layout.n_out

    @abstractmethod
    def reset_hidden(self) -> None: ...

    # ------------------------------------------------------------------ state exchange (host numpy arrays)
    @abstractmethod
    def get_params(self) -> dict: ...

    @abstractmethod
    def get_opt_state(self) -> dict:
        """{"acc": {name: array}, "mom": {name: array}} (host copies)."""

    @abstractmethod
    def set_opt_state(self, state: dict) -> None: ...

    @abstractmethod
    def get_hidden(self) -> list: ...

    @abstractmethod
    def set_hidden(self, H: list) -> None: ...

    # ------------------------------------------------------------------ evaluation
    @abstractmethod
    def reset_eval(self, batch_size: int) -> None: ...

    @abstractmethod
    def eval_step(self, X, targets, reset, active, candidates=None) -> tuple[np.ndarray, np.ndarray]: ...

    def eval_chunk(self, inputs, targets, reset, active, candidates=None) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation steps over a schedule chunk: inputs/targets/reset/active [T, B]. Returns (n_greater [T, B],
        n_equal [T, B]) int64, 0 on inactive lanes. Default: ``eval_step`` per row of the chunk."""
        T, B = self.check_eval_chunk_shapes(inputs, targets, reset, active)
        n_greater = np.zeros((T, B), np.int64)
        n_equal = np.zeros((T, B), np.int64)
        for t in range(T):
            gt, eq = self.eval_step(inputs[t], targets[t], reset[t], active[t], candidates=candidates)
            on = np.asarray(active[t], bool)
            n_greater[t, on] = np.asarray(gt)[on]
            n_equal[t, on] = np.asarray(eq)[on]
        return n_greater, n_equal

    def eval_chunk_inputs(self, ev: dict, inputs, targets, reset, active, candidates):
        """The checked, contiguous arguments of a compiled ``eval_chunk`` whose ``reset_eval`` state is ``ev``
        (its "B"; the all-items array is cached there): (T, B, inputs, targets, reset, active, items)."""
        T, B = self.check_eval_chunk_shapes(inputs, targets, reset, active)
        if B != ev["B"]:
            raise ValueError(f"eval_chunk got {B} rows; reset_eval was called with batch_size={ev['B']}")
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        self.check_ids(inputs, "X")
        self.check_ids(targets, "targets")
        if candidates is None:
            items = ev.get("all_items")
            if items is None or items.shape[0] != self.n_items:
                items = ev["all_items"] = np.arange(self.n_items, dtype=np.int32)
        else:
            items = np.ascontiguousarray(candidates, dtype=np.int32).reshape(-1)
            self.check_ids(items, "candidates")
        return (T, B, inputs, targets, np.ascontiguousarray(reset, dtype=np.bool_),
                np.ascontiguousarray(active, dtype=np.bool_), items)

    @staticmethod
    def count_target_once(n_eq, active, candidates) -> None:
        """With candidates, the target counts once in n_equal even when it is not a candidate (in place)."""
        if candidates is not None:
            on = np.asarray(active, dtype=np.bool_)
            n_eq[on] = np.maximum(n_eq[on], 1)

    @staticmethod
    def check_eval_chunk_shapes(inputs, targets, reset, active) -> tuple[int, int]:
        """(T, B) of an evaluation chunk, or a ValueError naming the argument whose shape does not fit."""
        shape = np.shape(inputs)
        if len(shape) != 2:
            raise ValueError(f"inputs must be [T, B]; got shape {shape}")
        for name, a in (("targets", targets), ("reset", reset), ("active", active)):
            if np.shape(a) != shape:
                raise ValueError(f"{name} must have shape {shape} like inputs; got {np.shape(a)}")
        return shape

    def warmup(self, batch_size: int, n_sample: int) -> None:
        """Compile (or load from the on-disk cache) the training kernels without changing any state, so that
        the first epoch's throughput measures training, not compilation. Default: nothing to compile."""

    def close(self) -> None:
        """Release worker threads / device memory."""

    # ------------------------------------------------------------------ shared helpers
    def dropout_masks(self, step: int, B: int):
        """(emb_mask or None, [hidden masks] or None) for a step: the arrays the kernels draw in place."""
        cfg = self.cfg
        emb = None
        if cfg.dropout_p_embed > 0 and cfg.input_mode != "onehot":
            width = embed_width(cfg)
            emb = dropout_mask_np(cfg.seed, -1, step, B, width, cfg.dropout_p_embed)
        hidden = None
        if cfg.dropout_p_hidden > 0:
            hidden = [dropout_mask_np(cfg.seed, l, step, B, h, cfg.dropout_p_hidden) for l, h in enumerate(cfg.layers)]
        return emb, hidden

    def col_logq(self, Y, B: int):
        if self.logq_target is None:
            return None
        return np.concatenate([self.logq_target[Y[:B]], self.logq_sample[Y[B:]]]).astype(np.float32)


class DictStateMixin:
    """State exchange of a backend holding its parameters in ``self.params`` and its optimizer state in
    ``self.opt`` = {"acc": {name: array}, "mom": {name: array}} (the numpy backends; the cpu ones
    expose their ``acc`` / ``mom`` views as ``opt``)."""

    def get_params(self):
        return {k: v.copy() for k, v in self.params.items()}

    def get_opt_state(self):
        return {s: {k: v.copy() for k, v in d.items()} for s, d in self.opt.items()}

    def set_opt_state(self, state):
        for s in ("acc", "mom"):
            for k, v in state[s].items():
                self.opt[s][k][...] = v


class FlatHiddenMixin:
    """The hidden state of a backend that keeps it as one flat float32 array ``self._hid`` of the layers'
    [B, H_l] blocks in order, the widths being ``self.layer_widths`` (the cpu GRU4Rec and p-RNN backends)."""

    def _split_hidden(self, flat, B):
        out, off = [], 0
        for H in self.layer_widths:
            out.append(flat[off:off + B * H].reshape(B, H))
            off += B * H
        return out

    def reset_hidden(self) -> None:
        self._hid = None

    def get_hidden(self) -> list:
        if self._hid is None:
            return []
        B = self._hid.shape[0] // sum(self.layer_widths)
        return [h.copy() for h in self._split_hidden(self._hid, B)]

    def set_hidden(self, H: list) -> None:
        n = len(self.layer_widths)
        if len(H) != n:
            raise ValueError(f"set_hidden needs {n} layer arrays (one per layer); got {len(H)}")
        B = np.asarray(H[0]).shape[0]
        for h, Hl in zip(H, self.layer_widths):
            if np.asarray(h).shape != (B, Hl):
                raise ValueError(f"hidden state of shape {np.asarray(h).shape}; expected {(B, Hl)}")
        self._hid = np.concatenate([np.asarray(h, dtype=np.float32).reshape(-1) for h in H])
