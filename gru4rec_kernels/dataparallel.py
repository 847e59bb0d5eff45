"""Synchronous data parallelism, the exact scheme: P ranks together compute the one-process step at the global
batch B_g = P x B_l.

- Every rank builds the global lane schedule (batching.EpochSchedule at B_g lanes) and runs its own lane slice
  ``lane_slice(rank, P, B_g)``: global batch rows row0 .. row0 + B_l - 1. Inactive lanes stay masked with fixed
  shapes, so a rank whose lanes are all inactive still joins every collective.
- The negative sample is common to all ranks (the counter-keyed sample store gives every rank the same ids), and
  dropout is keyed by (seed, step, global row), so a rank's masks are its rows of the one-process masks.
- Each rank scores its B_l rows against all O = B_g + S columns (Y = [global targets | samples]); row i's target
  is column row0 + i (reference.StepInputs.row0 / col_active).
- The rank's gradients go into one fixed-layout buffer (``GradLayout``): [dense | Wy slot rows (O) | By slots (O)
  | input rows (B_g) | loss]; a rank writes only its own input rows (zeros elsewhere). The loss weights are
  1 / B_g already (cfg.batch_size is the global batch), so one **sum all-reduce** of the buffer gives every rank
  the one-process gradient, and each applies the existing duplicate-summing sparse Adagrad and dense Adagrad to
  the identical buffer: the replicas stay equal.

Every rank already holds the global schedule, so the ids need no all-gather: the only per-step collective is
the all-reduce.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .layout import embed_width, param_specs
from .reference import Grads


def lane_slice(rank: int, n_ranks: int, global_batch: int) -> slice:
    """The global batch rows (lanes) of ``rank``: a contiguous block of global_batch / n_ranks lanes."""
    if not isinstance(n_ranks, int) or n_ranks < 1:
        raise ValueError(f"the number of ranks must be a positive int; got {n_ranks!r}")
    if not 0 <= rank < n_ranks:
        raise ValueError(f"rank {rank} is outside [0, {n_ranks})")
    if global_batch % n_ranks:
        raise ValueError(f"batch_size {global_batch} (the global batch) is not divisible by the {n_ranks} ranks: "
                         f"every rank runs batch_size / ranks lanes; use a multiple of {n_ranks}")
    b = global_batch // n_ranks
    return slice(rank * b, (rank + 1) * b)


@dataclass(frozen=True)
class GradLayout:
    """Offsets of one step's gradient buffer (float, one per element), identical on every rank.

    dense: (name, shape) of the dense parameters in layout order, back to back from 0; then ``wy`` [O, H_L]
    (dLoss/dWy[Y_j] per output slot j), ``by`` [O], ``inp`` [B_g, in_width] (the input rows: Wx0 rows in one-hot
    mode, E rows in embedding mode, Wy rows in constrained mode, per global batch row), and ``loss`` [1]."""

    dense: tuple
    in_name: str
    n_out: int  # O = B_g + S
    global_batch: int
    top_width: int
    in_width: int
    wy: int
    by: int
    inp: int
    loss: int
    size: int

    @classmethod
    def build(cls, cfg: TrainConfig, n_items: int, n_sample: int | None = None) -> GradLayout:
        S = cfg.n_sample if n_sample is None else n_sample
        Bg = cfg.batch_size
        dense, off = [], 0
        for s in param_specs(cfg, n_items):
            if not s.sparse:
                dense.append((s.name, tuple(s.shape)))
                off += int(np.prod(s.shape))
        O, HL = Bg + S, cfg.layers[-1]
        if cfg.input_mode == "onehot":
            in_name, in_width = "Wx0", 3 * cfg.layers[0]
        else:
            in_name, in_width = ("Wy" if cfg.input_mode == "constrained" else "E"), embed_width(cfg)
        wy = off
        by = wy + O * HL
        inp = by + O
        loss = inp + Bg * in_width
        return cls(tuple(dense), in_name, O, Bg, HL, in_width, wy, by, inp, loss, loss + 1)

    def zeros(self, dtype) -> np.ndarray:
        return np.zeros(self.size, dtype=dtype)

    def pack(self, buf: np.ndarray, loss: float, g: Grads, row0: int) -> None:
        """Write one rank's reference Grads (its B_l rows starting at global row row0) and loss into ``buf``:
        the rank's input rows at rows row0 .. row0 + B_l - 1 of ``inp``, zeros in the other ranks' rows."""
        off = 0
        for name, shape in self.dense:
            n = int(np.prod(shape))
            buf[off:off + n] = g.dense[name].reshape(-1)
            off += n
        O, W = self.n_out, self.in_width
        wy_rows = g.sparse["Wy"][1]
        buf[self.wy:self.by] = wy_rows[:O].reshape(-1)
        buf[self.by:self.inp] = g.sparse["By"][1]
        inp_rows = wy_rows[O:] if self.in_name == "Wy" else g.sparse[self.in_name][1]
        B = inp_rows.shape[0]
        inp = buf[self.inp:self.loss].reshape(self.global_batch, W)
        inp[:] = 0
        inp[row0:row0 + B] = inp_rows
        buf[self.loss] = loss

    def unpack(self, buf: np.ndarray, X_global, Y) -> tuple[float, Grads]:
        """(summed loss, Grads of the global step) from an all-reduced buffer: dense gradients as views, sparse
        ones as (ids, rows) pairs in the order reference.backward lists them, so the one-process clipping norm
        and Adagrad see the same rows."""
        g = Grads()
        off = 0
        for name, shape in self.dense:
            n = int(np.prod(shape))
            g.dense[name] = buf[off:off + n].reshape(shape)
            off += n
        X_global = np.asarray(X_global, np.int64)
        Y = np.asarray(Y, np.int64)
        wy = buf[self.wy:self.by].reshape(self.n_out, self.top_width)
        inp = buf[self.inp:self.loss].reshape(self.global_batch, self.in_width)
        g.sparse["Wy"] = (Y, wy)
        g.sparse["By"] = (Y, buf[self.by:self.inp])
        if self.in_name == "Wy":
            g.sparse["Wy"] = (np.concatenate([Y, X_global]), np.concatenate([wy, inp]))
        else:
            g.sparse[self.in_name] = (X_global, inp)
        return float(buf[self.loss]), g
