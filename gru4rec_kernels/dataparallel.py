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

from .backends.base import Backend
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


# ------------------------------------------------------------------------------------------------ the driver
class DataParallelStep:
    """One rank's training steps: per global step ``grad_step`` on the rank's lanes, one sum all-reduce of the
    GradLayout buffer, ``apply_grad_buffer``. ``train_chunk`` takes the GLOBAL schedule chunk ([T, B_g]) like
    ``Backend.train_chunk`` and returns the global step losses [T] (the buffer's summed loss: equal on every rank).

    The buffer lives where the communicator reduces it (``comm.new_buffer``: host memory for MPIComm, device
    memory for NCCLComm) in the backend's float type. The backend writes every element of it in ``grad_step``
    (zeros in the other ranks' input rows), so it is not cleared between steps."""

    def __init__(self, be, comm, cfg: TrainConfig, n_items: int):
        if type(be).grad_step is Backend.grad_step or type(be).apply_grad_buffer is Backend.apply_grad_buffer:
            raise ValueError(f"the {be.name} backend has no data-parallel step (grad_step / apply_grad_buffer) "
                             f"yet: train distributed on a backend that has one")
        self.be, self.comm = be, comm
        self.rows = lane_slice(comm.rank, comm.size, cfg.batch_size)
        self.layout = GradLayout.build(cfg, n_items)
        self.buf = comm.new_buffer(self.layout.size, np.dtype(getattr(be, "dtype", np.float32)))
        comm.attach(be)

    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        T, B, _ = Backend.check_chunk_shapes(inputs, targets, active, reset, samples)
        if B != self.layout.global_batch:
            raise ValueError(f"the chunk has {B} lanes; the global batch is {self.layout.global_batch}")
        rows, be, comm, buf = self.rows, self.be, self.comm, self.buf
        losses = np.empty(T, dtype=np.float64)
        for t in range(T):
            Y = np.concatenate([targets[t], samples[t]]).astype(np.int32)
            be.grad_step(inputs[t, rows], Y, active[t, rows], reset[t, rows], step0 + t, rows.start, active[t], buf)
            what = f"the gradient all-reduce of global step {step0 + t}"
            comm.allreduce_sum(buf, what)
            comm.synchronize(what)
            losses[t] = be.apply_grad_buffer(buf, inputs[t], Y)
        return losses


# ------------------------------------------------------------------------------------------------ the guards
class ReplicaDivergedError(RuntimeError):
    """The ranks' parameters differ: the replicas, which apply the identical all-reduced buffer, no longer hold
    the same model (a non-deterministic reduction or kernel, a corrupted rank). Raised on every rank."""


def param_checksum(params: dict) -> tuple[list, np.ndarray]:
    """(names, [sum, sum of squares] per parameter in float64, in name order): equal bit for bit on replicas that
    hold bitwise-equal parameters, since every rank sums in the same order."""
    names = sorted(params)
    out = np.empty(2 * len(names), dtype=np.float64)
    for i, k in enumerate(names):
        v = np.asarray(params[k], dtype=np.float64).ravel()
        out[2 * i], out[2 * i + 1] = v.sum(), np.dot(v, v)
    # NaN compares unequal to itself (and MPI's max of a NaN is undefined): as +inf, replicas that are NaN
    # alike agree, and the finiteness check after the comparison reports them on every rank
    return names, np.nan_to_num(out, nan=np.inf, posinf=np.inf, neginf=-np.inf)


def check_replicas(comm, params: dict, step: int) -> None:
    """ReplicaDivergedError on every rank when the ranks' ``params`` differ (one max all-reduce of the
    checksums and their negatives: max == min over the ranks for every entry, or the replicas diverged)."""
    names, c = param_checksum(params)
    both = comm.allreduce(np.concatenate([c, -c]), "max", f"the replica checksum at global step {step}")
    hi, lo = both[:c.size], -both[c.size:]
    bad = sorted({names[i // 2] for i in np.flatnonzero(hi != lo)})
    if bad:
        from .comm import raised_everywhere
        raise raised_everywhere(ReplicaDivergedError(
            f"the {comm.size} ranks' parameters differ at global step {step} (checksums of {bad} disagree, "
            f"largest spread {np.max(hi - lo):.3g}): the replicas diverged"))


# ------------------------------------------------------------------------------------------------ state and shards
def gather_hidden(comm, hidden: list, global_batch: int) -> list | None:
    """The GLOBAL training hidden state [B_g, H_l] per layer on rank 0 (the ranks' lane slices stacked in rank
    order; [] before the epoch's first step), None on the other ranks."""
    parts = comm.gather([np.asarray(h) for h in hidden], 0, "gathering the hidden state for a checkpoint")
    if parts is None:
        return None
    if not parts[0]:
        return []
    H = [np.concatenate([p[l] for p in parts]) for l in range(len(parts[0]))]
    if H[0].shape[0] != global_batch:
        raise ValueError(f"the gathered hidden state has {H[0].shape[0]} rows; the global batch is {global_batch}")
    return H


@dataclass(frozen=True)
class SessionShard:
    """Sessions s0 .. s1 - 1 of a SessionData (offsets rebased to 0): what evaluation replays on one rank."""

    offsets: np.ndarray
    items: np.ndarray
    s0: int
    s1: int

    @property
    def n_sessions(self) -> int:
        return self.s1 - self.s0

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])


def session_shard(offsets, items, rank: int, n_ranks: int) -> SessionShard:
    """The contiguous block of sessions of ``rank``: boundaries at the sessions where the events pass
    r / n_ranks of the total, so the ranks replay about as many events each (a rank may get none)."""
    offsets = np.asarray(offsets)
    if not 0 <= rank < n_ranks:
        raise ValueError(f"rank {rank} is outside [0, {n_ranks})")
    n = offsets.size - 1
    cuts = [0] + [int(np.searchsorted(offsets[1:], offsets[-1] * r / n_ranks, side="left"))
                  for r in range(1, n_ranks)] + [n]
    cuts = np.maximum.accumulate(np.minimum(cuts, n))
    s0, s1 = int(cuts[rank]), int(cuts[rank + 1])
    return SessionShard(offsets[s0:s1 + 1] - offsets[s0], items[offsets[s0]:offsets[s1]], s0, s1)
