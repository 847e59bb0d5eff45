"""The p-RNN reference against central finite differences in float64, for every architecture x strategy (every
phase) x input kind (ID: constrained / embedding / one-hot; features: dense / sparse / both), with dropout
masks, logq, inactive rows, duplicate ids, an input item without features and a subnet scale != 1; frozen
subnets untouched; the one-subnet ID model equal to reference.train_step bit for bit."""
import itertools
import zlib

import numpy as np
import pytest
from prnn_steps import FEATURE_OF_KIND, make_features, make_prnn, make_prnn_problem, phases
from steps import make_cfg, make_problem

from gru4rec_kernels import reference as ref
from gru4rec_kernels import reference_prnn as rp
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.config import LOSSES
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.prnn_config import STRATEGIES, Phase
from gru4rec_kernels.prnn_layout import PRNNLayout, init_prnn_params

ID_MODES = ("constrained", "embedding", "onehot")
ACTS = ("linear", "elu-0.5", "tanh")


# --------------------------------------------------------------------------------------------- naive twins
def naive_scores(params, layout, tops, Y, col_logq=None):
    """Z = sum_k a_k h_k W_k[Y]^T + By[Y] - logq, one product per subnet (the paper's sum, written out)."""
    Z = params["By"][Y][None, :].repeat(next(iter(tops.values())).shape[0], axis=0)
    for k, h in tops.items():
        c0, c1 = layout.cols[k]
        Z = Z + layout.subnets[k].scale * (h @ params["Wy"][Y][:, c0:c1].T)
    return Z if col_logq is None else Z - col_logq


def loss_of(params, layout, H, step, masks, phase):
    Z, _ = rp.forward(params, layout, H, step, masks, phase)
    return ref.loss_and_grad(Z, layout.cfg, step)[0]


def analytic(params, layout, H, step, masks, phase):
    """The backward's gradients summed into full arrays (only the names it produced)."""
    Z, cache = rp.forward(params, layout, H, step, masks, phase)
    _, dZ = ref.loss_and_grad(Z, layout.cfg, step)
    g = rp.backward(params, layout, cache, dZ, step, masks, phase)
    out = dict(g.dense)
    for key, (ids, rows) in g.sparse.items():
        name, cols = layout.grad_target(key)
        full = out.setdefault(name, np.zeros_like(params[name]))
        np.add.at(full if cols is None else full[:, cols], ids, rows)
    return out


def expected_trainable(layout, phase):
    names = {n for k in phase.trainable for n in layout.subnet_param_names(k)} | {"Wy"}
    return names | {"By"} if phase.train_bias else names


def numeric_grad(params, name, idx, f, h=1e-4):
    """4-point central stencil: truncation O(h^4), roundoff ~1e-16 / h."""
    flat = params[name].reshape(-1)
    out = np.empty(idx.size)
    for n, i in enumerate(idx):
        old = flat[i]
        v = []
        for d in (2, 1, -1, -2):
            flat[i] = old + d * h
            v.append(f())
        flat[i] = old
        out[n] = (8 * (v[1] - v[2]) - (v[0] - v[3])) / (12 * h)
    return out


# --------------------------------------------------------------------------------------------- cases
CASES = ([("id", m, None, "simultaneous") for m in ID_MODES]
         + [("feature", None, f, "simultaneous") for f in FEATURE_OF_KIND]
         + [("concat", m, f, "simultaneous") for m, f in itertools.product(ID_MODES, FEATURE_OF_KIND)]
         + [("parallel", m, f, s) for m, f, s in itertools.product(ID_MODES, FEATURE_OF_KIND, STRATEGIES)])


@pytest.mark.parametrize("arch,mode,feats,strategy", CASES)
def test_gradients_match_finite_differences(arch, mode, feats, strategy):
    i = CASES.index((arch, mode, feats, strategy))
    loss, act = LOSSES[i % len(LOSSES)], ACTS[(i // len(LOSSES)) % len(ACTS)]
    layers = (4, 5) if i % 2 else (5,)
    cfg, prnn, feats_ = make_prnn(arch, mode, feats, strategy, loss=loss, final_act=act, layers=layers,
                                  n_epochs=4)
    layout = PRNNLayout(cfg, prnn, 13, feats_)
    seed = zlib.crc32(repr((arch, mode, feats, strategy)).encode()) % 1000
    params, _, H, step, masks = make_prnn_problem(layout, dropout=0.3, logq=loss == "cross-entropy", seed=seed)
    H = [[np.where(step.reset[:, None], 0, h) for h in Hk] for Hk in H]
    rng = np.random.default_rng(0)
    for phase in phases(prnn, cfg.n_epochs):
        grads = analytic(params, layout, H, step, masks, phase)
        assert set(grads) == expected_trainable(layout, phase), phase
        f = lambda: loss_of(params, layout, H, step, masks, phase)  # noqa: E731
        for name in sorted(grads):
            g = grads[name]
            if name == "Wy":  # the trainable blocks' columns only; the others' gradient was never formed
                keep = np.zeros(g.shape, bool)
                for k in phase.trainable:
                    keep[:, slice(*layout.cols[k])] = True
                assert np.all(g[~keep] == 0)
                cand = np.flatnonzero(keep.reshape(-1))
            else:
                cand = np.arange(g.size)
            idx = rng.choice(cand, size=min(cand.size, 12), replace=False)
            num = numeric_grad(params, name, idx, f)
            scale = max(np.abs(g).max(), 1e-8)
            err = np.abs(g.reshape(-1)[idx] - num).max() / scale
            assert err < 1e-6, f"{phase} {name}: max relative error {err:.2e}"
        for k in set(range(len(layout.subnets))) - set(phase.scoring):  # a subnet that does not score: no effect
            name = layout.subnet_param_names(k)[0]
            assert np.all(numeric_grad(params, name, np.arange(3), f) == 0), name


def test_gradient_is_not_trivially_zero():
    cfg, prnn, feats = make_prnn("parallel", "constrained", "both")
    layout = PRNNLayout(cfg, prnn, 13, feats)
    params, _, H, step, masks = make_prnn_problem(layout)
    g = analytic(params, layout, H, step, masks, prnn.phase(0, 0, cfg.n_epochs))
    for name in layout.subnet_param_names(0) + layout.subnet_param_names(1) + layout.subnet_param_names(2):
        assert np.abs(g[name]).max() > 1e-5, name


def test_summed_scores_equal_the_per_subnet_sum():
    cfg, prnn, feats = make_prnn("parallel", "embedding", "both", layers=(4, 5), logq=0.5)
    layout = PRNNLayout(cfg, prnn, 13, feats)
    params, _, H, step, masks = make_prnn_problem(layout, logq=True)
    for phase in (prnn.phase(0, 0, 10), Phase((0,), (0, 2), True)):
        Z, cache = rp.forward(params, layout, H, step, masks, phase)
        tops = {k: c.layers[-1].out for k, c in cache.subnets.items()}
        assert sorted(tops) == list(phase.scoring)
        np.testing.assert_allclose(Z, naive_scores(params, layout, tops, step.Y, step.col_logq), rtol=1e-12)


def test_sparse_input_product_equals_the_dense_product():
    F = make_features()["cat"].matrix
    rng = np.random.default_rng(1)
    X = np.array([3, 7, 3, 12, 0])  # a duplicate row, an empty row
    W = rng.normal(size=(F.shape[1], 9))
    rows = rp.sparse_rows(F, X, np.float64)
    np.testing.assert_allclose(rp.sparse_input_product(W, rows, len(X)), F[X].toarray() @ W, rtol=1e-13)
    assert rows.seg.tolist() == sorted(rows.seg.tolist()) and 1 not in rows.seg  # row 1 (item 7) is empty
    # its gradient: the rows (cols, vals * da[seg]) summed per column = F[X]^T da
    da = rng.normal(size=(len(X), 9))
    dW = np.zeros_like(W)
    np.add.at(dW, rows.cols, rows.vals[:, None] * da[rows.seg])
    np.testing.assert_allclose(dW, F[X].toarray().T @ da, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------- frozen subnets
@pytest.mark.parametrize("strategy", ["alternating", "interleaving", "residual"])
@pytest.mark.parametrize("mode", ID_MODES)
def test_frozen_subnets_and_their_optimizer_state_are_untouched(strategy, mode):
    cfg, prnn, feats = make_prnn("parallel", mode, "both", strategy, momentum=0.5, batch_size=3,
                                 dropout_p_hidden=0.2, n_epochs=3, train_bias="first")
    layout = PRNNLayout(cfg, prnn, 13, feats)
    params, opt, H, step, _ = make_prnn_problem(layout, dtype=np.float32, inactive=())
    rng = np.random.default_rng(3)
    # non-zero state, so that a stray momentum decay or accumulation would show (accumulators small, so that
    # a trainable parameter's g^2 is not lost to float32 rounding)
    for s, (lo, hi) in (("acc", (1e-8, 1e-7)), ("mom", (-0.1, 0.1))):
        for v in opt[s].values():
            v[...] = rng.uniform(lo, hi, v.shape)
    masks = rp.dropout_masks(layout, 5, 3)
    for phase in phases(prnn, cfg.n_epochs):
        p0 = {k: v.copy() for k, v in params.items()}
        o0 = {s: {k: v.copy() for k, v in d.items()} for s, d in opt.items()}
        _, H1 = rp.train_step(params, opt, layout, H, step, masks, phase)
        for k in range(len(layout.subnets)):
            c = slice(*layout.cols[k])
            names = layout.subnet_param_names(k)
            state = [(params, p0)] + [(opt[s], o0[s]) for s in ("acc", "mom")]
            frozen = k not in phase.trainable
            for now, before in state:
                for n in names:
                    assert np.array_equal(now[n], before[n]) == frozen, (phase, n)
                assert np.array_equal(now["Wy"][:, c], before["Wy"][:, c]) == frozen, (phase, "Wy", k)
            if k not in phase.scoring:  # did not run: hidden state as given (reset rows zeroed)
                for h1, h0 in zip(H1[k], H[k]):
                    assert np.array_equal(h1, np.where(step.reset[:, None], 0, h0))
        for now, before in [(params, p0)] + [(opt[s], o0[s]) for s in ("acc", "mom")]:
            assert np.array_equal(now["By"], before["By"]) != phase.train_bias, phase
        H = H1


# --------------------------------------------------------------------------------------------- the ID model is GRU4Rec
def ref_name(name: str) -> str:
    return name[3:] if name.startswith("s0.") else name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,layers", [("constrained", (5,)), ("embedding", (4, 5)), ("onehot", (5,)),
                                         ("constrained", (3, 4))])
def test_id_architecture_equals_reference_bitwise(mode, layers, dtype):
    cfg = make_cfg("cross-entropy" if mode != "onehot" else "bpr-max", mode, layers, "elu-0.5",
                   dropout_p_embed=0.2, dropout_p_hidden=0.3, momentum=0.5, grad_cap=0.05,
                   logq=0.5 if mode != "onehot" else 0.0, mask_accidental_hits=mode == "embedding")
    cfg_p, prnn, _ = make_prnn("id", mode, None)
    layout = PRNNLayout(cfg, prnn, 13)
    _, pp = init_prnn_params(layout, dtype)
    _, pr = init_params(cfg, 13, dtype)
    assert sorted(map(ref_name, pp)) == sorted(pr)
    for k, v in pp.items():  # the same initialisation
        assert np.array_equal(v, pr[ref_name(k)]), k
    pr, opt_r, H, step = make_problem(cfg, dtype=dtype, logq=cfg.logq > 0, seed=4)
    pp = {k: pr[ref_name(k)].copy() for k in pp}
    opt_p = {s: {k: np.zeros_like(v) for k, v in pp.items()} for s in ("acc", "mom")}
    Hp = [[h.copy() for h in H]]
    backend = NumpyBackend(cfg, 13, pr, dtype=dtype)
    phase = prnn.phase(0, 0, cfg.n_epochs)
    for t in range(3):
        emb, hidden = backend.dropout_masks(t, len(step.X))  # float32, as the fast backends draw them
        m32 = rp.dropout_masks(layout, t, len(step.X))[0]
        assert np.array_equal(emb, m32.emb) and all(np.array_equal(a, b) for a, b in zip(hidden, m32.hidden))
        mp = rp.dropout_masks(layout, t, len(step.X), dtype)
        step_r = ref.StepInputs(step.X, step.Y, step.active, step.reset, emb_mask=mp[0].emb,
                                hidden_masks=mp[0].hidden, col_logq=step.col_logq)
        step_p = ref.StepInputs(step.X, step.Y, step.active, step.reset, col_logq=step.col_logq)
        loss_r, H = ref.train_step(pr, opt_r, cfg, H, step_r)
        loss_p, Hp = rp.train_step(pp, opt_p, layout, Hp, step_p, mp, phase)
        assert loss_p == loss_r
        for a, b in zip(Hp[0], H):
            assert np.array_equal(a, b)
        for k, v in pp.items():
            assert np.array_equal(v, pr[ref_name(k)]), (t, k)
            for s in ("acc", "mom"):
                assert np.array_equal(opt_p[s][k], opt_r[s][ref_name(k)]), (t, s, k)
        step.X, step.Y = step.Y[:3].copy(), np.roll(step.Y, 1)


def test_subnets_draw_distinct_dropout_masks():
    cfg, prnn, feats = make_prnn("parallel", "constrained", "dense", layers=(3,), feature_layers=(3,),
                                 dropout_p_hidden=0.5, dropout_p_embed=0.5)
    layout = PRNNLayout(cfg, prnn, 13, feats)
    m = rp.dropout_masks(layout, 7, 64)
    assert m[1].emb is None  # a feature subnet has no ID embedding
    assert not np.array_equal(m[0].hidden[0], m[1].hidden[0])
    assert not np.array_equal(m[0].hidden[0], rp.dropout_masks(layout, 8, 64)[0].hidden[0])
