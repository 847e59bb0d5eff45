"""Embedding gathers and scatter-adds of row gradients.

Shape letters: N items (table rows), D row width (H for Wy, E for the input embedding, 3H for the one-hot Wx0),
K ids (B inputs X, or O = B + S output columns Y).

    gather_rows:      out[k, :] = table[ids[k], c0:c0+D] * mask[k, :] out [K, D], table [N, >= c0 + D], ids [K]
        Wy[Y] (no dropout; reference.forward's ``Wy_Y``), E[X] / Wy[X] with the input-embedding dropout
        (reference.forward's ``x = emb[X] * emb_mask``; mask as kernels/gru.py with key
        rng.dropout_key(seed, -1) and counter (k*D + j, step)), Wx0[X] (the one-hot first layer; the training
        step fuses that gather into kernels/gru.py instead). The training step gathers x0 and Wy[Y] inside
        kernels/step.py's ``step_begin`` (``gather_element``, the one home of the element); evaluation launches
        ``gather_rows``. The column offset c0 is 0 for GRU4Rec; a p-RNN's constrained ID input gathers its
        subnet's block of Wy (reference_prnn.subnet_forward's ``Wy[X][:, c0:c1]``).
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
def gather_element(out, table, row, k, j, c0, step, key, p, scale, row0):
    """out[k, j] = table[row, c0 + j] times the dropout mask element ((row0 + k)*D + j, step) (p = 0: a plain
    copy). c0: a column offset into the table (a p-RNN subnet's block of Wy; 0 for GRU4Rec); row0: the first
    row's index in the batch's masks (0 but in data parallelism)."""
    out[k, j] = table[row, c0 + j] * dropout_scale((row0 + k) * out.shape[1] + j, step, key, p, scale)


def gather_rows(out, table, ids, ctr, key, p, scale, c0):
    """out[k, j] = table[ids[k], c0 + j] * dropout mask (p = 0: plain copy); one thread per element."""
    i = cuda.grid(1)
    D = out.shape[1]
    if i < out.shape[0] * D:
        k = i // D
        gather_element(out, table, ids[k], k, i - k * D, c0, ctr[1], key, p, scale, 0)


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
                                  "float32, int32)"]),
    "scatter_add_rows": (scatter_add_rows, ["void(float32[:, ::1], int32[::1], float32[:, ::1])"]),
}


def launch_gather_rows(out, table, ids, ctr, key=0, p=0.0, c0=None, threads=None, stream=0):
    """out [K, D] = table [N, D] rows ids [K] (int32), times the dropout mask of (key, p, step ctr[1]). With a column
    offset ``c0`` the table may be wider: out = columns c0 .. c0 + D of its rows (a p-RNN subnet's block of Wy)."""
    K, D = check("out", out, np.float32, 2)
    c0 = check_column_offset(c0, D, check("table", table, np.float32, 2)[1], "table")
    check("ids", ids, np.int32, 1, (K,))
    key, p, scale = _drop_args(ctr, key, p)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "gather_rows")[max(ceil_div(K * D, t), 1), t, stream](out, table, ids, ctr, key, p, scale,
                                                                              c0)


def check_column_offset(c0, width, table_cols, name) -> np.int32:
    """The column offset (int32) of a ``width``-wide gather from the ``table_cols``-wide ``name``: c0 None means
    whole rows (the table must be ``width`` wide, as before the offset existed); else 0 <= c0 and c0 + width <=
    table_cols. A ValueError names ``name`` otherwise."""
    if c0 is None:
        if table_cols != width:
            raise ValueError(f"{name} must have {width} columns (or pass the column offset c0); got {table_cols}")
        return np.int32(0)
    if isinstance(c0, bool) or not isinstance(c0, (int, np.integer)) or c0 < 0 or int(c0) + width > table_cols:
        raise ValueError(f"{name} must have at least c0 + {width} columns with c0 >= 0 (c0 = {c0!r}); it has "
                         f"{table_cols}")
    return np.int32(c0)


def launch_scatter_add_rows(table, ids, rows, threads=None, stream=0):
    """table [N, D] += rows [K, D] at ids [K] (atomics: duplicate ids sum in a scheduling-dependent order)."""
    _, D = check("table", table, np.float32, 2)
    K, _ = check("rows", rows, np.float32, 2, (None, D))
    check("ids", ids, np.int32, 1, (K,))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "scatter_add_rows")[max(ceil_div(K * D, t), 1), t, stream](table, ids, rows)
