"""Scalar math of the CPU kernels, libm-free so that loops over it vectorise (``exp`` / ``tanh`` calls to libm
do not): exp in float64 and float32, sigmoid, tanh, and the final activation with its gradient (the twins of
``reference.sigmoid`` / ``final_act`` / ``final_act_grad`` and of ``kernels/common.py``).

Stated accuracy, checked by tests/test_mathf.py over dense sweeps against numpy in float64:
    exp64     relative error < 1e-12 on [-708, 709] (measured 3e-13; the argument is clamped outside)
    exp32     <= 1 ulp on [-64, 88] (measured 0.97); exactly 0 below -64; exp(88) above 88; nan stays nan
    sigmoid   relative error < 1e-12 for x >= -708 (no cancellation); below, < 2e-308 (0 in float32)
    tanh      absolute error < 5e-13 (measured 1.5e-13: exp64's relative error carried through 2 / (e + 1))
    expm1     relative error < 1e-12 for x <= 0 (the ELU activation's only range)
The final activations use these (never libm's ``math.tanh`` / ``math.expm1``), so the loss kernels' loops over
a row vectorise.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ...codes import ACT_ELU, ACT_LINEAR, ACT_RELU, ACT_TANH


@intrinsic
def _i64_as_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (to build 2**n in exp64; vectorises)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _f64_as_i64(typingctx, x):
    """Reinterpret the bits of a float64 as an int64 (the exponent of exp64 without a float -> int conversion)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32 (to build 2**n in exp32; vectorises)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


if numba.config.DISABLE_JIT:  # pure Python (coverage runs): the same bit casts through numpy views
    def _i64_as_f64(x):  # noqa: F811
        return np.array([x], dtype=np.int64).view(np.float64)[0]

    def _f64_as_i64(x):  # noqa: F811
        return np.array([x], dtype=np.float64).view(np.int64)[0]

    def _i32_as_f32(x):  # noqa: F811
        return np.array([x], dtype=np.int32).view(np.float32)[0]


_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490  # Cody-Waite split of ln 2
_LN2_LO = 1.90821492927058770002e-10
# 1.5 * 2**52: for an integer-valued |n| < 2**51, the bits of n + _ROUND are those of _ROUND plus n, so n comes back
# as an integer by a bit cast and a subtraction. AVX2 has no packed float64 -> int64 conversion (int64(n) ran four
# scalar conversions per vector, the bottleneck of exp64 in a vectorised loop); this is all packed integer adds.
_ROUND = 6755399441055744.0
_ROUND_BITS = 0x4338000000000000


@njit(cache=True, error_model="numpy", inline="always")
def exp64(x):
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
    n = _f64_as_i64(nf + _ROUND) - _ROUND_BITS  # = int64(nf), exactly (|nf| <= 1023)
    return p * _i64_as_f64((n + 1023) << 52)


@njit(cache=True, error_model="numpy", inline="always")
def exp32(x):
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
def sigmoid(x):
    """1 / (1 + exp(-x)) in float64 (accurate for every x: no cancellation)."""
    return 1.0 / (1.0 + exp64(-x))


@njit(cache=True, error_model="numpy", inline="always")
def tanh(x):
    """tanh(x) in float64 as sign(x) (1 - 2 / (exp(2|x|) + 1)): absolute error < 5e-13 (see the module)."""
    t = 1.0 - 2.0 / (exp64(2.0 * abs(x)) + 1.0)
    return t if x >= 0.0 else -t


@njit(cache=True, error_model="numpy", inline="always")
def expm1(x):
    """exp(x) - 1 in float64 for x <= 0 (ELU): a Taylor polynomial near 0, where exp64(x) - 1 would cancel,
    and exp64(x) - 1 below -1/8 (relative error < 1e-12 on both sides; see the module)."""
    if x > -0.125:  # terms up to x^10 / 10!: the remainder is < 0.125^11 / 11! ~ 1e-18 of |x|
        return x * (1.0 + x * (0.5 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120 + x * (1.0 / 720 + x * (
            1.0 / 5040 + x * (1.0 / 40320 + x * (1.0 / 362880 + x * (1.0 / 3628800))))))))))
    return exp64(x) - 1.0


@njit(cache=True, error_model="numpy", inline="always")
def final_act(z, code, a):
    """Final activation R = f(Z) (float64 in, float64 out; the caller rounds to float32)."""
    if code == ACT_LINEAR:
        return z
    if code == ACT_TANH:
        return tanh(z)
    if code == ACT_RELU:
        return z if z > 0.0 else 0.0
    if code == ACT_ELU:
        return z if z > 0.0 else a * expm1(z)
    return z if z > 0.0 else a * z  # leaky


@njit(cache=True, error_model="numpy", inline="always")
def final_act_grad(z, r, code, a):
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
def final_act32(z, act, act_a):
    """f(z) for a float32 score: evaluated in float64, rounded once (evaluation and top-k scoring)."""
    return np.float32(final_act(np.float64(z), act, act_a))
