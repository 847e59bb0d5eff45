"""A p-RNN's sparse feature input: the first layer's input product from a CSR item-feature matrix, and its
gradient as row slots for the segment-based sparse Adagrad.

Shape letters: B rows (the step's input items X), N items (rows of the CSR matrix F), D feature columns (rows of
the input weights W_f), C = 3 H_0 (the first layer's gate width), m = the most non-zeros of any row of F, M = B m
slots. Equations (docs/prnn.md section 3.1, 3.3):

    sparse_input_product   P[b, c] = sum over the non-zeros (j, v) of row X[b] of F, in CSR order, of v W[j, c]
                           out = P, or out += P (``accumulate``: the subnet's other sources came first)
    sparse_input_grad      g[b m + i, c] = v_i dP[b, c] for the i-th non-zero (j_i, v_i) of row X[b] (i < its
                           count); 0 on the padding slots i >= count

They must match ``reference_prnn.sparse_input_product`` (over ``sparse_rows(F, X)``) and
``reference_prnn.sparse_input_grad``: the product sums a row's terms from zero in CSR order, each term v W[j, c]
rounded first, as np.add.at does (bit for bit in the simulator; a GPU may contract a term and its add into one
FMA); the gradient slots, with the padding left out, are the reference's uncoalesced pairs in the same order.

Both read the matrix on the device (indptr [N + 1], indices [nnz], data [nnz]) and the step's X, so they are
graph nodes like every other kernel. The slot list of a step has a fixed size M = B m, so the launch and the
sparse update's grid do not depend on the data: slot b m + i holds row b's i-th non-zero, and the padding slots
carry the id D, one past W's last row, which ``adagrad.sparse_adagrad`` skips (a real row with a zero gradient
would still move under momentum). The slots' column ids are known on the host before the chunk is uploaded
(``slot_columns``: the same layout), so backends/segments.py groups them like Wy's slots, and the update
is the existing deterministic ``sparse_adagrad``: a column touched by several rows (or a duplicate input) sums
its slots in slot order, the order of reference.coalesce. Cost: the product reads B x (non-zeros of the rows)
x C weights and writes B C (one thread per output element: its row's non-zeros walked serially, the threads
of a row reading consecutive columns of each W row); the gradient writes M C. No atomics: deterministic.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .common import F0, THREADS, ceil_div, check, check_threads, get_kernel


def sparse_input_product(out, W, indptr, indices, data, X, accumulate):
    """A thread per element (b, c) of out [B, C]: the weighted sum of the rows W[j] [D, C] over the non-zeros of
    row X[b] of the CSR matrix (indptr, indices, data), in CSR order; written, or added to out when accumulate."""
    i = cuda.grid(1)
    C = out.shape[1]
    if i < out.shape[0] * C:
        b = i // C
        c = i - b * C
        row = X[b]
        acc = F0
        for e in range(indptr[row], indptr[row + 1]):
            acc += data[e] * W[indices[e], c]
        if accumulate != 0:
            out[b, c] = out[b, c] + acc
        else:
            out[b, c] = acc


def sparse_input_grad(g, da, indptr, data, X):
    """A thread per element (q, c) of the slot rows g [B m, C]: slot q = b m + i is the i-th non-zero of row X[b]
    (value v): g[q, c] = v da[b, c]; a padding slot (i >= the row's count) gets 0."""
    i = cuda.grid(1)
    C = g.shape[1]
    if i < g.shape[0] * C:
        q = i // C
        c = i - q * C
        m = g.shape[0] // da.shape[0]
        b = q // m
        row = X[b]
        e = indptr[row] + (q - b * m)
        if e < indptr[row + 1]:
            g[q, c] = data[e] * da[b, c]
        else:
            g[q, c] = F0


_M = "float32[:, ::1]"
_I = "int32[::1]"
KERNELS = {
    "sparse_input_product": (sparse_input_product, [f"void({_M}, {_M}, {_I}, {_I}, float32[::1], {_I}, int32)"]),
    "sparse_input_grad": (sparse_input_grad, [f"void({_M}, {_M}, {_I}, float32[::1], {_I})"]),
}


# ------------------------------------------------------------------------------------------------- host side
def max_row_nnz(indptr) -> int:
    """m: the most non-zeros of any row of a CSR matrix (the slots per input row)."""
    indptr = np.asarray(indptr)
    return int(np.diff(indptr).max(initial=0))


def slot_columns(indptr, indices, X, m: int, pad: int) -> np.ndarray:
    """The column ids of the gradient slots, in the kernels' layout: X [..., B] item ids -> [..., B m] int32 where
    slot b m + i is the column of row X[b]'s i-th non-zero, or ``pad`` (the padding id, D) beyond its count."""
    indptr = np.asarray(indptr, np.int64)
    X = np.asarray(X, np.int64)
    start = indptr[X][..., None]
    pos = start + np.arange(m, dtype=np.int64)
    real = pos < indptr[X + 1][..., None]
    cols = np.full(pos.shape, pad, np.int32)
    if real.any():
        cols[real] = np.asarray(indices)[pos[real]]
    return cols.reshape(*X.shape[:-1], X.shape[-1] * m)


def _check_csr(indptr, indices, data):
    (n1,) = check("indptr", indptr, np.int32, 1)
    if n1 < 1:
        raise ValueError("indptr must have N + 1 >= 1 entries")
    (nnz,) = check("indices", indices, np.int32, 1)
    check("data", data, np.float32, 1, (nnz,))


def launch_sparse_input_product(out, W, indptr, indices, data, X, accumulate=False, threads=None, stream=0):
    """out [B, C] (+)= the rows X [B] (int32) of the CSR matrix (indptr [N + 1], indices [nnz] int32, data [nnz]
    float32; column ids < D) times W [D, C] (float32), each row's non-zeros summed in CSR order."""
    B, C = check("out", out, np.float32, 2)
    check("W", W, np.float32, 2, (None, C))
    _check_csr(indptr, indices, data)
    check("X", X, np.int32, 1, (B,))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    if B * C:
        get_kernel(KERNELS, "sparse_input_product")[ceil_div(B * C, t), t, stream](
            out, W, indptr, indices, data, X, np.int32(bool(accumulate)))


def launch_sparse_input_grad(g, da, indptr, data, X, threads=None, stream=0):
    """g [B m, C] = the slot rows of the sparse gradient of W from da [B, C] (the product's gradient), in
    ``slot_columns``' layout (m slots per row, padding slots 0)."""
    B, C = check("da", da, np.float32, 2)
    M, _ = check("g", g, np.float32, 2, (None, C))
    if B < 1 or M % B:
        raise ValueError(f"g must have B m rows (m slots per input row, B = {B}); got {M}")
    check("indptr", indptr, np.int32, 1)
    check("data", data, np.float32, 1)
    check("X", X, np.int32, 1, (B,))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    if M * C:
        get_kernel(KERNELS, "sparse_input_grad")[ceil_div(M * C, t), t, stream](g, da, indptr, data, X)
