"""Scores, the per-row losses and the score gradients on the CPU (the twins of ``reference.forward``'s last
lines, ``reference.loss_and_grad`` / ``row_loss`` and ``kernels/scores_loss.py``).

    scores        Wy[Y] gathered, Z = h Wy[Y]^T (the GEMM micro-kernel, transposed store)
    row_loss      per row: + By[Y] - col_logq, R = f(Z), the loss and dZ (all five losses); the rows may be a
                  slice of a larger batch (data parallelism): row i's target column is row0 + i
    score_grads   Wy / By slots = dZ^T h, colsum dZ; dh = dZ Wy[Y]

The loss code keeps IEEE semantics (inf, nan): no fast-math here except plain float64 sums (``reassoc``, in
_exp_masked and _max_sums) and fused multiply-adds (``contract``) in the vectorised bpr-max / top1-max loops
(exp64's polynomial: half the instructions).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ...codes import ACT_LINEAR, LOSS_BPR, LOSS_BPR_MAX, LOSS_CE, LOSS_TOP1_MAX
from ...reference import BPR_MAX_EPS
from .gemm import MR, VW, mk_cols1, mk_cols2, prefetch_row, tiles
from .mathf import exp32, exp64, final_act, final_act_grad, sigmoid

_SG_CHUNK = 128  # output columns per chunk of score_grads
SG_GROUPS = 8  # fixed groups of chunks, each with its own partial dh (never depends on the thread count)


@njit(parallel=True, cache=True, error_model="numpy")
def score_grads(dZ, WyY, top, gW, gb, dh_part, dh, O):
    """The backward of the scores in one pass over dZ and Wy[Y] (reference.backward, first lines):
        gW[j] = sum_i dZ[i, j] h[i]            (the Wy slot rows of the O columns)
        gb[j] = sum_i dZ[i, j]                  (the By slots, rows added in order)
        dh    = dZ[:, :O] Wy[Y]                 (the gradient w.r.t. the top hidden state)
    The O columns are cut into chunks of _SG_CHUNK; a fixed group of consecutive chunks per iteration computes
    their gW rows and adds their share of dh into its own partial sum (dZ and Wy[Y] chunk stay in cache for
    both products); dh = the partials added in group order. dZ [Bp, Op], WyY [Op, H], top [B, H]."""
    B, H = top.shape
    Op = dZ.shape[1]
    nchunk = (O + _SG_CHUNK - 1) // _SG_CHUNK
    pz = dZ.ctypes.data
    pw = WyY.ctypes.data
    ph = top.ctypes.data
    pg = gW.ctypes.data
    pp = dh_part.ctypes.data
    for g in prange(SG_GROUPS):
        part = pp + 4 * g * B * H
        for i in range(B):
            for k in range(H):
                dh_part[g, i, k] = 0.0
        for c in range(nchunk * g // SG_GROUPS, nchunk * (g + 1) // SG_GROUPS):
            j0 = c * _SG_CHUNK
            kc = min(_SG_CHUNK, O - j0)
            # gW[j0:j0+kc] = dZ[:, j0:j0+kc]^T h : A = dZ^T (row stride 1, k stride Op), K = B
            tiles(pz + 4 * j0, 1, Op, ph, H, pg + 4 * j0 * H, H, kc, H, B, False)
            gbc = gb[j0:j0 + kc]
            gbc[:] = 0.0
            for i in range(B):
                for jj in range(kc):
                    gbc[jj] += dZ[i, j0 + jj]
            # partial dh += dZ[:, j0:j0+kc] Wy[Y][j0:j0+kc] : K = kc
            tiles(pz + 4 * j0, Op, 1, pw + 4 * j0 * H, H, part, H, B, H, kc, True)
    for i in range(B):
        for k in range(H):
            s = dh_part[0, i, k]
            for g in range(1, SG_GROUPS):
                s += dh_part[g, i, k]
            dh[i, k] = s


@njit(parallel=True, cache=True, error_model="numpy")
def scores(Wy, By, Y, B, use_logq, logq_t, logq_s, hT, WyY, byY, lqY, Z):
    """Z[:, j] = h Wy[Y[j]] for the O = len(Y) columns (reference.forward, last lines), one block of MR columns
    per iteration: gather the block's rows WyY[j] = Wy[Y[j]] (kept for the backward), byY[j] = By[Y[j]] and
    lqY[j] = col_logq[j] (logq_t for the B target columns, logq_s for samples), then Z^T = WyY h^T for the
    block with the micro-kernel, stored transposed into Z [Bp, Op]. The bias is added in the loss kernel. The
    padding of WyY (rows O..) is never written (zero). hT [H, Bp] = h^T; the rows of Wy are random: fetched a
    block ahead."""
    O = Y.shape[0]
    H = Wy.shape[1]
    Op = WyY.shape[0]
    Bp = hT.shape[1]
    pWy = Wy.ctypes.data
    pY = WyY.ctypes.data
    ph = hT.ctypes.data
    pz = Z.ctypes.data
    for t in prange(Op // MR):
        j0 = t * MR
        for j in range(j0 + MR, min(j0 + 2 * MR, O)):  # the next block's rows
            prefetch_row(pWy, Y[j], 4 * H, 4 * H)
        for j in range(j0, min(j0 + MR, O)):
            row = Y[j]
            for k in range(H):
                WyY[j, k] = Wy[row, k]
            byY[j] = By[row]
            if use_logq:
                lqY[j] = logq_t[row] if j < B else logq_s[row]
        for i in range(0, Bp, 2 * VW):
            if Bp - i >= 2 * VW:
                mk_cols2(pY + 4 * j0 * H, H, 1, ph + 4 * i, Bp, pz + 4 * (j0 + i * Op), 1, Op, H, MR, 2 * VW)
            else:
                mk_cols1(pY + 4 * j0 * H, H, 1, ph + 4 * i, Bp, pz + 4 * (j0 + i * Op), 1, Op, H, MR, VW)


@njit(cache=True, error_model="numpy", inline="always")
def _is_neg(t, j, B, active, Y, mask_hits):
    """reference.negative_mask of column j for the row whose target is column t (B batch columns, flags
    active [B])."""
    if j == t:
        return False
    if j < B and not active[j]:
        return False
    if mask_hits and Y[j] == Y[t]:
        return False
    return True


@njit(cache=True, error_model="numpy")
def _bias_row(z, byY, lqY, use_logq):
    """z = (z + By[Y]) - col_logq over one row (the reference's two roundings)."""
    if use_logq:
        for j in range(z.shape[0]):
            z[j] = (z[j] + byY[j]) - lqY[j]
    else:
        for j in range(z.shape[0]):
            z[j] = z[j] + byY[j]


@njit(cache=True, error_model="numpy")
def _max_masked(r, y, yi, mask_hits):
    """max of r (entries whose item y equals yi skipped when mask_hits; -inf if none); 8 independent running
    maxima, so that the loop is not one long dependency chain."""
    n = r.shape[0]
    ninf = np.float32(-np.inf)
    m0 = ninf; m1 = ninf; m2 = ninf; m3 = ninf; m4 = ninf; m5 = ninf; m6 = ninf; m7 = ninf
    j = 0
    if not mask_hits:
        while j + 8 <= n:
            v0 = r[j]; v1 = r[j + 1]; v2 = r[j + 2]; v3 = r[j + 3]
            v4 = r[j + 4]; v5 = r[j + 5]; v6 = r[j + 6]; v7 = r[j + 7]
            m0 = v0 if v0 > m0 else m0; m1 = v1 if v1 > m1 else m1; m2 = v2 if v2 > m2 else m2
            m3 = v3 if v3 > m3 else m3; m4 = v4 if v4 > m4 else m4; m5 = v5 if v5 > m5 else m5
            m6 = v6 if v6 > m6 else m6; m7 = v7 if v7 > m7 else m7
            j += 8
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    while j < n:
        v = r[j]
        if v > m and not (mask_hits and y[j] == yi):
            m = v
        j += 1
    return np.float64(m)


@njit(fastmath={"reassoc"}, cache=True, error_model="numpy")
def _exp_masked(r, e, m, y, yi, mask_hits):
    """e = exp(r - m) in float32 (0 where y == yi when mask_hits); returns sum(e) accumulated in float64.
    (Two loops: a float64 accumulator in the first would halve its vector width.)"""
    m32 = np.float32(m)  # m is the max of float32 values: exact
    if mask_hits:
        for j in range(r.shape[0]):
            v = exp32(r[j] - m32)
            e[j] = v if y[j] != yi else np.float32(0.0)
    else:
        for j in range(r.shape[0]):
            e[j] = exp32(r[j] - m32)
    s = 0.0
    for j in range(e.shape[0]):
        s += np.float64(e[j])
    return s


@njit(cache=True, error_model="numpy")
def _scale_row(d, s):
    for j in range(d.shape[0]):
        d[j] = np.float32(np.float64(d[j]) * s)


@njit(cache=True, error_model="numpy")
def _ce_row(r, d, t, B, active, Y, mask_hits, w):
    """Cross-entropy of one row (r = its R row, d = its dZ row, t = its target column) over {target} + negatives:
    returns logsumexp - r_t and writes d = w (softmax - onehot(t)). B batch columns with flags active; columns
    >= B (samples) are negatives unless masked as hits."""
    yi = Y[t]
    m = np.float64(r[t])
    for j in range(B):
        if _is_neg(t, j, B, active, Y, mask_hits) and r[j] > m:
            m = np.float64(r[j])
    m = max(m, _max_masked(r[B:], Y[B:], yi, mask_hits))
    m32 = np.float32(m)
    s = 0.0
    for j in range(B):
        if j == t or _is_neg(t, j, B, active, Y, mask_hits):
            v = exp32(r[j] - m32)
            d[j] = v
            s += np.float64(v)
        else:
            d[j] = 0.0
    s += _exp_masked(r[B:], d[B:], m, Y[B:], yi, mask_hits)
    et = np.float64(d[t])
    _scale_row(d, w / s)
    d[t] = np.float32((et / s - 1.0) * w)
    return math.log(s) + m - np.float64(r[t])


# The softmax-weighted ranking losses (bpr-max, top1-max) per column j of row i: with e = exp(R_ij - m) and the
# row's sums over its negatives, the loss and dR_ij are sums and maps of these terms. The batch columns (j < B)
# go through _is_neg one by one; the S sample columns are all negatives (but masked hits), so their loops have
# no branch and vectorise (exp64 / sigmoid are libm-free). The sums pass keeps each sample column's e and
# sigmoids (float64 scratch) for the gradient pass, which then needs no exp at all: half of the bpr-max row's
# exp64 calls, with the same float64 values as recomputing them.
@njit(cache=True, error_model="numpy", inline="always")
def _max_terms(r, rt, m, loss):
    """(e, t1, t2, t3, a, b) of one negative column: bpr-max: e, e sig(rt - r), e r^2, e sig (1 - sig), sig, 0;
    top1-max: e, e (sd + sq), e sd (1 - sd), 0, sd, sq with sd = sigmoid(r - rt), sq = sigmoid(r^2)."""
    e = exp64(r - m)
    if loss == LOSS_BPR_MAX:
        sig = sigmoid(rt - r)
        return e, e * sig, e * r * r, e * sig * (1.0 - sig), sig, 0.0
    sd = sigmoid(r - rt)
    sq = sigmoid(r * r)
    return e, e * (sd + sq), e * sd * (1.0 - sd), 0.0, sd, sq


@njit(cache=True, error_model="numpy", inline="always")
def _max_grad_of(r, e, a, b, den, s1, s2, inv, loss, bpreg):
    """dR of one negative column from its _max_terms (e, a, b) and the row's normalised sums (bpr-max: s1 = A,
    s2 = Q; top1-max: s1 = L)."""
    sw = e / den
    if loss == LOSS_BPR_MAX:
        return -inv * sw * (a - s1 - a * (1.0 - a)) + bpreg * sw * (r * r - s2 + 2.0 * r)
    return sw * (a + b - s1) + sw * (a * (1.0 - a) + 2.0 * r * b * (1.0 - b))


@njit(fastmath={"reassoc", "contract"}, cache=True, error_model="numpy")
def _max_sums(r, y, yi, mask_hits, rt, m, loss, ea, eb, ec):
    """The four sums of _max_terms over the sample columns (masked hits skipped), in float64; each column's
    (e, a, b) kept in ea / eb / ec for _max_grads."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for j in range(r.shape[0]):
        e, t1, t2, t3, a, b = _max_terms(np.float64(r[j]), rt, m, loss)
        ea[j] = e
        eb[j] = a
        ec[j] = b
        keep = 0.0 if (mask_hits and y[j] == yi) else 1.0
        s0 += keep * e
        s1 += keep * t1
        s2 += keep * t2
        s3 += keep * t3
    return s0, s1, s2, s3


@njit(fastmath={"contract"}, cache=True, error_model="numpy")
def _max_grads(r, d, y, yi, mask_hits, ea, eb, ec, den, s1, s2, inv, loss, bpreg):
    """d[j] = dR of the sample columns (0 for masked hits), from the terms _max_sums kept."""
    for j in range(r.shape[0]):
        g = _max_grad_of(np.float64(r[j]), ea[j], eb[j], ec[j], den, s1, s2, inv, loss, bpreg)
        d[j] = np.float32(0.0) if (mask_hits and y[j] == yi) else np.float32(g)


@njit(cache=True, error_model="numpy")
def _ranking_row(R, dZ, t, B, active, Y, mask_hits, loss, bpreg):
    """bpr-max, top1-max, bpr, top1 of one row (reference.row_loss, written out per row; R, dZ = the row's, t =
    its target column, B batch columns with flags active): returns the row's loss and leaves its dR (unweighted)
    in dZ."""
    O = R.shape[0]
    rt = np.float64(R[t])
    yi = Y[t]
    L = 0.0
    if loss == LOSS_BPR_MAX or loss == LOSS_TOP1_MAX:
        m = -np.inf
        for j in range(B):
            if _is_neg(t, j, B, active, Y, mask_hits) and R[j] > m:
                m = np.float64(R[j])
        m = max(m, _max_masked(R[B:], Y[B:], yi, mask_hits))
        if not math.isfinite(m):
            m = 0.0
        ns = O - B
        ea = np.empty(ns)
        eb = np.empty(ns)
        ec = np.empty(ns)
        s0, s1, s2, s3 = _max_sums(R[B:], Y[B:], yi, mask_hits, rt, m, loss, ea, eb, ec)
        for j in range(B):
            if _is_neg(t, j, B, active, Y, mask_hits):
                e, t1, t2, t3, _, _ = _max_terms(np.float64(R[j]), rt, m, loss)
                s0 += e
                s1 += t1
                s2 += t2
                s3 += t3
        den = s0 if s0 > 0.0 else 1.0
        if loss == LOSS_BPR_MAX:
            A = s1 / den
            Q = s2 / den
            L = -math.log(A + BPR_MAX_EPS) + bpreg * Q
            inv = 1.0 / (A + BPR_MAX_EPS)
            gi = -inv * (s3 / den)
        else:
            A = L = s1 / den
            Q = 0.0
            inv = 0.0
            gi = -(s2 / den)
        _max_grads(R[B:], dZ[B:], Y[B:], yi, mask_hits, ea, eb, ec, den, A, Q, inv, loss, bpreg)
        for j in range(B):
            if _is_neg(t, j, B, active, Y, mask_hits):
                r = np.float64(R[j])
                e, _, _, _, a, b = _max_terms(r, rt, m, loss)
                dZ[j] = _max_grad_of(r, e, a, b, den, A, Q, inv, loss, bpreg)
            else:
                dZ[j] = 0.0
        dZ[t] = gi
        return L
    n_neg = 0
    for j in range(O):
        if _is_neg(t, j, B, active, Y, mask_hits):
            n_neg += 1
    inv_n = 1.0 / max(n_neg, 1)
    T = 0.0
    for j in range(O):
        if _is_neg(t, j, B, active, Y, mask_hits):
            r = np.float64(R[j])
            if loss == LOSS_BPR:
                d = rt - r
                L += max(-d, 0.0) + math.log1p(math.exp(-abs(d)))  # -log sigmoid(d)
                g = 1.0 - sigmoid(d)
                dZ[j] = g * inv_n
                T += g
            else:
                sd = sigmoid(r - rt)
                sq = sigmoid(r * r)
                L += sd + sq
                dZ[j] = (sd * (1.0 - sd) + 2.0 * r * sq * (1.0 - sq)) * inv_n
                T += sd * (1.0 - sd)
        else:
            dZ[j] = 0.0
    dZ[t] = -T * inv_n
    return L * inv_n


@njit(cache=True, error_model="numpy")
def _act_row(z, r, act, act_a):
    """r = f(z) over one row (libm-free activations: the loop vectorises)."""
    for j in range(z.shape[0]):
        r[j] = np.float32(final_act(np.float64(z[j]), act, act_a))


@njit(cache=True, error_model="numpy")
def _act_grad_row(d, z, r, act, act_a, w):
    """d = d * w * f'(z) over one row (in float64, rounded once)."""
    for j in range(d.shape[0]):
        d[j] = np.float32(np.float64(d[j]) * w * final_act_grad(np.float64(z[j]), np.float64(r[j]), act, act_a))


@njit(parallel=True, cache=True, error_model="numpy")
def row_loss(Z, R, dZ, O, Y, byY, lqY, use_logq, active, col_active, row0, loss, act, act_a, bpreg, mask_hits, w,
             rowloss):
    """One row per iteration (reference.loss_and_grad): Z_i += By[Y] - col_logq; R_i = f(Z_i); the weighted
    row loss (rowloss[i], float64) and dZ_i = dR_i * w * f'(Z_i). Inactive rows: loss 0, dZ_i = 0.
    The B = len(active) rows are rows row0 .. row0 + B - 1 of a batch whose Bc = len(col_active) target columns
    lead Y: row i's target is column row0 + i, and batch column j is a negative only where col_active[j] (one
    process: row0 = 0, col_active = active; data parallelism: a rank's rows of the global batch).
    Rows B.. and columns O.. of Z / dZ (padding) are not touched."""
    B = active.shape[0]
    Bc = col_active.shape[0]
    for i in prange(B):
        d = dZ[i, :O]  # row views: one per row, so the shared reference count is touched B times only
        if not active[i]:
            d[:] = 0.0
            rowloss[i] = 0.0
            continue
        z = Z[i, :O]
        _bias_row(z, byY, lqY, use_logq)
        r = z
        if act != ACT_LINEAR:
            r = R[i, :O]
            _act_row(z, r, act, act_a)
        if loss == LOSS_CE:
            L = _ce_row(r, d, row0 + i, Bc, col_active, Y, mask_hits, w)
            if act != ACT_LINEAR:
                _act_grad_row(d, z, r, act, act_a, 1.0)
        else:
            L = _ranking_row(r, d, row0 + i, Bc, col_active, Y, mask_hits, loss, bpreg)
            _act_grad_row(d, z, r, act, act_a, w)
        rowloss[i] = L * w
