"""Embedding gathers and scatter-adds of row gradients.

Shape letters: N items (table rows), D row width (H for Wy, E for the input embedding, 3H for the one-hot Wx0),
K ids (B inputs X, or O = B + S output columns Y).

    gather_rows:      out[k, :] = table[ids[k], :] * mask[k, :]     out [K, D], table [N, D], ids [K]
        Wy[Y] (no dropout; reference.forward's ``Wy_Y``), E[X] / Wy[X] with the input-embedding dropout
        (reference.forward's ``x = emb[X] * emb_mask``; mask as kernels/gru.py with key
        rng.dropout_key(seed, -1) and counter (k*D + j, step)), Wx0[X] (the one-hot first layer; the training
        step fuses that gather into kernels/gru.py instead). The training step gathers x0 and Wy[Y] inside
        kernels/step.py's ``step_begin`` (``gather_element``, the one home of the element); evaluation launches
        ``gather_rows``.
    scatter_add_rows: table[ids[k], :] += rows[k, :]                 rows [K, D]
        the sum of duplicate ids' rows (what reference.coalesce + np.add.at compute) with float atomics: the
        order in which duplicates are added depends on scheduling, so the result is NOT bitwise deterministic
        when an id repeats. The training step does not use it: sparse Adagrad coalesces duplicates itself in a
        fixed order (kernels/adagrad.py). It is kept for accumulating full-size gradients (e.g. tests, tools).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .common import THREADS, ceil_div, check, check_threads, dropout_scale, get_kernel
from .gru import _drop_args


@cuda.jit(device=True, inline="always")
def gather_element(out, table, row, k, j, step, key, p, scale, row0):
    """out[k, j] = table[row, j] times the dropout mask element ((row0 + k)*D + j, step) (p = 0: a plain copy;
    row0: the first row's index in the batch's masks, 0 but in data parallelism)."""
    out[k, j] = table[row, j] * dropout_scale((row0 + k) * out.shape[1] + j, step, key, p, scale)


def gather_rows(out, table, ids, ctr, key, p, scale):
    """out[k, j] = table[ids[k], j] * dropout mask (p = 0: plain copy); one thread per element."""
    i = cuda.grid(1)
    D = out.shape[1]
    if i < out.shape[0] * D:
        k = i // D
        gather_element(out, table, ids[k], k, i - k * D, ctr[1], key, p, scale, 0)


def scatter_add_rows(table, ids, rows):
    """table[ids[k], j] += rows[k, j] with atomics; one thread per element of rows."""
    i = cuda.grid(1)
    D = rows.shape[1]
    if i < rows.shape[0] * D:
        k = i // D
        j = i - k * D
        cuda.atomic.add(table, (ids[k], j), rows[k, j])


KERNELS = {
    "gather_rows": (gather_rows, ["void(float32[:, ::1], float32[:, ::1], int32[::1], int64[::1], uint32, float64, "
                                  "float32)"]),
    "scatter_add_rows": (scatter_add_rows, ["void(float32[:, ::1], int32[::1], float32[:, ::1])"]),
}


def launch_gather_rows(out, table, ids, ctr, key=0, p=0.0, threads=None, stream=0):
    """out [K, D] = table [N, D] rows ids [K] (int32), times the dropout mask of (key, p, step ctr[1])."""
    K, D = check("out", out, np.float32, 2)
    check("table", table, np.float32, 2, (None, D))
    check("ids", ids, np.int32, 1, (K,))
    key, p, scale = _drop_args(ctr, key, p)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "gather_rows")[max(ceil_div(K * D, t), 1), t, stream](out, table, ids, ctr, key, p, scale)


def launch_scatter_add_rows(table, ids, rows, threads=None, stream=0):
    """table [N, D] += rows [K, D] at ids [K] (atomics: duplicate ids sum in a scheduling-dependent order)."""
    _, D = check("table", table, np.float32, 2)
    K, _ = check("rows", rows, np.float32, 2, (None, D))
    check("ids", ids, np.int32, 1, (K,))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "scatter_add_rows")[max(ceil_div(K * D, t), 1), t, stream](table, ids, rows)
