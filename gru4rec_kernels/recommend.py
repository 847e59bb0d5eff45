"""Next-item recommendation from a trained model: top-k for one session, for many, and greedy continuation.

What is computed (DESIGN.md s.3, the inference half of ``reference.hidden_step`` / ``reference.score_all``):
replay the session's items through the GRU layers from a zero hidden state (no dropout), then score every item
``f(h @ Wy.T + By)`` with the model's final activation ``f`` and return the k best, best first, in ORIGINAL item
ids, with their scores (float32).

Rules (the same for ``recommend_one``, ``recommend_batch``, ``Model.recommend`` and ``SessionRecommender``):
- unknown item ids in a session are skipped with a warning (``on_unknown="warn"``), silently ("ignore"), or raise
  ``UnknownItemError`` ("raise");
- ``exclude``: ids that are never recommended (unknown ones are ignored); ``candidates``: rank only these ids
  (unknown ones are ignored; none known -> empty result);
- ties are broken by item index (= ascending original id, as ``item_ids`` is sorted): the order is a total
  order on (score descending, id ascending), so results never depend on thread count or tiling;
- k larger than what can be recommended (items, or candidates, minus exclusions): the k' available are
  returned, so arrays may be shorter than k;
- **popularity fallback**: a session with no known item (empty, or all ids unknown) gets the most popular
  items by training support (``model.item_support``: training event counts), ties by id, with the same exclude /
  candidates rules; its scores are those support counts (as float32), not model scores;
- bad input (k < 1 or not an int, non-integer ids, nested sequences of the wrong shape) is a ``ValueError``.

How (CPU, Numba):
- one session: the GRU step runs in Numba (``_gru_replay``: per layer three mat-vecs written in axpy form, no
  fast-math, so the same state is computed bit for bit whether the session is replayed at once or click by
  click: this is what makes ``SessionRecommender`` equal to a replay). Scoring is fused with the top-k
  (``_topk_one``): items are split into chunks, one per parallel task; each task computes its items' scores
  (fast-math dot products) and keeps a bounded min-heap of its k best, then the heaps are merged. Nothing of
  size N is materialised or sorted.
- many sessions (``recommend_batch``): sessions are sorted by length and right-aligned, so at every step the
  sessions still running form a prefix of the batch: one GEMM per layer and step over that prefix (masking by
  slicing). Scoring is again fused with the top-k, in one Numba kernel (``_topk_rows``): parallel tasks of 32
  rows x a range of items; a task sweeps its items in L2-sized tiles and computes four rows' dot products per
  pass over an item vector, pushing each score into that row's heap. Alternatives: ``np.argpartition`` on a
  BLAS score tile was not used because it picks arbitrarily among scores tied at the k-th place (ties would
  not be broken by index); BLAS tiles [256 rows x 4096 items] + a parallel Numba heap update was the first
  version and was dropped: OpenBLAS's and Numba's thread pools alternate every tile and each spins while the
  other works. Measured on this 2-core machine under the same (heavy) background load, 256 sessions x 200k
  items, three runs each: BLAS + Numba 2.4-2.8 s wall (1.2-1.35 CPU-s); the same with OPENBLAS_NUM_THREADS=1
  set before numpy loads 0.84-1.17 s (0.42-0.44 CPU-s); this kernel 1.10-1.11 s (0.55 CPU-s). The library
  cannot set OpenBLAS's threads for the user, so the kernel that is never pathological is the default.
  Batch hidden states come from BLAS GEMMs, single-session ones from the Numba step: they agree to float32
  rounding (rankings can differ only between items whose scores are within rounding of each other).
- threads: the single-session scorer splits items over Numba's threads. On a machine whose cores are busy
  with other work a parallel region waits for its slowest thread; a serving process that answers many
  requests at once should rather call ``numba.set_num_threads(1)`` in each request thread (one core per
  request; the results do not change, see the tests).

The per-model ``_Engine`` (parameter tuples for Numba, popularity order) is cached per Model object; it holds
references to ``model.params`` (no copies), so in-place parameter edits are seen; replacing an entry of
``model.params`` rebuilds it.
"""
from __future__ import annotations

import numbers
import threading
import weakref

import numba
import numpy as np
from numba import njit, prange

from .itemmap import as_item_array

__all__ = ["recommend_one", "recommend_batch", "continue_sequence", "topk_from_scores", "as_item_array",
           "check_k"]

_F1 = np.float32(1.0)
_F0 = np.float32(0.0)
_NEG_INF = np.float32(-np.inf)

# Batch scorer: rows per parallel task (they share every item tile) and items per tile (512 x H=100 float32 =
# 200 KiB: stays in L2 while the task's rows use it).
ROWS_PER_TASK = 32
ITEM_TILE = 512
# Chunks per thread for the single-session scorer (more chunks = better balance on a busy machine).
CHUNKS_PER_THREAD = 4


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


@njit(inline="always")
def _act(z, code, a):
    """Final activation (config.parse_final_act codes): linear, tanh, relu, elu-a, leaky-a."""
    if code == 0:
        return z
    if code == 1:
        return np.tanh(z)
    if code == 2:
        return z if z > 0 else _F0
    if code == 3:
        return z if z > 0 else a * np.expm1(z)
    return z if z > 0 else a * z


# ================================================================================================ Numba: GRU
@njit(inline="always")
def _sigmoid(x):
    if x >= 0:
        return _F1 / (_F1 + np.exp(-x))
    e = np.exp(x)
    return e / (_F1 + e)


@njit(cache=True)
def _gru_replay(items, state, mode, emb, Wx, Wrz, Wh, Bh, work):
    """Advance ``state`` (all layers' hidden states, concatenated, float32) by the item indices ``items``.

    mode: 0 one-hot (layer-0 pre-activation is the row Wx[0][item]), 1 constrained (x = Wy[item]), 2 separate
    embedding (x = E[item]); ``emb`` is Wx0, Wy or E accordingly. Wx, Wrz, Wh, Bh: tuples over layers.
    work: float32 scratch of at least 6 * max(H). Same equations as reference.gru_fwd, one row.
    """
    L = len(Wrz)
    for t in range(items.shape[0]):
        it = items[t]
        so = 0
        prev = 0
        for l in range(L):
            H = Wh[l].shape[0]
            a = work[0:3 * H]
            g = work[3 * H:5 * H]
            rh = work[5 * H:6 * H]
            bh = Bh[l]
            if l == 0 and mode == 0:
                w0 = emb[it]
                for c in range(3 * H):
                    a[c] = w0[c] + bh[c]
            else:
                W = Wx[l]
                IN = W.shape[0]
                for c in range(3 * H):
                    a[c] = _F0
                for j in range(IN):
                    xj = emb[it, j] if l == 0 else state[prev + j]
                    for c in range(3 * H):
                        a[c] += xj * W[j, c]
                for c in range(3 * H):
                    a[c] += bh[c]
            h = state[so:so + H]
            U = Wrz[l]
            for c in range(2 * H):
                g[c] = _F0
            for j in range(H):
                hj = h[j]
                for c in range(2 * H):
                    g[c] += hj * U[j, c]
            # g <- r (first H), z (next H)
            for c in range(2 * H):
                g[c] = _sigmoid(a[H + c] + g[c])
            for j in range(H):
                rh[j] = g[j] * h[j]
            Uh = Wh[l]
            # a[0:H] += (r * h) @ Uh
            for j in range(H):
                v = rh[j]
                for c in range(H):
                    a[c] += v * Uh[j, c]
            for c in range(H):
                z = g[H + c]
                h[c] = (_F1 - z) * h[c] + z * np.tanh(a[c])
            prev = so
            so += H


# ================================================================================================ Numba: scoring
@njit(fastmath=True, inline="always")
def _dot(h, W, i):
    acc = np.float32(0.0)
    for j in range(h.shape[0]):
        acc += h[j] * W[i, j]
    return acc


@njit(parallel=True, fastmath=True, cache=True)
def _topk_one(h, Wy, By, code, a, k, cand, use_cand, excl, n_chunks):
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
                s = _act(_dot(h, Wy, i) + By[i], code, a)
                m = _offer(hsc, hic, m, k, s, i)
        else:
            e = np.searchsorted(excl, lo) if ne > 0 else 0
            for i in range(lo, up):
                if e < ne and excl[e] == i:
                    e += 1
                    continue
                s = _act(_dot(h, Wy, i) + By[i], code, a)
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
                        m0 = _offer(hs[c, r], hi[c, r], m0, k, _act(s0 + b, code, a), i)
                    e1, x = _skip(ex_idx, e1, ex_end[r + 1], i)
                    if not x:
                        m1 = _offer(hs[c, r + 1], hi[c, r + 1], m1, k, _act(s1 + b, code, a), i)
                    e2, x = _skip(ex_idx, e2, ex_end[r + 2], i)
                    if not x:
                        m2 = _offer(hs[c, r + 2], hi[c, r + 2], m2, k, _act(s2 + b, code, a), i)
                    e3, x = _skip(ex_idx, e3, ex_end[r + 3], i)
                    if not x:
                        m3 = _offer(hs[c, r + 3], hi[c, r + 3], m3, k, _act(s3 + b, code, a), i)
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
                        m0 = _offer(hs[c, r], hi[c, r], m0, k, _act(_dot(h0, Wy, i) + By[i], code, a), i)
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


# ================================================================================================ input checks
def check_k(k) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    return int(k)


def _is_nested(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim == 2 or (x.dtype == object and x.size > 0 and not np.isscalar(x.flat[0]))
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and all(isinstance(v, (list, tuple, np.ndarray)) for v in x)
    return False


# ================================================================================================ the engine
class _Engine:
    """Numba-ready view of one Model: parameter tuples, the item map, the popularity order."""

    def __init__(self, model):
        cfg = model.cfg
        P = model.params
        self.model_ref = weakref.ref(model)
        self.params_src = dict(P)
        self.item_map = model.item_map
        self.item_ids = model.item_ids
        self.n_items = model.n_items
        self.layers = list(cfg.layers)
        self.state_size = int(sum(self.layers))
        self.top_off = self.state_size - self.layers[-1]
        mode = cfg.input_mode
        self.mode = {"onehot": 0, "constrained": 1, "embedding": 2}[mode]
        self.emb = {"onehot": P.get("Wx0"), "constrained": P["Wy"], "embedding": P.get("E")}[mode]
        L = len(self.layers)
        self.Wx = tuple(P[f"Wx{l}"] for l in range(L))
        self.Wrz = tuple(P[f"Wrz{l}"] for l in range(L))
        self.Wh = tuple(P[f"Wh{l}"] for l in range(L))
        self.Bh = tuple(P[f"Bh{l}"] for l in range(L))
        self.Wy = P["Wy"]
        self.By = P["By"]
        self.act_code, self.act_a = cfg.final_act_code
        self.act_a = np.float32(self.act_a)
        self.support = np.asarray(model.item_support, dtype=np.float64)
        self._pop_order = None
        self._empty = np.zeros(0, dtype=np.int64)
        self._local = threading.local()

    def valid_for(self, model) -> bool:
        P = model.params
        return (model.item_ids is self.item_ids and len(P) == len(self.params_src)
                and all(P.get(k) is v for k, v in self.params_src.items()))

    # ------------------------------------------------------------------ ids
    def to_index(self, ids, on_unknown: str, what: str = "session_items") -> np.ndarray:
        return self.item_map.index(ids, on_unknown, what, stacklevel=4)[0]

    def index_set(self, ids, what: str) -> np.ndarray | None:
        """exclude / candidates -> sorted unique item indices; unknown ids are ignored."""
        return self.item_map.index_set(ids, what)

    def scalar_index(self, item) -> int:
        """One original id -> index, or -1 if unknown. ValueError if it is not an integer."""
        return self.item_map.scalar_index(item)

    # ------------------------------------------------------------------ GRU
    def _work(self) -> np.ndarray:
        w = getattr(self._local, "work", None)
        if w is None:
            w = self._local.work = np.empty(6 * max(self.layers), dtype=np.float32)
        return w

    def new_state(self) -> np.ndarray:
        return np.zeros(self.state_size, dtype=np.float32)

    def advance(self, state: np.ndarray, idx: np.ndarray) -> None:
        """Feed the item indices ``idx`` (int64) into ``state`` in place."""
        if idx.size:
            _gru_replay(idx, state, self.mode, self.emb, self.Wx, self.Wrz, self.Wh, self.Bh, self._work())

    def replay(self, idx: np.ndarray) -> np.ndarray:
        st = self.new_state()
        self.advance(st, np.ascontiguousarray(idx, dtype=np.int64))
        return st

    def top(self, state: np.ndarray) -> np.ndarray:
        return state[self.top_off:]

    # ------------------------------------------------------------------ ranking
    def restrict(self, excl, cand):
        """Fold exclusions into the candidate list (both sorted unique indices or None)."""
        if cand is not None and excl is not None and excl.size:
            cand = np.setdiff1d(cand, excl, assume_unique=True)
        return excl, cand

    def n_available(self, excl, cand) -> int:
        if cand is not None:
            return int(cand.size)
        return self.n_items - (0 if excl is None else int(excl.size))

    def topk_state(self, state, k: int, excl, cand):
        """Model top-k for one hidden state; excl/cand already through ``restrict``. (indices, scores)."""
        k = min(k, self.n_available(excl, cand))
        if k <= 0:
            return self._empty, np.zeros(0, dtype=np.float32)
        n = cand.size if cand is not None else self.n_items
        n_chunks = max(1, min(numba.get_num_threads() * CHUNKS_PER_THREAD, n // 512))
        return _topk_one(np.ascontiguousarray(self.top(state)), self.Wy, self.By, self.act_code, self.act_a, k,
                         cand if cand is not None else self._empty, cand is not None,
                         excl if excl is not None else self._empty, n_chunks)

    @property
    def pop_order(self) -> np.ndarray:
        if self._pop_order is None:
            self._pop_order = np.lexsort((np.arange(self.n_items), -self.support))
        return self._pop_order

    def popular(self, k: int, excl, cand):
        """The popularity fallback: most supported items (ties by index) with their support as the score."""
        k = min(k, self.n_available(excl, cand))
        if k <= 0:
            return self._empty, np.zeros(0, dtype=np.float32)
        if cand is not None:
            order = cand[np.lexsort((cand, -self.support[cand]))][:k]
        else:
            ne = 0 if excl is None else excl.size
            head = self.pop_order[:k + ne]
            order = head[~np.isin(head, excl)][:k] if ne else head[:k]
        return order, self.support[order].astype(np.float32)


_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def engine_for(model) -> _Engine:
    """The cached _Engine of ``model`` (rebuilt if ``model.params`` entries or ``item_ids`` were replaced)."""
    eng = _ENGINES.get(model)
    if eng is not None and eng.valid_for(model):
        return eng
    with _ENGINES_LOCK:
        eng = _ENGINES.get(model)
        if eng is None or not eng.valid_for(model):
            eng = _Engine(model)
            _ENGINES[model] = eng
    return eng


def clear_cache(model=None) -> None:
    """Forget the cached engine of ``model`` (or of every model)."""
    with _ENGINES_LOCK:
        if model is None:
            _ENGINES.clear()
        else:
            _ENGINES.pop(model, None)


# ================================================================================================ public API
def recommend_one(model, session_items, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
    """Top-k next items for one session (original item ids, oldest first).

    Returns ``(item_ids int64 [k'], scores float32 [k'])`` best first, k' = min(k, what can be recommended).
    See the module docstring for unknown ids, exclude / candidates, ties and the popularity fallback.
    """
    k = check_k(k)
    eng = engine_for(model)
    idx = eng.to_index(session_items, on_unknown)
    excl, cand = eng.restrict(eng.index_set(exclude, "exclude"), eng.index_set(candidates, "candidates"))
    if idx.size == 0:
        order, scores = eng.popular(k, excl, cand)
    else:
        order, scores = eng.topk_state(eng.replay(idx), k, excl, cand)
    return eng.item_ids[order], scores


def _parse_sessions(sessions) -> list:
    """sessions -> list of int64 id arrays (ValueError naming the bad element)."""
    if isinstance(sessions, np.ndarray) and sessions.ndim == 2:
        rows = list(sessions)
    elif isinstance(sessions, (list, tuple)) or (isinstance(sessions, np.ndarray) and sessions.dtype == object
                                                 and sessions.ndim == 1):
        rows = list(sessions)
    else:
        raise ValueError("sessions must be a sequence of sessions (a list of item-id sequences, or a 2-D array); "
                         f"got {type(sessions).__name__}")
    arrays = []
    for j, s in enumerate(rows):
        if np.isscalar(s) or s is None:
            raise ValueError(f"sessions must be a sequence of sessions (each a sequence of item ids); element {j} "
                             f"is {s!r} (for one session use recommend_one / Model.recommend)")
        arrays.append(as_item_array(s, f"sessions[{j}]"))
    return arrays


def _map_sessions(eng: _Engine, arrays: list, on_unknown: str):
    """id arrays -> (flat item indices, kept length per session). One warning for the whole batch."""
    if on_unknown not in ("warn", "ignore", "raise"):
        raise ValueError(f"on_unknown must be 'warn', 'ignore' or 'raise'; got {on_unknown!r}")
    lens = np.array([a.size for a in arrays], dtype=np.int64)
    if not lens.sum():
        return np.zeros(0, dtype=np.int64), np.zeros(len(arrays), dtype=np.int64)
    flat = np.concatenate(arrays)
    _, known = eng.model_ref().item_index(flat, on_unknown=on_unknown)
    pos = np.minimum(np.searchsorted(eng.item_ids, flat), eng.n_items - 1)
    seg = np.repeat(np.arange(len(arrays)), lens)
    kept_len = np.bincount(seg[known], minlength=len(arrays)).astype(np.int64)
    return pos[known].astype(np.int64), kept_len


def _sigmoid_np(x):
    with np.errstate(over="ignore"):
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def batch_hidden(eng: _Engine, flat_idx: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Top-layer hidden state [n, H] after replaying n sessions (given flat, with lengths) together.

    Sessions are sorted by length (longest first) and right-aligned: at step t the running sessions are the
    first m_t rows, so every layer is one GEMM over that prefix per step (the prefix slice is the mask).
    Sessions of length 0 keep the zero state.
    """
    n = lens.size
    H_top = eng.layers[-1]
    out = np.zeros((n, H_top), dtype=np.float32)
    if n == 0 or flat_idx.size == 0:
        return out
    order = np.argsort(-lens, kind="stable")
    sl = lens[order]
    T = int(sl[0])
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))[order]
    # X[r, t]: item at step t of sorted row r (right-aligned); -1 before the session starts
    pos_in = np.arange(T)[None, :] - (T - sl)[:, None]
    valid = pos_in >= 0
    X = np.where(valid, flat_idx[np.minimum(starts[:, None] + np.maximum(pos_in, 0), flat_idx.size - 1)], -1)
    m_t = valid.sum(axis=0)  # running rows per step (a prefix)
    Hs = [np.zeros((n, h), dtype=np.float32) for h in eng.layers]
    for t in range(T):
        m = int(m_t[t])
        x_items = X[:m, t]
        y = None
        for l, Hl in enumerate(eng.layers):
            if l == 0:
                if eng.mode == 0:
                    a = eng.emb[x_items] + eng.Bh[0]
                else:
                    a = eng.emb[x_items] @ eng.Wx[0] + eng.Bh[0]
            else:
                a = y @ eng.Wx[l] + eng.Bh[l]
            h = Hs[l][:m]
            rz = _sigmoid_np(a[:, Hl:] + h @ eng.Wrz[l])
            r, z = rz[:, :Hl], rz[:, Hl:]
            c = np.tanh(a[:, :Hl] + (r * h) @ eng.Wh[l])
            h_new = (np.float32(1.0) - z) * h + z * c
            Hs[l][:m] = h_new
            y = h_new
    out[order] = Hs[-1]
    return out


def _batch_excl(eng: _Engine, exclude, n: int):
    """exclude -> (per-row sorted index lists as (ptr, end, idx), global sorted set or None, per_row flag)."""
    if exclude is None:
        return None, None
    if _is_nested(exclude):
        rows = list(exclude)
        if len(rows) != n:
            raise ValueError(f"exclude: one sequence per session was given ({len(rows)}), but there are {n} sessions")
        sets = [eng.index_set(e, f"exclude[{j}]") for j, e in enumerate(rows)]
        return None, sets
    return eng.index_set(exclude, "exclude"), None


def recommend_batch(model, sessions, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
    """Top-k for many sessions at once: ``(item_ids int64 [n, k'], scores float32 [n, k'])``, best first.

    ``sessions``: a list of item-id sequences (any lengths) or a 2-D array (one session per row).
    ``exclude``: one sequence of ids for every session, or one sequence per session (a list of n sequences).
    k' = min(k, number of items or candidates, minus global exclusions); a row that has fewer items available
    (per-session exclusions) is padded with id -1 and score NaN. Sessions with no known item get the popularity
    fallback (see the module docstring). Scores agree with ``recommend_one`` to float32 rounding.
    """
    k = check_k(k)
    eng = engine_for(model)
    arrays = _parse_sessions(sessions)
    n = len(arrays)
    g_excl, row_excl = _batch_excl(eng, exclude, n)
    cand = eng.index_set(candidates, "candidates")
    flat_idx, lens = _map_sessions(eng, arrays, on_unknown)
    g_excl, cand = eng.restrict(g_excl, cand)
    kk = min(k, eng.n_available(g_excl, cand))
    ids = np.full((n, max(kk, 0)), -1, dtype=np.int64)
    scores = np.full((n, max(kk, 0)), np.nan, dtype=np.float32)
    if n == 0 or kk <= 0:
        return ids, scores
    # per-row exclusion lists (global ones shared)
    if row_excl is not None:
        if cand is not None:
            row_excl = [np.intersect1d(e, cand, assume_unique=True) for e in row_excl]
        ex_len = np.array([e.size for e in row_excl], dtype=np.int64)
        ex_idx = np.concatenate(row_excl) if ex_len.sum() else np.zeros(1, dtype=np.int64)
        ex_ptr = np.concatenate(([0], np.cumsum(ex_len)[:-1])).astype(np.int64)
        ex_end = ex_ptr + ex_len
    elif g_excl is not None and g_excl.size and cand is None:
        ex_idx = g_excl
        ex_ptr = np.zeros(n, dtype=np.int64)
        ex_end = np.full(n, g_excl.size, dtype=np.int64)
    else:
        ex_idx = np.zeros(1, dtype=np.int64)
        ex_ptr = np.zeros(n, dtype=np.int64)
        ex_end = np.zeros(n, dtype=np.int64)

    fallback = lens == 0
    model_rows = np.flatnonzero(~fallback)
    if model_rows.size:
        Htop = np.ascontiguousarray(batch_hidden(eng, flat_idx, lens)[model_rows])
        R = model_rows.size
        n_cand = cand.size if cand is not None else eng.n_items
        nrb = -(-R // ROWS_PER_TASK)
        tasks = numba.get_num_threads() * CHUNKS_PER_THREAD
        n_chunks = max(1, min(-(-tasks // nrb), n_cand // ITEM_TILE + 1))
        top_i, top_s, cnt = _topk_rows(Htop, eng.Wy, eng.By, eng.act_code, eng.act_a, kk,
                                       cand if cand is not None else eng._empty, cand is not None,
                                       ex_ptr[model_rows], ex_end[model_rows], ex_idx, ROWS_PER_TASK, n_chunks)
        for j, row in enumerate(model_rows):
            m = cnt[j]
            ids[row, :m] = eng.item_ids[top_i[j, :m]]
            scores[row, :m] = top_s[j, :m]
    for r in np.flatnonzero(fallback):
        ex = g_excl if row_excl is None else row_excl[r]
        c_r = cand if (cand is None or row_excl is None) else np.setdiff1d(cand, row_excl[r], assume_unique=True)
        order, sc = eng.popular(kk, ex if c_r is None else None, c_r)
        ids[r, :order.size] = eng.item_ids[order]
        scores[r, :order.size] = sc
    return ids, scores


def continue_sequence(model, session_items, n: int, exclude_seen: bool = False, candidates=None,
                      on_unknown: str = "warn") -> np.ndarray:
    """Greedy continuation: n times take the top-1 item, append it to the session and feed it back.

    Returns the n generated original ids (fewer if ``exclude_seen`` runs out of items). ``exclude_seen``: never
    generate an item already in the session or generated before. An empty / all-unknown session starts from
    the most popular item (the popularity fallback), then follows the model.
    """
    eng = engine_for(model)
    idx = eng.to_index(session_items, on_unknown)
    state = eng.replay(idx) if idx.size else None
    return _continue(eng, state, idx, n, exclude_seen, eng.index_set(candidates, "candidates"))


def _continue(eng: _Engine, state, seen_idx, n, exclude_seen: bool, cand) -> np.ndarray:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be an int >= 0; got {n!r}")
    seen = set(int(i) for i in seen_idx) if exclude_seen else set()
    out = []
    for _ in range(int(n)):
        excl = np.array(sorted(seen), dtype=np.int64) if seen else None
        ex, c = eng.restrict(excl, cand)
        if state is None:
            order, _ = eng.popular(1, ex, c)
        else:
            order, _ = eng.topk_state(state, 1, ex, c)
        if order.size == 0:
            break
        i = int(order[0])
        out.append(i)
        if exclude_seen:
            seen.add(i)
        if state is None:
            state = eng.new_state()
        eng.advance(state, np.array([i], dtype=np.int64))
    return eng.item_ids[np.array(out, dtype=np.int64)]


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
