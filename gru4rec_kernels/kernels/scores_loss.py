"""Sampled scores, the five losses and dL/dZ: a row's statistics in chunks, combined in a fixed order.

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
``reference.loss_and_grad`` (dZ, and the step loss = sum of row_loss).

Data parallelism (dataparallel.py): the B rows may be rows row0 .. row0 + B - 1 of a global batch of Bc rows,
scored against all O = Bc + S columns: row i's target is column t = row0 + i, and the batch columns' flags are
``col_active`` [Bc] (reference.StepInputs.row0 / col_active). Above, read i as t in a column index and active[j]
as col_active[j]; one process is row0 = 0, col_active = active. (The bias gradients dBy = 1^T dZ and
dBh = 1^T da are ones-column products inside the step's grouped GEMMs: kernels/gemm.py.)

Every loss needs a row's statistics before any dZ element: the max m of R over the softmax's support and up to
four sums s0..s3 weighted by exp(R - m). ``row_loss`` = ``row_loss_partial`` + ``row_loss_grad``, after the
GEMM ``S = h Wy[Y]^T``, deterministic (fixed shared-memory trees, no warp shuffles, which the CUDA simulator
lacks; fixed chunking; a fixed combine order). A row is cut into C chunks of columns (``row_chunks``: C x B
blocks fill a wave, so at B = 32 a row is spread over 5 blocks of an H100 / H200 instead of 32 blocks on 132
SMs).

* ``row_loss_partial``: block (c, i) reduces chunk c of row i to (m_c, s0..s3 relative to m_c) in ``part``.
* ``row_loss_grad``: block (c, i) combines row i's C partials in chunk order (m = max m_c, s = sum s_c
  exp(m_c - m); the online-softmax rescaling, exact for bpr / top1 where m_c = 0), then writes dZ of its chunk;
  chunk 0 writes the row loss.

There is no fused score + loss kernel (the dot products h[i] . Wy[Y[j]] in the row kernel, one block per row):
it re-reads all of Wy[Y] in every row's block instead of once in the GEMM, and measured on an H200 its step was
slower at every workload (bench/results/gpu_check_NVIDIA_H200.json: W1 1046 vs 897 us, W3 2972 vs 2204 us).
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

L_CE = LOSS_CODES["cross-entropy"]
L_BPRMAX = LOSS_CODES["bpr-max"]
L_TOP1MAX = LOSS_CODES["top1-max"]
L_BPR = LOSS_CODES["bpr"]
L_TOP1 = LOSS_CODES["top1"]
EPS_BPRMAX = np.float32(BPR_MAX_EPS)


@cuda.jit(device=True, inline="always")
def _zval(S, i, j, By, Y, logq_t, logq_s, use_logq, nb):
    """Z[i, j] = S[i, j] + By[Y[j]] - logq_j (the first nb columns are the batch's targets)."""
    y = Y[j]
    v = S[i, j] + By[y]
    if use_logq != 0:
        if j < nb:
            v = v - logq_t[y]
        else:
            v = v - logq_s[y]
    return v


@cuda.jit(device=True, inline="always")
def _is_neg(t, j, Y, active, mah):
    """reference.negative_mask of column j for the row whose target is column t (active: the batch columns')."""
    if j == t:
        return False
    if j < active.shape[0]:
        if active[j] == 0:
            return False
    if mah != 0:
        if Y[j] == Y[t]:
            return False
    return True


@cuda.jit(device=True, inline="always")
def _log_sigmoid(d):
    """log sigmoid(d) = -softplus(-d), stable."""
    return -(max(-d, F0) + np.float32(math.log1p(math.exp(-abs(d)))))


@cuda.jit(device=True, inline="always")
def _chunk_stats(i, t, j0, j1, S, By, Y, active, logq_t, logq_s, use_logq, loss, act, act_a, mah, shm, shs):
    """Row i's statistics over the columns [j0, j1), block-reduced (every thread gets them; block-uniform control
    flow: every thread reaches every barrier): m = the max of R over the softmax's support in the range
    (cross-entropy: negatives and the target; *-max: the negatives; -inf when the range holds none of it;
    bpr / top1: 0) and the sums s0..s3 of the loss, weighted by exp(R - m) for the softmax losses. t: the row's
    target column; active: the batch columns' flags."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    nb = active.shape[0]
    rt = final_act(_zval(S, i, t, By, Y, logq_t, logq_s, use_logq, nb), act, act_a)
    # ---- pass 1: max over the softmax's support
    m = F0
    if loss == L_CE or loss == L_BPRMAX or loss == L_TOP1MAX:
        m = NEG_INF
        for j in range(j0 + tid, j1, nt):
            if _is_neg(t, j, Y, active, mah) or (loss == L_CE and j == t):
                v = final_act(_zval(S, i, j, By, Y, logq_t, logq_s, use_logq, nb), act, act_a)
                if v > m:
                    m = v
        m = block_max(shm, tid, nt, m)
    mr = m if m != NEG_INF else F0  # an empty range has zero sums; exp(R - mr) is never evaluated then
    # ---- pass 2: the sums
    s0 = F0
    s1 = F0
    s2 = F0
    s3 = F0
    for j in range(j0 + tid, j1, nt):
        if loss == L_CE and j == t:
            s0 += np.float32(math.exp(rt - mr))
            continue
        if not _is_neg(t, j, Y, active, mah):
            continue
        R = final_act(_zval(S, i, j, By, Y, logq_t, logq_s, use_logq, nb), act, act_a)
        if loss == L_CE:
            s0 += np.float32(math.exp(R - mr))
        elif loss == L_BPRMAX:
            e = np.float32(math.exp(R - mr))
            sg = sigmoid(rt - R)
            s0 += e
            s1 += e * sg
            s2 += e * R * R
            s3 += e * sg * (F1 - sg)
        elif loss == L_TOP1MAX:
            e = np.float32(math.exp(R - mr))
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
    return m, s0, s1, s2, s3


@cuda.jit(device=True, inline="always")
def _combine(part, i):
    """Row i's statistics from its C chunk partials part[i, c] = (m_c, s0..s3), in chunk order (the same on every
    run): m = max_c m_c, s_k = sum_c s_kc exp(m_c - m), chunks without support skipped. For bpr / top1 every m_c
    is 0 and every factor exp(0) = 1 exactly; for one chunk the statistics come back unchanged."""
    C = part.shape[1]
    m = NEG_INF
    for c in range(C):
        if part[i, c, 0] > m:
            m = part[i, c, 0]
    if m == NEG_INF:
        m = F0
    s0 = F0
    s1 = F0
    s2 = F0
    s3 = F0
    for c in range(C):
        mc = part[i, c, 0]
        if mc != NEG_INF:
            f = np.float32(math.exp(mc - m))
            s0 += part[i, c, 1] * f
            s1 += part[i, c, 2] * f
            s2 += part[i, c, 3] * f
            s3 += part[i, c, 4] * f
    return m, s0, s1, s2, s3


@cuda.jit(device=True, inline="always")
def _chunk_grad(i, t, j0, j1, dZ, S, By, Y, active, logq_t, logq_s, use_logq, loss, act, act_a, bpreg, mah,
                inv_batch, m, s0, s1, s2, s3):
    """Row i's loss L_i (returned) and dZ[i, j] for j in [j0, j1), from the row's statistics (m, s0..s3); t and
    active as _chunk_stats."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    nb = active.shape[0]
    rt = final_act(_zval(S, i, t, By, Y, logq_t, logq_s, use_logq, nb), act, act_a)
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
    for j in range(j0 + tid, j1, nt):
        z = _zval(S, i, j, By, Y, logq_t, logq_s, use_logq, nb)
        R = final_act(z, act, act_a)
        d = F0
        if loss == L_CE:
            if j == t or _is_neg(t, j, Y, active, mah):
                d = np.float32(math.exp(R - m)) / s0
                if j == t:
                    d -= F1
        elif j == t:
            if loss == L_BPRMAX:
                d = -inv * (s3 / den)
            else:  # top1-max, bpr, top1: minus the mean / softmax-weighted sum in s2
                d = -(s2 / den)
        elif _is_neg(t, j, Y, active, mah):
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
    return L


@cuda.jit(device=True, inline="always")
def _chunk_range(c, C, O):
    """Columns [j0, j1) of chunk c of C equal chunks of a row of O columns (the last may be shorter or empty)."""
    w = (O + C - 1) // C
    j0 = c * w
    return j0, min(O, j0 + w)


@cuda.jit(device=True, inline="always")
def _zero_row(i, j0, j1, dZ, row_loss, write_loss):
    """An inactive row: dZ[i, j0:j1] = 0 (and row_loss[i] = 0 when write_loss)."""
    for j in range(j0 + cuda.threadIdx.x, j1, cuda.blockDim.x):
        dZ[i, j] = F0
    if write_loss and cuda.threadIdx.x == 0:
        row_loss[i] = F0


def row_loss_partial(part, S, By, Y, active, col_active, row0, logq_t, logq_s, use_logq, loss, act, act_a, mah):
    """Stage 1 of row_loss: block (c, i) writes part[i, c] = (m, s0, s1, s2, s3), row i's statistics over chunk c
    of its columns (grid (C, B) with C = part.shape[1]; S = h Wy[Y]^T [B, O] from a GEMM). Inactive rows are
    skipped. Arguments as ``row_loss_grad``. Block size: a power of two <= MAX_THREADS."""
    shm = cuda.shared.array(MAX_THREADS, float32)
    shs = cuda.shared.array((4, MAX_THREADS), float32)
    c = cuda.blockIdx.x
    i = cuda.blockIdx.y
    if active[i] == 0:
        return
    j0, j1 = _chunk_range(c, part.shape[1], S.shape[1])
    m, s0, s1, s2, s3 = _chunk_stats(i, row0 + i, j0, j1, S, By, Y, col_active, logq_t, logq_s, use_logq, loss, act,
                                     act_a, mah, shm, shs)
    if cuda.threadIdx.x == 0:
        part[i, c, 0] = m
        part[i, c, 1] = s0
        part[i, c, 2] = s1
        part[i, c, 3] = s2
        part[i, c, 4] = s3


def row_loss_grad(dZ, row_loss, part, S, By, Y, active, col_active, row0, logq_t, logq_s, use_logq, loss, act, act_a,
                  bpreg, mah, inv_batch):
    """Stage 2 of row_loss: block (c, i) combines row i's chunk partials in chunk order and writes dZ for chunk c;
    the chunk-0 block writes row_loss[i] = L_i / batch_size.

    dZ [B, O], row_loss [B] outputs; part [B, C, 5] from row_loss_partial; S [B, O]; By [N]; Y [O] int32; active
    [B] uint8 (the rows'); col_active [Bc] uint8 (the batch columns'; Y[:Bc] are their targets) and row0 (row i's
    target column is row0 + i): the module docstring's data parallelism, col_active = active and row0 = 0 in one
    process; logq_t, logq_s [N] (read only when use_logq != 0); loss a config.LOSS_CODES value; act, act_a the
    final activation; bpreg; mah = mask accidental hits (0/1); inv_batch = 1 / batch_size.
    """
    c = cuda.blockIdx.x
    i = cuda.blockIdx.y
    j0, j1 = _chunk_range(c, part.shape[1], S.shape[1])
    if active[i] == 0:
        _zero_row(i, j0, j1, dZ, row_loss, c == 0)
        return
    m, s0, s1, s2, s3 = _combine(part, i)
    L = _chunk_grad(i, row0 + i, j0, j1, dZ, S, By, Y, col_active, logq_t, logq_s, use_logq, loss, act, act_a, bpreg,
                    mah, inv_batch, m, s0, s1, s2, s3)
    if c == 0 and cuda.threadIdx.x == 0:
        row_loss[i] = L * inv_batch


_M = "float32[:, ::1]"
_V = "float32[::1]"
_P = "float32[:, :, ::1]"
_STATS_ARGS = f"{_V}, int32[::1], uint8[::1], uint8[::1], int32, {_V}, {_V}, int32, int32, int32, float32"
_LOSS_ARGS = f"{_STATS_ARGS}, float32, int32, float32"
KERNELS = {
    "row_loss_partial": (row_loss_partial, [f"void({_P}, {_M}, {_STATS_ARGS}, int32)"]),
    "row_loss_grad": (row_loss_grad, [f"void({_M}, {_V}, {_P}, {_M}, {_LOSS_ARGS})"]),
}
#: Statistics per (row, chunk) in ``part``: m, s0, s1, s2, s3.
N_STATS = 5


# ------------------------------------------------------------------------------------------------- launchers
def row_chunks(B: int, O: int, threads: int, target: int) -> int:
    """Chunks per row of row_loss: enough that B x C blocks fill ``target`` (one wave), but no chunk narrower than
    the block (a thread per column at least)."""
    return max(1, min(ceil_div(target, max(B, 1)), ceil_div(O, threads)))


def launch_row_loss(dZ, row_loss_, part, S, By, Y, active, logq=None, *, loss, act=0, act_a=0.0, bpreg=1.0,
                    mah=False, inv_batch=1.0, col_active=None, row0=0, threads=None, stream=0):
    """row_loss: dZ [B, O], row_loss [B] from S = h Wy[Y]^T [B, O]; logq None or (logq_t [N], logq_s [N]).
    part: [B, C, N_STATS] float32 scratch; its C (``row_chunks``) is how many blocks share a row. Two launches:
    row_loss_partial, row_loss_grad. col_active [Bc] uint8 and row0: the rows are rows row0.. of a batch of Bc
    (data parallelism; default: ``active`` and 0, one process)."""
    B, O = check("dZ", dZ, np.float32, 2)
    if col_active is None:
        col_active = active
    (Bc,) = check("col_active", col_active, np.uint8, 1)
    if not isinstance(row0, (int, np.integer)) or row0 < 0 or row0 + B > Bc or Bc > O:
        raise ValueError(f"the B = {B} rows must be rows row0 .. row0 + B - 1 of the Bc = {Bc} batch columns "
                         f"(col_active), and O = {O} >= Bc; got row0 = {row0!r}")
    check("row_loss", row_loss_, np.float32, 1, (B,))
    check("S", S, np.float32, 2, (B, O))
    _, C, _ = check("part", part, np.float32, 3, (B, None, N_STATS))
    if not 1 <= C <= 65535 or B > 65535:
        raise ValueError(f"part must have 1..65535 chunks per row and B <= 65535 rows; got shape {tuple(part.shape)}")
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
    stats = (By, Y, active, col_active, np.int32(row0), lt, ls, np.int32(use), np.int32(loss), np.int32(act),
             np.float32(act_a))
    rest = (np.float32(bpreg), np.int32(1 if mah else 0), np.float32(inv_batch))
    t = check_threads(THREADS["row"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "row_loss_partial")[(C, B), t, stream](part, S, *stats, rest[1])
    get_kernel(KERNELS, "row_loss_grad")[(C, B), t, stream](dZ, row_loss_, part, S, *stats, *rest)
