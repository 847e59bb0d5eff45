"""A p-RNN's subnet blocks of the shared output layer: the scaled concatenation of the subnets' top states, and
the split of its gradient back to the subnets.

Shape letters: B rows, K subnets, H_k the top width of subnet k, Hc = sum_k H_k; subnet k owns the columns
[c_k, c_k + H_k) of Wy (``cols`` = [c_0, ..., c_K], int32 [K + 1]). A subnet's [B, H_k] buffers sit one after
another in flat buffers: its top layer's output at ``tops[k]`` in the flat hidden state ``hid`` (every layer of
every subnet, kernels/gru.py's layout), its scaled copy and its top-layer gradient at B c_k in ``hs`` / ``dtop``
[B Hc]. Equations (docs/prnn.md section 3.2, 3.3), with s_k a per-phase scale table (float32 [K]):

    concat_hidden      h_cat[b, c_k + j] = s_k h_k[b, j]  and  hs_k[b, j] = the same, for s_k != 0 (a_k for the
                       subnets that score); h_cat's block is 0 where s_k = 0 (a subnet that does not score)
    split_hidden_grad  dout_k[b, j] = s_k dh_cat[b, c_k + j] for s_k != 0 (a_k for the trainable subnets); the
                       other subnets' gradients are not written

h_cat [B, Hc] is what the GRU4Rec score kernels read as the hidden state (S = h_cat Wy[Y]^T, evaluation's item
tiles), hs_k the contiguous A operand of subnet k's output-weight gradient dW_k[Y] = dZ^T hs_k (a column block of
h_cat is not a C-contiguous matrix), and dh_cat = dZ Wy[Y] one GEMM over all columns. They must match
``reference_prnn.concat_hidden`` and the ``dh = a_k (dZ Wy_Y[:, c_k : c_k + H_k])`` of ``reference_prnn.backward``
(the same float32 products: bit for bit). One thread per element of h_cat / dh_cat; deterministic.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .common import F0, THREADS, ceil_div, check, check_threads, get_kernel


@cuda.jit(device=True, inline="always")
def _block(cols, c):
    """(k, c_k, H_k) of the subnet that owns column c (K is small: a linear walk)."""
    k = 0
    while c >= cols[k + 1]:
        k += 1
    return k, cols[k], cols[k + 1] - cols[k]


def concat_hidden(h_cat, hs, hid, cols, tops, scales):
    """h_cat [B, Hc] and hs [B Hc] from the top states in hid (flat) at tops [K] (int32), scaled by scales [K]."""
    i = cuda.grid(1)
    B = h_cat.shape[0]
    Hc = h_cat.shape[1]
    if i < B * Hc:
        b = i // Hc
        c = i - b * Hc
        k, c0, Hk = _block(cols, c)
        s = scales[k]
        if s == F0:
            h_cat[b, c] = F0
        else:
            v = s * hid[tops[k] + b * Hk + (c - c0)]
            h_cat[b, c] = v
            hs[B * c0 + b * Hk + (c - c0)] = v


def split_hidden_grad(dtop, dh_cat, cols, scales):
    """dtop [B Hc] (subnet k's top-layer output gradient at B c_k) = scales[k] dh_cat [B, Hc] where scales[k] != 0."""
    i = cuda.grid(1)
    B = dh_cat.shape[0]
    Hc = dh_cat.shape[1]
    if i < B * Hc:
        b = i // Hc
        c = i - b * Hc
        k, c0, Hk = _block(cols, c)
        s = scales[k]
        if s != F0:
            dtop[B * c0 + b * Hk + (c - c0)] = s * dh_cat[b, c]


_M = "float32[:, ::1]"
_V = "float32[::1]"
_I = "int32[::1]"
KERNELS = {
    "concat_hidden": (concat_hidden, [f"void({_M}, {_V}, {_V}, {_I}, {_I}, {_V})"]),
    "split_hidden_grad": (split_hidden_grad, [f"void({_V}, {_M}, {_I}, {_V})"]),
}


def _check_blocks(Hc, cols, scales):
    (K1,) = check("cols", cols, np.int32, 1)
    if K1 < 2:
        raise ValueError(f"cols must hold K + 1 >= 2 block bounds; got {K1}")
    check("scales", scales, np.float32, 1, (K1 - 1,))
    return K1 - 1


def launch_concat_hidden(h_cat, hs, hid, cols, tops, scales, threads=None, stream=0):
    """h_cat [B, Hc] = [s_1 h_1 | ... | s_K h_K] (0 blocks where s_k = 0) and hs [B Hc] the scaled blocks one after
    another; the tops h_k [B, H_k] read from hid (flat float32) at tops [K] (int32); cols [K + 1] int32 (cols[K]
    = Hc; the caller keeps it consistent with the layout); scales [K] float32."""
    B, Hc = check("h_cat", h_cat, np.float32, 2)
    check("hs", hs, np.float32, 1, (B * Hc,))
    check("hid", hid, np.float32, 1)
    K = _check_blocks(Hc, cols, scales)
    check("tops", tops, np.int32, 1, (K,))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    if B * Hc:
        get_kernel(KERNELS, "concat_hidden")[ceil_div(B * Hc, t), t, stream](h_cat, hs, hid, cols, tops, scales)


def launch_split_hidden_grad(dtop, dh_cat, cols, scales, threads=None, stream=0):
    """dtop [B Hc] (flat, subnet k's [B, H_k] block at B c_k) = scales[k] times dh_cat [B, Hc]'s block k, for the
    subnets with scales[k] != 0."""
    B, Hc = check("dh_cat", dh_cat, np.float32, 2)
    check("dtop", dtop, np.float32, 1, (B * Hc,))
    _check_blocks(Hc, cols, scales)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    if B * Hc:
        get_kernel(KERNELS, "split_hidden_grad")[ceil_div(B * Hc, t), t, stream](dtop, dh_cat, cols, scales)
