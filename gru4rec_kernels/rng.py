"""Counter-based random numbers: Philox-2x32-10, the same bits in numpy, Numba CPU and numba.cuda.

Every random draw of the library is a pure function of (key, counter): the negative-sample store of refill
``r`` is ``philox(key=seed, counter=(i, r))`` for element ``i``; a dropout mask element is
``philox(key=seed ^ stream, counter=(element, step))``. Nothing depends on the thread count, the lane placement
or on how often a CUDA graph was replayed, and the numpy reference can rebuild any mask as an array.

``philox2x32`` below is written once, on scalars, with explicit 32-bit masking; it is compiled by ``numba.njit``
here and by ``numba.cuda.jit(device=True)`` in ``kernels/``; ``philox2x32_np`` is the same function over numpy
uint64 arrays (a vectorised twin for the reference and the tests).

Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC 2011 (Philox-2x32, 10 rounds).
"""
from __future__ import annotations

import numpy as np
from numba import njit

PHILOX_M = 0xD256D193
PHILOX_W = 0x9E3779B9
MASK32 = 0xFFFFFFFF

# Stream ids mixed into the key so that different random uses never share bits.
STREAM_SAMPLES = 0x5A3C0001
STREAM_DROPOUT = 0x0D7A0000  # + layer index (layer -1 = embedding dropout -> stream - 1 & MASK32)


def _philox2x32(c0, c1, k0):
    """Philox-2x32-10 of counter (c0, c1) under key k0; all uint32 values held in uint64. Returns (x0, x1)."""
    m = np.uint64(PHILOX_M)
    w = np.uint64(PHILOX_W)
    mask = np.uint64(MASK32)
    s32 = np.uint64(32)
    c0 = np.uint64(c0) & mask
    c1 = np.uint64(c1) & mask
    k = np.uint64(k0) & mask
    for _ in range(10):
        prod = m * c0
        hi = prod >> s32
        lo = prod & mask
        c0 = (hi ^ k ^ c1) & mask
        c1 = lo
        k = (k + w) & mask
    return c0, c1


philox2x32 = njit(cache=True, inline="always")(_philox2x32)


def philox2x32_np(c0, c1, k0):
    """Vectorised Philox-2x32-10 over numpy arrays (broadcast); returns two uint64 arrays of uint32 values."""
    m = np.uint64(PHILOX_M)
    w = np.uint64(PHILOX_W)
    mask = np.uint64(MASK32)
    s32 = np.uint64(32)
    c0 = np.asarray(c0).astype(np.uint64) & mask
    c1 = np.asarray(c1).astype(np.uint64) & mask
    k = np.uint64(int(k0) & MASK32)
    c0, c1 = np.broadcast_arrays(c0, c1)
    c0 = c0.copy()
    c1 = c1.copy()
    for _ in range(10):
        prod = m * c0
        hi = prod >> s32
        lo = prod & mask
        c0 = (hi ^ k ^ c1) & mask
        c1 = lo
        k = (k + w) & mask
    return c0, c1


def _uniform24(x):
    """uint32 (in uint64) -> float in [0, 1) with 24 random bits (exact in float32)."""
    return np.float64(np.uint64(x) >> np.uint64(8)) * (1.0 / 16777216.0)


uniform24 = njit(cache=True, inline="always")(_uniform24)


def _uniform53(x0, x1):
    """Two uint32 words -> float64 in [0, 1) with 53 random bits (fine enough for 10^9-item CDFs)."""
    hi = np.uint64(x0) >> np.uint64(5)  # 27 bits
    lo = np.uint64(x1) >> np.uint64(6)  # 26 bits
    return (np.float64(hi) * 67108864.0 + np.float64(lo)) * (1.0 / 9007199254740992.0)


uniform53 = njit(cache=True, inline="always")(_uniform53)


def dropout_key(seed: int, layer: int) -> int:
    """Key of the dropout stream of a layer (layer -1 is the input-embedding dropout)."""
    return (int(seed) ^ ((STREAM_DROPOUT + layer + 1) * 0x9E3779B1)) & MASK32


def dropout_mask_np(seed: int, layer: int, step: int, rows: int, cols: int, p: float,
                    dtype=np.float32) -> np.ndarray:
    """The scaled keep mask (0 or 1/(1-p)) that the fast backends draw in-kernel for (layer, step).

    Element (b, j) keeps iff uniform24(philox(counter=(b*cols + j, step), key=dropout_key(seed, layer))) >= p.
    """
    if p <= 0.0:
        return np.ones((rows, cols), dtype=dtype)
    idx = np.arange(rows * cols, dtype=np.uint64)
    x0, _ = philox2x32_np(idx, np.uint64(step), dropout_key(seed, layer))
    u = (x0 >> np.uint64(8)).astype(np.float64) * (1.0 / 16777216.0)
    keep = (u >= p).reshape(rows, cols)
    return (keep * (1.0 / (1.0 - p))).astype(dtype)
