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

from .backends.cpu.evaluate import finish_scores
from .backends.cpu.gemm import MR, VW, mk_rows1, mk_rows2
from .backends.cpu.mathf import final_act32

__all__ = ["check_k", "topk_from_scores"]


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
def _excluded(ex_idx, lo, hi, i):
    """Whether item i is in the sorted ex_idx[lo:hi] (a binary search; no view is taken)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if ex_idx[mid] < i:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and ex_idx[lo] == i


@njit(parallel=True, cache=True, error_model="numpy")
def _topk_rows(Hr, Wy, By, code, a, k, cand, use_cand, ex_ptr, ex_end, ex_idx, rows_per_task, n_item_chunks):
    """Fused score + top-k for many rows: Hr [R, H] hidden states; items = all (use_cand=False) or the sorted
    indices ``cand``; row r never gets the sorted indices ex_idx[ex_ptr[r]:ex_end[r]].

    Tasks are (block of rows_per_task rows) x (one of n_item_chunks item ranges), in parallel. A task holds its
    rows transposed (hT [H, RBp], which stays in L1 / L2) and sweeps its items MR at a time: the items' Wy rows
    (read in place, or gathered for candidates) times hT with the GEMM micro-kernel (backends/cpu/gemm.py) give
    an MR x RBp score tile, finished with the bias and f in a vectorised loop (evaluation's rank_counts
    computes its scores with the same three steps). A score enters its row's heap only if it reaches the row's
    threshold (the heap's worst kept score once it holds k): one compare per (item, row), and the exclusion list
    is searched only for the few that pass. An item below the threshold is worse than k kept ones, so the result is the
    exact top-k in the total order (score descending, index ascending), whatever the tiling. The per-chunk
    heaps are merged at the end. Returns (top_i [R, k], top_s [R, k], cnt [R]) best first.
    """
    R = Hr.shape[0]
    H = Hr.shape[1]
    n = cand.shape[0] if use_cand else Wy.shape[0]
    P = n_item_chunks
    step = (n + P - 1) // P
    RB = rows_per_task
    RBp = (RB + VW - 1) // VW * VW
    nrb = (R + RB - 1) // RB
    hT = np.zeros((nrb, H, RBp), dtype=np.float32)  # padding columns stay 0 (scored, never read)
    for r in range(R):
        for j in range(H):
            hT[r // RB, j, r % RB] = Hr[r, j]
    hs = np.empty((P, R, k), dtype=np.float32)
    hi = np.empty((P, R, k), dtype=np.int64)
    cnt = np.zeros((P, R), dtype=np.int64)
    pW = Wy.ctypes.data
    for task in prange(nrb * P):
        rb = task // P
        c = task - rb * P
        r0 = rb * RB
        nr = min(R, r0 + RB) - r0
        lo = c * step
        up = min(n, lo + step)
        if lo >= up:
            continue
        # the address through hT, not one taken before the loop: Numba frees a local array after its last use
        ph = hT[rb].ctypes.data
        rows = np.empty((MR, H), dtype=np.float32)  # the gathered Wy rows of candidates
        S = np.empty((MR, RBp), dtype=np.float32)
        pS = S.ctypes.data
        thr = np.empty(nr, dtype=np.float32)  # the heap's worst kept score, once it is full
        full = np.zeros(nr, dtype=np.bool_)
        for t in range(lo, up, MR):
            mv = min(MR, up - t)
            if use_cand:
                for e in range(MR):
                    it = cand[min(t + e, up - 1)]
                    for j in range(H):
                        rows[e, j] = Wy[it, j]
                pa = rows.ctypes.data
            else:
                pa = pW + 4 * t * H
            for jb in range(0, RBp, 2 * VW):
                nv = min(2 * VW, RBp - jb)
                if nv > VW:
                    mk_rows2(pa, H, 1, ph + 4 * jb, RBp, pS + 4 * jb, RBp, 1, H, mv, nv)
                else:
                    mk_rows1(pa, H, 1, ph + 4 * jb, RBp, pS + 4 * jb, RBp, 1, H, mv, nv)
            for e in range(mv):
                i = cand[t + e] if use_cand else t + e
                finish_scores(S, e, nr, By[i], code, a)
                for r in range(nr):
                    sc = S[e, r]
                    if full[r] and not sc >= thr[r]:  # worse than the k kept (NaN too, as _offer)
                        continue
                    g = r0 + r
                    if ex_end[g] > ex_ptr[g] and _excluded(ex_idx, ex_ptr[g], ex_end[g], i):
                        continue
                    m = _offer(hs[c, g], hi[c, g], cnt[c, g], k, sc, i)
                    cnt[c, g] = m
                    if m == k:
                        full[r] = True
                        thr[r] = hs[c, g, 0]
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
