"""Tiled float32 SGEMM: every matrix product of the cuda backend's step, without cuBLAS.

Why our own: CuPy refuses every cuBLAS call while a stream is being captured into a CUDA graph, and the whole
training step is captured (backends/cuda.py). A numba.cuda kernel launch is an ordinary graph node.

    gemm_nn   C[M, N] (+)= A[M, K]   B[K, N]        A, B stored as written
    gemm_nt   C[M, N] (+)= A[M, K]   B[N, K]^T      B stored [N, K]
    gemm_tn   C[M, N] (+)= A[K, M]^T B[K, N]        A stored [K, M]

Every operand is a row-major C-contiguous float32 matrix; ``accumulate`` = 1 adds to C instead of overwriting.
Shape letters: a block computes a BM x BN tile of C with (BM/TM) x (BN/TN) threads, each thread a TM x TN
register block at rows ty + i*(BM/TM), columns tx + j*(BN/TN) (strided, so that a warp's loads from shared
memory and its stores to C hit consecutive addresses). K advances in BK-wide slabs staged in shared memory; the
slab loads are bounds-checked (zero outside A, B), so any M, N, K >= 0 works.

Deterministic: each C element is one thread's sum over k in increasing order (no split-K, no atomics), so a run
gives the same bits every time (the compiler may contract the multiply-add into an FMA: same on every run). The
tile sizes and the transposes are compile-time constants (``make_kernels``): the default tile (64 x 64, 4 x 4 per
thread, 256 threads) for a GPU, tiny ones for the CUDA simulator, where every thread is a Python thread.
Speed (H200, measured once): correct but well behind cuBLAS where few tiles cover C and K is long, since a
block walks all of K alone: dh = dZ Wy[Y] of the W1 step (32 x 100, K = 2080, 2 blocks) takes ~360 us, and the
all-item score GEMM 512 x 700k (K = 100) ~9 ms against cuBLAS's ~2 ms. The next step would be a deterministic
split-K (per-slice partial tiles, then a fixed-order sum kernel) and a smaller tile for small outputs.
Reference: ``a @ b`` in numpy (reference.py's matrix products); tests/test_kernels_gemm.py compares them.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import F0, SIM, ceil_div, check, get_kernel

#: (BM, BN, BK, TM, TN): the device default and the simulator's (4 threads per block: barriers still run).
TILE = (64, 64, 16, 4, 4)
SIM_TILE = (4, 4, 2, 2, 2)
MODES = ("nn", "nt", "tn")


def _check_tile(tile) -> tuple:
    try:
        BM, BN, BK, TM, TN = (int(v) for v in tile)
    except (TypeError, ValueError):
        raise ValueError(f"tile must be (BM, BN, BK, TM, TN) ints; got {tile!r}") from None
    if min(BM, BN, BK, TM, TN) < 1 or BM % TM or BN % TN:
        raise ValueError(f"tile (BM, BN, BK, TM, TN) needs positive sizes with TM | BM and TN | BN; got {tile!r}")
    if (BM // TM) * (BN // TN) > 1024:
        raise ValueError(f"tile {tile!r} needs {(BM // TM) * (BN // TN)} threads per block (> 1024)")
    return BM, BN, BK, TM, TN


def _make(tile, ta: bool, tb: bool):
    """The kernel for one tile and one transpose pair: every size is a closure constant (shared array shapes
    must be compile-time constants; the transpose branches fold away)."""
    BM, BN, BK, TM, TN = tile
    NY, NX = BM // TM, BN // TN  # threads along the rows / columns of the C tile
    NT = NY * NX
    PM, PN = BM + 1, BN + 1  # one padding column: the transposing slab stores do not conflict on a bank

    def gemm(C, A, B, accumulate):
        M = C.shape[0]
        N = C.shape[1]
        K = A.shape[0] if ta else A.shape[1]
        As = cuda.shared.array((BK, PM), float32)  # As[k, m] = A(m0 + m, k0 + k)
        Bs = cuda.shared.array((BK, PN), float32)  # Bs[k, n] = B(k0 + k, n0 + n)
        acc = cuda.local.array((TM, TN), float32)
        ar = cuda.local.array(TM, float32)
        br = cuda.local.array(TN, float32)
        tid = cuda.threadIdx.x
        tx = tid % NX
        ty = tid // NX
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = F0
        for k0 in range(0, K, BK):
            # stage the slabs; consecutive threads read consecutive addresses of the stored matrix
            for e in range(tid, BM * BK, NT):
                if ta:  # A stored [K, M]: contiguous along m
                    kk = e // BM
                    mm = e % BM
                else:  # A stored [M, K]: contiguous along k
                    mm = e // BK
                    kk = e % BK
                gm = m0 + mm
                gk = k0 + kk
                v = F0
                if gm < M and gk < K:
                    v = A[gk, gm] if ta else A[gm, gk]
                As[kk, mm] = v
            for e in range(tid, BN * BK, NT):
                if tb:  # B stored [N, K]: contiguous along k
                    nn = e // BK
                    kk = e % BK
                else:  # B stored [K, N]: contiguous along n
                    kk = e // BN
                    nn = e % BN
                gn = n0 + nn
                gk = k0 + kk
                v = F0
                if gn < N and gk < K:
                    v = B[gn, gk] if tb else B[gk, gn]
                Bs[kk, nn] = v
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    ar[i] = As[kk, ty + i * NY]
                for j in range(TN):
                    br[j] = Bs[kk, tx + j * NX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ar[i] * br[j]
            cuda.syncthreads()
        for i in range(TM):
            m = m0 + ty + i * NY
            if m < M:
                for j in range(TN):
                    n = n0 + tx + j * NX
                    if n < N:
                        if accumulate != 0:
                            C[m, n] += acc[i, j]
                        else:
                            C[m, n] = acc[i, j]

    gemm.__name__ = f"gemm_{'t' if ta else 'n'}{'t' if tb else 'n'}"
    gemm.__qualname__ = gemm.__name__
    return gemm


_SIG = ["void(float32[:, ::1], float32[:, ::1], float32[:, ::1], int32)"]


def make_kernels(tile) -> dict:
    """``{gemm_nn, gemm_nt, gemm_tn: (pyfunc, [signature])}`` for one tile (BM, BN, BK, TM, TN)."""
    tile = _check_tile(tile)
    return {f"gemm_{mode}": (_make(tile, mode[0] == "t", mode[1] == "t"), list(_SIG)) for mode in MODES}


KERNELS = make_kernels(TILE)
_tables = {TILE: KERNELS}


def kernels_for(tile) -> dict:
    """The (cached) kernel table of a tile: one table per tile, so each compiles once."""
    tile = _check_tile(tile)
    t = _tables.get(tile)
    if t is None:
        t = _tables[tile] = make_kernels(tile)
    return t


def default_tile() -> tuple:
    return SIM_TILE if SIM else TILE


# ------------------------------------------------------------------------------------------------- launcher
def launch_gemm(C, A, B, ta: bool = False, tb: bool = False, accumulate: bool = False, tile=None, stream=0):
    """C [M, N] = op(A) op(B) (``accumulate``: C += ...), op(X) = X^T when its flag is set: A is stored [M, K]
    (or [K, M] with ``ta``), B [K, N] (or [N, K] with ``tb``). All float32, 2-D, C-contiguous; C must not
    overlap A or B. ``tile`` (BM, BN, BK, TM, TN) defaults to TILE on a GPU, SIM_TILE in the simulator."""
    if ta and tb:
        raise ValueError("gemm: ta and tb together (A^T B^T) is not supported; compute (B A)^T instead")
    M, N = check("C", C, np.float32, 2)
    a0, a1 = check("A", A, np.float32, 2)
    b0, b1 = check("B", B, np.float32, 2)
    am, K = (a1, a0) if ta else (a0, a1)
    bk, bn = (b1, b0) if tb else (b0, b1)
    if am != M or bn != N or bk != K:
        raise ValueError(f"gemm shapes do not chain: C {(M, N)} = {'A^T' if ta else 'A'} {(am, K)} x "
                         f"{'B^T' if tb else 'B'} {(bk, bn)} (stored A {(a0, a1)}, B {(b0, b1)})")
    BM, BN, _, TM, TN = tile = _check_tile(default_tile() if tile is None else tile)
    if M == 0 or N == 0:
        return
    name = f"gemm_{'t' if ta else 'n'}{'t' if tb else 'n'}"
    grid = (ceil_div(N, BN), ceil_div(M, BM))
    if grid[1] > 65535:
        raise ValueError(f"gemm: M = {M} needs {grid[1]} row blocks (> 65535); use a taller tile")
    get_kernel(kernels_for(tile), name)[grid, (BM // TM) * (BN // TN), stream](C, A, B, np.int32(bool(accumulate)))
