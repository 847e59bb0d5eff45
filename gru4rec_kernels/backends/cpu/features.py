"""Sparse item-feature input of a p-RNN subnet on the CPU: the CSR input product and its gradient pairs, the
twins of ``reference_prnn.sparse_input_product`` (with ``sparse_rows``) and ``reference_prnn.sparse_input_grad``
(docs/prnn.md 3.1 and 3.3).

    sparse_input_product   P[b] = sum over the non-zeros (j, v) of row X[b] of F, in CSR order, of v W[j]
    sparse_input_grad      the gradient pairs (j, v da0[b]) of every non-zero (b, j), in batch-row then CSR order:
                           the slots of W's sparse Adagrad (adagrad.link_ids + sparse_adagrad sum duplicate j
                           there, in slot order, as the reference's coalesce)

Shape letters: B rows, D feature columns (= rows of W), G = 3 H_0 columns of W, M = the non-zeros of the B input
rows (an item without features has none; a duplicate input item gives its row again). F is read as its CSR
arrays (indptr [N + 1], indices [nnz], data [nnz]), never as a dense [B, D] or [N, D] matrix: the cost is
B x (non-zeros a row) x G. A dense feature source needs no kernel of its own: F[X] is a row gather
(``gru.embed_input`` without dropout) and its products are GEMMs.

Determinism: every output row is written by one iteration, which adds its non-zeros in CSR order; each product
v W[j] is rounded to float32 before it is added (no fast-math, no fused multiply-add), as numpy does in the
reference, so the product equals the float32 reference bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, error_model="numpy")
def sparse_input_product(W, indptr, indices, data, X, out):
    """out[b] = sum_{q in indptr[X[b]] .. indptr[X[b] + 1]} data[q] * W[indices[q]] for the B = len(out) rows
    (0 for a row without non-zeros). W [D, G], out [B, G]."""
    B, G = out.shape
    for b in prange(B):
        r = X[b]
        for g in range(G):
            out[b, g] = 0.0
        for q in range(indptr[r], indptr[r + 1]):
            j = indices[q]
            v = data[q]
            for g in range(G):
                out[b, g] += v * W[j, g]


@njit(parallel=True, cache=True, error_model="numpy")
def sparse_input_grad(da0, indptr, indices, data, X, ids, slots):
    """The gradient pairs of sparse_input_product for the B = len(da0) rows: slot m (batch row b's non-zeros
    after those of rows < b, in CSR order) gets ids[m] = j and slots[m] = v * da0[b]. Returns M, the number of
    slots written. ids [>= M], slots [>= M, G]."""
    B, G = da0.shape
    first = np.zeros(B + 1, dtype=np.int64)  # row b's first slot
    for b in range(B):
        first[b + 1] = first[b] + indptr[X[b] + 1] - indptr[X[b]]
    for b in prange(B):
        q0 = indptr[X[b]]
        for m in range(first[b], first[b + 1]):
            q = q0 + m - first[b]
            ids[m] = indices[q]
            v = data[q]
            for g in range(G):
                slots[m, g] = v * da0[b, g]
    return first[B]
