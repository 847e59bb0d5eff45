"""Evaluation on the CPU: the hidden-state step without dropout (``eval_fwd``, reference.hidden_step) and
``rank_counts`` (reference.score_all + rank_counts, kernels/evaluate.py), which never materialises the
[B, N] score matrix."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...codes import ACT_LINEAR
from .gemm import MR, VW, mk_rows1, mk_rows2
from .gru import gru_fwd
from .mathf import final_act32


@njit(cache=True, error_model="numpy", inline="always")
def _item_tile(Wy, items, j0, M, rows):
    """rows[r] = Wy[items[min(j0 + r, M - 1)]] for r < MR (the A operand of one tile of item scores)."""
    H = Wy.shape[1]
    for r in range(MR):
        it = items[min(j0 + r, M - 1)]
        for k in range(H):
            rows[r, k] = Wy[it, k]


@njit(cache=True, error_model="numpy", inline="always")
def _score_tile(rows, hT, S):
    """S[r, i] = rows[r] . h[i] (raw dot products, before bias and activation) for all Bp rows, with the GEMM
    micro-kernel: the same k-ordered FMA chain for every (item, row) pair, wherever the item sits."""
    H = rows.shape[1]
    Bp = hT.shape[1]
    for jb in range(0, Bp, 2 * VW):
        nv = min(2 * VW, Bp - jb)
        if nv > VW:
            mk_rows2(rows.ctypes.data, H, 1, hT.ctypes.data + 4 * jb, Bp, S.ctypes.data + 4 * jb, Bp, 1, H, MR, nv)
        else:
            mk_rows1(rows.ctypes.data, H, 1, hT.ctypes.data + 4 * jb, Bp, S.ctypes.data + 4 * jb, Bp, 1, H, MR, nv)


@njit(cache=True, error_model="numpy", inline="always")
def finish_scores(S, e, n, by, act, act_a):
    """S[e, :n] = f(S[e, :n] + by) in place (float32 add, then final_act32: the reference's roundings), without
    taking a view. A loop of its own so that it vectorises: inside the counting loop the activation ran scalar,
    and doubled the evaluation time of an elu-1 model (H 512, 43k items). The batch recommender's too."""
    if act == ACT_LINEAR:
        for i in range(n):
            S[e, i] = S[e, i] + by
    else:
        for i in range(n):
            S[e, i] = final_act32(S[e, i] + by, act, act_a)


@njit(cache=True, error_model="numpy")
def _count(S, e, it, targets, tscore, part_gt, part_eq, c):
    """part_gt[c, i] += [S[e, i] > tscore[i]], part_eq[c, i] += [S[e, i] == tscore[i]] for every row i (S[e]:
    item it's finished scores; no view is taken), the target's own column counting as equal."""
    for i in range(targets.shape[0]):
        sc = S[e, i]
        t = tscore[i]
        is_t = it == targets[i]
        part_gt[c, i] += np.int64((sc > t) & (not is_t))
        part_eq[c, i] += np.int64((sc == t) | is_t)


@njit(parallel=True, cache=True, error_model="numpy")
def rank_counts(h, hT, Wy, By, items, targets, act, act_a, tscore, n_gt, n_eq, part_gt, part_eq):
    """n_gt[i] / n_eq[i]: how many of ``items`` score strictly above / equal to row i's target, scores being
    f(h Wy^T + By) (reference.score_all + rank_counts), never materialised as a [B, N] matrix: a fixed chunk of
    items per iteration, MR items at a time (their Wy rows gathered, scored against every row with the GEMM
    micro-kernel into an MR x Bp tile, finished with the bias and f, then counted). Integer partial counts per
    chunk, so the result does not depend on the scheduling. The target's own column is not compared: it counts
    once in n_eq per occurrence in items (the reference's target ties with itself). hT [H, Bp] is scratch (its
    padding must be zero)."""
    B, H = h.shape
    Bp = hT.shape[1]
    M = items.shape[0]
    nchunk = part_gt.shape[0]
    for b in range(B):
        for k in range(H):
            hT[k, b] = h[b, k]
    # the targets' scores, through the same tile code: tile of the targets of rows i0.., row r is read at i0 + r
    rows = np.empty((MR, H), dtype=np.float32)
    S = np.empty((MR, Bp), dtype=np.float32)
    for i0 in range(0, B, MR):
        _item_tile(Wy, targets, i0, B, rows)
        _score_tile(rows, hT, S)
        for r in range(min(MR, B - i0)):
            tscore[i0 + r] = final_act32(S[r, i0 + r] + By[targets[i0 + r]], act, act_a)
    ntile = (M + MR - 1) // MR
    for c in prange(nchunk):
        rows_c = np.empty((MR, H), dtype=np.float32)
        S_c = np.empty((MR, Bp), dtype=np.float32)
        for i in range(B):
            part_gt[c, i] = 0
            part_eq[c, i] = 0
        for g in range(ntile * c // nchunk, ntile * (c + 1) // nchunk):
            j0 = g * MR
            _item_tile(Wy, items, j0, M, rows_c)
            _score_tile(rows_c, hT, S_c)
            for e in range(min(MR, M - j0)):
                it = items[j0 + e]
                finish_scores(S_c, e, B, By[it], act, act_a)
                _count(S_c, e, it, targets, tscore, part_gt, part_eq, c)
    for i in range(B):
        gt = 0
        eq = 0
        for c in range(nchunk):
            gt += part_gt[c, i]
            eq += part_eq[c, i]
        n_gt[i] = gt
        n_eq[i] = eq


@njit(cache=True, error_model="numpy")
def eval_fwd(params, hyper, work, hid, X, reset):
    """reference.hidden_step: reset rows zeroed, GRU layers without dropout, hid <- the new hidden state."""
    B = X.shape[0]
    for l in range(len(hid)):
        h = hid[l][:B]
        for b in range(B):
            if reset[b]:
                h[b, :] = 0.0
    gru_fwd(params, hyper, work, hid, X, B, 0, False, np.zeros((4, 11), dtype=np.int64))
    for l in range(len(hid)):
        hid[l][:B, :] = work.layers[l].out[:B]


@njit(cache=True, error_model="numpy")
def rank_active(top, targets, active, Wy, By, items, act, act_a, hT_flat, tscore, n_gt, n_eq):
    """One evaluation step's ranking: ``rank_counts`` of the active rows of top [B, H] only, gathered into
    contiguous rows (at the end of a test set most slots are idle); n_gt / n_eq [B] (zeroed by the caller) get
    the active rows' counts. hT_flat is scratch of H * Bp floats."""
    B, H = top.shape
    M = items.shape[0]
    rows = np.empty(B, dtype=np.int64)
    Ba = 0
    for b in range(B):
        if active[b]:
            rows[Ba] = b
            Ba += 1
    if Ba == 0:
        return
    if M == 0:
        for r in range(Ba):
            n_eq[rows[r]] = 1
        return
    nchunk = max(1, min(64, (M + 255) // 256))  # chunks of >= 256 items
    top_c = np.empty((Ba, H), dtype=np.float32)
    tg_c = np.empty(Ba, dtype=np.int32)
    for r in range(Ba):
        top_c[r, :] = top[rows[r], :]
        tg_c[r] = targets[rows[r]]
    Bap = (Ba + VW - 1) // VW * VW
    hT = hT_flat[:H * Bap].reshape(H, Bap)
    hT[:, Ba:] = 0.0
    gt = np.empty(Ba, dtype=np.int64)
    eq = np.empty(Ba, dtype=np.int64)
    rank_counts(top_c, hT, Wy, By, items, tg_c, act, act_a, tscore, gt, eq,
                np.empty((nchunk, Ba), dtype=np.int64), np.empty((nchunk, Ba), dtype=np.int64))
    for r in range(Ba):
        n_gt[rows[r]] = gt[r]
        n_eq[rows[r]] = eq[r]


@njit(cache=True, error_model="numpy")
def eval_chunk_steps(params, hyper, work, hid, inputs, targets, reset, active, items, act, act_a, hT_flat, tscore,
                     n_gt, n_eq):
    """T evaluation steps in one call (the Python side runs once per chunk): per step ``eval_fwd`` over every
    row (inactive rows advance too, as the reference's), then ``rank_active`` over the active rows. n_gt / n_eq
    [T, B] (zeroed by the caller) get the active lanes' counts; hT_flat is scratch of H * Bp floats."""
    top = hid[len(hid) - 1]
    for t in range(inputs.shape[0]):
        eval_fwd(params, hyper, work, hid, inputs[t], reset[t])
        rank_active(top, targets[t], active[t], params.Wy, params.By, items, act, act_a, hT_flat, tscore, n_gt[t],
                    n_eq[t])
