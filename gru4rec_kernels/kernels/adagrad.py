"""Adagrad with heavy-ball momentum: dense over one flat buffer, sparse over rows with duplicate coalescing.

Shape letters: P dense parameters in one flat buffer (``layout.allocate``), N rows of a sparse parameter
(items), D its row width (H for Wy, E, 3H for the one-hot Wx0; the bias By is a vector [N] updated with Wy), K row
slots of a step (O = B + S output columns for Wy / By, plus B input rows in the constrained mode; B for E and Wx0),
T the steps of an uploaded chunk. Equations
(docs/design.md section 2.10; as the official IndexedAdagradM), with g = grad * gscale[0] (gradient clipping, else 1):

    acc += g^2;   upd = -lr g / sqrt(acc + 1e-6);   mom = mu mom + upd;   p += mom     (p += upd when mu = 0)

They must match ``reference.adagrad_dense`` and ``reference.sparse_adagrad`` (with ``reference.coalesce``);
``sumsq_partial`` + ``clip_scale`` are ``reference.clip_grads``'s global norm and factor.

Sparse rows, duplicates: the same id may fill several slots (a target twice, a target also sampled, an input
also an output in the constrained mode). Every touched id is updated exactly once, with the sum of its slots.
The cuda backend groups the slots on the host, a whole chunk of steps at once, before it uploads the chunk
(``backends/segments.py``: per step a stable permutation ``perm`` that puts equal ids next to each other, the
segment bounds ``seg_start`` and each segment's id ``seg_id``; O(K) per step, no sort). ``sparse_adagrad`` is
then one launch per parameter group with a fixed grid of K blocks: block q takes segment q of step ctr[0] (the
blocks beyond the step's number of distinct ids return at once, so the grid does not depend on the data and the
launch is captured in a CUDA graph), its threads walk the row's D columns, each adding the segment's slot rows in
slot order, and update the row. The bias By rides along in the Wy launch: the block's last thread (idle in the
column loop while D < the block size) sums the segment's bias slots (slot k < n_bslots: the O output slots, never
the constrained mode's input slots) and updates By[id] only when there is one, as the reference touches By only
at Y (with momentum, even a zero-gradient touch moves an entry). No atomics, no scan, no scratch on the device.
The sum order is the slot order from zero, which is what ``np.add.at`` does in ``reference.coalesce``: the result
is deterministic and bitwise reproducible run to run (bitwise equal to the float32 reference in the simulator; on
a GPU the compiler may contract ``acc + g*g`` or ``g + row*gscale`` into one FMA, one rounding fewer).
A slot with a zero gradient still counts as touched (as in the reference: with momentum the row still moves).

For the p-RNN (backends/cuda_prnn.py) ``sparse_adagrad`` also takes a column block: with ``cols = (c0, c1)`` the
rows are [K, c1 - c0] and only columns c0 .. c1 of p, acc, mom are updated (subnet k's block of Wy, as
reference_prnn.apply_grads updates a view Wy[:, c0:c1]: a frozen subnet's columns of a touched row keep their
values, accumulators and momenta). And a segment whose id is N, one past the last row, is skipped: the padding
of a fixed-size slot list (a sparse feature's B x max-non-zeros slots, kernels/features.py). GRU4Rec passes
whole rows (c0 = 0) and ids < N, so its updates are as before.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from gru4rec_kernels.reference import ADAGRAD_EPS

from .common import (
    F0,
    F1,
    MAX_THREADS,
    NORM_BLOCKS,
    THREADS,
    block_sum4,
    ceil_div,
    check,
    check_threads,
    get_kernel,
)

EPS = np.float32(ADAGRAD_EPS)


@cuda.jit(device=True, inline="always")
def _adagrad_at(p, acc, mom, i, g, lr, mu):
    """One Adagrad step of the entry p[i] (i an index or an index tuple) with the gradient g; mom is neither read
    nor written when mu = 0."""
    a = acc[i] + g * g
    acc[i] = a
    upd = (-lr * g) / math.sqrt(a + EPS)
    if mu > F0:
        m = mu * mom[i] + upd
        mom[i] = m
        p[i] += m
    else:
        p[i] += upd


def adagrad_dense(p, g, acc, mom, gscale, lr, mu):
    """One thread per element of the flat buffers p, g, acc, mom [P]; gscale [1]; lr, mu float32."""
    i = cuda.grid(1)
    if i < p.shape[0]:
        _adagrad_at(p, acc, mom, i, g[i] * gscale[0], lr, mu)


def sparse_adagrad(p, acc, mom, rows, perm, seg_start, seg_id, ctr, gscale, lr, mu, pb, accb, momb, brows,
                   n_bslots, c0):
    """Block q, step t = ctr[0]: if q < n_seg, update row r = seg_id[t, q] of p, acc, mom [N, D], columns
    c0 .. c0 + W, with the sum, in slot order, of the rows [K, W] of the slots perm[t, seg_start[t, q] :
    seg_start[t, q + 1]]; and, when some of those slots are bias slots (k < n_bslots), entry r of pb, accb,
    momb [N] with the sum of their brows [>= n_bslots]. Blocks q >= n_seg (seg_start[t, q] = K) and segments of
    the padding id r >= N return at once."""
    q = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    t = ctr[0]
    K = perm.shape[1]
    s0 = seg_start[t, q]
    if s0 >= K:  # block-uniform: no segment q in this step
        return
    s1 = seg_start[t, q + 1]
    r = seg_id[t, q]
    if r >= p.shape[0]:  # block-uniform: the padding slots of a fixed-size slot list (p-RNN sparse features)
        return
    s = gscale[0]
    for d in range(tid, rows.shape[1], cuda.blockDim.x):
        g = F0  # from zero, adding in slot order: reference.coalesce's np.add.at, bit for bit
        for j in range(s0, s1):
            g += rows[perm[t, j], d] * s
        _adagrad_at(p, acc, mom, (r, c0 + d), g, lr, mu)
    if tid == cuda.blockDim.x - 1:  # the last thread: idle in the row loop whenever D < the block size
        gb = F0
        has_b = False
        for j in range(s0, s1):
            k = perm[t, j]
            if k < n_bslots:
                gb += brows[k] * s
                has_b = True
        if has_b:  # only ids with a bias slot: with momentum even a zero-gradient touch moves the entry
            _adagrad_at(pb, accb, momb, r, gb, lr, mu)


def sumsq_partial(partials, x, slot):
    """partials[slot + block] = sum of x[i]^2 over the block's grid-stride share of x [M] (fixed grid of
    NORM_BLOCKS blocks, fixed tree: deterministic)."""
    shs = cuda.shared.array((4, MAX_THREADS), float32)
    tid = cuda.threadIdx.x
    acc = F0
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        acc += v * v
    tot, _, _, _ = block_sum4(shs, tid, cuda.blockDim.x, acc, F0, F0, F0)
    if tid == 0:
        partials[slot + cuda.blockIdx.x] = tot


def clip_scale(scale, partials, cap):
    """One block: norm = sqrt(sum(partials)); scale[0] = cap / norm if norm >= cap else 1."""
    shs = cuda.shared.array((4, MAX_THREADS), float32)
    tid = cuda.threadIdx.x
    acc = F0
    for i in range(tid, partials.shape[0], cuda.blockDim.x):
        acc += partials[i]
    tot, _, _, _ = block_sum4(shs, tid, cuda.blockDim.x, acc, F0, F0, F0)
    if tid == 0:
        norm = math.sqrt(tot)
        scale[0] = cap / norm if norm >= cap else F1


_V = "float32[::1]"
_M = "float32[:, ::1]"
_I2 = "int32[:, ::1]"
KERNELS = {
    "adagrad_dense": (adagrad_dense, [f"void({_V}, {_V}, {_V}, {_V}, {_V}, float32, float32)"]),
    "sparse_adagrad": (sparse_adagrad, [f"void({_M}, {_M}, {_M}, {_M}, {_I2}, {_I2}, {_I2}, int64[::1], {_V}, "
                                        f"float32, float32, {_V}, {_V}, {_V}, {_V}, int32, int32)"]),
    "sumsq_partial": (sumsq_partial, [f"void({_V}, {_V}, int32)"]),
    "clip_scale": (clip_scale, [f"void({_V}, {_V}, float32)"]),
}


# ------------------------------------------------------------------------------------------------- launchers
def _hyper(lr, mu):
    lr, mu = float(lr), float(mu)
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if not 0 <= mu < 1:
        raise ValueError(f"mu must be in [0, 1); got {mu}")
    return np.float32(lr), np.float32(mu)


def launch_adagrad_dense(p, g, acc, mom, gscale, lr, mu, threads=None, stream=0):
    """Dense Adagrad over flat float32 buffers p, g, acc, mom [P]; gscale [1] (1.0 without clipping)."""
    (P,) = check("p", p, np.float32, 1)
    for name, a in (("g", g), ("acc", acc), ("mom", mom)):
        check(name, a, np.float32, 1, (P,))
    check("gscale", gscale, np.float32, 1, (1,))
    lr, mu = _hyper(lr, mu)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "adagrad_dense")[max(ceil_div(P, t), 1), t, stream](p, g, acc, mom, gscale, lr, mu)


def launch_sparse_adagrad(p, acc, mom, rows, perm, seg_start, seg_id, ctr, gscale, lr, mu, pb, accb, momb, brows,
                          n_bslots, cols=None, threads=None, stream=0):
    """Sparse Adagrad of step t = ctr[0] over the segments of backends/segments.py: p, acc, mom [N, D] updated at
    the distinct ids seg_id[t] with the sums of their slot rows [K, D] (perm [T, K], seg_start [T, K + 1],
    seg_id [T, K] int32); pb, accb, momb [N] at the ids that own a slot k < n_bslots, with the sums of those
    brows [>= n_bslots] (n_bslots = 0: no bias, pb / accb / momb untouched). ctr [2] int64; gscale [1].
    ``cols`` = (c0, c1): only those columns of the rows are updated, rows [K, c1 - c0] (a p-RNN subnet's block
    of Wy: the other columns, their accumulators and momenta are left as they are); None: whole rows. A segment
    whose id is N (one past the last row) is padding and skipped."""
    N, D = check("p", p, np.float32, 2)
    check("acc", acc, np.float32, 2, (N, D))
    check("mom", mom, np.float32, 2, (N, D))
    c0, c1 = (0, D) if cols is None else (int(cols[0]), int(cols[1]))
    if not 0 <= c0 <= c1 <= D:
        raise ValueError(f"cols must be a column range (c0, c1) with 0 <= c0 <= c1 <= {D}; got {cols!r}")
    K, _ = check("rows", rows, np.float32, 2, (None, c1 - c0))
    T, _ = check("perm", perm, np.int32, 2, (None, K))
    check("seg_start", seg_start, np.int32, 2, (T, K + 1))
    check("seg_id", seg_id, np.int32, 2, (T, K))
    check("ctr", ctr, np.int64, 1, (2,))
    check("gscale", gscale, np.float32, 1, (1,))
    for name, a in (("pb", pb), ("accb", accb), ("momb", momb)):  # never read without bias slots (a table of D rows)
        check(name, a, np.float32, 1, (N,) if n_bslots else None)
    (Kb,) = check("brows", brows, np.float32, 1)
    if not 0 <= int(n_bslots) <= min(Kb, K):
        raise ValueError(f"n_bslots must be in [0, min(len(brows), K) = {min(Kb, K)}]; got {n_bslots}")
    lr, mu = _hyper(lr, mu)
    t = check_threads(THREADS["sparse"] if threads is None else threads)
    if K > 0:  # a block per possible segment: a fixed grid, whatever the step's number of distinct ids
        get_kernel(KERNELS, "sparse_adagrad")[K, t, stream](p, acc, mom, rows, perm, seg_start, seg_id, ctr, gscale,
                                                            lr, mu, pb, accb, momb, brows, np.int32(n_bslots),
                                                            np.int32(c0))


def launch_sumsq_partial(partials, x, slot, threads=None, stream=0):
    """partials[slot : slot + NORM_BLOCKS] <- per-block sums of squares of x [M] (float32)."""
    (n,) = check("partials", partials, np.float32, 1)
    check("x", x, np.float32, 1)
    if not 0 <= int(slot) <= n - NORM_BLOCKS:
        raise ValueError(f"slot must leave NORM_BLOCKS = {NORM_BLOCKS} entries of partials ({n}); got {slot}")
    t = check_threads(THREADS["reduce"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "sumsq_partial")[NORM_BLOCKS, t, stream](partials, x, np.int32(slot))


def launch_clip_scale(scale, partials, cap, threads=None, stream=0):
    """scale [1] <- cap / norm if norm >= cap else 1, with norm = sqrt(sum(partials))."""
    check("scale", scale, np.float32, 1, (1,))
    check("partials", partials, np.float32, 1)
    cap = float(cap)
    if not cap > 0:
        raise ValueError(f"cap must be > 0; got {cap}")
    t = check_threads(THREADS["reduce"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "clip_scale")[1, t, stream](scale, partials, np.float32(cap))


def launch_grad_clip(scale, partials, xs, cap, threads=None, stream=0):
    """scale [1] = reference.clip_grads's factor for the gradient buffers ``xs`` (1-D float32 arrays: the flat
    dense gradient and the flattened row-gradient slots); partials: [NORM_BLOCKS * len(xs)] scratch."""
    check("partials", partials, np.float32, 1, (NORM_BLOCKS * len(xs),))
    for n, x in enumerate(xs):
        check(f"xs[{n}]", x, np.float32, 1)
        launch_sumsq_partial(partials, x, n * NORM_BLOCKS, threads=threads, stream=stream)
    launch_clip_scale(scale, partials, cap, threads=threads, stream=stream)
