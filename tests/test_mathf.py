"""The CPU backend's libm-free math (backends/cpu/mathf.py) against numpy in float64, over dense sweeps that
include the tails and the float32 overflow / underflow edges: the error bounds its docstring states."""
import numpy as np
from numba import njit

from gru4rec_kernels.backends.cpu.mathf import exp32, exp64, expm1, final_act, final_act_grad, sigmoid, tanh
from gru4rec_kernels.codes import ACT_ELU, ACT_LEAKY, ACT_LINEAR, ACT_RELU, ACT_TANH
from gru4rec_kernels.reference import final_act as ref_final_act
from gru4rec_kernels.reference import final_act_grad as ref_final_act_grad


@njit
def _map64(x, which):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        if which == 0:
            out[i] = exp64(x[i])
        elif which == 3:
            out[i] = expm1(x[i])
        elif which == 1:
            out[i] = sigmoid(x[i])
        else:
            out[i] = tanh(x[i])
    return out


@njit
def _map_exp32(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = exp32(x[i])
    return out


@njit
def _map_act(z, code, a):
    r = np.empty_like(z)
    g = np.empty_like(z)
    for i in range(z.shape[0]):
        r[i] = final_act(z[i], code, a)
        g[i] = final_act_grad(z[i], r[i], code, a)
    return r, g


def _sweep(lo, hi, n=400_001):
    return np.linspace(lo, hi, n)


def test_exp64_relative_error_below_1e12():
    x = np.concatenate([_sweep(-708.0, 709.0), _sweep(-1.0, 1.0, 100_001), [0.0, -0.0, 1e-300, -1e-300]])
    rel = np.abs(_map64(x, 0) / np.exp(x) - 1.0)
    assert rel.max() < 1e-12, rel.max()


def test_exp64_clamps_outside_its_range():
    """Below -708 / above 709 the argument is clamped: ~3e-308 instead of 0, ~8e307 instead of inf."""
    got = _map64(np.array([-1e4, -709.5, 710.0, 1e4]), 0)
    np.testing.assert_allclose(got, np.exp([-708.0, -708.0, 709.0, 709.0]), rtol=1e-12)
    assert np.all(np.isfinite(got))


def test_sigmoid_relative_error_below_1e12():
    x = np.concatenate([_sweep(-700.0, 700.0), _sweep(-20.0, 20.0, 200_001)])
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x))
    rel = np.abs(_map64(x, 1) / want - 1.0)
    assert rel.max() < 1e-12, rel.max()
    # far tails: 1 above, and below -708 at most ~1.2e-308 (0 once rounded to float32, as the true value)
    far = _map64(np.array([-1e4, -750.0, 40.0, 1e4]), 1)
    assert far[0] < 2e-308 and far[1] < 2e-308 and np.float32(far[0]) == 0.0
    assert far[2] == 1.0 and far[3] == 1.0


def test_tanh_absolute_error_below_5e13():
    x = np.concatenate([_sweep(-40.0, 40.0), _sweep(-1e-3, 1e-3, 100_001), [1e4, -1e4, 0.0, 1e-300]])
    err = np.abs(_map64(x, 2) - np.tanh(x))
    assert err.max() < 5e-13, err.max()
    assert _map64(np.array([800.0, -800.0]), 2).tolist() == [1.0, -1.0]


def test_expm1_relative_error_below_1e12():
    """x <= 0 (the ELU range), across the switch between the polynomial and exp64(x) - 1 at -1/8."""
    x = np.concatenate([_sweep(-708.0, 0.0), _sweep(-0.2, 0.0, 200_001), -np.logspace(-300, 0, 3001),
                        [-0.125, np.nextafter(-0.125, 0.0), np.nextafter(-0.125, -1.0), -0.0, 0.0]])
    want = np.expm1(x)
    with np.errstate(invalid="ignore"):
        rel = np.where(want != 0.0, np.abs(_map64(x, 3) / want - 1.0), np.abs(_map64(x, 3)))
    assert rel.max() < 1e-12, rel.max()


def test_exp32_within_1_ulp_and_its_edges():
    """At most 1 ulp over [-64, 88]; exactly 0 below -64 (no denormals), exp(88) above 88, nan stays nan."""
    x = np.concatenate([np.linspace(-64.0, 88.0, 1_000_001), np.linspace(-1.0, 1.0, 100_001),
                        [88.0, 87.9999, -63.9999, 0.0]]).astype(np.float32)
    x = x[x >= np.float32(-64.0)]
    got = _map_exp32(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    ulps = np.abs(got - want) / np.spacing(want.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.0, ulps.max()
    edges = _map_exp32(np.array([-64.001, -100.0, -np.inf, 89.0, 1e30, np.inf, np.nan], dtype=np.float32))
    assert edges[:3].tolist() == [0.0, 0.0, 0.0]
    assert np.all(edges[3:6] == _map_exp32(np.array([88.0], np.float32))[0]) and np.isfinite(edges[3])
    assert np.isnan(edges[6])


def test_final_act_and_grad_match_the_reference():
    z = np.concatenate([_sweep(-30.0, 30.0, 60_001), [0.0, -0.0]])
    for code, a in ((ACT_LINEAR, 0.0), (ACT_TANH, 0.0), (ACT_RELU, 0.0), (ACT_ELU, 0.5), (ACT_LEAKY, 0.1)):
        r, g = _map_act(z, code, a)
        # libm-free tanh / expm1 (vectorisable): the error bounds stated in mathf
        np.testing.assert_allclose(r, ref_final_act(z, code, a), rtol=1e-12, atol=5e-13)
        np.testing.assert_allclose(g, ref_final_act_grad(z, ref_final_act(z, code, a), code, a), rtol=1e-12,
                                   atol=1e-12)
