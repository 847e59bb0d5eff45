"""Negative sampling with P(i) ∝ support_i^alpha: GRU4Rec's sample store, computed where it is consumed.

Element ``i`` of refill ``r`` is ``searchsorted(cdf, uniform53(*philox2x32(i, r, key)), side="right")`` with
``key = (seed ^ STREAM_SAMPLES) & MASK32``: a pure function of (seed, r, i). The official code draws a store of
``store_size`` ids at a time and hands out ``n_sample`` of them per step; since every element is a pure function
of its position, this store is virtual: each step's ids are computed when that step is taken, on the training
thread, with the Numba-parallel kernel between the training step's own parallel regions. The ids are the ones
a materialised store would hold (tests/test_sampling.py checks this), no memory is held for the store, and no
worker thread competes with the training step for cores (which cost the fit 20-45% on 2 cores when refills ran
on a background thread).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numba import njit, prange

from gru4rec_kernels.parallel import parallel_region
from gru4rec_kernels.rng import MASK32, STREAM_SAMPLES, philox2x32, philox2x32_np, uniform53

__all__ = ["SampleStore", "sample_probabilities", "draw_samples_np"]

_CHUNK = 16384  # elements per prange task; the result does not depend on it


@njit(cache=True, nogil=True, inline="always")
def _draw_one(cdf, guide, key, refill, i):
    x0, x1 = philox2x32(i, refill, key)
    u = uniform53(x0, x1)
    k = int(u * (guide.size - 1))  # exact: the guide has a power of two of buckets
    lo = guide[k]
    hi = guide[k + 1]
    while lo < hi:  # first index with cdf[idx] > u  (np.searchsorted side="right"), inside u's bucket
        mid = (lo + hi) >> 1
        if cdf[mid] <= u:
            lo = mid + 1
        else:
            hi = mid
    return min(lo, cdf.size - 1)




@njit(parallel=True, nogil=True, cache=True)
def _fill_rows(cdf, guide, key, refills, starts, out):
    """out[t, j] = element starts[t] + j of refill refills[t] (the rows of several steps in one launch)."""
    T, S = out.shape
    n = T * S
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(n_chunks):
        for k in range(c * _CHUNK, min(c * _CHUNK + _CHUNK, n)):
            t = k // S
            j = k - t * S
            out[t, j] = _draw_one(cdf, guide, key, refills[t], starts[t] + j)


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


def _guide(cdf: np.ndarray) -> np.ndarray:
    """guide[k] = searchsorted(cdf, k / G, side="right") for k <= G, G a power of two >= len(cdf) (at most 2^20):
    a uniform u in [k / G, (k + 1) / G) has its searchsorted answer in [guide[k], guide[k + 1]], so a draw
    searches one bucket (a step or two) instead of all of cdf (12-20 dependent, mispredicted steps): the same
    ids, several times faster."""
    G = 1 << min(20, max(1, int(cdf.size - 1).bit_length()))
    return np.searchsorted(cdf, np.arange(G + 1, dtype=np.float64) / G, side="right").astype(np.int64)


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
    """The stream of ``n_sample`` ids per step drawn with replacement from P(i) ∝ support_i^alpha.

    The ids are those of the official store of ``store_size`` pre-drawn ids: step after step, the next
    ``n_sample`` elements of the current refill; when fewer than ``n_sample`` are left the tail is skipped and
    the next refill starts. ``store_size=0``: every step draws fresh ids (refill number = step number).
    ``next()`` gives one step's ids, ``next_many(T)`` the next T steps' as one [T, n_sample] array (one parallel
    launch; what the trainer uses between chunks).
    """

    def __init__(self, support: np.ndarray, alpha: float, store_size: int, n_sample: int, seed: int):
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
        self._guide = _guide(self._cdf)
        self.alpha = float(alpha)
        self.store_size = int(store_size)
        self.n_sample = int(n_sample)
        self.seed = int(seed)
        self._key = _key(seed)
        self._refill = 0
        self._pos = 0

    @property
    def n_items(self) -> int:
        return int(self._p.size)

    def probabilities(self) -> np.ndarray:
        """float64 [n_items]: the exact P(i) (the logq correction uses it for the sample columns)."""
        return self._p.copy()

    # ------------------------------------------------------------------ drawing
    def _positions(self, T: int) -> tuple[np.ndarray, np.ndarray]:
        """(refill, first element) of the next T steps, advancing the stream."""
        refills = np.empty(T, dtype=np.uint64)
        starts = np.empty(T, dtype=np.uint64)
        S, M = self.n_sample, self.store_size
        for t in range(T):
            if M == 0:
                refills[t], starts[t] = self._refill, 0
                self._refill += 1
                continue
            if self._pos + S > M:  # tail skip: the next refill starts
                self._refill += 1
                self._pos = 0
            refills[t], starts[t] = self._refill, self._pos
            self._pos += S
        return refills, starts

    def next_many(self, T: int) -> np.ndarray:
        """int32 [T, n_sample]: the ids of the next T steps."""
        if not _is_int(T) or T < 0:
            raise ValueError(f"T must be an int >= 0; got {T!r}")
        out = np.empty((T, self.n_sample), dtype=np.int32)
        if T and self.n_sample:
            refills, starts = self._positions(T)
            if out.size > _CHUNK:
                with parallel_region():
                    _fill_rows(self._cdf, self._guide, np.uint64(self._key), refills, starts, out)
            else:  # one chunk: skip the parallel launch (same ids either way)
                for t in range(T):
                    _fill_serial_from(self._cdf, self._guide, np.uint64(self._key), refills[t], starts[t], out[t])
        return out

    def next(self) -> np.ndarray:
        """int32 [n_sample]: the next step's ids."""
        return self.next_many(1)[0]

    __next__ = next

    def __iter__(self) -> "SampleStore":
        return self

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, int]:
        """{"refill": current refill number, "pos": next position in it} (store_size=0: refill = draws done)."""
        return {"refill": int(self._refill), "pos": int(self._pos)}

    def set_state(self, state: dict[str, int]) -> None:
        """Resume exactly where ``state()`` was taken."""
        try:
            refill, pos = int(state["refill"]), int(state["pos"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a SampleStore state: {e}") from None
        if refill < 0 or pos < 0 or (self.store_size and pos > self.store_size) or (not self.store_size and pos):
            raise ValueError(f"SampleStore state out of range: refill={refill}, pos={pos}, "
                             f"store_size={self.store_size}")
        self._refill, self._pos = refill, pos

    # ------------------------------------------------------------------ lifetime (nothing to release)
    def close(self) -> None:
        """Kept so callers can treat the store as a resource; there is no thread or buffer to release."""

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@njit(nogil=True, cache=True)
def _fill_serial_from(cdf, guide, key, refill, start, out):
    for j in range(out.size):
        out[j] = _draw_one(cdf, guide, key, refill, start + j)
