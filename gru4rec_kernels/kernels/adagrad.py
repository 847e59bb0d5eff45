"""Adagrad with heavy-ball momentum: dense over one flat buffer, sparse over rows with duplicate coalescing.

Shape letters: P dense parameters in one flat buffer (``layout.allocate``), N rows of a sparse parameter
(items), D its row width (H for Wy, 1 for By, E, 3H for the one-hot Wx0), K row slots of a step (O = B + S
output columns for Wy / By, plus B input rows in the constrained mode; B for E and Wx0). Equations
(docs/design.md section 2.10; as the official IndexedAdagradM), with g = grad * gscale[0] (gradient clipping, else 1):

    acc += g^2;   upd = -lr g / sqrt(acc + 1e-6);   mom = mu mom + upd;   p += mom     (p += upd when mu = 0)

They must match ``reference.adagrad_dense`` and ``reference.sparse_adagrad`` (with ``reference.coalesce``);
``sumsq_partial`` + ``clip_scale`` are ``reference.clip_grads``'s global norm and factor.

Sparse rows, duplicates: the same id may fill several slots (a target twice, a target also sampled, an input
also an output in the constrained mode). Every touched id is updated exactly once, with the sum of its slots:
* ``sparse_adagrad_mark`` (a thread per slot): ``owner[id] = min(owner[id], k)`` and ``count[id] += 1`` with
  integer atomics: the first occurrence of each id and its multiplicity (order-independent, so deterministic);
* ``sparse_adagrad_apply`` (a block per slot, threads over the row): only the block of the first occurrence of
  its id works; it sums the rows of all slots of that id in increasing slot order (it scans forward until it has
  seen ``count[id]`` of them; most ids are unique and stop at once), then updates the row, and puts
  ``owner[id]`` / ``count[id]`` back to INT32_MAX / 0 for the next step.
The sum order is the slot order, which is the order ``np.add.at`` uses in ``reference.coalesce``: the result is
deterministic and bitwise reproducible run to run (bitwise equal to the float32 reference in the simulator; on a
GPU the compiler may contract ``acc + g*g`` into one FMA, one rounding fewer). ``owner`` / ``count`` are [N]
int32 scratch arrays that must hold INT32_MAX / 0 on entry; they do again on exit. No sort, no host round trip:
it runs inside a CUDA graph. Cost: a scan of the following slots only for duplicated ids (worst case O(K) each).
A slot with a zero gradient still counts as touched (as in the reference: with momentum the row still moves).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from gru4rec_kernels.reference import ADAGRAD_EPS

from .common import (
    F0,
    F1,
    INT32_MAX,
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


def adagrad_dense(p, g, acc, mom, gscale, lr, mu):
    """One thread per element of the flat buffers p, g, acc, mom [P]; gscale [1]; lr, mu float32."""
    i = cuda.grid(1)
    if i < p.shape[0]:
        gg = g[i] * gscale[0]
        a = acc[i] + gg * gg
        acc[i] = a
        upd = (-lr * gg) / math.sqrt(a + EPS)
        if mu > F0:
            m = mu * mom[i] + upd
            mom[i] = m
            p[i] += m
        else:
            p[i] += upd


def sparse_adagrad_mark(owner, count, ids):
    """owner[ids[k]] = min over slots k of that id; count[ids[k]] = its multiplicity. A thread per slot."""
    k = cuda.grid(1)
    if k < ids.shape[0]:
        cuda.atomic.min(owner, ids[k], np.int32(k))
        cuda.atomic.add(count, ids[k], np.int32(1))


def sparse_adagrad_apply(p, acc, mom, owner, count, ids, rows, gscale, lr, mu):
    """Block k: if slot k is its id's first occurrence, update row ids[k] of p, acc, mom [N, D] with the sum of
    the rows [K, D] of all slots of that id (in slot order), then reset owner/count [N] of the id."""
    k = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    r = ids[k]
    if owner[r] != k:  # block-uniform
        return
    n = count[r]
    s = gscale[0]
    K = ids.shape[0]
    for d in range(tid, p.shape[1], cuda.blockDim.x):
        g = rows[k, d] * s
        found = 1
        k2 = k + 1
        while found < n and k2 < K:
            if ids[k2] == r:
                g += rows[k2, d] * s
                found += 1
            k2 += 1
        a = acc[r, d] + g * g
        acc[r, d] = a
        upd = (-lr * g) / math.sqrt(a + EPS)
        if mu > F0:
            m = mu * mom[r, d] + upd
            mom[r, d] = m
            p[r, d] += m
        else:
            p[r, d] += upd
    cuda.syncthreads()
    if tid == 0:
        owner[r] = INT32_MAX
        count[r] = 0


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
KERNELS = {
    "adagrad_dense": (adagrad_dense, [f"void({_V}, {_V}, {_V}, {_V}, {_V}, float32, float32)"]),
    "sparse_adagrad_mark": (sparse_adagrad_mark, ["void(int32[::1], int32[::1], int32[::1])"]),
    "sparse_adagrad_apply": (sparse_adagrad_apply, [f"void({_M}, {_M}, {_M}, int32[::1], int32[::1], int32[::1], "
                                                    f"{_M}, {_V}, float32, float32)"]),
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


def launch_sparse_adagrad_mark(owner, count, ids, threads=None, stream=0):
    """owner / count [N] int32 (INT32_MAX / 0 on entry) <- first slot and multiplicity of each id of ids [K]."""
    (N,) = check("owner", owner, np.int32, 1)
    check("count", count, np.int32, 1, (N,))
    (K,) = check("ids", ids, np.int32, 1)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "sparse_adagrad_mark")[max(ceil_div(K, t), 1), t, stream](owner, count, ids)


def _check_sparse(p, acc, mom, owner, count, ids, rows, gscale, lr, mu):
    N, D = check("p", p, np.float32, 2)
    check("acc", acc, np.float32, 2, (N, D))
    check("mom", mom, np.float32, 2, (N, D))
    (K,) = check("ids", ids, np.int32, 1)
    check("rows", rows, np.float32, 2, (K, D))
    check("owner", owner, np.int32, 1, (N,))
    check("count", count, np.int32, 1, (N,))
    check("gscale", gscale, np.float32, 1, (1,))
    return (*_hyper(lr, mu), K)


def launch_sparse_adagrad_apply(p, acc, mom, owner, count, ids, rows, gscale, lr, mu, threads=None, stream=0):
    """p, acc, mom [N, D] at the ids [K] with the rows [K, D] (duplicates summed; after
    launch_sparse_adagrad_mark)."""
    lr, mu, K = _check_sparse(p, acc, mom, owner, count, ids, rows, gscale, lr, mu)
    t = check_threads(THREADS["sparse"] if threads is None else threads)
    if K > 0:
        get_kernel(KERNELS, "sparse_adagrad_apply")[K, t, stream](p, acc, mom, owner, count, ids, rows, gscale, lr,
                                                                  mu)


def launch_sparse_adagrad(p, acc, mom, ids, rows, owner, count, gscale, lr, mu, threads=None, stream=0):
    """Sparse Adagrad: p, acc, mom [N, D] updated at the ids [K] (int32) with rows [K, D], duplicates summed
    first. owner / count: [N] int32 scratch holding INT32_MAX / 0 (restored on exit). Every argument is checked
    before anything runs; then sparse_adagrad_mark + sparse_adagrad_apply."""
    _check_sparse(p, acc, mom, owner, count, ids, rows, gscale, lr, mu)
    check_threads(THREADS["sparse"] if threads is None else threads)
    launch_sparse_adagrad_mark(owner, count, ids, threads=threads, stream=stream)
    launch_sparse_adagrad_apply(p, acc, mom, owner, count, ids, rows, gscale, lr, mu, threads=threads,
                                stream=stream)


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
