"""GEMMs without BLAS: one micro-kernel in LLVM IR and the tile loops around it (every product of the backend).

Why no BLAS. On this project's 2-core machines Numba's OpenMP workers keep spinning after a parallel region and
OpenBLAS's threads after a GEMM: interleaving BLAS GEMMs (numpy's or Numba's ``np.dot``) with ``prange``
kernels measured 10-40x slower than either alone (a 0.3 ms group of GEMMs took 7 ms), and a single-threaded
BLAS inside ``prange`` needs a process-wide OpenBLAS setting. So every product goes through one micro-kernel
written in LLVM IR (a Numba intrinsic): an 8 x 32 tile of C held in 16 AVX-512 registers (8 x 16 in AVX2
registers without AVX-512), masked loads / stores at the edges, raw addresses and element strides so that one
kernel serves A B, A^T B and a transposed store. It measured 70-80 GFMA/s per core here (single-threaded
OpenBLAS: ~50), and ``prange`` over tiles uses both cores. The loop vectoriser alone never keeps such a tile
in registers (4x4 dot-product tiles reached 25-30 GFMA/s). Inside ``prange`` bodies arrays are indexed, never
sliced per iteration: a view takes an atomic reference on the shared array, and thousands of those per region
measured 5x slower.

    mk_rows1/2, mk_cols1/2, mk_acc1/2   the micro-kernel: store, transposed store, accumulate (1 or 2 vectors)
    tiles                               serial loop over the tiles of one product (inside other kernels)
    gemm / mm / mm_tn                   parallel C = A B (strided; plain; A^T B)
    transpose / gemm_nt                 C = A B^T as C^T = B A^T through the micro-kernel (dc U_h^T, da Wx^T)
    job / gemm_batch                    several independent products in one parallel region
"""
from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

FM_SUM = {"reassoc", "contract"}  # GEMMs and plain sums only: vectorised reductions and FMA


@intrinsic
def prefetch(typingctx, addr):
    """Software prefetch of the cache line at byte address addr (llvm.prefetch: read, keep in all levels)."""
    sig = types.void(types.uintp)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        ptr = builder.inttoptr(args[0], ir.IntType(8).as_pointer())
        fn = builder.module.globals.get("llvm.prefetch.p0") or ir.Function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name="llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, error_model="numpy", inline="always")
def prefetch_row(base, row, row_bytes, row_stride):
    """Prefetch every cache line of the row_bytes bytes of row ``row`` of a matrix at base whose rows lie
    row_stride bytes apart (= row_bytes when C-contiguous; more for a block of columns)."""
    start = base + row * row_stride
    for off in range(0, row_bytes, 64):
        prefetch(start + off)


if numba.config.DISABLE_JIT:  # pure Python (coverage runs): a prefetch is only a hint
    def prefetch_row(base, row, row_bytes, row_stride):  # noqa: F811
        return None


# ============================================================================================== GEMMs
# The micro-kernel: one MR x (NV VW) tile of C = A @ B accumulated in MR NV vector registers of VW float32 lanes:
#     for k < K:  b_v = B[k, v VW:(v+1) VW] (NV vector loads);  acc[r][v] += broadcast(A[r, k]) * b_v
# written as LLVM IR (a Numba intrinsic), because the loop vectoriser never keeps an outer-product tile in
# registers. It reads A and B and writes C through raw addresses with element strides, so one kernel serves
# A @ B, A^T @ B and a transposed store (C^T). The tile must fit the register file with room for the NV loaded
# B vectors and the broadcast A value, or LLVM spills accumulators inside the k loop: with AVX-512 (32
# registers, VW = 16) the tile is 8 x 32 (16 accumulators); with AVX2 (16 registers, VW = 8) it is 6 x 16 (12
# accumulators + 2 + 1 = 15 registers; the 8 x 16 tile used before spilled and ran at 25-40 GFLOP/s per core on
# a Zen 3 EPYC where 6 x 16 runs at 60-70). The k loop exists twice: with plain vector loads when the tile has
# all its columns (the common case), and with masked loads at the right edge (nvalid < NV VW), so that no mask
# occupies registers in the full loop. Stores are plain for a full tile and masked otherwise (rows >= mvalid
# and lanes >= nvalid are never written). Every C element is the k-ordered chain of its own products:
# deterministic, whatever the tiling and the thread count.
VW = 16 if llvm.get_host_cpu_features().get("avx512f", False) else 8
MR = 8 if VW == 16 else 6


def _microkernel(NV: int, transposed_store: bool = False, accumulate: bool = False):
    f32 = ir.FloatType()
    i1 = ir.IntType(1)
    i32 = ir.IntType(32)
    i64 = ir.IntType(64)
    vty = ir.VectorType(f32, VW)
    mty = ir.VectorType(i1, VW)
    i32v = ir.VectorType(i32, VW)
    pty = vty.as_pointer()
    W = NV * VW

    @intrinsic
    def kernel(typingctx, a_addr, a_rs, a_ks, b_addr, b_ks, c_addr, c_rs, c_cs, K, mvalid, nvalid):
        sig = types.void(types.uintp, types.intp, types.intp, types.uintp, types.intp, types.uintp, types.intp,
                         types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_addr, a_rs, a_ks, b_addr, b_ks, c_addr, c_rs, c_cs, K, mvalid, nvalid = args
            mod = builder.module
            mload = mod.globals.get(f"llvm.masked.load.v{VW}f32.p0") or ir.Function(
                mod, ir.FunctionType(vty, [pty, i32, mty, vty]), name=f"llvm.masked.load.v{VW}f32.p0")
            mstore = mod.globals.get(f"llvm.masked.store.v{VW}f32.p0") or ir.Function(
                mod, ir.FunctionType(ir.VoidType(), [vty, pty, i32, mty]), name=f"llvm.masked.store.v{VW}f32.p0")
            A = builder.inttoptr(a_addr, f32.as_pointer())
            Bp = builder.inttoptr(b_addr, f32.as_pointer())
            C = builder.inttoptr(c_addr, f32.as_pointer())
            zero = ir.Constant(vty, [0.0] * VW)
            splat = ir.Constant(i32v, [0] * VW)
            align = ir.Constant(i32, 4)

            def broadcast(value, vtype):
                v = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(i32, 0))
                return builder.shuffle_vector(v, ir.Constant(vtype, ir.Undefined), splat)

            def colmasks():  # lanes < nvalid, per vector (i32 compares: one register each)
                nv = broadcast(builder.trunc(nvalid, i32), i32v)
                return [builder.icmp_signed("<", ir.Constant(i32v, [v * VW + lane for lane in range(VW)]), nv)
                        for v in range(NV)]

            def bptr(row, v):
                return builder.bitcast(builder.gep(row, [ir.Constant(i64, v * VW)]), pty)

            # row r of A is read from row min(r, mvalid - 1): rows past the edge stay in bounds (never stored)
            last = builder.sub(mvalid, ir.Constant(i64, 1))
            arow = []
            for r in range(MR):
                rr = ir.Constant(i64, r)
                arow.append(builder.mul(builder.select(builder.icmp_signed("<", rr, mvalid), rr, last), a_rs))
            full_cols = builder.icmp_signed(">=", nvalid, ir.Constant(i64, W))
            done = builder.append_basic_block("mk.done")

            def k_loop(name, masks):
                """The k loop from a fresh block; returns (exit block, accumulators at the exit)."""
                pre = builder.block
                head = builder.append_basic_block(f"mk.{name}.head")
                body = builder.append_basic_block(f"mk.{name}.body")
                builder.branch(head)
                builder.position_at_end(head)
                k = builder.phi(i64)
                k.add_incoming(ir.Constant(i64, 0), pre)
                acc = [[None] * NV for _ in range(MR)]
                for r in range(MR):
                    for v in range(NV):
                        acc[r][v] = builder.phi(vty)
                        acc[r][v].add_incoming(zero, pre)
                builder.cbranch(builder.icmp_signed("<", k, K), body, done)
                builder.position_at_end(body)
                brow = builder.gep(Bp, [builder.mul(k, b_ks)])
                if masks is None:
                    b = [builder.load(bptr(brow, v), align=4) for v in range(NV)]
                else:
                    b = [builder.call(mload, [bptr(brow, v), align, masks[v], zero]) for v in range(NV)]
                ka = builder.mul(k, a_ks)
                for r in range(MR):
                    av = broadcast(builder.load(builder.gep(A, [builder.add(ka, arow[r])]), align=4), vty)
                    for v in range(NV):
                        acc[r][v].add_incoming(builder.fadd(acc[r][v], builder.fmul(av, b[v], flags=("contract",)),
                                                            flags=("contract",)), body)
                k.add_incoming(builder.add(k, ir.Constant(i64, 1)), body)
                builder.branch(head)
                return head, acc

            full_blk = builder.append_basic_block("mk.full")
            edge_blk = builder.append_basic_block("mk.edge")
            builder.cbranch(full_cols, full_blk, edge_blk)
            builder.position_at_end(full_blk)
            f_exit, f_acc = k_loop("f", None)
            builder.position_at_end(edge_blk)
            e_exit, e_acc = k_loop("e", colmasks())
            builder.position_at_end(done)
            acc = [[None] * NV for _ in range(MR)]
            for r in range(MR):
                for v in range(NV):
                    acc[r][v] = builder.phi(vty)
                    acc[r][v].add_incoming(f_acc[r][v], f_exit)
                    acc[r][v].add_incoming(e_acc[r][v], e_exit)
            if transposed_store:  # lane l of vector v -> C[r c_rs + (v VW + l) c_cs]; full tiles only
                for r in range(MR):
                    row = builder.mul(ir.Constant(i64, r), c_rs)
                    for v in range(NV):
                        for lane in range(VW):
                            off = builder.add(row, builder.mul(ir.Constant(i64, v * VW + lane), c_cs))
                            builder.store(builder.extract_element(acc[r][v], ir.Constant(i32, lane)),
                                          builder.gep(C, [off]), align=4)
                return context.get_dummy_value()
            full_tile = builder.and_(full_cols, builder.icmp_signed(">=", mvalid, ir.Constant(i64, MR)))
            st_full = builder.append_basic_block("mk.store.full")
            st_edge = builder.append_basic_block("mk.store.edge")
            end = builder.append_basic_block("mk.end")
            builder.cbranch(full_tile, st_full, st_edge)
            builder.position_at_end(st_full)
            for r in range(MR):
                row = builder.gep(C, [builder.mul(ir.Constant(i64, r), c_rs)])
                for v in range(NV):
                    ptr = bptr(row, v)
                    out = acc[r][v]
                    if accumulate:  # C += tile
                        out = builder.fadd(builder.load(ptr, align=4), out)
                    builder.store(out, ptr, align=4)
            builder.branch(end)
            builder.position_at_end(st_edge)
            masks = colmasks()
            for r in range(MR):
                row = builder.gep(C, [builder.mul(ir.Constant(i64, r), c_rs)])
                rowok = broadcast(builder.icmp_signed("<", ir.Constant(i64, r), mvalid), mty)
                for v in range(NV):
                    ptr = bptr(row, v)
                    mask = builder.and_(masks[v], rowok)
                    out = acc[r][v]
                    if accumulate:
                        out = builder.fadd(builder.call(mload, [ptr, align, mask, zero]), out)
                    builder.call(mstore, [out, ptr, align, mask])
            builder.branch(end)
            builder.position_at_end(end)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


def _python_microkernel(NV: int, transposed_store: bool = False, accumulate: bool = False):
    """The micro-kernel's contract in plain Python over the raw addresses, for NUMBA_DISABLE_JIT=1 (coverage
    and debugging runs, where an LLVM intrinsic cannot execute). Same tile, masks and summation order."""
    import ctypes

    def view(addr, n):
        return np.ctypeslib.as_array(ctypes.cast(int(addr), ctypes.POINTER(ctypes.c_float)), shape=(int(n),))

    def kernel(a_addr, a_rs, a_ks, b_addr, b_ks, c_addr, c_rs, c_cs, K, mvalid, nvalid):
        W = NV * VW
        n = min(W, nvalid) if not transposed_store else W
        A = view(a_addr, (mvalid - 1) * a_rs + max(K - 1, 0) * a_ks + 1)
        B = view(b_addr, max(K - 1, 0) * b_ks + n)
        C = view(c_addr, (MR - 1) * c_rs + (W - 1) * c_cs + 1)
        for r in range(min(MR, mvalid)):
            acc = np.zeros(n, dtype=np.float32)
            for k in range(K):
                acc += np.float32(A[r * a_rs + k * a_ks]) * B[k * b_ks:k * b_ks + n]
            idx = r * c_rs + np.arange(n) * c_cs
            C[idx] = C[idx] + acc if accumulate else acc

    return kernel


def _pack_strip():
    """pack_strip(src, src_ks, dst, K, nvalid): dst[k 2VW + n] = src[k src_ks + n] for k < K, n < min(nvalid,
    2 VW) (lanes past nvalid are zero: masked loads). The strip of B that every row tile reads is copied once into
    contiguous rows (a packed panel, as BLAS does): read in place, B's rows lie a row stride apart (2-6 KB at
    H = 512), so every k of every tile touched another page (TLB misses) and the GRU products ran at about half
    of numpy's BLAS."""
    f32 = ir.FloatType()
    i1 = ir.IntType(1)
    i32 = ir.IntType(32)
    i64 = ir.IntType(64)
    vty = ir.VectorType(f32, VW)
    mty = ir.VectorType(i1, VW)
    i32v = ir.VectorType(i32, VW)
    pty = vty.as_pointer()

    @intrinsic
    def pack(typingctx, src, src_ks, dst, K, nvalid):
        sig = types.void(types.uintp, types.intp, types.uintp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            src, src_ks, dst, K, nvalid = args
            mod = builder.module
            mload = mod.globals.get(f"llvm.masked.load.v{VW}f32.p0") or ir.Function(
                mod, ir.FunctionType(vty, [pty, i32, mty, vty]), name=f"llvm.masked.load.v{VW}f32.p0")
            S = builder.inttoptr(src, f32.as_pointer())
            D = builder.inttoptr(dst, f32.as_pointer())
            zero = ir.Constant(vty, [0.0] * VW)
            nv = builder.insert_element(ir.Constant(i32v, ir.Undefined), builder.trunc(nvalid, i32),
                                        ir.Constant(i32, 0))
            nv = builder.shuffle_vector(nv, ir.Constant(i32v, ir.Undefined), ir.Constant(i32v, [0] * VW))
            masks = [builder.icmp_signed("<", ir.Constant(i32v, [v * VW + lane for lane in range(VW)]), nv)
                     for v in range(2)]
            pre = builder.block
            head = builder.append_basic_block("pk.head")
            body = builder.append_basic_block("pk.body")
            done = builder.append_basic_block("pk.done")
            builder.branch(head)
            builder.position_at_end(head)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), pre)
            builder.cbranch(builder.icmp_signed("<", k, K), body, done)
            builder.position_at_end(body)
            row = builder.gep(S, [builder.mul(k, src_ks)])
            out = builder.gep(D, [builder.mul(k, ir.Constant(i64, 2 * VW))])
            for v in range(2):
                sp = builder.bitcast(builder.gep(row, [ir.Constant(i64, v * VW)]), pty)
                val = builder.call(mload, [sp, ir.Constant(i32, 4), masks[v], zero])
                builder.store(val, builder.bitcast(builder.gep(out, [ir.Constant(i64, v * VW)]), pty), align=4)
            k.add_incoming(builder.add(k, ir.Constant(i64, 1)), body)
            builder.branch(head)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return pack


def _python_pack_strip():
    import ctypes

    def view(addr, n):
        return np.ctypeslib.as_array(ctypes.cast(int(addr), ctypes.POINTER(ctypes.c_float)), shape=(int(n),))

    def pack(src, src_ks, dst, K, nvalid):
        n = min(nvalid, 2 * VW)
        S = view(src, max(K - 1, 0) * src_ks + n)
        D = view(dst, K * 2 * VW)
        for k in range(K):
            D[k * 2 * VW:k * 2 * VW + n] = S[k * src_ks:k * src_ks + n]

    return pack


_make = _python_microkernel if numba.config.DISABLE_JIT else _microkernel
mk_rows2 = _make(2)
mk_rows1 = _make(1)
mk_cols2 = _make(2, transposed_store=True)
mk_cols1 = _make(1, transposed_store=True)
mk_acc2 = _make(2, accumulate=True)
mk_acc1 = _make(1, accumulate=True)
pack_strip = _python_pack_strip() if numba.config.DISABLE_JIT else _pack_strip()


# ALIVE. Numba frees a local array at the end of the block of its last use, and a raw address keeps nothing
# alive: an array allocated in an ``if`` whose address alone is used after it is freed there, and the next
# allocation may take its memory (measured: a buffer filled with 3.0, freed so, read 7.0 from the next array).
# So a scratch array that the micro-kernel reads by address is itself used (``.ctypes.data``) where it is read.
# B rows at least this many floats apart (2 KB: two rows per 4 KB page) are packed per strip (pack_strip); closer
# rows share pages and are read in place (packing a strip that only a few row tiles read, at B = 32, cost more
# than it saved).
PACK_STRIDE = 512


# Tile order. Every product of the step has a small M (the B rows, or a 128-column chunk) against a large N
# and / or K, so the tiles run column strip by column strip: the K x 2 VW strip of B (at most ~100 KB) stays in
# L1 / L2 while every row tile of A passes over it, and A (at most a few hundred KB, or a weight matrix read
# once per strip) stays in L2 or streams from L3. Row tile by row tile instead re-read all of B from L3 for every
# MR rows (a 2 MB Wrz 22 times per product at H = 512). With prange each thread takes whole strips.
@njit(cache=True, error_model="numpy", inline="always")
def tiles(pa, a_rs, a_ks, pb, b_ks, pc, c_rs, M, N, K, accumulate):
    """Serial loop over the tiles of C (M x N, row stride c_rs) = / += A @ B, on raw addresses (see gemm)."""
    W2 = 2 * VW
    for j in range(0, N, W2):
        nv = min(W2, N - j)
        for i in range(0, M, MR):
            mv = min(MR, M - i)
            a = pa + 4 * i * a_rs
            b = pb + 4 * j
            c = pc + 4 * (i * c_rs + j)
            if accumulate:
                if nv > VW:
                    mk_acc2(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)
                else:
                    mk_acc1(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)
            elif nv > VW:
                mk_rows2(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)
            else:
                mk_rows1(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)


@njit(parallel=True, fastmath=FM_SUM, cache=True, error_model="numpy")
def gemm(A, a_rs, a_ks, Bm, b_ks, C, c_rs, c_cs, M, N, K):
    """C[m c_rs + n c_cs] = sum_{k<K} A[m a_rs + k a_ks] * Bm[k b_ks + n] for m < M, n < N.

    A, Bm, C: flat float32 arrays (views), strides in elements; Bm rows must be contiguous (stride 1 along n).
    Column strips of 2 VW (the last 1 VW wide when that covers the rest) outer, see ``tiles``: each parallel
    iteration packs its strip of Bm (``pack_strip``) and runs row tiles of MR rows over it (all of them, or one
    of a few fixed groups when there are too few strips to keep the threads busy); through the micro-kernel
    (masked at the edges) when C rows are contiguous (c_cs == 1); with a transposed C (c_cs != 1) full tiles use
    the lane-by-lane store and edge tiles go through a small row-major tile buffer, copied out element by
    element."""
    W2 = 2 * VW
    mb = (M + MR - 1) // MR
    nb = (N + W2 - 1) // W2
    groups = max(1, min(mb, 8 // max(nb, 1)))  # fixed by the shape, never by the thread count
    pa = A.ctypes.data
    pb = Bm.ctypes.data
    pc = C.ctypes.data
    for t in prange(nb * groups):
        j = (t // groups) * W2
        g = t % groups
        nv = min(W2, N - j)
        # the strip in place, or packed when B's rows lie far apart (see PACK_STRIDE); the panel is read through
        # panel.ctypes.data in the tile loop so that it lives until the last tile (see ALIVE)
        packed = b_ks >= PACK_STRIDE
        panel = np.empty(max(K, 1) * W2 if packed else 1, dtype=np.float32)
        ps = W2 if packed else b_ks
        if packed:
            pack_strip(pb + 4 * j, b_ks, panel.ctypes.data, K, nv)
        for ib in range(mb * g // groups, mb * (g + 1) // groups):
            pp = panel.ctypes.data if packed else pb + 4 * j
            i = ib * MR
            mv = min(MR, M - i)
            pa_i = pa + 4 * i * a_rs
            if c_cs == 1:
                pc_ij = pc + 4 * (i * c_rs + j)
                if nv > VW:
                    mk_rows2(pa_i, a_rs, a_ks, pp, ps, pc_ij, c_rs, c_cs, K, mv, nv)
                else:
                    mk_rows1(pa_i, a_rs, a_ks, pp, ps, pc_ij, c_rs, c_cs, K, mv, nv)
            elif mv == MR and (nv == W2 or nv == VW):
                pc_ij = pc + 4 * (i * c_rs + j * c_cs)
                if nv == W2:
                    mk_cols2(pa_i, a_rs, a_ks, pp, ps, pc_ij, c_rs, c_cs, K, mv, nv)
                else:
                    mk_cols1(pa_i, a_rs, a_ks, pp, ps, pc_ij, c_rs, c_cs, K, mv, nv)
            else:  # an edge tile of a transposed store (a few per product)
                tile = np.empty(MR * W2, dtype=np.float32)
                mk_rows2(pa_i, a_rs, a_ks, pp, ps, tile.ctypes.data, W2, 1, K, mv, nv)
                for m in range(mv):
                    for n in range(nv):
                        C[(i + m) * c_rs + (j + n) * c_cs] = tile[m * W2 + n]


@njit(cache=True, error_model="numpy")
def transpose(A, AT):
    """AT[k, m] = A[m, k] (A [M, K], AT [K, >= M]), in 8 x 8 blocks."""
    M, K = A.shape
    for m0 in range(0, M, 8):
        for k0 in range(0, K, 8):
            for m in range(m0, min(m0 + 8, M)):
                for k in range(k0, min(k0 + 8, K)):
                    AT[k, m] = A[m, k]


@njit(cache=True, error_model="numpy")
def gemm_nt(A, Bm, C, AT):
    """C[M, N] = A[M, K] @ Bm[N, K]^T (the products with a transposed weight matrix, dc U_h^T and da Wx^T),
    through the micro-kernel as C^T = Bm @ A^T: A is transposed into the scratch AT [K, >= M] (A has the few B
    rows, Bm is the weight matrix, read in place), and C^T's tiles are stored transposed into C."""
    M, K = A.shape
    N = Bm.shape[0]
    transpose(A, AT)
    gemm(Bm.reshape(-1), K, 1, AT.reshape(-1), AT.shape[1], C.reshape(-1), 1, N, N, M, K)


@njit(cache=True, error_model="numpy")
def mm(A, Bm, C):
    """C = A @ Bm (2-D C-contiguous float32; A [M, K], Bm [K, N], C [M, N])."""
    M, K = A.shape
    N = Bm.shape[1]
    gemm(A.reshape(-1), K, 1, Bm.reshape(-1), N, C.reshape(-1), N, 1, M, N, K)


@njit(cache=True, error_model="numpy")
def mm_tn(A, Bm, C):
    """C = A^T @ Bm (A [K, M], Bm [K, N], C [M, N])."""
    K, M = A.shape
    N = Bm.shape[1]
    gemm(A.reshape(-1), 1, M, Bm.reshape(-1), N, C.reshape(-1), N, 1, M, N, K)


@njit(cache=True, error_model="numpy", inline="always")
def job(jobs, q, A, a_rs, a_ks, Bm, b_ks, C, c_rs, M, N, K):
    """Describe product q of a gemm_batch: C[m c_rs + n] = sum_k A[m a_rs + k a_ks] Bm[k b_ks + n]."""
    jobs[q, 0] = A.ctypes.data
    jobs[q, 1] = a_rs
    jobs[q, 2] = a_ks
    jobs[q, 3] = Bm.ctypes.data
    jobs[q, 4] = b_ks
    jobs[q, 5] = C.ctypes.data
    jobs[q, 6] = c_rs
    jobs[q, 7] = M
    jobs[q, 8] = N
    jobs[q, 9] = K


@njit(parallel=True, cache=True, error_model="numpy")
def gemm_batch(jobs, n):
    """n independent products described by job, in ONE parallel region: the prange runs over the column strips
    of all of them (the small GRU GEMMs have too few strips each to keep two threads busy); each iteration packs
    its strip and runs all of its product's row tiles over it, as ``gemm``."""
    W2 = 2 * VW
    total = 0
    for q in range(n):
        jobs[q, 10] = total  # first strip of product q
        total += (jobs[q, 8] + W2 - 1) // W2
    for t in prange(total):
        q = 0
        while q + 1 < n and jobs[q + 1, 10] <= t:
            q += 1
        M = jobs[q, 7]
        N = jobs[q, 8]
        K = jobs[q, 9]
        j = (t - jobs[q, 10]) * W2
        nv = min(W2, N - j)
        a_rs = jobs[q, 1]
        c_rs = jobs[q, 6]
        packed = jobs[q, 4] >= PACK_STRIDE
        panel = np.empty(max(K, 1) * W2 if packed else 1, dtype=np.float32)  # read in the loop: see ALIVE
        ps = W2 if packed else jobs[q, 4]
        if packed:
            pack_strip(np.uint64(jobs[q, 3] + 4 * j), jobs[q, 4], panel.ctypes.data, K, nv)
        for i in range(0, M, MR):
            pp = np.uint64(panel.ctypes.data) if packed else np.uint64(jobs[q, 3] + 4 * j)
            a = np.uint64(jobs[q, 0] + 4 * i * a_rs)
            c = np.uint64(jobs[q, 5] + 4 * (i * c_rs + j))
            mv = min(MR, M - i)
            if nv > VW:
                mk_rows2(a, a_rs, jobs[q, 2], pp, ps, c, c_rs, 1, K, mv, nv)
            else:
                mk_rows1(a, a_rs, jobs[q, 2], pp, ps, c, c_rs, 1, K, mv, nv)
