"""The Numba CPU backend: GRU4Rec v2 training and evaluation steps (DESIGN.md section 3) in Numba kernels.

It computes exactly ``reference.train_step`` (forward in the three input modes, scores, the five losses with
the reference's negatives mask, backward, global-norm clipping, dense and sparse Adagrad with momentum) and
``reference.hidden_step`` + ``score_all`` + ``rank_counts`` for evaluation, in float32, over its own arrays.
Shape letters: B rows, H_l units of layer l (H = H_L), N items, S samples, O = B + S output columns, X [B]
inputs, Y [O] = [targets | samples].

Kernels (the readable twin of each is the named reference function):

    _microkernel / _gemm / _gemm_batch   GEMM tiles in LLVM IR (below)                   every product
    _gemm_nt                          dot-product form, for dc U_h^T and da Wx^T          gru_bwd
    _embed_input / _onehot_input      x0 = emb[X] * keep mask (Philox, drawn in place)    forward
    _gates_rz / _gates_out            r, z, r h ; c, h' = ((1-z) h + z c) * keep mask     gru_fwd
    _scores                           Wy[Y] gathered, Z = h Wy[Y]^T                       forward
    _loss_rows                        per row: + By[Y] - col_logq, R = f(Z), loss, dZ     loss_and_grad, row_loss
    _score_grads                      Wy / By slots = dZ^T h, colsum dZ; dh = dZ Wy[Y]    backward
    _bwd_gates_a / _bwd_gates_b       dc, dz ; dr                                         gru_bwd
    _sumsq / _scale                   global-norm clipping                                clip_grads
    _adagrad_dense                    one pass over the flat dense buffer                 adagrad_dense
    _link_ids / _adagrad_rows         duplicate coalescing, row-wise Adagrad (Wy and By)  sparse_adagrad
    _rank_counts                      item tiles scored against all rows, then counted    score_all, rank_counts

``_train_chunk`` (plain ``@njit``) runs T whole steps per call (the Python side is entered once per chunk of
the schedule); ``train_step`` is a chunk of one step.

GEMMs without BLAS. On this project's 2-core machines Numba's OpenMP workers keep spinning after a parallel
region and OpenBLAS's threads after a GEMM: interleaving BLAS GEMMs (numpy's or Numba's ``np.dot``) with
``prange`` kernels measured 10-40x slower than either alone (a 0.3 ms group of GEMMs took 7 ms), and a
single-threaded BLAS inside ``prange`` needs a process-wide OpenBLAS setting. So every product goes through
one micro-kernel written in LLVM IR (a Numba intrinsic): an 8 x 32 tile of C held in 16 AVX-512 registers
(8 x 16 in AVX2 registers without AVX-512), masked loads / stores at the edges, raw addresses and element
strides so that one kernel serves A B, A^T B and a transposed store. It measured 70-80 GFMA/s per core here
(single-threaded OpenBLAS: ~50), and ``prange`` over tiles uses both cores. The loop vectoriser alone never
keeps such a tile in registers (4x4 dot-product tiles reached 25-30 GFMA/s). Inside ``prange`` bodies arrays
are indexed, never sliced per iteration: a view takes an atomic reference on the shared array, and thousands
of those per region measured 5x slower.

Memory layout. The dense parameters are views into ONE flat float32 buffer (``layout`` order), and so are
their Adagrad accumulators, momenta and gradients (``gflat``): the dense optimizer is one loop over flat
arrays. Sparse gradients are fixed-size row slots aligned with the step's ids, never coalesced in place:
``gWy`` [O (+ B in constrained mode), H] for the ids [Y | X], ``gBy`` [O] for Y, ``gSx`` [B, cols] for X
(E or one-hot Wx0). [gflat | gWy | gBy | gSx] is what a data-parallel all-reduce would pack.

Determinism. Every output element is written by one loop iteration whose arithmetic does not depend on the
thread that runs it (fixed tiles, fixed chunks); there are no atomics; sums across iterations (the clipping
norm, the row losses, the partial dh of ``_score_grads``) are split into fixed chunks and added in a fixed
order. Results are bit-identical from run to run and for any thread count. Duplicate ids are coalesced by a
serial linking pass (``_link_ids``: each slot in order is appended to the chain of its id, through a per-item
head array of size N restored to -1 afterwards) and a ``prange`` over the distinct ids in which each id adds
its chain serially, in slot order (the order of ``np.add.at`` in the reference), then updates its row: no
sort, no atomics. ``fastmath`` is limited to reassociation / contraction in the GEMMs and plain sums, and to
``arcp``/``afn`` in the Adagrad updates (g / sqrt(acc) may use the hardware reciprocal square root plus a
Newton step: 1-2 ulp); the loss and activation code keeps IEEE semantics (inf, nan).
"""
from __future__ import annotations

import math

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ..config import ACT_ELU, ACT_LINEAR, ACT_RELU, ACT_TANH, LOSS_CODES
from ..layout import allocate, dense_size
from ..reference import ADAGRAD_EPS, BPR_MAX_EPS
from ..rng import dropout_key, philox2x32, uniform24
from .base import Backend

_FM = {"reassoc", "contract"}  # GEMMs and plain sums only: vectorised reductions and FMA
_FM_OPT = {"contract", "arcp", "afn"}  # Adagrad: g / sqrt(a) may use the rsqrt estimate + a Newton step (1-2 ulp)
_CHUNK = 4096  # fixed chunk of the flat reductions / dense optimizer (never depends on the thread count)

MODE_CONSTRAINED, MODE_EMBEDDING, MODE_ONEHOT = 0, 1, 2
_MODES = {"constrained": MODE_CONSTRAINED, "embedding": MODE_EMBEDDING, "onehot": MODE_ONEHOT}
LOSS_CE, LOSS_BPR_MAX, LOSS_TOP1_MAX, LOSS_BPR, LOSS_TOP1 = (LOSS_CODES[k] for k in (
    "cross-entropy", "bpr-max", "top1-max", "bpr", "top1"))

# ip (int parameters) / fp (float parameters) slots of _train_chunk
I_MODE, I_LOSS, I_ACT, I_MASK_HITS, I_LOGQ, I_L, I_IN0, I_OX0, I_OM0, I_ODX0 = range(10)
F_ACT_A, F_BPREG, F_LR, F_MU, F_CAP, F_P_EMB, F_P_HID, F_BATCH = range(8)
# per-layer table (lay[l, :]): sizes, offsets of the layer's parameters in flat, of its hidden state in hid, and
# of its activation / gradient buffers in the workspace ws
(L_H, L_IN, L_WX, L_WRZ, L_WH, L_BH, L_HID, L_A, L_T2, L_R, L_Z, L_C, L_RH, L_T1, L_OUT, L_MASK, L_DA, L_DC,
 L_DRZ, L_DRH, L_DOUT, L_NCOL) = range(22)


# ============================================================================================== scalar math
@intrinsic
def _i64_as_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (to build 2**n in _exp64; vectorises)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32 (to build 2**n in _exp32; vectorises)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _prefetch(typingctx, addr):
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
def _prefetch_row(base, row, row_bytes):
    """Prefetch every cache line of row ``row`` of a C-contiguous matrix at base (row_bytes bytes per row)."""
    start = base + row * row_bytes
    for off in range(0, row_bytes, 64):
        _prefetch(start + off)


_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490  # Cody-Waite split of ln 2
_LN2_LO = 1.90821492927058770002e-10


@njit(cache=True, error_model="numpy", inline="always")
def _exp64(x):
    """exp(x) in float64 with relative error < 1e-12 (libm-free, so loops over it vectorise). Arguments are
    clamped to [-708, 709]: exp underflows to ~3e-308 instead of 0 and overflows to ~8e307 instead of inf,
    which is the same after rounding to float32 and inside 1 / (1 + e)."""
    if x < -708.0:
        x = -708.0
    if x > 709.0:
        x = 709.0
    nf = np.floor(x * _LOG2E + 0.5)
    r = (x - nf * _LN2_HI) - nf * _LN2_LO  # |r| <= ln(2) / 2: the degree-10 Taylor remainder is < 1e-12
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800))))))))))
    return p * _i64_as_f64((np.int64(nf) + 1023) << 52)


@njit(cache=True, error_model="numpy", inline="always")
def _exp32(x):
    """exp(x) in float32 for the softmax terms (x <= 0; clamped to 88 above): Cody-Waite reduction and the
    Cephes expf polynomial, about 1 ulp, vectorisable. exp(x) is flushed to 0 below x = -64 (e^-64 = 1.6e-28),
    so that the gradients built from it never become denormal numbers (slow in the GEMMs); the loss changes by
    < 1e-27 relative."""
    xc = x if not x < np.float32(-87.0) else np.float32(-87.0)  # written so that nan stays nan
    xc = xc if not xc > np.float32(88.0) else np.float32(88.0)
    nf = np.floor(xc * np.float32(_LOG2E) + np.float32(0.5))
    r = (xc - nf * np.float32(0.693359375)) - nf * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    # 2**nf from its bits (nf + 127) << 23, computed in float32 (exact) so that no lane widens to int64
    e = p * _i32_as_f32(np.int32((nf + np.float32(127.0)) * np.float32(8388608.0)))
    return e if not x < np.float32(-64.0) else np.float32(0.0)


@njit(cache=True, error_model="numpy", inline="always")
def _sigmoid(x):
    """1 / (1 + exp(-x)) in float64 (accurate for every x: no cancellation)."""
    return 1.0 / (1.0 + _exp64(-x))


@njit(cache=True, error_model="numpy", inline="always")
def _tanh(x):
    """tanh(x) in float64 as sign(x) (1 - 2 / (exp(2|x|) + 1)): absolute error < 1e-15."""
    t = 1.0 - 2.0 / (_exp64(2.0 * abs(x)) + 1.0)
    return t if x >= 0.0 else -t


@njit(cache=True, error_model="numpy", inline="always")
def _act(z, code, a):
    """Final activation R = f(Z) (float64 in, float64 out; the caller rounds to float32)."""
    if code == ACT_LINEAR:
        return z
    if code == ACT_TANH:
        return math.tanh(z)
    if code == ACT_RELU:
        return z if z > 0.0 else 0.0
    if code == ACT_ELU:
        return z if z > 0.0 else a * math.expm1(z)
    return z if z > 0.0 else a * z  # leaky


@njit(cache=True, error_model="numpy", inline="always")
def _act_grad(z, r, code, a):
    """dR/dZ given Z and R = f(Z)."""
    if code == ACT_LINEAR:
        return 1.0
    if code == ACT_TANH:
        return 1.0 - r * r
    if code == ACT_RELU:
        return 1.0 if z > 0.0 else 0.0
    if code == ACT_ELU:
        return 1.0 if z > 0.0 else r + a
    return 1.0 if z > 0.0 else a


@njit(cache=True, error_model="numpy", inline="always")
def _keep(key, step, element, p, scale):
    """Scaled keep-mask value of one dropout element, as rng.dropout_mask_np: counter (element, step)."""
    x0, _ = philox2x32(element, step, key)
    if uniform24(x0) >= p:
        return scale
    return np.float32(0.0)


# ============================================================================================== GEMMs
# The micro-kernel: one MR x (NV VW) tile of C = A @ B accumulated in MR NV vector registers of VW float32 lanes:
#     for k < K:  b_v = B[k, v VW:(v+1) VW] (NV vector loads);  acc[r][v] += broadcast(A[r, k]) * b_v
# written as LLVM IR (a Numba intrinsic), because the loop vectoriser never keeps an outer-product tile in
# registers. It reads A and B and writes C through raw addresses with element strides, so one kernel serves
# A @ B, A^T @ B and a transposed store (C^T). Partial tiles (mvalid < MR rows, nvalid < NV VW columns) use
# masked vector loads / stores, so edges cost the same as full tiles. 8 x 32 (16 accumulators of the 32 AVX-512
# registers) hides the FMA latency and measured 70-80 GFMA/s on one core here (8 x 16: 50-60); without AVX-512,
# VW = 8 (AVX2). Every C element is the k-ordered chain of its own products: deterministic, whatever the tiling
# and the thread count.
_VW = 16 if llvm.get_host_cpu_features().get("avx512f", False) else 8
_MR = 8


def _microkernel(NV: int, transposed_store: bool = False, accumulate: bool = False):
    f32 = ir.FloatType()
    i1 = ir.IntType(1)
    i32 = ir.IntType(32)
    i64 = ir.IntType(64)
    vty = ir.VectorType(f32, _VW)
    mty = ir.VectorType(i1, _VW)
    pty = vty.as_pointer()

    @intrinsic
    def kernel(typingctx, a_addr, a_rs, a_ks, b_addr, b_ks, c_addr, c_rs, c_cs, K, mvalid, nvalid):
        sig = types.void(types.uintp, types.intp, types.intp, types.uintp, types.intp, types.uintp, types.intp,
                         types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_addr, a_rs, a_ks, b_addr, b_ks, c_addr, c_rs, c_cs, K, mvalid, nvalid = args
            mod = builder.module
            mload = mod.globals.get(f"llvm.masked.load.v{_VW}f32.p0") or ir.Function(
                mod, ir.FunctionType(vty, [pty, i32, mty, vty]), name=f"llvm.masked.load.v{_VW}f32.p0")
            mstore = mod.globals.get(f"llvm.masked.store.v{_VW}f32.p0") or ir.Function(
                mod, ir.FunctionType(ir.VoidType(), [vty, pty, i32, mty]), name=f"llvm.masked.store.v{_VW}f32.p0")
            A = builder.inttoptr(a_addr, f32.as_pointer())
            Bp = builder.inttoptr(b_addr, f32.as_pointer())
            C = builder.inttoptr(c_addr, f32.as_pointer())
            zero = ir.Constant(vty, [0.0] * _VW)
            splat = ir.Constant(ir.VectorType(i32, _VW), [0] * _VW)
            align = ir.Constant(i32, 4)

            def broadcast(value, vtype):
                v = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(i32, 0))
                return builder.shuffle_vector(v, ir.Constant(vtype, ir.Undefined), splat)

            nv = broadcast(nvalid, ir.VectorType(i64, _VW))
            colmask = [builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, _VW), [v * _VW + l for l in range(_VW)]),
                                           nv) for v in range(NV)]  # lanes < nvalid
            # row r of A is read from row min(r, mvalid - 1): rows past the edge stay in bounds (never stored)
            last = builder.sub(mvalid, ir.Constant(i64, 1))
            arow = []
            for r in range(_MR):
                rr = ir.Constant(i64, r)
                arow.append(builder.mul(builder.select(builder.icmp_signed("<", rr, mvalid), rr, last), a_rs))
            entry = builder.block
            head = builder.append_basic_block("mk.head")
            body = builder.append_basic_block("mk.body")
            done = builder.append_basic_block("mk.done")
            builder.branch(head)
            builder.position_at_end(head)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            acc = [[None] * NV for _ in range(_MR)]
            for r in range(_MR):
                for v in range(NV):
                    acc[r][v] = builder.phi(vty)
                    acc[r][v].add_incoming(zero, entry)
            builder.cbranch(builder.icmp_signed("<", k, K), body, done)
            builder.position_at_end(body)
            brow = builder.gep(Bp, [builder.mul(k, b_ks)])
            b = [builder.call(mload, [builder.bitcast(builder.gep(brow, [ir.Constant(i64, v * _VW)]), pty), align,
                                      colmask[v], zero]) for v in range(NV)]
            ka = builder.mul(k, a_ks)
            new = [[None] * NV for _ in range(_MR)]
            for r in range(_MR):
                av = broadcast(builder.load(builder.gep(A, [builder.add(ka, arow[r])]), align=4), vty)
                for v in range(NV):
                    new[r][v] = builder.fadd(acc[r][v], builder.fmul(av, b[v], flags=("contract",)),
                                             flags=("contract",))
            k.add_incoming(builder.add(k, ir.Constant(i64, 1)), builder.block)
            for r in range(_MR):
                for v in range(NV):
                    acc[r][v].add_incoming(new[r][v], builder.block)
            builder.branch(head)
            builder.position_at_end(done)
            for r in range(_MR):
                row = builder.mul(ir.Constant(i64, r), c_rs)
                if transposed_store:  # lane l of vector v -> C[r c_rs + (v VW + l) c_cs]; full tiles only
                    for v in range(NV):
                        for lane in range(_VW):
                            off = builder.add(row, builder.mul(ir.Constant(i64, v * _VW + lane), c_cs))
                            builder.store(builder.extract_element(acc[r][v], ir.Constant(i32, lane)),
                                          builder.gep(C, [off]), align=4)
                    continue
                rowok = broadcast(builder.icmp_signed("<", ir.Constant(i64, r), mvalid), mty)
                for v in range(NV):
                    ptr = builder.bitcast(builder.gep(C, [builder.add(row, ir.Constant(i64, v * _VW))]), pty)
                    mask = builder.and_(colmask[v], rowok)
                    out = acc[r][v]
                    if accumulate:  # C += tile
                        out = builder.fadd(builder.call(mload, [ptr, align, mask, zero]), out)
                    builder.call(mstore, [out, ptr, align, mask])
            return context.get_dummy_value()

        return sig, codegen

    return kernel


_mk_rows2 = _microkernel(2)
_mk_rows1 = _microkernel(1)
_mk_cols2 = _microkernel(2, transposed_store=True)
_mk_cols1 = _microkernel(1, transposed_store=True)
_mk_acc2 = _microkernel(2, accumulate=True)
_mk_acc1 = _microkernel(1, accumulate=True)


@njit(cache=True, error_model="numpy", inline="always")
def _tiles(pa, a_rs, a_ks, pb, b_ks, pc, c_rs, M, N, K, accumulate):
    """Serial loop over the tiles of C (M x N, row stride c_rs) = / += A @ B, on raw addresses (see _gemm)."""
    W2 = 2 * _VW
    for i in range(0, M, _MR):
        mv = min(_MR, M - i)
        for j in range(0, N, W2):
            nv = min(W2, N - j)
            a = pa + 4 * i * a_rs
            b = pb + 4 * j
            c = pc + 4 * (i * c_rs + j)
            if accumulate:
                if nv > _VW:
                    _mk_acc2(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)
                else:
                    _mk_acc1(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)
            elif nv > _VW:
                _mk_rows2(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)
            else:
                _mk_rows1(a, a_rs, a_ks, b, b_ks, c, c_rs, 1, K, mv, nv)


_SG_CHUNK = 128  # output columns per chunk of _score_grads
_SG_GROUPS = 8  # fixed groups of chunks, each with its own partial dh (never depends on the thread count)


@njit(parallel=True, cache=True, error_model="numpy")
def _score_grads(dZ, WyY, top, gW, gb, dh_part, dh, O):
    """The backward of the scores in one pass over dZ and Wy[Y] (reference.backward, first lines):
        gW[j] = sum_i dZ[i, j] h[i]            (the Wy slot rows of the O columns)
        gb[j] = sum_i dZ[i, j]                  (the By slots, rows added in order)
        dh    = dZ[:, :O] Wy[Y]                 (the gradient w.r.t. the top hidden state)
    The O columns are cut into chunks of _SG_CHUNK; a fixed group of consecutive chunks per iteration computes
    their gW rows and adds their share of dh into its own partial sum (dZ and Wy[Y] chunk stay in cache for
    both products); dh = the partials added in group order. dZ [Bp, Op], WyY [Op, H], top [B, H]."""
    B, H = top.shape
    Op = dZ.shape[1]
    nchunk = (O + _SG_CHUNK - 1) // _SG_CHUNK
    pz = dZ.ctypes.data
    pw = WyY.ctypes.data
    ph = top.ctypes.data
    pg = gW.ctypes.data
    pp = dh_part.ctypes.data
    for g in prange(_SG_GROUPS):
        part = pp + 4 * g * B * H
        for i in range(B):
            for k in range(H):
                dh_part[g, i, k] = 0.0
        for c in range(nchunk * g // _SG_GROUPS, nchunk * (g + 1) // _SG_GROUPS):
            j0 = c * _SG_CHUNK
            kc = min(_SG_CHUNK, O - j0)
            # gW[j0:j0+kc] = dZ[:, j0:j0+kc]^T h : A = dZ^T (row stride 1, k stride Op), K = B
            _tiles(pz + 4 * j0, 1, Op, ph, H, pg + 4 * j0 * H, H, kc, H, B, False)
            gbc = gb[j0:j0 + kc]
            gbc[:] = 0.0
            for i in range(B):
                for jj in range(kc):
                    gbc[jj] += dZ[i, j0 + jj]
            # partial dh += dZ[:, j0:j0+kc] Wy[Y][j0:j0+kc] : K = kc
            _tiles(pz + 4 * j0, Op, 1, pw + 4 * j0 * H, H, part, H, B, H, kc, True)
    for i in range(B):
        for k in range(H):
            s = dh_part[0, i, k]
            for g in range(1, _SG_GROUPS):
                s += dh_part[g, i, k]
            dh[i, k] = s


@njit(parallel=True, fastmath=_FM, cache=True, error_model="numpy")
def _gemm(A, a_rs, a_ks, Bm, b_ks, C, c_rs, c_cs, M, N, K):
    """C[m c_rs + n c_cs] = sum_{k<K} A[m a_rs + k a_ks] * Bm[k b_ks + n] for m < M, n < N.

    A, Bm, C: flat float32 arrays (views), strides in elements; Bm rows must be contiguous (stride 1 along n).
    One tile of C per iteration: MR rows x 2 VW columns, the last column tile 1 VW wide when that covers the
    rest; all through the micro-kernel (masked at the edges) when C rows are contiguous (c_cs == 1); with a
    transposed C (c_cs != 1) full tiles use the lane-by-lane store and partial tiles a plain loop."""
    W2 = 2 * _VW
    mb = (M + _MR - 1) // _MR
    nfull = N // W2
    rest = N - nfull * W2
    nb = nfull + (1 if rest > 0 else 0)
    pa = A.ctypes.data
    pb = Bm.ctypes.data
    pc = C.ctypes.data
    for t in prange(mb * nb):
        i = (t // nb) * _MR
        j = (t % nb) * W2
        mv = min(_MR, M - i)
        nv = min(W2, N - j)
        pa_i = pa + 4 * i * a_rs
        pb_j = pb + 4 * j
        if c_cs == 1:
            pc_ij = pc + 4 * (i * c_rs + j)
            if nv > _VW:
                _mk_rows2(pa_i, a_rs, a_ks, pb_j, b_ks, pc_ij, c_rs, c_cs, K, mv, nv)
            else:
                _mk_rows1(pa_i, a_rs, a_ks, pb_j, b_ks, pc_ij, c_rs, c_cs, K, mv, nv)
        elif mv == _MR and (nv == W2 or nv == _VW):
            pc_ij = pc + 4 * (i * c_rs + j * c_cs)
            if nv == W2:
                _mk_cols2(pa_i, a_rs, a_ks, pb_j, b_ks, pc_ij, c_rs, c_cs, K, mv, nv)
            else:
                _mk_cols1(pa_i, a_rs, a_ks, pb_j, b_ks, pc_ij, c_rs, c_cs, K, mv, nv)
        else:
            for m in range(i, i + mv):
                for n in range(j, j + nv):
                    s = np.float32(0.0)
                    for k in range(K):
                        s += A[m * a_rs + k * a_ks] * Bm[k * b_ks + n]
                    C[m * c_rs + n * c_cs] = s


@njit(parallel=True, fastmath=_FM, cache=True, error_model="numpy")
def _gemm_nt(A, Bm, C):
    """C[M, N] = A[M, K] @ Bm[N, K]^T, dot-product form (for the products with a transposed weight matrix,
    dc U_h^T and da Wx^T): a 4x4 tile of C per iteration, 16 accumulators that LLVM vectorises along K."""
    M = C.shape[0]
    N = C.shape[1]
    K = A.shape[1]
    mb = (M + 3) // 4
    nb = (N + 3) // 4
    for t in prange(mb * nb):
        i = (t % mb) * 4
        j = (t // mb) * 4
        if i + 4 <= M and j + 4 <= N:
            s00 = np.float32(0.0); s01 = np.float32(0.0); s02 = np.float32(0.0); s03 = np.float32(0.0)
            s10 = np.float32(0.0); s11 = np.float32(0.0); s12 = np.float32(0.0); s13 = np.float32(0.0)
            s20 = np.float32(0.0); s21 = np.float32(0.0); s22 = np.float32(0.0); s23 = np.float32(0.0)
            s30 = np.float32(0.0); s31 = np.float32(0.0); s32 = np.float32(0.0); s33 = np.float32(0.0)
            for k in range(K):
                x0 = A[i, k]; x1 = A[i + 1, k]; x2 = A[i + 2, k]; x3 = A[i + 3, k]
                y0 = Bm[j, k]; y1 = Bm[j + 1, k]; y2 = Bm[j + 2, k]; y3 = Bm[j + 3, k]
                s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3
                s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3
                s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3
                s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3
            C[i, j] = s00; C[i, j + 1] = s01; C[i, j + 2] = s02; C[i, j + 3] = s03
            C[i + 1, j] = s10; C[i + 1, j + 1] = s11; C[i + 1, j + 2] = s12; C[i + 1, j + 3] = s13
            C[i + 2, j] = s20; C[i + 2, j + 1] = s21; C[i + 2, j + 2] = s22; C[i + 2, j + 3] = s23
            C[i + 3, j] = s30; C[i + 3, j + 1] = s31; C[i + 3, j + 2] = s32; C[i + 3, j + 3] = s33
        else:
            for ii in range(i, min(i + 4, M)):
                for jj in range(j, min(j + 4, N)):
                    s = np.float32(0.0)
                    for k in range(K):
                        s += A[ii, k] * Bm[jj, k]
                    C[ii, jj] = s


@njit(cache=True, error_model="numpy")
def _mm(A, Bm, C):
    """C = A @ Bm (2-D C-contiguous float32; A [M, K], Bm [K, N], C [M, N])."""
    M, K = A.shape
    N = Bm.shape[1]
    _gemm(A.reshape(-1), K, 1, Bm.reshape(-1), N, C.reshape(-1), N, 1, M, N, K)


@njit(cache=True, error_model="numpy")
def _mm_tn(A, Bm, C):
    """C = A^T @ Bm (A [K, M], Bm [K, N], C [M, N])."""
    K, M = A.shape
    N = Bm.shape[1]
    _gemm(A.reshape(-1), 1, M, Bm.reshape(-1), N, C.reshape(-1), N, 1, M, N, K)


@njit(cache=True, error_model="numpy", inline="always")
def _job(jobs, q, A, a_rs, a_ks, Bm, b_ks, C, c_rs, M, N, K):
    """Describe product q of a _gemm_batch: C[m c_rs + n] = sum_k A[m a_rs + k a_ks] Bm[k b_ks + n]."""
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
def _gemm_batch(jobs, n):
    """n independent products described by _job, in ONE parallel region: the prange runs over the tiles of all
    of them (the small GRU GEMMs have too few tiles each to keep two threads busy)."""
    W2 = 2 * _VW
    total = 0
    for q in range(n):
        jobs[q, 10] = total  # first tile of product q
        total += ((jobs[q, 7] + _MR - 1) // _MR) * ((jobs[q, 8] + W2 - 1) // W2)
    for t in prange(total):
        q = 0
        while q + 1 < n and jobs[q + 1, 10] <= t:
            q += 1
        M = jobs[q, 7]
        N = jobs[q, 8]
        nb = (N + W2 - 1) // W2
        tt = t - jobs[q, 10]
        i = (tt // nb) * _MR
        j = (tt % nb) * W2
        a_rs = jobs[q, 1]
        c_rs = jobs[q, 6]
        a = np.uint64(jobs[q, 0] + 4 * i * a_rs)
        b = np.uint64(jobs[q, 3] + 4 * j)
        c = np.uint64(jobs[q, 5] + 4 * (i * c_rs + j))
        mv = min(_MR, M - i)
        nv = min(W2, N - j)
        if nv > _VW:
            _mk_rows2(a, a_rs, jobs[q, 2], b, jobs[q, 4], c, c_rs, 1, jobs[q, 9], mv, nv)
        else:
            _mk_rows1(a, a_rs, jobs[q, 2], b, jobs[q, 4], c, c_rs, 1, jobs[q, 9], mv, nv)


# ============================================================================================== GRU layer
@njit(cache=True, error_model="numpy")
def _embed_input(src, X, x, mask, p, key, step, scale):
    """x[b] = src[X[b]] * keep mask; the mask is stored for backward. p = 0: no dropout."""
    B, W = x.shape
    for b in range(B):
        row = X[b]
        if p > 0.0:
            for j in range(W):
                m = _keep(key, step, b * W + j, p, scale)
                mask[b, j] = m
                x[b, j] = src[row, j] * m
        else:
            for j in range(W):
                x[b, j] = src[row, j]


@njit(cache=True, error_model="numpy")
def _onehot_input(Wx0, X, bias, a):
    """a[b] = Wx0[X[b]] + Bh0 (one-hot input: the input projection is a row gather)."""
    B, W = a.shape
    for b in range(B):
        row = X[b]
        for j in range(W):
            a[b, j] = Wx0[row, j] + bias[j]


@njit(parallel=True, cache=True, error_model="numpy")
def _gates_rz(a, t2, h, r, z, rh):
    """r = sigmoid(a_r + h U_r), z = sigmoid(a_z + h U_z), rh = r * h."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            rr = np.float32(_sigmoid(np.float64(a[b, H + j] + t2[b, j])))
            r[b, j] = rr
            z[b, j] = np.float32(_sigmoid(np.float64(a[b, 2 * H + j] + t2[b, H + j])))
            rh[b, j] = rr * h[b, j]


@njit(parallel=True, cache=True, error_model="numpy")
def _gates_out(a, t1, h, z, c, out, mask, p, key, step, scale):
    """c = tanh(a_h + (r h) U_h); out = ((1 - z) h + z c) * keep mask (mask stored; p = 0: no dropout)."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            cc = np.float32(_tanh(np.float64(a[b, j] + t1[b, j])))
            c[b, j] = cc
            zz = z[b, j]
            out[b, j] = (np.float32(1.0) - zz) * h[b, j] + zz * cc
        if p > 0.0:
            for j in range(H):
                m = _keep(key, step, b * H + j, p, scale)
                mask[b, j] = m
                out[b, j] = out[b, j] * m


@njit(parallel=True, cache=True, error_model="numpy")
def _bwd_gates_a(dout, mask, use_mask, h, z, c, da, dc, drz):
    """dhn = dout * mask; dc = dhn z (1 - c^2); dz = dhn (c - h) z (1 - z). da = [dc | dr | dz] gets dc and dz;
    dc and drz = [dr | dz] are also kept as contiguous copies (operands of the weight-gradient GEMMs)."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            d = dout[b, j]
            if use_mask:
                d = d * mask[b, j]
            zz = z[b, j]
            cc = c[b, j]
            vc = d * zz * (np.float32(1.0) - cc * cc)
            vz = d * (cc - h[b, j]) * zz * (np.float32(1.0) - zz)
            da[b, j] = vc
            dc[b, j] = vc
            da[b, 2 * H + j] = vz
            drz[b, H + j] = vz


@njit(parallel=True, cache=True, error_model="numpy")
def _bwd_gates_b(drh, h, r, da, drz):
    """dr = (dc U_h^T) h r (1 - r) into da[:, H:2H] and drz[:, :H]."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            rr = r[b, j]
            v = drh[b, j] * h[b, j] * rr * (np.float32(1.0) - rr)
            da[b, H + j] = v
            drz[b, j] = v


@njit(cache=True, error_model="numpy")
def _colsum(A, out):
    """out[j] = sum_i A[i, j] for j < len(out), in row order."""
    M = A.shape[0]
    N = out.shape[0]
    for j in range(N):
        out[j] = 0.0
    for i in range(M):
        for j in range(N):
            out[j] += A[i, j]


@njit(cache=True, error_model="numpy")
def _mask_rows(dx, mask, out):
    """out = dx * mask (the input-dropout backward, written into a gradient slot block)."""
    B, W = dx.shape
    for b in range(B):
        for j in range(W):
            out[b, j] = dx[b, j] * mask[b, j]


# ============================================================================================== scores + loss
@njit(parallel=True, cache=True, error_model="numpy")
def _scores(Wy, By, Y, B, use_logq, logq_t, logq_s, hT, WyY, byY, lqY, Z):
    """Z[:, j] = h Wy[Y[j]] for the O = len(Y) columns (reference.forward, last lines), one block of MR columns
    per iteration: gather the block's rows WyY[j] = Wy[Y[j]] (kept for the backward), byY[j] = By[Y[j]] and
    lqY[j] = col_logq[j] (logq_t for targets, logq_s for samples), then Z^T = WyY h^T for the block with the
    micro-kernel, stored transposed into Z [Bp, Op]. The bias is added in the loss kernel. The padding of WyY
    (rows O..) is never written (zero). hT [H, Bp] = h^T; the rows of Wy are random: fetched a block ahead."""
    O = Y.shape[0]
    H = Wy.shape[1]
    Op = WyY.shape[0]
    Bp = hT.shape[1]
    pWy = Wy.ctypes.data
    pY = WyY.ctypes.data
    ph = hT.ctypes.data
    pz = Z.ctypes.data
    for t in prange(Op // _MR):
        j0 = t * _MR
        for j in range(j0 + _MR, min(j0 + 2 * _MR, O)):  # the next block's rows
            _prefetch_row(pWy, Y[j], 4 * H)
        for j in range(j0, min(j0 + _MR, O)):
            row = Y[j]
            for k in range(H):
                WyY[j, k] = Wy[row, k]
            byY[j] = By[row]
            if use_logq:
                lqY[j] = logq_t[row] if j < B else logq_s[row]
        for i in range(0, Bp, 2 * _VW):
            if Bp - i >= 2 * _VW:
                _mk_cols2(pY + 4 * j0 * H, H, 1, ph + 4 * i, Bp, pz + 4 * (j0 + i * Op), 1, Op, H, _MR, 2 * _VW)
            else:
                _mk_cols1(pY + 4 * j0 * H, H, 1, ph + 4 * i, Bp, pz + 4 * (j0 + i * Op), 1, Op, H, _MR, _VW)


@njit(cache=True, error_model="numpy", inline="always")
def _is_neg(i, j, B, active, Y, mask_hits):
    """reference.negative_mask[i, j]."""
    if j == i:
        return False
    if j < B and not active[j]:
        return False
    if mask_hits and Y[j] == Y[i]:
        return False
    return True


@njit(cache=True, error_model="numpy")
def _bias_row(z, byY, lqY, use_logq):
    """z = (z + By[Y]) - col_logq over one row (the reference's two roundings)."""
    if use_logq:
        for j in range(z.shape[0]):
            z[j] = (z[j] + byY[j]) - lqY[j]
    else:
        for j in range(z.shape[0]):
            z[j] = z[j] + byY[j]


@njit(cache=True, error_model="numpy")
def _max_masked(r, y, yi, mask_hits):
    """max of r (entries whose item y equals yi skipped when mask_hits; -inf if none); 8 independent running
    maxima, so that the loop is not one long dependency chain."""
    n = r.shape[0]
    ninf = np.float32(-np.inf)
    m0 = ninf; m1 = ninf; m2 = ninf; m3 = ninf; m4 = ninf; m5 = ninf; m6 = ninf; m7 = ninf
    j = 0
    if not mask_hits:
        while j + 8 <= n:
            v0 = r[j]; v1 = r[j + 1]; v2 = r[j + 2]; v3 = r[j + 3]
            v4 = r[j + 4]; v5 = r[j + 5]; v6 = r[j + 6]; v7 = r[j + 7]
            m0 = v0 if v0 > m0 else m0; m1 = v1 if v1 > m1 else m1; m2 = v2 if v2 > m2 else m2
            m3 = v3 if v3 > m3 else m3; m4 = v4 if v4 > m4 else m4; m5 = v5 if v5 > m5 else m5
            m6 = v6 if v6 > m6 else m6; m7 = v7 if v7 > m7 else m7
            j += 8
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    while j < n:
        v = r[j]
        if v > m and not (mask_hits and y[j] == yi):
            m = v
        j += 1
    return np.float64(m)


@njit(fastmath={"reassoc"}, cache=True, error_model="numpy")
def _exp_masked(r, e, m, y, yi, mask_hits):
    """e = exp(r - m) in float32 (0 where y == yi when mask_hits); returns sum(e) accumulated in float64.
    (Two loops: a float64 accumulator in the first would halve its vector width.)"""
    m32 = np.float32(m)  # m is the max of float32 values: exact
    if mask_hits:
        for j in range(r.shape[0]):
            v = _exp32(r[j] - m32)
            e[j] = v if y[j] != yi else np.float32(0.0)
    else:
        for j in range(r.shape[0]):
            e[j] = _exp32(r[j] - m32)
    s = 0.0
    for j in range(e.shape[0]):
        s += np.float64(e[j])
    return s


@njit(cache=True, error_model="numpy")
def _scale_row(d, s):
    for j in range(d.shape[0]):
        d[j] = np.float32(np.float64(d[j]) * s)


@njit(cache=True, error_model="numpy")
def _ce_row(r, d, i, B, active, Y, mask_hits, w):
    """Cross-entropy of row i over {target} + negatives (r = R[i], d = dZ[i]): returns logsumexp - r_t and
    writes d = w (softmax - onehot(i)). Columns >= B (samples) are negatives unless masked as hits."""
    yi = Y[i]
    m = np.float64(r[i])
    for j in range(B):
        if _is_neg(i, j, B, active, Y, mask_hits) and r[j] > m:
            m = np.float64(r[j])
    m = max(m, _max_masked(r[B:], Y[B:], yi, mask_hits))
    m32 = np.float32(m)
    s = 0.0
    for j in range(B):
        if j == i or _is_neg(i, j, B, active, Y, mask_hits):
            v = _exp32(r[j] - m32)
            d[j] = v
            s += np.float64(v)
        else:
            d[j] = 0.0
    s += _exp_masked(r[B:], d[B:], m, Y[B:], yi, mask_hits)
    et = np.float64(d[i])
    _scale_row(d, w / s)
    d[i] = np.float32((et / s - 1.0) * w)
    return math.log(s) + m - np.float64(r[i])


@njit(cache=True, error_model="numpy")
def _ranking_row(R, dZ, i, B, active, Y, mask_hits, loss, bpreg):
    """bpr-max, top1-max, bpr, top1 for row i (reference.row_loss, written out per row; R = R[i], dZ = dZ[i]):
    returns loss_i and leaves dR_i (unweighted) in dZ."""
    O = R.shape[0]
    rt = np.float64(R[i])
    L = 0.0
    if loss == LOSS_BPR_MAX or loss == LOSS_TOP1_MAX:
        m = -np.inf
        for j in range(O):
            if _is_neg(i, j, B, active, Y, mask_hits) and R[j] > m:
                m = np.float64(R[j])
        if not math.isfinite(m):
            m = 0.0
        den = 0.0
        for j in range(O):
            if _is_neg(i, j, B, active, Y, mask_hits):
                den += _exp64(np.float64(R[j]) - m)
        if not den > 0.0:
            den = 1.0
        T = 0.0
        if loss == LOSS_BPR_MAX:
            A = 0.0
            Q = 0.0
            for j in range(O):
                if _is_neg(i, j, B, active, Y, mask_hits):
                    r = np.float64(R[j])
                    sw = _exp64(r - m) / den
                    sig = _sigmoid(rt - r)
                    A += sw * sig
                    Q += sw * r * r
                    T += sw * sig * (1.0 - sig)
            L = -math.log(A + BPR_MAX_EPS) + bpreg * Q
            inv = 1.0 / (A + BPR_MAX_EPS)
            for j in range(O):
                if _is_neg(i, j, B, active, Y, mask_hits):
                    r = np.float64(R[j])
                    sw = _exp64(r - m) / den
                    sig = _sigmoid(rt - r)
                    dZ[j] = -inv * sw * (sig - A - sig * (1.0 - sig)) + bpreg * sw * (r * r - Q + 2.0 * r)
                else:
                    dZ[j] = 0.0
            dZ[i] = -inv * T
        else:
            for j in range(O):
                if _is_neg(i, j, B, active, Y, mask_hits):
                    r = np.float64(R[j])
                    L += _exp64(r - m) / den * (_sigmoid(r - rt) + _sigmoid(r * r))
            for j in range(O):
                if _is_neg(i, j, B, active, Y, mask_hits):
                    r = np.float64(R[j])
                    sw = _exp64(r - m) / den
                    sd = _sigmoid(r - rt)
                    sq = _sigmoid(r * r)
                    dZ[j] = sw * (sd + sq - L) + sw * (sd * (1.0 - sd) + 2.0 * r * sq * (1.0 - sq))
                    T += sw * sd * (1.0 - sd)
                else:
                    dZ[j] = 0.0
            dZ[i] = -T
        return L
    n_neg = 0
    for j in range(O):
        if _is_neg(i, j, B, active, Y, mask_hits):
            n_neg += 1
    inv_n = 1.0 / max(n_neg, 1)
    T = 0.0
    for j in range(O):
        if _is_neg(i, j, B, active, Y, mask_hits):
            r = np.float64(R[j])
            if loss == LOSS_BPR:
                d = rt - r
                L += max(-d, 0.0) + math.log1p(math.exp(-abs(d)))  # -log sigmoid(d)
                g = 1.0 - _sigmoid(d)
                dZ[j] = g * inv_n
                T += g
            else:
                sd = _sigmoid(r - rt)
                sq = _sigmoid(r * r)
                L += sd + sq
                dZ[j] = (sd * (1.0 - sd) + 2.0 * r * sq * (1.0 - sq)) * inv_n
                T += sd * (1.0 - sd)
        else:
            dZ[j] = 0.0
    dZ[i] = -T * inv_n
    return L * inv_n


@njit(parallel=True, cache=True, error_model="numpy")
def _loss_rows(Z, R, dZ, O, Y, byY, lqY, use_logq, active, loss, act, act_a, bpreg, mask_hits, w, rowloss):
    """One row per iteration (reference.loss_and_grad): Z_i += By[Y] - col_logq; R_i = f(Z_i); the weighted
    row loss (rowloss[i], float64) and dZ_i = dR_i * w * f'(Z_i). Inactive rows: loss 0, dZ_i = 0.
    Rows B.. and columns O.. of Z / dZ (padding) are not touched."""
    B = active.shape[0]
    for i in prange(B):
        d = dZ[i, :O]  # row views: one per row, so the shared reference count is touched B times only
        if not active[i]:
            d[:] = 0.0
            rowloss[i] = 0.0
            continue
        z = Z[i, :O]
        _bias_row(z, byY, lqY, use_logq)
        r = z
        if act != ACT_LINEAR:
            r = R[i, :O]
            for j in range(O):
                r[j] = np.float32(_act(np.float64(z[j]), act, act_a))
        if loss == LOSS_CE:
            L = _ce_row(r, d, i, B, active, Y, mask_hits, w)
            if act != ACT_LINEAR:
                for j in range(O):
                    d[j] = np.float32(d[j] * _act_grad(np.float64(z[j]), np.float64(r[j]), act, act_a))
        else:
            L = _ranking_row(r, d, i, B, active, Y, mask_hits, loss, bpreg)
            for j in range(O):
                d[j] = np.float32(np.float64(d[j]) * w * _act_grad(np.float64(z[j]), np.float64(r[j]), act, act_a))
        rowloss[i] = L * w


# ============================================================================================== optimizer
@njit(parallel=True, fastmath=_FM, cache=True, error_model="numpy")
def _sumsq(a, partial, p0):
    """partial[p0 + c] = sum of squares (float64) of the fixed chunk c of the 1-D array a; returns #chunks."""
    n = a.shape[0]
    nch = (n + _CHUNK - 1) // _CHUNK
    for c in prange(nch):
        v = a[c * _CHUNK:min(n, (c + 1) * _CHUNK)]
        s = 0.0
        for k in range(v.shape[0]):
            x = np.float64(v[k])
            s += x * x
        partial[p0 + c] = s
    return nch


@njit(parallel=True, cache=True, error_model="numpy")
def _scale(a, s):
    n = a.shape[0]
    nch = (n + _CHUNK - 1) // _CHUNK
    for c in prange(nch):
        v = a[c * _CHUNK:min(n, (c + 1) * _CHUNK)]
        for k in range(v.shape[0]):
            v[k] = v[k] * s


@njit(fastmath=_FM_OPT, cache=True, error_model="numpy", inline="always")
def _adagrad_span(p, g, acc, mom, nlr, mu):
    """Adagrad with momentum on 1-D p (float32, as the reference in float32): acc += g^2;
    upd = -lr g / sqrt(acc + eps); mom = mu mom + upd; p += mom (mom untouched when mu = 0)."""
    eps = np.float32(ADAGRAD_EPS)
    if mu > 0.0:
        for k in range(p.shape[0]):
            gk = g[k]
            a = acc[k] + gk * gk
            acc[k] = a
            m = mu * mom[k] + nlr * gk / np.sqrt(a + eps)
            mom[k] = m
            p[k] += m
    else:
        for k in range(p.shape[0]):
            gk = g[k]
            a = acc[k] + gk * gk
            acc[k] = a
            p[k] += nlr * gk / np.sqrt(a + eps)


@njit(parallel=True, fastmath=_FM_OPT, cache=True, error_model="numpy")
def _adagrad_dense(p, g, acc, mom, lr, mu):
    """Dense Adagrad over the flat buffer in fixed chunks (reference.adagrad_dense)."""
    n = p.shape[0]
    nch = (n + _CHUNK - 1) // _CHUNK
    nlr = np.float32(-lr)
    mu32 = np.float32(mu)
    for c in prange(nch):
        k0 = c * _CHUNK
        k1 = min(n, k0 + _CHUNK)
        _adagrad_span(p[k0:k1], g[k0:k1], acc[k0:k1], mom[k0:k1], nlr, mu32)  # views: 0-based loops vectorise


@njit(cache=True, error_model="numpy")
def _link_ids(ids, n, head, nxt, first):
    """Chains of equal ids in slot order: first[q] is the first slot of the q-th distinct id of ids[:n] and
    nxt[k] the next slot with the same id as slot k (-1 at the end). head [N] must be all -1; it is restored.
    Returns the number of distinct ids."""
    nu = 0
    for k in range(n):
        u = ids[k]
        last = head[u]
        if last < 0:
            first[nu] = k
            nu += 1
        else:
            nxt[last] = k
        head[u] = k
        nxt[k] = -1
    for k in range(n):
        head[ids[k]] = -1
    return nu


@njit(fastmath=_FM_OPT, cache=True, error_model="numpy", inline="always")
def _adagrad_row(P, acc, mom, u, G, q, nlr, mu, eps):
    """Adagrad with momentum on row u of P with the gradient row G[q] (float32 as the reference)."""
    if mu > 0.0:
        for c in range(P.shape[1]):
            g = G[q, c]
            a = acc[u, c] + g * g
            acc[u, c] = a
            m = mu * mom[u, c] + nlr * g / np.sqrt(a + eps)
            mom[u, c] = m
            P[u, c] += m
    else:
        for c in range(P.shape[1]):
            g = G[q, c]
            a = acc[u, c] + g * g
            acc[u, c] = a
            P[u, c] += nlr * g / np.sqrt(a + eps)


@njit(parallel=True, fastmath=_FM_OPT, cache=True, error_model="numpy")
def _adagrad_rows(P, acc, mom, slots, ids, first, nxt, nu, gsum, lr, mu, Pb, accb, momb, bslots, n_bslots):
    """Sparse Adagrad (reference.sparse_adagrad) on the rows of 2-D P, and on the 1-D bias Pb for the slots
    k < n_bslots: the q-th distinct id u = ids[first[q]] gets the sum of its chain of slot rows (added serially
    in slot order, as np.add.at) and, if one of them is a bias slot, the sum of those bias slots; then the
    acc / mom / P (Pb) updates. An id with a single slot reads the slot directly. The rows are random: the id 4
    iterations ahead is prefetched. (2-D indexing only: a row view inside the prange would take an atomic
    reference on P.)"""
    W = P.shape[1]
    nlr = np.float32(-lr)
    mu32 = np.float32(mu)
    eps = np.float32(ADAGRAD_EPS)
    row_bytes = 4 * W
    pP = P.ctypes.data
    pA = acc.ctypes.data
    pM = mom.ctypes.data
    for q in prange(nu):
        if q + 4 < nu:
            v = ids[first[q + 4]]
            _prefetch_row(pP, v, row_bytes)
            _prefetch_row(pA, v, row_bytes)
            if mu > 0.0:
                _prefetch_row(pM, v, row_bytes)
        k = first[q]
        u = ids[k]
        gb = np.float32(0.0)
        has_b = False
        if nxt[k] < 0:
            _adagrad_row(P, acc, mom, u, slots, k, nlr, mu32, eps)
            if k < n_bslots:
                gb = bslots[k]
                has_b = True
        else:
            for c in range(W):
                gsum[q, c] = slots[k, c]
            while k >= 0:
                if k != first[q]:
                    for c in range(W):
                        gsum[q, c] += slots[k, c]
                if k < n_bslots:
                    gb = bslots[k] if not has_b else gb + bslots[k]
                    has_b = True
                k = nxt[k]
            _adagrad_row(P, acc, mom, u, gsum, q, nlr, mu32, eps)
        if has_b:
            a = accb[u] + gb * gb
            accb[u] = a
            upd = nlr * gb / np.sqrt(a + eps)
            if mu > 0.0:
                m = mu32 * momb[u] + upd
                momb[u] = m
                Pb[u] += m
            else:
                Pb[u] += upd


# ============================================================================================== one step
@njit(cache=True, error_model="numpy", inline="always")
def _v2(buf, off, rows, cols):
    return buf[off:off + rows * cols].reshape((rows, cols))


@njit(cache=True, error_model="numpy")
def _add_bias(a, bias):
    for b in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[b, j] += bias[j]


@njit(cache=True, error_model="numpy")
def _forward(flat, Wy, Sx, hid, ws, lay, ip, fp, keys, X, B, step, dropout, jobs):
    """The GRU layers of one step (reference.forward up to the top hidden state). hid holds the incoming
    hidden state (reset rows already zeroed); the layer buffers in ws receive a, r, z, c, rh, out and masks."""
    mode = ip[I_MODE]
    for l in range(ip[I_L]):
        H = lay[l, L_H]
        IN = lay[l, L_IN]
        h = _v2(hid, lay[l, L_HID], B, H)
        a = _v2(ws, lay[l, L_A], B, 3 * H)
        Bh = flat[lay[l, L_BH]:lay[l, L_BH] + 3 * H]
        t2 = _v2(ws, lay[l, L_T2], B, 2 * H)
        _job(jobs, 0, h, H, 1, _v2(flat, lay[l, L_WRZ], H, 2 * H), 2 * H, t2, 2 * H, B, 2 * H, H)  # t2 = h U_rz
        if l == 0 and mode == MODE_ONEHOT:
            _onehot_input(Sx, X, Bh, a)
            _gemm_batch(jobs, 1)
        else:
            if l == 0:
                x = _v2(ws, ip[I_OX0], B, IN)
                p = fp[F_P_EMB] if dropout else 0.0
                _embed_input(Wy if mode == MODE_CONSTRAINED else Sx, X, x, _v2(ws, ip[I_OM0], B, IN), p, keys[0],
                             step, np.float32(1.0 / (1.0 - fp[F_P_EMB])))
            else:
                x = _v2(ws, lay[l - 1, L_OUT], B, IN)
            _job(jobs, 1, x, IN, 1, _v2(flat, lay[l, L_WX], IN, 3 * H), 3 * H, a, 3 * H, B, 3 * H, IN)  # x Wx
            _gemm_batch(jobs, 2)
            _add_bias(a, Bh)  # a = x Wx + Bh
        t1 = _v2(ws, lay[l, L_T1], B, H)
        r = _v2(ws, lay[l, L_R], B, H)
        z = _v2(ws, lay[l, L_Z], B, H)
        rh = _v2(ws, lay[l, L_RH], B, H)
        _gates_rz(a, t2, h, r, z, rh)
        _mm(rh, _v2(flat, lay[l, L_WH], H, H), t1)
        p = fp[F_P_HID] if dropout else 0.0
        _gates_out(a, t1, h, z, _v2(ws, lay[l, L_C], B, H), _v2(ws, lay[l, L_OUT], B, H),
                   _v2(ws, lay[l, L_MASK], B, H), p, keys[1 + l], step, np.float32(1.0 / (1.0 - fp[F_P_HID])))


@njit(cache=True, error_model="numpy")
def _backward_layers(flat, gflat, hid, ws, lay, ip, fp, B, dropout, jobs):
    """Gradients of the GRU layers, top to bottom (reference.gru_bwd), given the top layer's dout.
    Dense gradients go to gflat; returns nothing (the input gradient is left in ws at I_ODX0, or in the layer-0
    da buffer for one-hot input)."""
    mode = ip[I_MODE]
    for l in range(ip[I_L] - 1, -1, -1):
        H = lay[l, L_H]
        IN = lay[l, L_IN]
        h = _v2(hid, lay[l, L_HID], B, H)
        da = _v2(ws, lay[l, L_DA], B, 3 * H)
        dc = _v2(ws, lay[l, L_DC], B, H)
        drz = _v2(ws, lay[l, L_DRZ], B, 2 * H)
        drh = _v2(ws, lay[l, L_DRH], B, H)
        _bwd_gates_a(_v2(ws, lay[l, L_DOUT], B, H), _v2(ws, lay[l, L_MASK], B, H), dropout and fp[F_P_HID] > 0.0,
                     h, _v2(ws, lay[l, L_Z], B, H), _v2(ws, lay[l, L_C], B, H), da, dc, drz)
        _gemm_nt(dc, _v2(flat, lay[l, L_WH], H, H), drh)
        _bwd_gates_b(drh, h, _v2(ws, lay[l, L_R], B, H), da, drz)
        _colsum(da, gflat[lay[l, L_BH]:lay[l, L_BH] + 3 * H])
        # weight gradients, one parallel region: dWrz = h^T [dr | dz], dWh = (r h)^T dc, dWx = x^T da
        _job(jobs, 0, h, 1, H, drz, 2 * H, _v2(gflat, lay[l, L_WRZ], H, 2 * H), 2 * H, H, 2 * H, B)
        _job(jobs, 1, _v2(ws, lay[l, L_RH], B, H), 1, H, dc, H, _v2(gflat, lay[l, L_WH], H, H), H, H, H, B)
        if l == 0 and mode == MODE_ONEHOT:
            _gemm_batch(jobs, 2)
            continue
        if l == 0:
            x = _v2(ws, ip[I_OX0], B, IN)
            dy = _v2(ws, ip[I_ODX0], B, IN)
        else:
            x = _v2(ws, lay[l - 1, L_OUT], B, IN)
            dy = _v2(ws, lay[l - 1, L_DOUT], B, IN)
        _job(jobs, 2, x, 1, IN, da, 3 * H, _v2(gflat, lay[l, L_WX], IN, 3 * H), 3 * H, IN, 3 * H, B)
        _gemm_batch(jobs, 3)
        _gemm_nt(da, _v2(flat, lay[l, L_WX], IN, 3 * H), dy)  # dy = da Wx^T


@njit(cache=True, error_model="numpy")
def _train_chunk(flat, Wy, By, Sx, gflat, gWy, gBy, gSx, acc_flat, mom_flat, accWy, momWy, accBy, momBy,
                 accSx, momSx, hid, ws, WyY, hT, dh_part, byY, lqY, Z, R, dZ, rowloss, partial, ids, head, nxt,
                 first, gsum, lay, ip, fp, keys, logq_t, logq_s, inputs, targets, active, reset, samples, step0,
                 losses):
    """T whole training steps (reference.train_step), in place; losses[t] = the loss of step t.

    Score-side buffers are padded with zeros (Op = O rounded up to MR, Bp = B rounded up to a vector, for the
    transposed store of the scores): WyY [Op, H] = Wy[Y], hT [H, Bp] = h^T, Z and dZ [Bp, Op]; the Wy gradient
    slots gWy [max(Op, O + B), H]."""
    T = inputs.shape[0]
    B = inputs.shape[1]
    S = samples.shape[1]
    O = B + S
    mode = ip[I_MODE]
    L = ip[I_L]
    HL = lay[L - 1, L_H]
    lr = fp[F_LR]
    mu = fp[F_MU]
    w = 1.0 / fp[F_BATCH]
    dropout = fp[F_P_EMB] > 0.0 or fp[F_P_HID] > 0.0
    use_logq = ip[I_LOGQ] != 0
    n_wy = O + B if mode == MODE_CONSTRAINED else O  # Wy slots: [Y | X] (constrained) or Y
    Y = ids[:O]
    jobs = np.zeros((4, 11), dtype=np.int64)  # _gemm_batch descriptors (once per chunk)
    top = _v2(ws, lay[L - 1, L_OUT], B, HL)
    dtop = _v2(ws, lay[L - 1, L_DOUT], B, HL)
    for t in range(T):
        step = step0 + t
        X = inputs[t]
        for b in range(B):
            ids[b] = targets[t, b]
        for s in range(S):
            ids[B + s] = samples[t, s]
        if mode == MODE_CONSTRAINED:
            for b in range(B):
                ids[O + b] = X[b]
        # ---- forward: reset rows, GRU layers, scores, loss and dZ
        for l in range(L):
            h = _v2(hid, lay[l, L_HID], B, lay[l, L_H])
            for b in range(B):
                if reset[t, b]:
                    h[b, :] = 0.0
        _forward(flat, Wy, Sx, hid, ws, lay, ip, fp, keys, X, B, step, dropout, jobs)
        for b in range(B):
            for k in range(HL):
                hT[k, b] = top[b, k]
        _scores(Wy, By, Y, B, use_logq, logq_t, logq_s, hT, WyY, byY, lqY, Z)
        _loss_rows(Z, R, dZ, O, Y, byY, lqY, use_logq, active[t], ip[I_LOSS], ip[I_ACT], fp[F_ACT_A],
                   fp[F_BPREG], ip[I_MASK_HITS] != 0, w, rowloss)
        loss = 0.0
        for b in range(B):
            loss += rowloss[b]
        # rounded to float32 like the float32 reference's loss: float64 sums of such values are exact, so an
        # epoch's total does not depend on how its steps were chunked (checkpoint / resume stays bit-exact)
        losses[t] = np.float32(loss)
        # ---- backward: dh = dZ Wy[Y]; Wy slots [0:O] = dZ^T h; By slots = colsum(dZ); the layers; the inputs
        _score_grads(dZ, WyY, top, gWy, gBy, dh_part, dtop, O)
        _backward_layers(flat, gflat, hid, ws, lay, ip, fp, B, dropout, jobs)
        if mode == MODE_ONEHOT:
            gSx[:, :] = _v2(ws, lay[0, L_DA], B, 3 * lay[0, L_H])
        else:
            dx0 = _v2(ws, ip[I_ODX0], B, ip[I_IN0])
            dst = gWy[O:O + B] if mode == MODE_CONSTRAINED else gSx
            if dropout and fp[F_P_EMB] > 0.0:
                _mask_rows(dx0, _v2(ws, ip[I_OM0], B, ip[I_IN0]), dst)
            else:
                dst[:, :] = dx0
        # ---- global-norm clipping (reference.clip_grads): every gradient, sparse rows uncoalesced
        cap = fp[F_CAP]
        if cap > 0.0:
            n = _sumsq(gflat, partial, 0)
            n += _sumsq(gWy[:n_wy].reshape(-1), partial, n)
            n += _sumsq(gBy, partial, n)
            if mode != MODE_CONSTRAINED:
                n += _sumsq(gSx.reshape(-1), partial, n)
            sq = 0.0
            for k in range(n):
                sq += partial[k]
            norm = math.sqrt(sq)
            if norm >= cap:
                s = np.float32(cap / norm)
                _scale(gflat, s)
                _scale(gWy[:n_wy].reshape(-1), s)
                _scale(gBy, s)
                if mode != MODE_CONSTRAINED:
                    _scale(gSx.reshape(-1), s)
        # ---- Adagrad: the flat dense buffer, then the touched rows
        _adagrad_dense(flat, gflat, acc_flat, mom_flat, lr, mu)
        nu = _link_ids(ids, n_wy, head, nxt, first)  # Wy slots [Y | X]; By slots are the first O of them
        _adagrad_rows(Wy, accWy, momWy, gWy, ids, first, nxt, nu, gsum, lr, mu, By, accBy, momBy, gBy, O)
        if mode != MODE_CONSTRAINED:
            nu = _link_ids(X, B, head, nxt, first)
            _adagrad_rows(Sx, accSx, momSx, gSx, X, first, nxt, nu, gsum, lr, mu, By, accBy, momBy, gBy, 0)
        # ---- the new hidden state: the layers' outputs
        for l in range(L):
            H = lay[l, L_H]
            _v2(hid, lay[l, L_HID], B, H)[:, :] = _v2(ws, lay[l, L_OUT], B, H)


# ============================================================================================== evaluation
@njit(cache=True, error_model="numpy", inline="always")
def _f32act(z, act, act_a):
    return np.float32(_act(np.float64(z), act, act_a))


@njit(cache=True, error_model="numpy", inline="always")
def _item_tile(Wy, items, j0, M, rows):
    """rows[r] = Wy[items[min(j0 + r, M - 1)]] for r < MR (the A operand of one tile of item scores)."""
    H = Wy.shape[1]
    for r in range(_MR):
        it = items[min(j0 + r, M - 1)]
        for k in range(H):
            rows[r, k] = Wy[it, k]


@njit(cache=True, error_model="numpy", inline="always")
def _score_tile(rows, hT, S):
    """S[r, i] = rows[r] . h[i] (raw dot products, before bias and activation) for all Bp rows, with the GEMM
    micro-kernel: the same k-ordered FMA chain for every (item, row) pair, wherever the item sits."""
    H = rows.shape[1]
    Bp = hT.shape[1]
    for jb in range(0, Bp, 2 * _VW):
        nv = min(2 * _VW, Bp - jb)
        if nv > _VW:
            _mk_rows2(rows.ctypes.data, H, 1, hT.ctypes.data + 4 * jb, Bp, S.ctypes.data + 4 * jb, Bp, 1, H, _MR, nv)
        else:
            _mk_rows1(rows.ctypes.data, H, 1, hT.ctypes.data + 4 * jb, Bp, S.ctypes.data + 4 * jb, Bp, 1, H, _MR, nv)


@njit(parallel=True, cache=True, error_model="numpy")
def _rank_counts(h, hT, Wy, By, items, targets, act, act_a, tscore, n_gt, n_eq, part_gt, part_eq):
    """n_gt[i] / n_eq[i]: how many of ``items`` score strictly above / equal to row i's target, scores being
    f(h Wy^T + By) (reference.score_all + rank_counts), never materialised as a [B, N] matrix: a fixed chunk of
    items per iteration, MR items at a time (their Wy rows gathered, scored against every row with the GEMM
    micro-kernel into an MR x Bp tile, then counted). Integer partial counts per chunk, so the result does not
    depend on the scheduling. The target's own column is not compared: it counts once in n_eq per occurrence
    in items (the reference's target ties with itself). hT [H, Bp] is scratch (its padding must be zero)."""
    B, H = h.shape
    Bp = hT.shape[1]
    M = items.shape[0]
    nchunk = part_gt.shape[0]
    for b in range(B):
        for k in range(H):
            hT[k, b] = h[b, k]
    # the targets' scores, through the same tile code: tile of the targets of rows i0.., row r is read at i0 + r
    rows = np.empty((_MR, H), dtype=np.float32)
    S = np.empty((_MR, Bp), dtype=np.float32)
    for i0 in range(0, B, _MR):
        _item_tile(Wy, targets, i0, B, rows)
        _score_tile(rows, hT, S)
        for r in range(min(_MR, B - i0)):
            tscore[i0 + r] = _f32act(S[r, i0 + r] + By[targets[i0 + r]], act, act_a)
    ntile = (M + _MR - 1) // _MR
    for c in prange(nchunk):
        rows_c = np.empty((_MR, H), dtype=np.float32)
        S_c = np.empty((_MR, Bp), dtype=np.float32)
        for i in range(B):
            part_gt[c, i] = 0
            part_eq[c, i] = 0
        for g in range(ntile * c // nchunk, ntile * (c + 1) // nchunk):
            j0 = g * _MR
            _item_tile(Wy, items, j0, M, rows_c)
            _score_tile(rows_c, hT, S_c)
            for e in range(min(_MR, M - j0)):
                it = items[j0 + e]
                by = By[it]
                for i in range(B):
                    sc = _f32act(S_c[e, i] + by, act, act_a)
                    t = tscore[i]
                    is_t = it == targets[i]
                    part_gt[c, i] += 1 if (sc > t and not is_t) else 0
                    part_eq[c, i] += 1 if (sc == t or is_t) else 0
    for i in range(B):
        gt = 0
        eq = 0
        for c in range(nchunk):
            gt += part_gt[c, i]
            eq += part_eq[c, i]
        n_gt[i] = gt
        n_eq[i] = eq


@njit(cache=True, error_model="numpy")
def _eval_forward(flat, Wy, Sx, hid, ws, lay, ip, fp, keys, X, reset):
    """reference.hidden_step: reset rows zeroed, GRU layers without dropout, hid <- the new hidden state."""
    B = X.shape[0]
    for l in range(ip[I_L]):
        h = _v2(hid, lay[l, L_HID], B, lay[l, L_H])
        for b in range(B):
            if reset[b]:
                h[b, :] = 0.0
    _forward(flat, Wy, Sx, hid, ws, lay, ip, fp, keys, X, B, 0, False, np.zeros((4, 11), dtype=np.int64))
    for l in range(ip[I_L]):
        H = lay[l, L_H]
        _v2(hid, lay[l, L_HID], B, H)[:, :] = _v2(ws, lay[l, L_OUT], B, H)


# ============================================================================================== the backend
class CpuBackend(Backend):
    """Numba parallel CPU backend (float32). Same constructor as NumpyBackend minus ``dtype``."""

    name = "cpu"

    def __init__(self, cfg, n_items, params, logq_target=None, logq_sample=None):
        super().__init__(cfg, n_items, params, logq_target, logq_sample)
        specs = self.specs
        self._sparse = {s.name for s in specs if s.sparse}
        # parameters, Adagrad accumulators and momenta: dense ones are views into one flat buffer each
        self.flat, self.params = allocate(specs, np.float32)
        self.acc_flat, self.acc = allocate(specs, np.float32)
        self.mom_flat, self.mom = allocate(specs, np.float32)
        self._off = {}  # name -> element offset of a dense parameter in the flat buffers
        for s in specs:
            given = np.asarray(params[s.name])
            if given.shape != tuple(s.shape):
                raise ValueError(f"params[{s.name!r}] has shape {given.shape}; expected {tuple(s.shape)}")
            self.params[s.name][...] = given
            if not s.sparse:
                self._off[s.name] = (self.params[s.name].ctypes.data - self.flat.ctypes.data) // 4
        self._ndense = dense_size(specs)
        self.gflat = np.zeros(self._ndense, dtype=np.float32)  # dense gradients, same layout as flat
        mode = cfg.input_mode
        self._mode = _MODES[mode]
        self._sx_name = {"embedding": "E", "onehot": "Wx0"}.get(mode)
        dummy = np.zeros((1, 1), dtype=np.float32)
        self._Sx = self.params[self._sx_name] if self._sx_name else dummy
        self._accSx = self.acc[self._sx_name] if self._sx_name else dummy
        self._momSx = self.mom[self._sx_name] if self._sx_name else dummy
        self._in0 = {"constrained": cfg.layers[-1], "embedding": cfg.embedding, "onehot": 0}[mode]
        code, a = cfg.final_act_code
        self._fp = np.array([a, cfg.bpreg, cfg.learning_rate, cfg.momentum, cfg.grad_cap, cfg.dropout_p_embed,
                             cfg.dropout_p_hidden, cfg.batch_size], dtype=np.float64)
        self._act = (code, a)
        self._keys = np.array([dropout_key(cfg.seed, l) for l in range(-1, len(cfg.layers))], dtype=np.int64)
        self._use_logq = logq_target is not None
        if self._use_logq:
            self._logq_t = np.ascontiguousarray(logq_target, dtype=np.float32)
            self._logq_s = np.ascontiguousarray(logq_sample, dtype=np.float32)
        else:
            self._logq_t = self._logq_s = np.zeros(1, dtype=np.float32)
        self._head = np.full(self.n_items, -1, dtype=np.int32)
        self._train = None  # buffers for (B, S)
        self._hid = None  # flat hidden state of training, or None (= zeros at the next step)
        self._eval = None  # (B, buffers, hidden) of evaluation

    # ------------------------------------------------------------------ layout helpers
    def _layer_table(self, B):
        """Per-layer offsets into flat / hid / ws (int64 [L, L_NCOL]) and the layer-0 input buffer offsets."""
        cfg = self.cfg
        L = len(cfg.layers)
        lay = np.zeros((L, L_NCOL), dtype=np.int64)
        ws_off = 0
        hid_off = 0

        def take(n):
            nonlocal ws_off
            o = ws_off
            ws_off += n
            return o

        for l, H in enumerate(cfg.layers):
            IN = self._in0 if l == 0 else cfg.layers[l - 1]
            lay[l, L_H] = H
            lay[l, L_IN] = IN
            lay[l, L_WX] = -1 if f"Wx{l}" in self._sparse else self._off[f"Wx{l}"]
            lay[l, L_WRZ] = self._off[f"Wrz{l}"]
            lay[l, L_WH] = self._off[f"Wh{l}"]
            lay[l, L_BH] = self._off[f"Bh{l}"]
            lay[l, L_HID] = hid_off
            hid_off += B * H
            for col, n in ((L_A, 3 * H), (L_T2, 2 * H), (L_R, H), (L_Z, H), (L_C, H), (L_RH, H), (L_T1, H),
                           (L_OUT, H), (L_MASK, H), (L_DA, 3 * H), (L_DC, H), (L_DRZ, 2 * H), (L_DRH, H),
                           (L_DOUT, H)):
                lay[l, col] = take(B * n)
        ox0 = take(B * self._in0)
        om0 = take(B * self._in0)
        odx0 = take(B * self._in0)
        ip = np.array([self._mode, self.cfg.loss_code, self._act[0], int(cfg.mask_accidental_hits),
                       int(self._use_logq), L, self._in0, ox0, om0, odx0], dtype=np.int64)
        return lay, ip, ws_off, hid_off

    def _buffers(self, B, S):
        if self._train is not None and self._train["B"] == B and self._train["S"] == S:
            return self._train
        lay, ip, n_ws, n_hid = self._layer_table(B)
        O = B + S
        HL = self.cfg.layers[-1]
        n_slots = O + B
        in_cols = 0 if self._sx_name is None else self.params[self._sx_name].shape[1]
        f32 = np.float32
        n_partial = 16 + (self._ndense + (n_slots + _MR) * (HL + _VW) + O + B * max(in_cols, 1)) // _CHUNK
        Op = (O + _MR - 1) // _MR * _MR
        Bp = (B + _VW - 1) // _VW * _VW
        buf = dict(
            B=B, S=S, lay=lay, ip=ip, ws=np.zeros(n_ws, f32),
            gWy=np.zeros((max(Op, n_slots), HL), f32), gBy=np.zeros(O, f32),
            gSx=np.zeros((B, max(in_cols, 1)), f32),
            WyY=np.zeros((Op, HL), f32), hT=np.zeros((HL, Bp), f32), byY=np.zeros(O, f32), lqY=np.zeros(O, f32),
            dh_part=np.zeros((_SG_GROUPS, B, HL), f32),
            Z=np.zeros((Bp, Op), f32), R=np.zeros((B, Op), f32),
            dZ=np.zeros((Bp, Op), f32), rowloss=np.zeros(B, np.float64), partial=np.zeros(n_partial, np.float64),
            ids=np.zeros(n_slots, np.int32), nxt=np.zeros(n_slots, np.int32), first=np.zeros(n_slots, np.int32),
            gsum=np.zeros((n_slots, max(HL, in_cols)), f32), n_hid=n_hid)
        self._train = buf
        return buf

    # ------------------------------------------------------------------ training
    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        active = np.ascontiguousarray(active, dtype=np.bool_)
        reset = np.ascontiguousarray(reset, dtype=np.bool_)
        T, B = inputs.shape
        samples = np.ascontiguousarray(samples, dtype=np.int32).reshape(T, -1)
        S = samples.shape[1]
        self._check_ids(inputs, "inputs")
        self._check_ids(targets, "targets")
        self._check_ids(samples, "samples")
        buf = self._buffers(B, S)
        if self._hid is not None and self._hid.shape[0] != buf["n_hid"]:
            self._hid = None
        if self._hid is None:
            self._hid = np.zeros(buf["n_hid"], dtype=np.float32)
        losses = np.empty(T, dtype=np.float64)
        _train_chunk(self.flat, self.params["Wy"], self.params["By"], self._Sx, self.gflat, buf["gWy"], buf["gBy"],
                     buf["gSx"], self.acc_flat, self.mom_flat, self.acc["Wy"], self.mom["Wy"], self.acc["By"],
                     self.mom["By"], self._accSx, self._momSx, self._hid, buf["ws"], buf["WyY"], buf["hT"],
                     buf["dh_part"], buf["byY"], buf["lqY"], buf["Z"], buf["R"], buf["dZ"], buf["rowloss"],
                     buf["partial"], buf["ids"], self._head, buf["nxt"], buf["first"],
                     buf["gsum"], buf["lay"], buf["ip"], self._fp, self._keys, self._logq_t, self._logq_s,
                     inputs, targets, active, reset, samples, np.int64(step0), losses)
        return losses

    def train_step(self, X, Y, active, reset, step: int) -> float:
        X = np.asarray(X)
        B = X.shape[0]
        Y = np.asarray(Y)
        return float(self.train_chunk(X[None], Y[None, :B], np.asarray(active)[None], np.asarray(reset)[None],
                                      Y[None, B:], step)[0])

    def _check_ids(self, a, name):
        if a.size and (a.min() < 0 or a.max() >= self.n_items):
            raise ValueError(f"{name} holds item ids outside [0, {self.n_items}): min {a.min()}, max {a.max()}")

    def reset_hidden(self) -> None:
        self._hid = None

    # ------------------------------------------------------------------ state exchange
    def get_params(self) -> dict:
        return {k: v.copy() for k, v in self.params.items()}

    def get_opt_state(self) -> dict:
        return {"acc": {k: v.copy() for k, v in self.acc.items()}, "mom": {k: v.copy() for k, v in self.mom.items()}}

    def set_opt_state(self, state: dict) -> None:
        for s, d in (("acc", self.acc), ("mom", self.mom)):
            for k, v in state[s].items():
                d[k][...] = v

    def _split_hidden(self, flat, B):
        out = []
        off = 0
        for H in self.cfg.layers:
            out.append(flat[off:off + B * H].reshape(B, H))
            off += B * H
        return out

    def get_hidden(self) -> list:
        if self._hid is None:
            return []
        B = self._hid.shape[0] // sum(self.cfg.layers)
        return [h.copy() for h in self._split_hidden(self._hid, B)]

    def set_hidden(self, H: list) -> None:
        if len(H) != len(self.cfg.layers):
            raise ValueError(f"set_hidden needs {len(self.cfg.layers)} arrays (one per layer); got {len(H)}")
        B = np.asarray(H[0]).shape[0]
        for h, Hl in zip(H, self.cfg.layers):
            if np.asarray(h).shape != (B, Hl):
                raise ValueError(f"hidden state of shape {np.asarray(h).shape}; expected {(B, Hl)}")
        self._hid = np.concatenate([np.asarray(h, dtype=np.float32).reshape(-1) for h in H])

    # ------------------------------------------------------------------ evaluation
    def reset_eval(self, batch_size: int) -> None:
        lay, ip, n_ws, n_hid = self._layer_table(batch_size)
        Bp = (batch_size + _VW - 1) // _VW * _VW
        self._eval = dict(B=batch_size, lay=lay, ip=ip, ws=np.zeros(n_ws, np.float32),
                          hid=np.zeros(n_hid, np.float32), tscore=np.zeros(batch_size, np.float32),
                          hT=np.zeros((self.cfg.layers[-1], Bp), np.float32))

    def eval_step(self, X, targets, reset, active, candidates=None):
        if self._eval is None:
            raise RuntimeError("call reset_eval(batch_size) before eval_step")
        ev = self._eval
        X = np.ascontiguousarray(X, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        reset = np.ascontiguousarray(reset, dtype=np.bool_)
        B = X.shape[0]
        if B != ev["B"]:
            raise ValueError(f"eval_step got {B} rows; reset_eval was called with batch_size={ev['B']}")
        self._check_ids(X, "X")
        self._check_ids(targets, "targets")
        _eval_forward(self.flat, self.params["Wy"], self._Sx, ev["hid"], ev["ws"], ev["lay"], ev["ip"], self._fp,
                      self._keys, X, reset)
        if candidates is None:
            items = ev.get("all_items")
            if items is None or items.shape[0] != self.n_items:
                items = ev["all_items"] = np.arange(self.n_items, dtype=np.int32)
        else:
            items = np.ascontiguousarray(candidates, dtype=np.int32).reshape(-1)
            self._check_ids(items, "candidates")
        top = self._split_hidden(ev["hid"], B)[-1]
        nchunk = max(1, min(64, (items.shape[0] + 255) // 256))  # chunks of >= 256 items
        part_gt = np.empty((nchunk, B), np.int64)
        part_eq = np.empty((nchunk, B), np.int64)
        n_gt = np.empty(B, np.int64)
        n_eq = np.empty(B, np.int64)
        if items.shape[0] == 0:
            n_gt[:] = 0
            n_eq[:] = 1
            return n_gt, n_eq
        _rank_counts(top, ev["hT"], self.params["Wy"], self.params["By"], items, targets, self._act[0],
                     self._act[1], ev["tscore"], n_gt, n_eq, part_gt, part_eq)
        if candidates is not None:
            np.maximum(n_eq, 1, out=n_eq)
        return n_gt, n_eq
