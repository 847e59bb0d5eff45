"""Negative sampling with P(i) ∝ support_i^alpha through a store of pre-drawn ids (GRU4Rec's sample store).

Element ``i`` of refill ``r`` is ``searchsorted(cdf, uniform53(*philox2x32(i, r, key)), side="right")`` with
``key = (seed ^ STREAM_SAMPLES) & MASK32``: a pure function of (seed, r, i), so the store is the same whatever
the thread count, whether it was filled on the worker thread or synchronously, and after a resume.
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import numbers
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from gru4rec_kernels.rng import MASK32, STREAM_SAMPLES, philox2x32, philox2x32_np, uniform53

__all__ = ["SampleStore", "sample_probabilities", "draw_samples_np"]

_CHUNK = 16384  # elements per prange task; the result does not depend on it


@njit(cache=True, nogil=True, inline="always")
def _draw_one(cdf, key, refill, i):
    x0, x1 = philox2x32(i, refill, key)
    u = uniform53(x0, x1)
    lo = 0
    hi = cdf.size
    while lo < hi:  # first index with cdf[idx] > u  (np.searchsorted side="right")
        mid = (lo + hi) >> 1
        if cdf[mid] <= u:
            lo = mid + 1
        else:
            hi = mid
    return min(lo, cdf.size - 1)


@njit(parallel=True, nogil=True, cache=True)
def _fill_parallel(cdf, key, refill, out):
    n = out.size
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(n_chunks):
        start = c * _CHUNK
        stop = min(start + _CHUNK, n)
        for i in range(start, stop):
            out[i] = _draw_one(cdf, key, refill, i)


@njit(nogil=True, cache=True)
def _fill_serial(cdf, key, refill, out):
    for i in range(out.size):
        out[i] = _draw_one(cdf, key, refill, i)


def sample_probabilities(support: np.ndarray, alpha: float) -> np.ndarray:
    """float64 [n_items]: P(i) = support_i^alpha / sum (zero where support is zero), after validating."""
    sup = np.asarray(support)
    if sup.ndim != 1:
        raise ValueError(f"support must be a 1-D array [n_items]; got shape {sup.shape}")
    if sup.size == 0:
        raise ValueError("support is empty (no items)")
    if sup.size >= 2 ** 31:
        raise ValueError(f"support has {sup.size} items; at most 2**31-1 are supported")
    if not (np.issubdtype(sup.dtype, np.number) and not np.issubdtype(sup.dtype, np.complexfloating)):
        raise ValueError(f"support must be numeric; got dtype {sup.dtype}")
    sup = sup.astype(np.float64)
    if not np.all(np.isfinite(sup)):
        raise ValueError("support has non-finite (NaN or inf) values")
    if np.any(sup < 0):
        raise ValueError(f"support has negative values (first at item {int(np.argmax(sup < 0))})")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha!r}")
    w = np.zeros_like(sup)
    pos = sup > 0
    w[pos] = sup[pos] ** float(alpha)  # 0**0 would be 1: zero-support items are kept at zero explicitly
    total = w.sum()
    if not total > 0 or not math.isfinite(total):
        raise ValueError("support must have a positive (finite) sum: no item can be sampled")
    return w / total


def _cdf(p: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(p)
    cdf /= cdf[-1]  # exactly 1.0 at the end, so u < 1 never falls past the last item with P > 0
    return cdf


def draw_samples_np(support: np.ndarray, alpha: float, seed: int, refill: int, n: int) -> np.ndarray:
    """numpy twin of one refill (for tests and the reference): the same ids the store holds."""
    cdf = _cdf(sample_probabilities(support, alpha))
    x0, x1 = philox2x32_np(np.arange(n, dtype=np.uint64), np.uint64(refill), _key(seed))
    u = ((x0 >> np.uint64(5)).astype(np.float64) * 67108864.0 + (x1 >> np.uint64(6)).astype(np.float64)) \
        * (1.0 / 9007199254740992.0)
    return np.minimum(np.searchsorted(cdf, u, side="right"), cdf.size - 1).astype(np.int32)


def _key(seed: int) -> int:
    return (int(seed) ^ STREAM_SAMPLES) & MASK32


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class SampleStore:
    """A store of ``store_size`` item ids drawn with replacement from P(i) ∝ support_i^alpha.

    ``next()`` hands out the next ``n_sample`` ids (a read-only view); when fewer than ``n_sample`` are left the
    tail is skipped and the next refill is used. The next refill is computed on a worker thread while the
    current one is consumed, so only the first fill is waited for. ``store_size=0``: every ``next()`` draws
    ``n_sample`` fresh ids (refill number = call number).

    ``background_parallel``: fill on the worker thread with the Numba-parallel kernel (True) or the serial one
    (False); None picks parallel only under a thread-safe Numba threading layer (tbb / omp), since two threads
    launching parallel kernels at once abort the process under 'workqueue'. Both give identical ids.
    """

    def __init__(self, support: np.ndarray, alpha: float, store_size: int, n_sample: int, seed: int, *,
                 background: bool = True, background_parallel: bool | None = None):
        if not _is_int(store_size) or store_size < 0:
            raise ValueError(f"store_size must be an int >= 0; got {store_size!r}")
        if not _is_int(n_sample) or n_sample < 0:
            raise ValueError(f"n_sample must be an int >= 0; got {n_sample!r}")
        if store_size and n_sample and store_size < n_sample:
            raise ValueError(f"store_size must be 0 (draw every step) or >= n_sample ({n_sample}); got {store_size}")
        if store_size >= 2 ** 32:
            raise ValueError(f"store_size must be < 2**32 (the element counter is 32-bit); got {store_size}")
        if not _is_int(seed):
            raise ValueError(f"seed must be an int; got {seed!r}")
        self._p = sample_probabilities(support, alpha)
        self._cdf = _cdf(self._p)
        self.alpha = float(alpha)
        self.store_size = int(store_size)
        self.n_sample = int(n_sample)
        self.seed = int(seed)
        self._key = _key(seed)
        self._background = bool(background)
        self._bg_parallel = background_parallel
        self._executor: cf.ThreadPoolExecutor | None = None
        self._future: cf.Future | None = None
        self._future_refill = -1
        self._refill = 0
        self._pos = 0
        self._store: np.ndarray | None = None
        if self.store_size and self.n_sample:
            self._store = self._compute(0, parallel=True)
            self._prefetch(1)

    # ------------------------------------------------------------------ filling
    @property
    def n_items(self) -> int:
        return int(self._p.size)

    def probabilities(self) -> np.ndarray:
        """float64 [n_items]: the exact P(i) (the logq correction uses it for the sample columns)."""
        return self._p.copy()

    def _compute(self, refill: int, parallel: bool, n: int | None = None) -> np.ndarray:
        out = np.empty(self.store_size if n is None else n, dtype=np.int32)
        parallel = parallel and out.size > _CHUNK  # one chunk: skip the parallel launch (same ids either way)
        (_fill_parallel if parallel else _fill_serial)(self._cdf, np.uint64(self._key), np.uint64(refill), out)
        out.flags.writeable = False  # handed out as views: nobody may scribble on a shared store
        return out

    def _prefetch(self, refill: int) -> None:
        if not self._background:
            return
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gru4rec-samples")
        if self._bg_parallel is None:
            try:
                self._bg_parallel = numba.threading_layer() in ("tbb", "omp")
            except ValueError:  # no parallel kernel has run yet: the layer is unknown, so stay safe
                self._bg_parallel = False
        self._future = self._executor.submit(self._compute, refill, bool(self._bg_parallel))
        self._future_refill = refill

    def _load(self, refill: int) -> None:
        """Make refill ``refill`` current: from the worker if it was prefetched, else synchronously."""
        if self._future is not None and self._future_refill == refill:
            store = self._future.result()
        else:
            if self._future is not None:
                self._future.result()  # let a stale prefetch finish before replacing it (keeps one worker job)
            store = self._compute(refill, parallel=True)
        self._future = None
        self._store = store
        self._refill = refill
        self._prefetch(refill + 1)

    # ------------------------------------------------------------------ drawing
    def next(self) -> np.ndarray:
        """int32 [n_sample]: the next ids (a read-only view into the store when store_size > 0)."""
        if self.n_sample == 0:
            return np.empty(0, dtype=np.int32)
        if self.store_size == 0:
            out = self._compute(self._refill, parallel=True, n=self.n_sample)
            self._refill += 1
            return out
        if self._pos + self.n_sample > self.store_size:
            self._load(self._refill + 1)
            self._pos = 0
        out = self._store[self._pos:self._pos + self.n_sample]
        self._pos += self.n_sample
        return out

    __next__ = next

    def __iter__(self) -> "SampleStore":
        return self

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, int]:
        """{"refill": current refill number, "pos": next position in it} (store_size=0: refill = draws done)."""
        return {"refill": int(self._refill), "pos": int(self._pos)}

    def set_state(self, state: dict[str, int]) -> None:
        """Resume exactly where ``state()`` was taken (recomputes the current store from its refill number)."""
        try:
            refill, pos = int(state["refill"]), int(state["pos"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a SampleStore state: {e}") from None
        if refill < 0 or pos < 0 or (self.store_size and pos > self.store_size) or (not self.store_size and pos):
            raise ValueError(f"SampleStore state out of range: refill={refill}, pos={pos}, "
                             f"store_size={self.store_size}")
        if self.store_size and self.n_sample:
            if refill != self._refill or self._store is None:
                self._load(refill)
        else:
            self._refill = refill
        self._pos = pos

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the worker thread (waits for a running prefetch)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            self._future = None

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        ex = getattr(self, "_executor", None)
        if ex is not None:
            ex.shutdown(wait=False, cancel_futures=True)
