"""Sampled scores, the five losses and dL/dZ, fused per row; and the bias-gradient column sums.

Shape letters: B rows, H units of the last layer, N items, S extra samples, O = B + S output columns,
Y [O] = [targets (B) | samples (S)]; column i of row i is row i's target. Equations (docs/design.md section 2):

    Z[i, j] = h[i] . Wy[Y[j]] + By[Y[j]] - logq_j        logq_j = logq_t[Y[j]] (j < B) or logq_s[Y[j]] (j >= B)
    R = f(Z)                                             f: linear, tanh, relu, elu-a, leaky-a
    neg[i, j] = j != i and (j >= B or active[j]) and (not mask_accidental_hits or Y[j] != Y[i])
    cross-entropy  L_i = logsumexp_{j in neg or j = i} R_ij - R_ii
    bpr-max        L_i = -log(sum_j s_j sigmoid(R_ii - R_ij) + 1e-24) + bpreg sum_j s_j R_ij^2
    top1-max       L_i = sum_j s_j (sigmoid(R_ij - R_ii) + sigmoid(R_ij^2))
    bpr            L_i = -mean_j log sigmoid(R_ii - R_ij)
    top1           L_i = mean_j (sigmoid(R_ij - R_ii) + sigmoid(R_ij^2))
    (s = softmax of R_i over the negatives only; j ranges over the negatives of row i)
    row_loss[i] = active[i] L_i / batch_size,   dZ[i, j] = active[i] dL_i/dR_ij f'(Z_ij) / batch_size

They must match ``reference.forward`` (the score part), ``reference.negative_mask``, ``reference.row_loss`` and
``reference.loss_and_grad`` (dZ, and the step loss = sum of row_loss). ``col_sum`` is ``dZ.sum(axis=0)`` (dBy,
the rows of the sparse By gradient in column order) and ``da.sum(axis=0)`` (dBh of kernels/gru.py).

Two versions, one block per row each, the row's statistics (max, then up to four sums) reduced in shared
memory as a fixed tree (deterministic; no warp shuffles, which the CUDA simulator lacks):

* ``row_loss`` (the plain version, DEFAULT): the backend computes ``S = h @ Wy[Y]^T`` with one cuBLAS GEMM,
  then this kernel adds the bias and logq and computes the loss and dZ of each row.
* ``score_loss_fused``: the dot products ``h[i] . Wy[Y[j]]`` are computed in the kernel (no GEMM, no gather),
  written to the row of S, then the same row body runs.

Why the plain version is the default (roofline; no GPU was available to time them): the fused kernel has no
reuse of Wy rows across rows (each block streams all O rows of Wy[Y]), so it moves B*O*H*4 bytes at 0.5
FLOP/byte: at B=32, S=2048, H=100 that is 27 MB through L2 (~5 us at ~5 TB/s), at B=512 ~520 MB (~100 us).
The plain path gathers Wy[Y] once (O*H*4 = 0.8 MB, which backward needs anyway for dh = dZ Wy[Y]), the GEMM
does the 13 MFLOP (B=32) at cuBLAS speed (<1 us at tens of TFLOP/s) reading that 0.8 MB once, and the row
kernel re-reads only S (B*O*4 = 0.27 MB). The Z round trip the fusion saves (2*B*O*4 bytes) is smaller than the
extra Wy traffic it costs (B*O*H*4) for every H >= 2, so the fused version can only win at toy sizes where
launch latency dominates, and inside a CUDA graph launch latency is small. It is kept (tested, compiled) as the
obviously-correct single-kernel twin and for tiny models; ``DEFAULT_SCORES = "plain"``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from gru4rec_kernels.config import LOSS_CODES
from gru4rec_kernels.reference import BPR_MAX_EPS

from .common import (
    F0,
    F1,
    F2,
    MAX_THREADS,
    NEG_INF,
    THREADS,
    block_max,
    block_sum4,
    ceil_div,
    check,
    check_choice,
    check_threads,
    final_act,
    final_act_grad,
    get_kernel,
    sigmoid,
)

DEFAULT_SCORES = "plain"  # "plain" (GEMM + row_loss) or "fused" (score_loss_fused); see the module docstring

L_CE = LOSS_CODES["cross-entropy"]
L_BPRMAX = LOSS_CODES["bpr-max"]
L_TOP1MAX = LOSS_CODES["top1-max"]
L_BPR = LOSS_CODES["bpr"]
L_TOP1 = LOSS_CODES["top1"]
EPS_BPRMAX = np.float32(BPR_MAX_EPS)


@cuda.jit(device=True, inline="always")
def _zval(S, i, j, By, Y, logq_t, logq_s, use_logq):
    """Z[i, j] = S[i, j] + By[Y[j]] - logq_j."""
    y = Y[j]
    v = S[i, j] + By[y]
    if use_logq != 0:
        if j < S.shape[0]:
            v = v - logq_t[y]
        else:
            v = v - logq_s[y]
    return v


@cuda.jit(device=True, inline="always")
def _is_neg(i, j, Y, active, mah):
    """reference.negative_mask[i, j]."""
    if j == i:
        return False
    if j < active.shape[0]:
        if active[j] == 0:
            return False
    if mah != 0:
        if Y[j] == Y[i]:
            return False
    return True


@cuda.jit(device=True, inline="always")
def _log_sigmoid(d):
    """log sigmoid(d) = -softplus(-d), stable."""
    return -(max(-d, F0) + np.float32(math.log1p(math.exp(-abs(d)))))


@cuda.jit(device=True, inline="always")
def _row_body(i, dZ, row_loss, S, By, Y, active, logq_t, logq_s, use_logq, loss, act, act_a, bpreg, mah,
              inv_batch, shm, shs):
    """Loss and dZ of row i from S (block-uniform control flow: every thread reaches every barrier)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    O = S.shape[1]
    if active[i] == 0:
        for j in range(tid, O, nt):
            dZ[i, j] = F0
        if tid == 0:
            row_loss[i] = F0
        return
    rt = final_act(_zval(S, i, i, By, Y, logq_t, logq_s, use_logq), act, act_a)
    # ---- pass 1: max over the softmax's support (cross-entropy: negatives and target; *-max: negatives)
    m = F0
    if loss == L_CE or loss == L_BPRMAX or loss == L_TOP1MAX:
        m = NEG_INF
        for j in range(tid, O, nt):
            if _is_neg(i, j, Y, active, mah) or (loss == L_CE and j == i):
                v = final_act(_zval(S, i, j, By, Y, logq_t, logq_s, use_logq), act, act_a)
                if v > m:
                    m = v
        m = block_max(shm, tid, nt, m)
        if m == NEG_INF:
            m = F0
    # ---- pass 2: the row's sums
    s0 = F0
    s1 = F0
    s2 = F0
    s3 = F0
    for j in range(tid, O, nt):
        if loss == L_CE and j == i:
            s0 += np.float32(math.exp(rt - m))
            continue
        if not _is_neg(i, j, Y, active, mah):
            continue
        R = final_act(_zval(S, i, j, By, Y, logq_t, logq_s, use_logq), act, act_a)
        if loss == L_CE:
            s0 += np.float32(math.exp(R - m))
        elif loss == L_BPRMAX:
            e = np.float32(math.exp(R - m))
            sg = sigmoid(rt - R)
            s0 += e
            s1 += e * sg
            s2 += e * R * R
            s3 += e * sg * (F1 - sg)
        elif loss == L_TOP1MAX:
            e = np.float32(math.exp(R - m))
            sd = sigmoid(R - rt)
            sq = sigmoid(R * R)
            s0 += e
            s1 += e * (sd + sq)
            s2 += e * sd * (F1 - sd)
        elif loss == L_BPR:
            s0 += F1
            s1 += _log_sigmoid(rt - R)
            s2 += F1 - sigmoid(rt - R)
        else:  # top1
            sd = sigmoid(R - rt)
            sq = sigmoid(R * R)
            s0 += F1
            s1 += sd + sq
            s2 += sd * (F1 - sd)
    s0, s1, s2, s3 = block_sum4(shs, tid, nt, s0, s1, s2, s3)
    # ---- row statistics -> loss; pass 3: dZ
    den = s0 if s0 > F0 else F1  # softmax denominator (*-max) or the number of negatives (bpr, top1)
    A = s1 / den
    Q = s2 / den
    inv = F1 / (A + EPS_BPRMAX)
    if loss == L_CE:
        L = np.float32(math.log(s0)) + m - rt
    elif loss == L_BPRMAX:
        L = -np.float32(math.log(A + EPS_BPRMAX)) + bpreg * Q
    elif loss == L_TOP1MAX:
        L = A
    elif loss == L_BPR:
        L = -A
    else:
        L = A
    for j in range(tid, O, nt):
        z = _zval(S, i, j, By, Y, logq_t, logq_s, use_logq)
        R = final_act(z, act, act_a)
        d = F0
        if loss == L_CE:
            if j == i or _is_neg(i, j, Y, active, mah):
                d = np.float32(math.exp(R - m)) / s0
                if j == i:
                    d -= F1
        elif j == i:
            if loss == L_BPRMAX:
                d = -inv * (s3 / den)
            else:  # top1-max, bpr, top1: minus the mean / softmax-weighted sum in s2
                d = -(s2 / den)
        elif _is_neg(i, j, Y, active, mah):
            if loss == L_BPRMAX:
                sw = np.float32(math.exp(R - m)) / den
                sg = sigmoid(rt - R)
                d = -inv * (sw * (sg - A - sg * (F1 - sg))) + bpreg * (sw * (R * R - Q + F2 * R))
            elif loss == L_TOP1MAX:
                sw = np.float32(math.exp(R - m)) / den
                sd = sigmoid(R - rt)
                sq = sigmoid(R * R)
                d = sw * ((sd + sq) - L) + sw * (sd * (F1 - sd) + F2 * R * sq * (F1 - sq))
            elif loss == L_BPR:
                d = (F1 - sigmoid(rt - R)) / den
            else:
                sd = sigmoid(R - rt)
                sq = sigmoid(R * R)
                d = (sd * (F1 - sd) + F2 * R * sq * (F1 - sq)) / den
        dZ[i, j] = d * inv_batch * final_act_grad(z, R, act, act_a)
    if tid == 0:
        row_loss[i] = L * inv_batch


def row_loss(dZ, row_loss, S, By, Y, active, logq_t, logq_s, use_logq, loss, act, act_a, bpreg, mah, inv_batch):
    """Plain version: one block per row i of S = h Wy[Y]^T [B, O] (from a GEMM).

    dZ [B, O], row_loss [B] outputs; By [N]; Y [O] int32; active [B] uint8; logq_t, logq_s [N] (read only when
    use_logq != 0); loss a config.LOSS_CODES value; act, act_a the final activation; bpreg; mah = mask
    accidental hits (0/1); inv_batch = 1 / batch_size. Block size: a power of two <= MAX_THREADS.
    """
    shm = cuda.shared.array(MAX_THREADS, float32)
    shs = cuda.shared.array((4, MAX_THREADS), float32)
    _row_body(cuda.blockIdx.x, dZ, row_loss, S, By, Y, active, logq_t, logq_s, use_logq, loss, act, act_a, bpreg,
              mah, inv_batch, shm, shs)


def score_loss_fused(dZ, row_loss, S, h, Wy, By, Y, active, logq_t, logq_s, use_logq, loss, act, act_a, bpreg,
                     mah, inv_batch):
    """Fused version: block i first computes S[i, j] = h[i] . Wy[Y[j]] for its row (h [B, H], Wy [N, H]; S is
    written as scratch), then runs the same row body as ``row_loss``."""
    shm = cuda.shared.array(MAX_THREADS, float32)
    shs = cuda.shared.array((4, MAX_THREADS), float32)
    i = cuda.blockIdx.x
    H = h.shape[1]
    for j in range(cuda.threadIdx.x, S.shape[1], cuda.blockDim.x):
        y = Y[j]
        acc = F0
        for k in range(H):
            acc += h[i, k] * Wy[y, k]
        S[i, j] = acc
    cuda.syncthreads()
    _row_body(i, dZ, row_loss, S, By, Y, active, logq_t, logq_s, use_logq, loss, act, act_a, bpreg, mah, inv_batch,
              shm, shs)


def col_sum(out, a):
    """out[j] = sum_b a[b, j] in row order (deterministic; numpy's order for a.sum(axis=0)); a thread per column."""
    j = cuda.grid(1)
    if j < a.shape[1]:
        acc = F0
        for b in range(a.shape[0]):
            acc += a[b, j]
        out[j] = acc


_M = "float32[:, ::1]"
_V = "float32[::1]"
_LOSS_ARGS = f"{_V}, int32[::1], uint8[::1], {_V}, {_V}, int32, int32, int32, float32, float32, int32, float32"
KERNELS = {
    "row_loss": (row_loss, [f"void({_M}, {_V}, {_M}, {_LOSS_ARGS})"]),
    "score_loss_fused": (score_loss_fused, [f"void({_M}, {_V}, {_M}, {_M}, {_M}, {_LOSS_ARGS})"]),
    "col_sum": (col_sum, [f"void({_V}, {_M})"]),
}
#: What the cuda backend runs by default (the fused twin is kept, tested and compiled, not used by default).
DEFAULT_KERNELS = {"row_loss", "col_sum"}


# ------------------------------------------------------------------------------------------------- launchers
def _loss_args(dZ, row_loss_, By, Y, active, logq, loss, act, act_a, bpreg, mah, inv_batch):
    B, O = check("dZ", dZ, np.float32, 2)
    if O < B:
        raise ValueError(f"dZ must have at least as many columns (O = B + S) as rows; got shape {(B, O)}")
    check("row_loss", row_loss_, np.float32, 1, (B,))
    (N,) = check("By", By, np.float32, 1)
    check("Y", Y, np.int32, 1, (O,))
    check("active", active, np.uint8, 1, (B,))
    if logq is None:
        lt = ls = By  # never read (use_logq = 0); any float32 vector on the device will do
        use = 0
    else:
        lt, ls = logq
        check("logq_t", lt, np.float32, 1, (N,))
        check("logq_s", ls, np.float32, 1, (N,))
        use = 1
    check_choice("loss", loss, set(LOSS_CODES.values()))
    check_choice("act", act, {0, 1, 2, 3, 4})
    return (By, Y, active, lt, ls, np.int32(use), np.int32(loss), np.int32(act), np.float32(act_a), np.float32(bpreg),
            np.int32(1 if mah else 0), np.float32(inv_batch)), B, O, N


def launch_row_loss(dZ, row_loss_, S, By, Y, active, logq=None, *, loss, act=0, act_a=0.0, bpreg=1.0, mah=False,
                    inv_batch=1.0, threads=None, stream=0):
    """Plain version: dZ [B, O], row_loss [B] from S = h Wy[Y]^T [B, O]; logq None or (logq_t [N], logq_s [N])."""
    args, B, O, _ = _loss_args(dZ, row_loss_, By, Y, active, logq, loss, act, act_a, bpreg, mah, inv_batch)
    check("S", S, np.float32, 2, (B, O))
    t = check_threads(THREADS["row"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "row_loss")[B, t, stream](dZ, row_loss_, S, *args)


def launch_score_loss_fused(dZ, row_loss_, S, h, Wy, By, Y, active, logq=None, *, loss, act=0, act_a=0.0, bpreg=1.0,
                            mah=False, inv_batch=1.0, threads=None, stream=0):
    """Fused version: as launch_row_loss, but the scores come from h [B, H] and Wy [N, H] in the kernel (S [B, O]
    is written as scratch)."""
    args, B, O, N = _loss_args(dZ, row_loss_, By, Y, active, logq, loss, act, act_a, bpreg, mah, inv_batch)
    check("S", S, np.float32, 2, (B, O))
    _, H = check("h", h, np.float32, 2, (B, None))
    check("Wy", Wy, np.float32, 2, (N, H))
    t = check_threads(THREADS["row"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "score_loss_fused")[B, t, stream](dZ, row_loss_, S, h, Wy, *args)


def launch_col_sum(out, a, threads=None, stream=0):
    """out [C] = a [R, C] summed over rows."""
    _, C = check("a", a, np.float32, 2)
    check("out", out, np.float32, 1, (C,))
    t = check_threads(THREADS["column"] if threads is None else threads)
    get_kernel(KERNELS, "col_sum")[max(ceil_div(C, t), 1), t, stream](out, a)
