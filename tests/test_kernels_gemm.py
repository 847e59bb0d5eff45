"""kernels/gemm.py (the step's SGEMM) against numpy's ``a @ b`` at awkward sizes, every transpose, accumulate,
split-K and grouped launches.

In the CUDA simulator (tests/conftest.py) with tiny tiles, so that every edge case (partial row / column
tiles, a K tail shorter than the slab, sizes of 1 and 0, K not a multiple of the split, more splits asked than
slabs) runs with several threads and barriers; the ``cupy`` variants (marked ``gpu``) run the default 64 x 64
tile on a device. Tolerance: float32 rounding of a K-term sum, against a float64 product.
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


def naive_split_sum(a, b, kc):
    """op-free A [M, K] B [K, N] as the split kernel sums it in float32 (the simulator has no FMA): each K range
    [s*kc, s*kc + kc) summed in increasing k from 0, then the ranges added in order to 0."""
    M, K = a.shape
    total = np.zeros((M, b.shape[1]), np.float32)
    for k0 in range(0, K, kc):
        part = np.zeros_like(total)
        for k in range(k0, min(K, k0 + kc)):
            part += np.outer(a[:, k], b[k, :]).astype(np.float32)
        total += part
    return total


def workspace(xp, plan):
    return xp.zeros(max(plan.work_size, 1), xp.float32), xp.zeros(max(plan.tickets_size, 1), xp.int32)


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


# (M, N, K, splits asked): K not a multiple of the split, more splits than slabs (BK = 2), a split of a K shorter
# than one slab, K = 0, a single row / column, more splits than tiles
SPLITS = [(5, 7, 11, 3), (4, 4, 5, 10), (3, 9, 2, 4), (6, 5, 0, 3), (1, 1, 9, 2), (7, 1, 6, 5), (9, 10, 13, 7)]


@pytest.mark.parametrize("mode", kg.MODES)
def test_split_k_matches_numpy(xp, mode):
    ta, tb = mode[0] == "t", mode[1] == "t"
    tile = kg.SIM_TILE if xp is np else kg.TILE
    BK = tile[2]
    for n, (M, N, K, ask) in enumerate(SPLITS):
        a, b, c0 = problem(M, N, K, ta, tb, seed=n + 20)
        want = naive_matmul(a, b, ta, tb)
        for accumulate in (False, True):
            c = xp.array(c0)
            plan = kg.plan_gemm([(c, xp.array(a), xp.array(b), ta, tb, accumulate)], tile, splits=ask)
            (s,), (kc,) = plan.splits, plan.kcs
            assert s <= ask and (s == 1 or (kc % BK == 0 and (s - 1) * kc < K <= s * kc)), (M, N, K, ask, s, kc)
            work, tickets = workspace(xp, plan)
            kg.launch_plan(plan, work, tickets)
            w = want + c0 if accumulate else want
            np.testing.assert_allclose(host(c), w, rtol=0, atol=tol(K) * (1 + np.abs(w).max(initial=0)),
                                       err_msg=f"{mode} M,N,K={M},{N},{K} splits={s} accumulate={accumulate}")
            assert not host(tickets).any(), "the last block of each tile must leave its ticket at 0"


def test_split_k_is_deterministic_and_sums_the_ranges_in_order():
    """Every run gives the same bits; in the simulator exactly the float32 sum of each K range, the ranges then
    added in split order (whichever block finished last)."""
    M, N, K = 6, 5, 17
    a, b, _ = problem(M, N, K, False, False, seed=3)
    outs = []
    for _ in range(3):  # the same workspace and tickets again: the tickets were reset by the last run
        c = np.zeros((M, N), np.float32)
        plan = kg.plan_gemm([(c, a, b)], kg.SIM_TILE, splits=4)
        if not outs:
            work, tickets = workspace(np, plan)
        kg.launch_plan(plan, work, tickets)
        outs.append(c)
    assert plan.splits == [3] and plan.kcs == [6]  # ceil(17 / 4) = 5 -> 6 (a multiple of BK = 2) -> 3 ranges
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    if SIM:
        np.testing.assert_array_equal(outs[0], naive_split_sum(a, b, 6))


def test_split_policy_fills_a_wave():
    """split_k: no block longer than the launch's slabs per SM (but at least min_slabs), so a small launch gets
    about a wave of blocks and in a group only the long-K products split; the W1 / W3 products of
    bench/gpu_bench.py at the device tile (BK = 16)."""
    T = kg.TILE
    assert kg.split_k([(32, 2080, 64)], T, 132, 4) == [(1, 64)]  # K of 4 slabs: too short to split
    assert kg.split_k([(32, 2080, 100)], T, 132, 4) == [(2, 64)]  # S = h Wy[Y]^T: 33 tiles x 2 = 66 blocks
    assert kg.split_k([(2080, 2080, 4096)], T, 132, 4) == [(1, 4096)]  # 1089 tiles x 256 slabs: no split
    assert kg.split_k([(32, 100, 2080)], T, 132, 4) == [(33, 64)]  # dh = dZ Wy[Y]: 2 tiles x 33 = 66 blocks
    # with one-slab splits: the wave, less what rounding the ranges up to whole slabs costs (2080 / 32 = 65)
    assert kg.split_k([(32, 100, 2080)], T, 132, 1) == [(65, 32)]
    # W1's backward-top group: dh splits as alone, dWy rows and dBy (K = B = 32) do not
    assert kg.split_k([(32, 100, 2080), (2080, 100, 32), (1, 2080, 32)], T, 132, 4) == [(33, 64), (1, 32), (1, 32)]
    # W3's weight gradients (B = 128, H = 512): 408 tiles of 8 slabs already fill the GPU; only dx = da Wx^T
    # (16 tiles, K = 1536 = 96 slabs) is split, to the launch's 37 slabs per SM
    H, B = 512, 128
    got = kg.split_k([(H, 2 * H, B), (H, H, B), (1, 3 * H, B), (H, 3 * H, B), (B, H, 3 * H)], T, 132, 4)
    assert got == [(1, B)] * 4 + [(3, 512)]
    for shapes in ([(1, 1, 1)], [(3, 5, 70)], [(64, 64, 1000), (7, 130, 33)], [(0, 5, 100), (5, 5, 0)]):
        for s, kc in kg.split_k(shapes, T, 132, 2):
            assert s >= 1 and (s == 1 or (kc % 16 == 0 and kc >= 32))


# Products of one grouped launch: (M, N, K, ta, tb, accumulate); an empty one (M = 0), K = 0, and one long K
GROUP = [(5, 7, 3, False, False, False), (1, 9, 6, True, False, True), (7, 3, 9, False, True, False),
         (0, 4, 5, True, False, False), (4, 6, 0, False, True, True)]


@pytest.mark.parametrize("splits", [1, 3, None])
def test_grouped_matches_numpy(xp, splits):
    """Five products of every transpose in one launch, with or without splits, equal five separate products."""
    tile = kg.SIM_TILE if xp is np else kg.TILE
    probs, wants = [], []
    for n, (M, N, K, ta, tb, acc) in enumerate(GROUP):
        a, b, c0 = problem(M, N, K, ta, tb, seed=n + 40)
        w = naive_matmul(a, b, ta, tb)
        wants.append((w + c0 if acc else w, K))
        probs.append(kg.GemmProblem(xp.array(c0), xp.array(a), xp.array(b), ta, tb, acc))
    plan = kg.plan_gemm(probs, tile, target=16, splits=splits)
    if splits == 3:
        assert plan.splits == [2, 3, 3, 3, 1]  # K = 3 has two slabs of BK = 2; K = 0 never splits
    work, tickets = workspace(xp, plan)
    kg.launch_plan(plan, work, tickets)
    for n, (p, (w, K)) in enumerate(zip(probs, wants)):
        np.testing.assert_allclose(host(p.C), w, rtol=0, atol=tol(K) * (1 + np.abs(w).max(initial=0)),
                                   err_msg=f"product {n} of the group, splits {plan.splits}")
    assert not host(tickets).any()


def test_column_sum_is_the_ones_product():
    """1^T a (the step's dBy, dBh): exactly numpy's a.sum(axis=0) (row order; products by 1 are exact)."""
    a = np.random.default_rng(4).normal(size=(3, 11)).astype(np.float32)
    out = np.zeros((1, 11), np.float32)
    kg.launch_gemm(out, np.ones((3, 1), np.float32), a, ta=True)
    if SIM:
        np.testing.assert_array_equal(out[0], a.sum(axis=0))
    else:
        np.testing.assert_allclose(out[0], a.sum(axis=0), rtol=1e-6)


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
        # the same product split for a wave, and inside a group
        c2 = cupy.zeros((M, N), cupy.float32)
        one = cupy.ones((1, 1), cupy.float32)
        plan = kg.plan_gemm([(c2, cupy.asarray(a), cupy.asarray(b), ta, tb), (c2[:1].copy(), one, one)])
        work, tickets = workspace(cupy, plan)
        kg.launch_plan(plan, work, tickets)
        np.testing.assert_allclose(c2.get(), want, rtol=0, atol=tol(K) * (1 + np.abs(want).max()))
        assert not tickets.get().any()


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
    with pytest.raises(ValueError, match="a split needs work"):
        kg.launch_gemm(f32(3, 4), f32(3, 5), f32(5, 4), splits=2)
    good = (f32(3, 4), f32(3, 5), f32(5, 4))
    with pytest.raises(ValueError, match="1..5 products"):
        kg.plan_gemm([good] * 6)
    with pytest.raises(ValueError, match="1..5 products"):
        kg.plan_gemm([])
    with pytest.raises(ValueError, match="product 1: gemm shapes do not chain"):
        kg.plan_gemm([good, (f32(3, 4), f32(3, 5), f32(6, 4))])
    with pytest.raises(ValueError, match="splits must be"):
        kg.plan_gemm([good], splits=0)
    plan = kg.plan_gemm([(f32(3, 4), f32(3, 9), f32(9, 4))], kg.SIM_TILE, splits=3)
    assert plan.work_size > 0 and plan.tickets_size > 0
    with pytest.raises(ValueError, match="needs work"):
        kg.launch_plan(plan)
    with pytest.raises(ValueError, match="workspace too small"):
        kg.launch_plan(plan, f32(plan.work_size - 1), np.zeros(plan.tickets_size, np.int32))
    with pytest.raises(ValueError, match="tickets must have dtype int32"):
        kg.launch_plan(plan, f32(plan.work_size), np.zeros(plan.tickets_size, np.int64))
