"""Top-k kernels (Numba): bounded min-heaps with a total order (score descending, item index ascending), the
fused score + top-k of one hidden state (``_topk_one``) and of many (``_topk_rows``), and top-k of a given
score vector (``topk_from_scores``, used by the baselines). The scores are f(h Wy^T + By) with the final
activation of ``backends/cpu/mathf.py`` (``final_act32``), as in evaluation. See recommend.py's docstring for
the design and its measurements.
"""
from __future__ import annotations

import numbers

import numpy as np
from numba import njit, prange

from .backends.cpu.mathf import final_act32

__all__ = ["check_k", "topk_from_scores"]

# Batch scorer: items per tile (512 x H=100 float32 = 200 KiB: stays in L2 while the task's rows use it).
ITEM_TILE = 512


# ================================================================================================ Numba: heap
@njit(inline="always")
def _worse(s1, i1, s2, i2):
    """(s1, i1) ranks after (s2, i2): lower score, or equal score and higher item index."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@njit
def _sift_down(hs, hi, j, n):
    while True:
        l = 2 * j + 1
        if l >= n:
            return
        m = l
        r = l + 1
        if r < n and _worse(hs[r], hi[r], hs[l], hi[l]):
            m = r
        if _worse(hs[m], hi[m], hs[j], hi[j]):
            ts = hs[j]
            ti = hi[j]
            hs[j] = hs[m]
            hi[j] = hi[m]
            hs[m] = ts
            hi[m] = ti
            j = m
        else:
            return


@njit
def _push(hs, hi, n, k, s, i):
    """Offer (s, i) to a min-heap (root = the worst kept) of capacity k holding n entries; returns the new n."""
    if n < k:
        j = n
        hs[j] = s
        hi[j] = i
        while j > 0:
            p = (j - 1) >> 1
            if _worse(hs[j], hi[j], hs[p], hi[p]):
                ts = hs[j]
                ti = hi[j]
                hs[j] = hs[p]
                hi[j] = hi[p]
                hs[p] = ts
                hi[p] = ti
                j = p
            else:
                break
        return n + 1
    if not _worse(hs[0], hi[0], s, i):
        return n
    hs[0] = s
    hi[0] = i
    _sift_down(hs, hi, 0, k)
    return n


@njit(inline="always")
def _offer(hs, hi, n, k, s, i):
    """_push with its common case inlined: a full heap whose worst entry beats (s, i) rejects it."""
    if n == k and not _worse(hs[0], hi[0], s, i):
        return n
    return _push(hs, hi, n, k, s, i)


@njit
def _heap_sort_best_first(hs, hi, n):
    """Sort a heap of n entries in place, best first (pop the worst to the end, n-1 times)."""
    for end in range(n - 1, 0, -1):
        ts = hs[0]
        ti = hi[0]
        hs[0] = hs[end]
        hi[0] = hi[end]
        hs[end] = ts
        hi[end] = ti
        _sift_down(hs, hi, 0, end)


# ================================================================================================ Numba: scoring
@njit(fastmath=True, inline="always")
def _dot(h, W, i):
    acc = np.float32(0.0)
    for j in range(h.shape[0]):
        acc += h[j] * W[i, j]
    return acc


def _topk_one_body(h, Wy, By, code, a, k, cand, use_cand, excl, n_chunks):
    """Top-k of f(h @ Wy.T + By) over all items (use_cand=False; skipping the sorted indices ``excl``) or over the
    sorted indices ``cand`` (use_cand=True; exclusions already removed). Returns (indices, scores) best first."""
    n = cand.shape[0] if use_cand else Wy.shape[0]
    step = (n + n_chunks - 1) // n_chunks
    hs = np.empty((n_chunks, k), dtype=np.float32)
    hi = np.empty((n_chunks, k), dtype=np.int64)
    cnt = np.zeros(n_chunks, dtype=np.int64)
    ne = excl.shape[0]
    for c in prange(n_chunks):
        lo = c * step
        up = min(n, lo + step)
        m = 0
        hsc = hs[c]
        hic = hi[c]
        if use_cand:
            for p in range(lo, up):
                i = cand[p]
                s = final_act32(_dot(h, Wy, i) + By[i], code, a)
                m = _offer(hsc, hic, m, k, s, i)
        else:
            e = np.searchsorted(excl, lo) if ne > 0 else 0
            for i in range(lo, up):
                if e < ne and excl[e] == i:
                    e += 1
                    continue
                s = final_act32(_dot(h, Wy, i) + By[i], code, a)
                m = _offer(hsc, hic, m, k, s, i)
        cnt[c] = m
    out_s = np.empty(k, dtype=np.float32)
    out_i = np.empty(k, dtype=np.int64)
    m = 0
    for c in range(n_chunks):
        for j in range(cnt[c]):
            m = _offer(out_s, out_i, m, k, hs[c, j], hi[c, j])
    _heap_sort_best_first(out_s, out_i, m)
    return out_i[:m], out_s[:m]


# One body, two builds: the parallel one for a caller that owns the machine, the serial one for serving, where
# many requests run at once and a parallel region per request would make them queue behind each other (and
# abort under the workqueue layer). Both give the same top-k: ties are broken by index, not by chunk order.
_topk_one = njit(parallel=True, fastmath=True, cache=True)(_topk_one_body)
_topk_one_serial = njit(fastmath=True, cache=True, nogil=True)(_topk_one_body)  # requests run side by side


@njit(inline="always")
def _skip(ex_idx, e, ee, i):
    """Advance the exclusion pointer e (sorted ex_idx[e:ee]) to item i; returns (new e, whether i is excluded)."""
    while e < ee and ex_idx[e] < i:
        e += 1
    return e, (e < ee and ex_idx[e] == i)


@njit(parallel=True, fastmath=True, cache=True)
def _topk_rows(Hr, Wy, By, code, a, k, cand, use_cand, ex_ptr, ex_end, ex_idx, rows_per_task, n_item_chunks):
    """Fused score + top-k for many rows: Hr [R, H] hidden states; items = all (use_cand=False) or the sorted
    indices ``cand``; row r never gets the sorted indices ex_idx[ex_ptr[r]:ex_end[r]].

    Tasks are (block of rows_per_task rows) x (one of n_item_chunks item ranges), in parallel. A task sweeps
    its item range in tiles of ITEM_TILE items (kept in L2 while every row of the block uses them), scoring 4
    rows at a time (one pass over each item vector feeds four dot products), and keeps a heap per row; the
    per-chunk heaps are merged at the end. Returns (top_i [R, k], top_s [R, k], cnt [R]) best first.
    """
    R = Hr.shape[0]
    H = Hr.shape[1]
    n = cand.shape[0] if use_cand else Wy.shape[0]
    P = n_item_chunks
    step = (n + P - 1) // P
    nrb = (R + rows_per_task - 1) // rows_per_task
    hs = np.empty((P, R, k), dtype=np.float32)
    hi = np.empty((P, R, k), dtype=np.int64)
    cnt = np.zeros((P, R), dtype=np.int64)
    for task in prange(nrb * P):
        rb = task // P
        c = task - rb * P
        r0 = rb * rows_per_task
        r1 = min(R, r0 + rows_per_task)
        lo = c * step
        up = min(n, lo + step)
        if lo >= up:
            continue
        first = cand[lo] if use_cand else lo
        ep = np.empty(r1 - r0, dtype=np.int64)
        for r in range(r0, r1):
            ep[r - r0] = ex_ptr[r] + np.searchsorted(ex_idx[ex_ptr[r]:ex_end[r]], first)
        for t0 in range(lo, up, ITEM_TILE):
            t1 = min(up, t0 + ITEM_TILE)
            r = r0
            while r + 4 <= r1:
                h0 = Hr[r]
                h1 = Hr[r + 1]
                h2 = Hr[r + 2]
                h3 = Hr[r + 3]
                e0 = ep[r - r0]
                e1 = ep[r - r0 + 1]
                e2 = ep[r - r0 + 2]
                e3 = ep[r - r0 + 3]
                m0 = cnt[c, r]
                m1 = cnt[c, r + 1]
                m2 = cnt[c, r + 2]
                m3 = cnt[c, r + 3]
                for p in range(t0, t1):
                    i = cand[p] if use_cand else p
                    s0 = np.float32(0.0)
                    s1 = np.float32(0.0)
                    s2 = np.float32(0.0)
                    s3 = np.float32(0.0)
                    for j in range(H):
                        w = Wy[i, j]
                        s0 += h0[j] * w
                        s1 += h1[j] * w
                        s2 += h2[j] * w
                        s3 += h3[j] * w
                    b = By[i]
                    e0, x = _skip(ex_idx, e0, ex_end[r], i)
                    if not x:
                        m0 = _offer(hs[c, r], hi[c, r], m0, k, final_act32(s0 + b, code, a), i)
                    e1, x = _skip(ex_idx, e1, ex_end[r + 1], i)
                    if not x:
                        m1 = _offer(hs[c, r + 1], hi[c, r + 1], m1, k, final_act32(s1 + b, code, a), i)
                    e2, x = _skip(ex_idx, e2, ex_end[r + 2], i)
                    if not x:
                        m2 = _offer(hs[c, r + 2], hi[c, r + 2], m2, k, final_act32(s2 + b, code, a), i)
                    e3, x = _skip(ex_idx, e3, ex_end[r + 3], i)
                    if not x:
                        m3 = _offer(hs[c, r + 3], hi[c, r + 3], m3, k, final_act32(s3 + b, code, a), i)
                ep[r - r0] = e0
                ep[r - r0 + 1] = e1
                ep[r - r0 + 2] = e2
                ep[r - r0 + 3] = e3
                cnt[c, r] = m0
                cnt[c, r + 1] = m1
                cnt[c, r + 2] = m2
                cnt[c, r + 3] = m3
                r += 4
            while r < r1:
                h0 = Hr[r]
                e0 = ep[r - r0]
                m0 = cnt[c, r]
                for p in range(t0, t1):
                    i = cand[p] if use_cand else p
                    e0, x = _skip(ex_idx, e0, ex_end[r], i)
                    if not x:
                        m0 = _offer(hs[c, r], hi[c, r], m0, k, final_act32(_dot(h0, Wy, i) + By[i], code, a), i)
                ep[r - r0] = e0
                cnt[c, r] = m0
                r += 1
    top_s = np.empty((R, k), dtype=np.float32)
    top_i = np.empty((R, k), dtype=np.int64)
    out_n = np.zeros(R, dtype=np.int64)
    for r in prange(R):
        m = 0
        for c in range(P):
            for j in range(cnt[c, r]):
                m = _offer(top_s[r], top_i[r], m, k, hs[c, r, j], hi[c, r, j])
        _heap_sort_best_first(top_s[r], top_i[r], m)
        out_n[r] = m
    return top_i, top_s, out_n


@njit(cache=True)
def _topk_scores(scores, k, cand, use_cand, excl):
    """Top-k of a given score vector (any float dtype), as _topk_one but without computing the scores."""
    out_s = np.empty(k, dtype=scores.dtype)
    out_i = np.empty(k, dtype=np.int64)
    m = 0
    ne = excl.shape[0]
    if use_cand:
        for p in range(cand.shape[0]):
            i = cand[p]
            m = _offer(out_s, out_i, m, k, scores[i], i)
    else:
        e = 0
        for i in range(scores.shape[0]):
            if e < ne and excl[e] == i:
                e += 1
                continue
            m = _offer(out_s, out_i, m, k, scores[i], i)
    _heap_sort_best_first(out_s, out_i, m)
    return out_i[:m], out_s[:m]


def check_k(k) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    return int(k)


def topk_from_scores(scores: np.ndarray, k: int, exclude_idx=None, cand_idx=None):
    """Top-k (indices, scores) of a precomputed score vector [N], best first, ties by index; exclude_idx /
    cand_idx: sorted unique indices or None. Used by the baselines."""
    k = check_k(k)
    empty = np.zeros(0, dtype=np.int64)
    if cand_idx is not None and exclude_idx is not None and exclude_idx.size:
        cand_idx = np.setdiff1d(cand_idx, exclude_idx, assume_unique=True)
    n_av = cand_idx.size if cand_idx is not None else scores.size - (0 if exclude_idx is None else exclude_idx.size)
    k = min(k, n_av)
    if k <= 0:
        return empty, np.zeros(0, dtype=scores.dtype)
    return _topk_scores(np.ascontiguousarray(scores), k, cand_idx if cand_idx is not None else empty,
                        cand_idx is not None, exclude_idx if exclude_idx is not None else empty)
