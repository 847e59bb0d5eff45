"""The reference against central finite differences in float64: every loss x input mode x {1, 2 layers} x
final activation {linear, elu-0.5, tanh}, with dropout masks, logq, inactive rows and duplicate ids."""
import itertools
import zlib

import numpy as np
import pytest
from steps import make_cfg, make_problem

from gru4rec_kernels import reference as ref
from gru4rec_kernels.config import LOSSES


def numeric_loss(params, cfg, H, step):
    Z, _ = ref.forward(params, cfg, H, step)
    loss, _ = ref.loss_and_grad(Z, cfg, step)
    return loss


def dense_grads(params, cfg, H, step):
    Z, cache = ref.forward(params, cfg, H, step)
    _, dZ = ref.loss_and_grad(Z, cfg, step)
    g = ref.backward(params, cfg, cache, dZ, step)
    out = {k: np.zeros_like(v) for k, v in params.items()}
    for k, v in g.dense.items():
        out[k] += v
    for k, (ids, rows) in g.sparse.items():
        np.add.at(out[k], ids, rows)
    return out


CASES = list(itertools.product(LOSSES, ("constrained", "embedding", "onehot"), ((5,), (4, 5)),
                               ("linear", "elu-0.5", "tanh")))


@pytest.mark.parametrize("loss,mode,layers,act", CASES)
def test_gradients_match_finite_differences(loss, mode, layers, act):
    cfg = make_cfg(loss, mode, layers, act, logq=0.0)
    logq = loss == "cross-entropy"
    seed = zlib.crc32(repr((loss, mode, layers, act)).encode()) % 1000
    params, _, H, step = make_problem(cfg, dropout=0.3, logq=logq, seed=seed)
    H = [np.where(step.reset[:, None], 0, h) for h in H]
    analytic = dense_grads(params, cfg, H, step)
    rng = np.random.default_rng(0)
    h = 1e-4  # 4-point central stencil: truncation O(h^4), roundoff ~1e-16 / h
    for name, p in params.items():
        flat = p.reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, 30), replace=False)
        num = np.empty(idx.size)
        for n, i in enumerate(idx):
            old = flat[i]
            f = []
            for d in (2, 1, -1, -2):
                flat[i] = old + d * h
                f.append(numeric_loss(params, cfg, H, step))
            flat[i] = old
            num[n] = (8 * (f[1] - f[2]) - (f[0] - f[3])) / (12 * h)
        ana = analytic[name].reshape(-1)[idx]
        scale = max(np.abs(analytic[name]).max(), 1e-8)
        err = np.abs(ana - num).max() / scale
        assert err < 1e-6, f"{name}: max relative error {err:.2e}"


def test_gradient_is_not_trivially_zero():
    cfg = make_cfg("bpr-max", "constrained", (5,), "elu-0.5")
    params, _, H, step = make_problem(cfg)
    g = dense_grads(params, cfg, H, step)
    for name in ("Wy", "By", "Wx0", "Wrz0", "Wh0", "Bh0"):
        assert np.abs(g[name]).max() > 1e-4, name


def test_inactive_rows_contribute_nothing():
    cfg = make_cfg("cross-entropy", "constrained", (5,), "linear")
    params, _, H, step = make_problem(cfg, inactive=(1,))
    Z, _ = ref.forward(params, cfg, H, step)
    base, dZ = ref.loss_and_grad(Z, cfg, step)
    assert np.all(dZ[1] == 0)
    # changing the inactive row's score leaves the loss unchanged: its column is not a negative either
    Z2 = Z.copy()
    Z2[:, 1] += 5.0
    Z2[1] += 3.0
    assert ref.loss_and_grad(Z2, cfg, step)[0] == pytest.approx(base, rel=1e-12)


def test_cross_entropy_is_stable_for_huge_scores():
    cfg = make_cfg("cross-entropy", "constrained", (5,), "linear")
    _, _, _, step = make_problem(cfg, inactive=())
    Z = np.full((3, 7), 1e4)
    Z[0, 0] = 1e4 + 1
    loss, dZ = ref.loss_and_grad(Z, cfg, step)
    assert np.isfinite(loss) and np.all(np.isfinite(dZ))


def test_accidental_hits_are_masked_when_asked():
    cfg = make_cfg("cross-entropy", "constrained", (5,), "linear", mask_accidental_hits=True)
    _, _, _, step = make_problem(cfg, inactive=())
    neg = ref.negative_mask(step.Y, step.active, 3, True)
    # samples[0] equals targets[0]; targets[2] equals targets[0]
    assert not neg[0, 3] and not neg[0, 2] and not neg[2, 0]
    neg2 = ref.negative_mask(step.Y, step.active, 3, False)
    assert neg2[0, 3] and neg2[0, 2]


def test_sparse_adagrad_sums_duplicate_ids():
    p = np.zeros((4, 2))
    acc, mom = np.zeros_like(p), np.zeros_like(p)
    ids = np.array([1, 1, 3])
    rows = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 1.0]])
    ref.sparse_adagrad(p, ids, rows, acc, mom, lr=0.1, momentum=0.0)
    np.testing.assert_allclose(acc[1], [16.0, 36.0])
    np.testing.assert_allclose(p[1], -0.1 * np.array([4.0, 6.0]) / np.sqrt(np.array([16.0, 36.0]) + 1e-6))
    assert np.all(p[[0, 2]] == 0)


def test_adagrad_momentum_matches_the_formula():
    p, acc, mom = np.array([1.0]), np.zeros(1), np.zeros(1)
    ref.adagrad_dense(p, np.array([2.0]), acc, mom, lr=0.5, momentum=0.9)
    u1 = -0.5 * 2 / np.sqrt(4 + 1e-6)
    assert p[0] == pytest.approx(1 + u1)
    ref.adagrad_dense(p, np.array([1.0]), acc, mom, lr=0.5, momentum=0.9)
    u2 = -0.5 * 1 / np.sqrt(5 + 1e-6)
    assert p[0] == pytest.approx(1 + u1 + 0.9 * u1 + u2)


def test_grad_cap_clips_the_global_norm():
    cfg = make_cfg("cross-entropy", "constrained", (5,), "linear")
    params, _, H, step = make_problem(cfg)
    Z, cache = ref.forward(params, cfg, H, step)
    _, dZ = ref.loss_and_grad(Z, cfg, step)
    g = ref.backward(params, cfg, cache, dZ, step)
    ref.clip_grads(g, 1e-3)
    sq = sum((v ** 2).sum() for v in g.dense.values()) + sum((r ** 2).sum() for _, r in g.sparse.values())
    assert np.sqrt(sq) == pytest.approx(1e-3, rel=1e-9)
