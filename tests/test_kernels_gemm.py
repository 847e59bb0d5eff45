"""kernels/gemm.py (the step's SGEMM) against numpy's ``a @ b`` at awkward sizes, every transpose, accumulate.

In the CUDA simulator (tests/conftest.py) with tiny tiles, so that every edge case (partial row / column
tiles, a K tail shorter than the slab, sizes of 1 and 0) runs with several threads and barriers; the ``cupy``
variants (marked ``gpu``) run the default 64 x 64 tile on a device. Tolerance: float32 rounding of a K-term sum,
against a float64 product.
"""
from __future__ import annotations

import numpy as np
import pytest

from gru4rec_kernels.kernels import gemm as kg
from gru4rec_kernels.kernels.common import SIM


def naive_matmul(a, b, ta, tb):
    """op(a) op(b) in float64, by the definition (no BLAS)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a.T if ta else a
    b = b.T if tb else b
    M, K = a.shape
    N = b.shape[1]
    out = np.zeros((M, N))
    for k in range(K):
        out += np.outer(a[:, k], b[k, :])
    return out


def tol(K):
    return 4 * max(K, 1) * np.finfo(np.float32).eps


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    import cupy
    return cupy


def host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def problem(M, N, K, ta, tb, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(K, M) if ta else (M, K)).astype(np.float32)
    b = rng.normal(size=(N, K) if tb else (K, N)).astype(np.float32)
    c0 = rng.normal(size=(M, N)).astype(np.float32)
    return a, b, c0


# simulator tiles: the default tiny one, and a non-square one with TM != TN
TILES = [kg.SIM_TILE, (6, 4, 3, 3, 1)]
SIZES = [(1, 1, 1), (5, 7, 3), (9, 4, 11), (3, 10, 1), (1, 9, 5), (7, 1, 6), (4, 4, 2), (6, 5, 0)]


@pytest.mark.parametrize("mode", kg.MODES)
@pytest.mark.parametrize("tile", TILES, ids=lambda t: "x".join(map(str, t)))
def test_gemm_matches_numpy(xp, mode, tile):
    ta, tb = mode[0] == "t", mode[1] == "t"
    if xp is not np:
        tile = None  # the device default
    for n, (M, N, K) in enumerate(SIZES):
        a, b, c0 = problem(M, N, K, ta, tb, seed=n)
        want = naive_matmul(a, b, ta, tb)
        for accumulate in (False, True):
            c = xp.array(c0)
            kg.launch_gemm(c, xp.array(a), xp.array(b), ta=ta, tb=tb, accumulate=accumulate, tile=tile)
            got = host(c)
            w = want + c0 if accumulate else want
            np.testing.assert_allclose(got, w, rtol=0, atol=tol(K) * (1 + np.abs(w).max(initial=0)),
                                       err_msg=f"{mode} M,N,K={M},{N},{K} accumulate={accumulate} tile={tile}")


def test_gemm_is_deterministic_and_equals_float32_sum_order():
    """Same bits on every run; in the simulator exactly numpy's float32 sum in increasing k (no FMA there)."""
    M, N, K = 5, 6, 13
    a, b, _ = problem(M, N, K, False, False, seed=7)
    outs = []
    for _ in range(2):
        c = np.zeros((M, N), np.float32)
        kg.launch_gemm(c, a, b)
        outs.append(c)
    np.testing.assert_array_equal(outs[0], outs[1])
    if SIM:
        ref = np.zeros((M, N), np.float32)
        for k in range(K):
            ref += np.outer(a[:, k], b[k, :]).astype(np.float32)
        np.testing.assert_array_equal(outs[0], ref)


@pytest.mark.gpu
def test_gemm_large_on_device():
    """The default tile on sizes of the W1 step and a K that crosses many slabs."""
    import cupy
    for (M, N, K), mode in [((32, 2080, 100), "nt"), ((2080, 100, 32), "tn"), ((32, 100, 2080), "nn"),
                            ((130, 67, 1000), "nn")]:
        ta, tb = mode[0] == "t", mode[1] == "t"
        a, b, _ = problem(M, N, K, ta, tb, seed=M)
        c = cupy.zeros((M, N), cupy.float32)
        kg.launch_gemm(c, cupy.asarray(a), cupy.asarray(b), ta=ta, tb=tb)
        want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        np.testing.assert_allclose(c.get(), want, rtol=0, atol=tol(K) * (1 + np.abs(want).max()))


def test_gemm_rejects_bad_input():
    f32 = lambda *s: np.zeros(s, np.float32)
    with pytest.raises(ValueError, match="do not chain"):
        kg.launch_gemm(f32(3, 4), f32(3, 5), f32(6, 4))
    with pytest.raises(ValueError, match="do not chain"):
        kg.launch_gemm(f32(3, 4), f32(3, 5), f32(5, 4), tb=True)
    with pytest.raises(ValueError, match="B must have dtype float32"):
        kg.launch_gemm(f32(3, 4), f32(3, 5), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="A must be C-contiguous"):
        kg.launch_gemm(f32(3, 4), f32(5, 3).T, f32(5, 4))
    with pytest.raises(ValueError, match="C must be 2-D"):
        kg.launch_gemm(f32(12), f32(3, 5), f32(5, 4))
    with pytest.raises(ValueError, match="ta and tb"):
        kg.launch_gemm(f32(3, 4), f32(5, 3), f32(4, 5), ta=True, tb=True)
    with pytest.raises(ValueError, match="tile"):
        kg.launch_gemm(f32(3, 4), f32(3, 5), f32(5, 4), tile=(4, 4, 2, 3, 2))
    kg.launch_gemm(f32(0, 4), f32(0, 5), f32(5, 4))  # empty: nothing to launch
