"""Tiled float32 SGEMM with a deterministic split-K, one product or a group per launch: every matrix product of
the cuda backend's step, without cuBLAS.

Why our own: CuPy refuses every cuBLAS call while a stream is being captured into a CUDA graph, and the whole
training step is captured (backends/cuda.py). A numba.cuda kernel launch is an ordinary graph node.

    gemm_nn   C[M, N] (+)= A[M, K]   B[K, N]        A, B stored as written
    gemm_nt   C[M, N] (+)= A[M, K]   B[N, K]^T      B stored [N, K]
    gemm_tn   C[M, N] (+)= A[K, M]^T B[K, N]        A stored [K, M]
    gemm_grouped   up to MAX_PROBLEMS independent products in one launch, each with its own shapes, transposes
                   and accumulate flag: blockIdx.x picks the product (a descriptor per product gives its first
                   block, column tiles, split, K per split, flags, workspace and ticket offsets)

Every operand is a row-major C-contiguous float32 matrix; ``accumulate`` adds to C instead of overwriting.
Shape letters: a block computes a BM x BN tile of C with (BM/TM) x (BN/TN) threads, each thread a TM x TN
register block at rows ty + i*(BM/TM), columns tx + j*(BN/TN) (strided, so that a warp's loads from shared
memory and its stores to C hit consecutive addresses). K advances in BK-wide slabs staged in shared memory; the
slab loads are bounds-checked (zero outside A, B), so any M, N, K >= 0 works. The tile sizes are compile-time
constants (``make_kernels``): the default tile (64 x 64, 4 x 4 per thread, 256 threads) for a GPU, tiny ones for
the CUDA simulator, where every thread is a Python thread. The single-product kernels fix the transposes at
compile time; the grouped kernel reads them from the descriptor and branches (block-uniformly) to one of three
inlined copies of the tile code, one per transpose pair: with the transposes as run-time values the kernel took
158 registers on sm_90 (one 256-thread block per SM) against 125 so (two, as the single kernels).

Split-K (``split_k``). A block walks its K range slab by slab, one global-load latency per slab, so a product with
few output tiles and a long K is latency-bound on a few SMs: on an H200, dh = dZ Wy[Y] of the W1 step (32 x 100,
K = 2080: 2 tiles of 64 x 64) took ~360 us on 2 blocks. So K is cut into ``splits`` ranges of ``kc`` (a multiple
of BK) such that no block of the launch walks more than L slabs: L = the launch's total slabs over
``target_blocks`` (its average work per SM; the SM count), but at least ``min_slabs`` (every split adds a
partial tile to sum). A launch of little work gets about one wave of blocks, and in a group only the products
whose K is long against the rest are split. W1 on an H200: dh into 33 ranges of 64 (66 blocks, beside the 99 of
its group's dWy rows and dBy), S = h Wy[Y]^T, x Wx, h U_rz, (r h) U_h and dc U_h^T into 2, dx0 = da Wx^T into 5.

Each split block writes its partial tile to a workspace; the last block of the tile to finish (an integer ticket
per tile, ``atomic.add``, after a ``threadfence``) sums the partials in split order 0, 1, ..., splits-1 and
stores C, then resets the ticket to 0 for the next launch (or graph replay). Why this and not a second reduction
kernel: no extra launch (the point here is fewer graph nodes), and the partials are read while still in L2.
Deterministic: the summation order is fixed whichever block finishes last, and without a split each C element is
one thread's sum over k in increasing order (the compiler may contract multiply-adds into FMAs: the same on every
run). The workspace and tickets are the caller's (``GemmPlan.work_size`` floats, ``GemmPlan.tickets_size`` int32
zeros), so a launch allocates nothing and can be captured; launches in one stream may share them. Products are
planned once (``plan_gemm``: shapes checked, splits chosen, descriptors built) and launched many times
(``launch_plan``); ``launch_gemm`` plans and launches one product (split only when given a workspace).

Reference: ``a @ b`` in numpy (reference.py's matrix products); tests/test_kernels_gemm.py compares them. A
column sum is the product 1^T a with a ones column, summed in row order exactly (the step's dBy, dBh).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import cuda, float32, int32

from .common import F0, SIM, ceil_div, check, get_kernel, target_blocks

#: (BM, BN, BK, TM, TN): the device default and the simulator's (4 threads per block: barriers still run).
TILE = (64, 64, 16, 4, 4)
SIM_TILE = (4, 4, 2, 2, 2)
MODES = ("nn", "nt", "tn")
#: Split-K: each split walks at least this many BK slabs (the device default; the simulator's tiny problems split
#: at one slab, so that the tests exercise the split path).
SPLIT_MIN_SLABS = 4
SIM_SPLIT_MIN_SLABS = 1
#: Products in one grouped launch, at most: the step's largest group is a layer's weight gradients dWrz, dWh,
#: dBh, dWx and its input gradient dx.
MAX_PROBLEMS = 5
# one product's descriptor in a grouped launch: blocks [START, END) of the launch are its tiles x splits
_START, _END, _TILES_N, _SPLITS, _KC, _FLAGS, _WORK, _TICKET = range(8)
_ND = 8
_TA, _TB, _ACC = 1, 2, 4  # _FLAGS bits


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


def _make_block(tile):
    """The device function every kernel runs: one BM x BN tile of C over one K range (every size a closure
    constant: shared and local array shapes must be compile-time constants)."""
    BM, BN, BK, TM, TN = tile
    NY, NX = BM // TM, BN // TN  # threads along the rows / columns of the C tile
    NT = NY * NX
    TILE_ELEMS = BM * BN

    @cuda.jit(device=True, inline="always")
    def gemm_block(C, A, B, ta, tb, accumulate, tm, tn, s, splits, kc, work, slot, tickets, ticket, As, Bs, last):
        """Tile (tm, tn) of C = op(A) op(B) over K range s: [s*kc, s*kc + kc). splits == 1: stored at once.
        Otherwise the partial tile goes to work[slot + s*TILE_ELEMS ...] and the tile's last block sums the
        partials of every split in order. As, Bs: the kernel's shared slabs; last: a shared int32 [1]."""
        M = C.shape[0]
        N = C.shape[1]
        K = A.shape[0] if ta else A.shape[1]
        acc = cuda.local.array((TM, TN), float32)
        ar = cuda.local.array(TM, float32)
        br = cuda.local.array(TN, float32)
        tid = cuda.threadIdx.x
        tx = tid % NX
        ty = tid // NX
        m0 = tm * BM
        n0 = tn * BN
        k_lo = s * kc
        k_hi = min(K, k_lo + kc)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = F0
        for k0 in range(k_lo, k_hi, BK):
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
                if gm < M and gk < k_hi:
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
                if gn < N and gk < k_hi:
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
        if splits > 1:
            # partial tile out (thread-major: coalesced), fence, take a ticket; the last block sums
            base = slot + s * TILE_ELEMS
            for i in range(TM):
                for j in range(TN):
                    work[base + (i * TN + j) * NT + tid] = acc[i, j]
            cuda.threadfence()
            cuda.syncthreads()
            if tid == 0:
                last[0] = 1 if cuda.atomic.add(tickets, ticket, 1) == splits - 1 else 0
            cuda.syncthreads()
            if last[0] == 0:
                return
            cuda.threadfence()
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = F0
            for q in range(splits):  # split order: the same sum whichever block came last
                base = slot + q * TILE_ELEMS
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += work[base + (i * TN + j) * NT + tid]
            if tid == 0:
                tickets[ticket] = 0  # ready for the next launch / graph replay
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

    return gemm_block


def _make(tile, block, ta: bool, tb: bool):
    """One product, transposes fixed at compile time (the branches fold away). Grid (N tiles, M tiles, splits)."""
    BM, BN, BK, TM, TN = tile
    PM, PN = BM + 1, BN + 1  # one padding column: the transposing slab stores do not conflict on a bank
    TILE_ELEMS = BM * BN

    def gemm(C, A, B, accumulate, splits, kc, work, tickets):
        As = cuda.shared.array((BK, PM), float32)  # As[k, m] = A(m0 + m, k0 + k)
        Bs = cuda.shared.array((BK, PN), float32)  # Bs[k, n] = B(k0 + k, n0 + n)
        last = cuda.shared.array(1, int32)
        t = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x  # tile index: its ticket and workspace slot
        block(C, A, B, ta, tb, accumulate, cuda.blockIdx.y, cuda.blockIdx.x, cuda.blockIdx.z, splits, kc, work,
              t * splits * TILE_ELEMS, tickets, t, As, Bs, last)

    gemm.__name__ = f"gemm_{'t' if ta else 'n'}{'t' if tb else 'n'}"
    gemm.__qualname__ = gemm.__name__
    return gemm


def _make_grouped(tile, block):
    """Up to MAX_PROBLEMS products in one launch; 1-D grid over every product's tiles x splits."""
    BM, BN, BK, TM, TN = tile
    PM, PN = BM + 1, BN + 1
    TILE_ELEMS = BM * BN

    def gemm_grouped(Cs, As_, Bs_, desc, work, tickets):
        """Cs, As_, Bs_: MAX_PROBLEMS-tuples of matrices (unused slots repeat a real one); desc: MAX_PROBLEMS
        descriptors of _ND int32, flattened (unused ones start and end at the grid's end)."""
        As = cuda.shared.array((BK, PM), float32)
        Bs = cuda.shared.array((BK, PN), float32)
        last = cuda.shared.array(1, int32)
        b = cuda.blockIdx.x
        p = 0
        while b >= desc[p * _ND + _END]:
            p += 1
        d = p * _ND
        splits = desc[d + _SPLITS]
        local = b - desc[d + _START]
        t = local // splits  # the product's tile, row-major over its tiles; the split fastest
        s = local - t * splits
        tm = t // desc[d + _TILES_N]
        tn = t - tm * desc[d + _TILES_N]
        flags = desc[d + _FLAGS]
        C = Cs[p]
        A = As_[p]
        B = Bs_[p]
        acc = flags & _ACC
        kc = desc[d + _KC]
        slot = desc[d + _WORK] + t * splits * TILE_ELEMS
        ticket = desc[d + _TICKET] + t
        # one inlined copy per transpose pair, so that each copy's slab loads are as in the single kernels
        if flags & _TA:
            block(C, A, B, True, False, acc, tm, tn, s, splits, kc, work, slot, tickets, ticket, As, Bs, last)
        elif flags & _TB:
            block(C, A, B, False, True, acc, tm, tn, s, splits, kc, work, slot, tickets, ticket, As, Bs, last)
        else:
            block(C, A, B, False, False, acc, tm, tn, s, splits, kc, work, slot, tickets, ticket, As, Bs, last)

    return gemm_grouped


_M = "float32[:, ::1]"
_WS = "float32[::1], int32[::1]"  # workspace, tickets
_SIG = f"void({_M}, {_M}, {_M}, int32, int32, int32, {_WS})"
_MT = f"UniTuple({_M}, {MAX_PROBLEMS})"
_GSIG = f"void({_MT}, {_MT}, {_MT}, UniTuple(int32, {MAX_PROBLEMS * _ND}), {_WS})"


def make_kernels(tile) -> dict:
    """``{gemm_nn, gemm_nt, gemm_tn, gemm_grouped: (pyfunc, [signature])}`` for one tile (BM, BN, BK, TM, TN)."""
    tile = _check_tile(tile)
    block = _make_block(tile)
    table = {f"gemm_{mode}": (_make(tile, block, mode[0] == "t", mode[1] == "t"), [_SIG]) for mode in MODES}
    table["gemm_grouped"] = (_make_grouped(tile, block), [_GSIG])
    return table


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


def default_min_slabs() -> int:
    return SIM_SPLIT_MIN_SLABS if SIM else SPLIT_MIN_SLABS


# ------------------------------------------------------------------------------------------------- planning
class GemmProblem(NamedTuple):
    """C = op(A) op(B) (``accumulate``: C += ...), op(X) = X^T when its flag is set: A stored [M, K] (or [K, M]
    with ``ta``), B [K, N] (or [N, K] with ``tb``)."""

    C: object
    A: object
    B: object
    ta: bool = False
    tb: bool = False
    accumulate: bool = False


def _shape(p: GemmProblem, name: str) -> tuple:
    if p.ta and p.tb:
        raise ValueError(f"{name}: ta and tb together (A^T B^T) is not supported; compute (B A)^T instead")
    M, N = check(f"{name}C", p.C, np.float32, 2)
    a0, a1 = check(f"{name}A", p.A, np.float32, 2)
    b0, b1 = check(f"{name}B", p.B, np.float32, 2)
    am, K = (a1, a0) if p.ta else (a0, a1)
    bk, bn = (b1, b0) if p.tb else (b0, b1)
    if am != M or bn != N or bk != K:
        raise ValueError(f"{name}gemm shapes do not chain: C {(M, N)} = {'A^T' if p.ta else 'A'} {(am, K)} x "
                         f"{'B^T' if p.tb else 'B'} {(bk, bn)} (stored A {(a0, a1)}, B {(b0, b1)})")
    return M, N, K


def _kc(K: int, splits: int, BK: int) -> tuple:
    """(splits, kc) for at most ``splits`` K ranges of kc (a multiple of BK): no range is empty."""
    if splits <= 1 or K <= BK:
        return 1, K
    kc = ceil_div(ceil_div(K, splits), BK) * BK
    return ceil_div(K, kc), kc


def split_k(shapes, tile, target: int, min_slabs: int) -> list:
    """[(splits, kc)] of the products (M, N, K) of one launch. Every block walks at most L slabs of BK,
    L = max(min_slabs, ceil(total / target)) with total = the launch's slabs (sum of tiles x ceil(K / BK)): no
    block is longer than the launch's average work per SM (a long-K product is not the critical path of its
    group), and a launch of little work still gets about ``target`` blocks (one wave)."""
    BM, BN, BK, _, _ = tile
    tiles = [ceil_div(M, BM) * ceil_div(N, BN) for M, N, _ in shapes]
    total = sum(t * ceil_div(K, BK) for t, (_, _, K) in zip(tiles, shapes))
    L = max(1, int(min_slabs), ceil_div(total, max(1, int(target))))
    return [_kc(K, ceil_div(ceil_div(K, BK), L), BK) if t else (1, K) for t, (_, _, K) in zip(tiles, shapes)]


class GemmPlan:
    """Products checked, split and described once, launched by ``launch_plan`` (no per-launch planning: the
    step's plans are built with its buffers). ``work_size`` / ``tickets_size``: the workspace floats and the
    zeroed int32 tickets a launch needs (0 without a split)."""

    def __init__(self, problems, tile, splits, kcs):
        self.problems = problems
        self.tile = tile
        self.splits = splits
        self.kcs = kcs
        BM, BN = tile[0], tile[1]
        self.tiles = [(ceil_div(p.C.shape[0], BM), ceil_div(p.C.shape[1], BN)) for p in problems]
        self.blocks = sum(tm * tn * s for (tm, tn), s in zip(self.tiles, splits))
        desc, work, ticket, start = [], 0, 0, 0
        self.offsets = []  # (workspace, ticket) offsets per product
        for (tm, tn), s, kc, p in zip(self.tiles, splits, kcs, problems):
            self.offsets.append((work, ticket))
            end = start + tm * tn * s
            flags = (_TA if p.ta else 0) | (_TB if p.tb else 0) | (_ACC if p.accumulate else 0)
            desc += [start, end, tn, s, kc, flags, work, ticket]
            if s > 1:
                work += tm * tn * s * BM * BN
                ticket += tm * tn
            start = end
        desc += [start, start, 1, 1, 0, 0, 0, 0] * (MAX_PROBLEMS - len(problems))
        self.desc = tuple(np.int32(v) for v in desc)
        self.work_size = work
        self.tickets_size = ticket


def plan_gemm(problems, tile=None, target=None, min_slabs=None, splits=None) -> GemmPlan:
    """Plan 1..MAX_PROBLEMS independent products (GemmProblem or (C, A, B[, ta, tb, accumulate]) tuples).

    ``splits``: None chooses the splits (``split_k`` for ``target`` blocks, default the device's
    ``target_blocks()``, and ``min_slabs``); an int asks every product for that many K ranges (1: no split; fewer
    when K is short: no range is empty)."""
    problems = [p if isinstance(p, GemmProblem) else GemmProblem(*p) for p in problems]
    if not 1 <= len(problems) <= MAX_PROBLEMS:
        raise ValueError(f"plan_gemm takes 1..{MAX_PROBLEMS} products; got {len(problems)}")
    tile = _check_tile(default_tile() if tile is None else tile)
    target = target_blocks() if target is None else int(target)
    min_slabs = default_min_slabs() if min_slabs is None else int(min_slabs)
    if splits is not None and (not isinstance(splits, (int, np.integer)) or splits < 1):
        raise ValueError(f"splits must be None or an int >= 1; got {splits!r}")
    shapes = [_shape(p, f"product {n}: " if len(problems) > 1 else "") for n, p in enumerate(problems)]
    if splits is None:
        chosen, kcs = zip(*split_k(shapes, tile, target, min_slabs))
    else:
        chosen, kcs = zip(*[_kc(K, int(splits), tile[2]) for _, _, K in shapes])
    chosen, kcs = list(chosen), list(kcs)
    if len(problems) == 1:  # grid (N tiles, M tiles, splits): y and z are at most 65535
        tm = ceil_div(problems[0].C.shape[0], tile[0])
        if tm > 65535 or chosen[0] > 65535:
            raise ValueError(f"gemm: {tm} row tiles or {chosen[0]} splits (> 65535); use a taller tile")
    return GemmPlan(problems, tile, chosen, kcs)


_no_work: dict = {}


def _no_workspace():
    """A workspace and tickets that a launch without a split passes but never touches (made once)."""
    w = _no_work.get("w")
    if w is None:
        if SIM:
            w = (np.zeros(1, np.float32), np.zeros(1, np.int32))
        else:  # pragma: no cover - needs a GPU
            w = (cuda.to_device(np.zeros(1, np.float32)), cuda.to_device(np.zeros(1, np.int32)))
        _no_work["w"] = w
    return w


# ------------------------------------------------------------------------------------------------- launchers
def launch_plan(plan: GemmPlan, work=None, tickets=None, stream=0):
    """Run a plan: one product on its compile-time kernel, several on ``gemm_grouped``. With a split, ``work``
    (float32, >= plan.work_size) and ``tickets`` (int32 zeros, >= plan.tickets_size; left zeroed) are required."""
    if plan.work_size:
        if work is None or tickets is None:
            raise ValueError(f"this gemm plan splits K: it needs work (>= {plan.work_size} float32) and tickets "
                             f"(>= {plan.tickets_size} int32 zeros)")
        (nw,) = check("work", work, np.float32, 1)
        (nt,) = check("tickets", tickets, np.int32, 1)
        if nw < plan.work_size or nt < plan.tickets_size:
            raise ValueError(f"gemm workspace too small: work {nw} < {plan.work_size} or tickets {nt} < "
                             f"{plan.tickets_size}")
    else:
        work, tickets = _no_workspace()
    if plan.blocks == 0:
        return
    BM, BN, _, TM, TN = plan.tile
    threads = (BM // TM) * (BN // TN)
    kernels = kernels_for(plan.tile)
    ps = plan.problems
    if len(ps) == 1:
        p = ps[0]
        (tm, tn), s = plan.tiles[0], plan.splits[0]
        name = f"gemm_{'t' if p.ta else 'n'}{'t' if p.tb else 'n'}"
        get_kernel(kernels, name)[(tn, tm, s), threads, stream](p.C, p.A, p.B, np.int32(bool(p.accumulate)),
                                                                np.int32(s), np.int32(plan.kcs[0]), work, tickets)
        return
    pad = [ps[0]] * (MAX_PROBLEMS - len(ps))
    Cs = tuple(p.C for p in ps + pad)
    As = tuple(p.A for p in ps + pad)
    Bs = tuple(p.B for p in ps + pad)
    get_kernel(kernels, "gemm_grouped")[plan.blocks, threads, stream](Cs, As, Bs, plan.desc, work, tickets)


def launch_gemm(C, A, B, ta: bool = False, tb: bool = False, accumulate: bool = False, tile=None, stream=0,
                work=None, tickets=None, splits=None, target=None):
    """C [M, N] = op(A) op(B) (``accumulate``: C += ...), op(X) = X^T when its flag is set: A is stored [M, K]
    (or [K, M] with ``ta``), B [K, N] (or [N, K] with ``tb``). All float32, 2-D, C-contiguous; C must not
    overlap A or B. ``tile`` (BM, BN, BK, TM, TN) defaults to TILE on a GPU, SIM_TILE in the simulator.
    K is split (``plan_gemm``'s ``splits`` / ``target``) only when a workspace is given."""
    if work is None and splits not in (None, 1):
        raise ValueError("gemm: a split needs work and tickets")
    plan = plan_gemm([GemmProblem(C, A, B, ta, tb, accumulate)], tile, target,
                     splits=1 if work is None else splits)
    launch_plan(plan, work, tickets, stream)
