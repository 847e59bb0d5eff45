"""GRU gates: fused elementwise forward and backward kernels around the GEMMs, with in-kernel dropout.

Shape letters: B rows (session-parallel slots), H units of the layer, N items. Gate blocks are stacked
[h | r | z] (docs/design.md section 2; ``gru4rec_kernels.layout``). Per layer the backend runs

    forward                                        must match reference.gru_fwd (+ forward's gather)
        xw  = x Wx                    [B, 3H]  GEMM (one-hot first layer: no GEMM, xw = Wx0 and row = X[b])
        hU  = h U_rz                  [B, 2H]  GEMM
        gru_fwd_rz:   r  = sigmoid(xw[row, H:2H] + b_r + hU[:, :H])
                      z  = sigmoid(xw[row, 2H:] + b_z + hU[:, H:]),   rh = r * h
        rhU = rh U_h                  [B, H]   GEMM
        gru_fwd_out:  c  = tanh(xw[row, :H] + b_h + rhU),   out = ((1 - z) h + z c) * mask
    backward                                       must match reference.gru_bwd
        gru_bwd_cz:   dhn = dout * mask,  dc = dhn z (1 - c^2),  dz = dhn (c - h) z (1 - z)
                      da[:, :H] = dc, da[:, 2H:] = dz   (and the contiguous copies dc, drz[:, H:] for the GEMMs)
        drh = dc U_h^T                [B, H]   GEMM
        gru_bwd_r:    dr = drh h r (1 - r)  ->  da[:, H:2H], drz[:, :H]
        then GEMMs dU_rz = h^T drz, dU_h = rh^T dc, dWx = x^T da, dx = da Wx^T and the column sum dBh.

``hidden_reset`` zeroes the hidden state of rows that start a new session (h_in = 0 where reset, else the
state), every layer in one launch: the backend keeps the layers' [B, H_l] states one after another in one flat
buffer, and ``hidden_row`` finds an element's row from the layer widths (the training step does this inside
kernels/step.py's ``step_begin``; evaluation launches ``hidden_reset``). ``dropout_inplace`` multiplies a [B, W]
array by a dropout mask (the input-embedding gradient; launched only when the embedding dropout is on).

Dropout: ``mask[b, j] = 1/(1-p)`` if ``uniform24(philox(counter=((row0 + b)*H + j, step), key)) >= p`` else 0,
with ``key = rng.dropout_key(seed, layer)`` (layer -1: the input embedding) and the step read from the device
step counter ``ctr[1]`` (so a CUDA graph replay draws fresh masks); equal to ``rng.dropout_mask_np`` element for
element. Backward draws the same mask again instead of storing it. ``row0`` is 0 but in data parallelism, where
a rank's B rows are rows row0.. of the global batch and draw those rows of the global masks.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common import F0, F1, THREADS, ceil_div, check, check_threads, dropout_scale, get_kernel, sigmoid

_M = "float32[:, ::1]"
_V = "float32[::1]"


@cuda.jit(device=True, inline="always")
def hidden_row(widths, B, e):
    """Row b of element e of the flat hidden state: layer blocks [B, widths[l]] one after another."""
    off = 0
    for l in range(widths.shape[0]):
        n = B * widths[l]
        if e < off + n:
            return (e - off) // widths[l]
        off += n
    return 0


def hidden_reset(h_in, hid, widths, reset):
    """h_in[e] = 0 if reset[row of e] else hid[e] over the flat states of every layer (h_in, hid [sum_l B H_l];
    widths [L] int32 = H_l; reset [B] uint8)."""
    i = cuda.grid(1)
    if i < h_in.shape[0]:
        if reset[hidden_row(widths, reset.shape[0], i)] != 0:
            h_in[i] = F0
        else:
            h_in[i] = hid[i]


def gru_fwd_rz(r, z, rh, xw, ids, gather, Bh, hU, h):
    """Reset and update gates and r*h.

    r, z, rh [B, H] outputs; xw [B or N, 3H] input projection (row b, or row ids[b] when gather != 0: the
    one-hot first layer's Wx0); Bh [3H]; hU = h U_rz [B, 2H]; h [B, H] incoming hidden state.
    """
    i = cuda.grid(1)
    H = h.shape[1]
    if i < h.shape[0] * H:
        b = i // H
        j = i - b * H
        row = ids[b] if gather != 0 else b
        rr = sigmoid((xw[row, H + j] + Bh[H + j]) + hU[b, j])
        zz = sigmoid((xw[row, 2 * H + j] + Bh[2 * H + j]) + hU[b, H + j])
        r[b, j] = rr
        z[b, j] = zz
        rh[b, j] = rr * h[b, j]


def gru_fwd_out(c, out, xw, ids, gather, Bh, rhU, h, z, ctr, key, p, scale, row0):
    """Candidate state and the new hidden state after dropout.

    c, out [B, H] outputs; xw / ids / gather / Bh as gru_fwd_rz; rhU = (r*h) U_h [B, H]; h, z [B, H];
    ctr int64 [2] device step counter (ctr[1] = global step); key uint32 dropout key; p dropout probability
    (float64; 0 = off); scale = float32(1/(1-p)); row0 the rows' first row in the batch's masks.
    """
    i = cuda.grid(1)
    H = h.shape[1]
    if i < h.shape[0] * H:
        b = i // H
        j = i - b * H
        row = ids[b] if gather != 0 else b
        cc = np.float32(math.tanh((xw[row, j] + Bh[j]) + rhU[b, j]))
        zz = z[b, j]
        hn = (F1 - zz) * h[b, j] + zz * cc
        c[b, j] = cc
        out[b, j] = hn * dropout_scale(i + row0 * H, ctr[1], key, p, scale)


def gru_bwd_cz(da, dc, drz, dout, h, z, c, ctr, key, p, scale, row0):
    """Gradients of the candidate and update-gate pre-activations.

    da [B, 3H], dc [B, H], drz [B, 2H] outputs (dc into da[:, :H] and dc; dz into da[:, 2H:] and drz[:, H:]);
    dout [B, H] gradient w.r.t. the layer output; h, z, c [B, H] from the forward; ctr/key/p/scale as
    gru_fwd_out (the same mask is drawn again).
    """
    i = cuda.grid(1)
    H = h.shape[1]
    if i < h.shape[0] * H:
        b = i // H
        j = i - b * H
        dhn = dout[b, j] * dropout_scale(i + row0 * H, ctr[1], key, p, scale)
        zz = z[b, j]
        cc = c[b, j]
        g_c = dhn * zz * (F1 - cc * cc)
        g_z = dhn * (cc - h[b, j]) * zz * (F1 - zz)
        da[b, j] = g_c
        da[b, 2 * H + j] = g_z
        dc[b, j] = g_c
        drz[b, H + j] = g_z


def gru_bwd_r(da, drz, drh, h, r):
    """Gradient of the reset-gate pre-activation: dr = drh h r (1 - r) into da[:, H:2H] and drz[:, :H].

    da [B, 3H], drz [B, 2H] outputs; drh = dc U_h^T [B, H]; h, r [B, H].
    """
    i = cuda.grid(1)
    H = h.shape[1]
    if i < h.shape[0] * H:
        b = i // H
        j = i - b * H
        rr = r[b, j]
        g_r = drh[b, j] * h[b, j] * rr * (F1 - rr)
        da[b, H + j] = g_r
        drz[b, j] = g_r


def dropout_inplace(a, ctr, key, p, scale, row0):
    """a[b, j] *= mask((row0 + b)*W + j) for a [B, W] (the input-embedding gradient, with the embedding's key)."""
    i = cuda.grid(1)
    W = a.shape[1]
    if i < a.shape[0] * W:
        b = i // W
        j = i - b * W
        a[b, j] = a[b, j] * dropout_scale(i + row0 * W, ctr[1], key, p, scale)


_DROP = "int64[::1], uint32, float64, float32, int32"  # ctr, key, p, scale, row0
KERNELS = {
    "hidden_reset": (hidden_reset, [f"void({_V}, {_V}, int32[::1], uint8[::1])"]),
    "gru_fwd_rz": (gru_fwd_rz, [f"void({_M}, {_M}, {_M}, {_M}, int32[::1], int32, {_V}, {_M}, {_M})"]),
    "gru_fwd_out": (gru_fwd_out, [f"void({_M}, {_M}, {_M}, int32[::1], int32, {_V}, {_M}, {_M}, {_M}, {_DROP})"]),
    "gru_bwd_cz": (gru_bwd_cz, [f"void({_M}, {_M}, {_M}, {_M}, {_M}, {_M}, {_M}, {_DROP})"]),
    "gru_bwd_r": (gru_bwd_r, [f"void({_M}, {_M}, {_M}, {_M}, {_M})"]),
    "dropout_inplace": (dropout_inplace, [f"void({_M}, {_DROP})"]),
}


# ------------------------------------------------------------------------------------------------- launchers
def _grid(n: int, threads: int) -> int:
    return max(ceil_div(n, threads), 1)


def _drop_args(ctr, key, p):
    check("ctr", ctr, np.int64, 1, (2,))
    p = float(p)
    if not (0.0 <= p < 1.0):
        raise ValueError(f"p must be a dropout probability in [0, 1); got {p}")
    key = int(key)
    if not (0 <= key < 2**32):
        raise ValueError(f"key must be a uint32; got {key}")
    return np.uint32(key), np.float64(p), np.float32(1.0 / (1.0 - p))


def _row0(row0):
    """The first row's index in the batch's dropout masks, as the kernels take it."""
    if not isinstance(row0, (int, np.integer)) or not 0 <= row0 < 2**31:
        raise ValueError(f"row0 must be a non-negative int32 (the rows' first row in the batch); got {row0!r}")
    return np.int32(row0)


def _xw(xw, ids, gather, B, H):
    rows = None if gather else B
    check("xw", xw, np.float32, 2, (rows, 3 * H))
    check("ids", ids, np.int32, 1, (B,))
    return np.int32(1 if gather else 0)


def check_hidden(h_in, hid, widths, B):
    """The flat hidden-state buffers of every layer: h_in, hid [B * sum(widths)] float32, widths [L] int32 (its
    values stay on the device: the caller builds it from the layer sizes)."""
    (n,) = check("h_in", h_in, np.float32, 1)
    check("hid", hid, np.float32, 1, (n,))
    (L,) = check("widths", widths, np.int32, 1)
    if L < 1 or B < 1 or n % B:
        raise ValueError(f"h_in must hold B = {B} rows of every layer (L = {L} widths); got {n} elements")


def launch_hidden_reset(h_in, hid, widths, reset, threads=None, stream=0):
    (B,) = check("reset", reset, np.uint8, 1)
    check_hidden(h_in, hid, widths, B)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "hidden_reset")[_grid(h_in.shape[0], t), t, stream](h_in, hid, widths, reset)


def launch_gru_fwd_rz(r, z, rh, xw, ids, gather, Bh, hU, h, threads=None, stream=0):
    B, H = check("h", h, np.float32, 2)
    for name, a in (("r", r), ("z", z), ("rh", rh)):
        check(name, a, np.float32, 2, (B, H))
    g = _xw(xw, ids, gather, B, H)
    check("Bh", Bh, np.float32, 1, (3 * H,))
    check("hU", hU, np.float32, 2, (B, 2 * H))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "gru_fwd_rz")[_grid(B * H, t), t, stream](r, z, rh, xw, ids, g, Bh, hU, h)


def launch_gru_fwd_out(c, out, xw, ids, gather, Bh, rhU, h, z, ctr, key, p, threads=None, stream=0, row0=0):
    B, H = check("h", h, np.float32, 2)
    for name, a in (("c", c), ("out", out), ("rhU", rhU), ("z", z)):
        check(name, a, np.float32, 2, (B, H))
    g = _xw(xw, ids, gather, B, H)
    check("Bh", Bh, np.float32, 1, (3 * H,))
    key, p, scale = _drop_args(ctr, key, p)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "gru_fwd_out")[_grid(B * H, t), t, stream](c, out, xw, ids, g, Bh, rhU, h, z, ctr, key, p,
                                                                   scale, _row0(row0))


def launch_gru_bwd_cz(da, dc, drz, dout, h, z, c, ctr, key, p, threads=None, stream=0, row0=0):
    B, H = check("h", h, np.float32, 2)
    check("da", da, np.float32, 2, (B, 3 * H))
    check("drz", drz, np.float32, 2, (B, 2 * H))
    for name, a in (("dc", dc), ("dout", dout), ("z", z), ("c", c)):
        check(name, a, np.float32, 2, (B, H))
    key, p, scale = _drop_args(ctr, key, p)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "gru_bwd_cz")[_grid(B * H, t), t, stream](da, dc, drz, dout, h, z, c, ctr, key, p, scale,
                                                                  _row0(row0))


def launch_gru_bwd_r(da, drz, drh, h, r, threads=None, stream=0):
    B, H = check("h", h, np.float32, 2)
    check("da", da, np.float32, 2, (B, 3 * H))
    check("drz", drz, np.float32, 2, (B, 2 * H))
    for name, a in (("drh", drh), ("r", r)):
        check(name, a, np.float32, 2, (B, H))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "gru_bwd_r")[_grid(B * H, t), t, stream](da, drz, drh, h, r)


def launch_dropout_inplace(a, ctr, key, p, threads=None, stream=0, row0=0):
    B, W = check("a", a, np.float32, 2)
    key, p, scale = _drop_args(ctr, key, p)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "dropout_inplace")[_grid(B * W, t), t, stream](a, ctr, key, p, scale, _row0(row0))
