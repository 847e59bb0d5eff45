"""The p-RNN on the Numba cpu backend (PRNNCpuBackend, backends/cpu/prnn.py) against the numpy p-RNN backend.

* The sparse feature input kernels (backends/cpu/features.py) against their reference twins
  (reference_prnn.sparse_rows + sparse_input_product, sparse_input_grad), bit for bit: duplicate input items,
  an item without features, several non-zeros a row.
* Whole training steps (train_chunk, then train_step with its phase) of every architecture x strategy x feature
  kind, cross-entropy and bpr-max, the three ID input modes, dropout, momentum, clipping, logQ, resets,
  inactive rows: losses, parameters, Adagrad state and hidden state against a float64 run of the numpy p-RNN
  backend, within tolerance.assert_within_reference_error (the float32 numpy backend's own error sets the bound).
* Frozen subnets: parameters, their block of Wy, accumulators and momenta bit for bit unchanged by a step; a
  subnet that does not score keeps its hidden state.
* Determinism (a chunk equals its steps, any thread count), evaluation counts equal to the numpy backend's, and
  Trainer.fit / evaluate with backend="cpu" close to the numpy backend's.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from prnn_steps import EMPTY_ROW, N_ITEMS, make_prnn, make_prnn_problem
from steps import logq_arrays, make_schedule
from tolerance import assert_within_reference_error

from gru4rec_kernels import reference_prnn as rp
from gru4rec_kernels.backends.cpu import features as cpu_features
from gru4rec_kernels.backends.cpu.prnn import PRNNCpuBackend
from gru4rec_kernels.backends.prnn_numpy import PRNNNumpyBackend, prnn_backend_class, resolve_prnn_backend
from gru4rec_kernels.prnn_layout import PRNNLayout

STRATEGIES = ("simultaneous", "alternating", "interleaving", "residual")


def naive_sparse_input(F, W, X, da0):
    """The reference twins: (product [B, G], gradient ids [M], gradient rows [M, G])."""
    rows = rp.sparse_rows(F, X, np.float32)
    ids, grad = rp.sparse_input_grad(rows, da0)
    return rp.sparse_input_product(W, rows, len(X)), ids, grad


def csr_arrays(F):
    return (np.asarray(F.indptr, np.int64), np.asarray(F.indices, np.int32), np.asarray(F.data, np.float32))


# ============================================================================================ the sparse input kernels
@pytest.mark.parametrize("B", [1, 6])
def test_sparse_input_kernels_equal_their_reference_twins(B):
    """P[b] = sum_j v W[j] and the gradient pairs (j, v da0[b]) equal the reference bit for bit (the same float32
    products, added in CSR order); duplicate inputs repeat their rows, an empty row gives 0 and no pair; the
    slots past the M pairs are not written."""
    rng = np.random.default_rng(B)
    N, D, G = 9, 11, 7
    nnz = np.array([3, 0, 1, 5, 2, 0, 4, 1, 2])  # rows 1 and 5 have no features
    rows = np.repeat(np.arange(N), nnz)
    cols = np.concatenate([rng.choice(D, k, replace=False) for k in nnz])
    F = sp.csr_matrix((rng.uniform(-2, 2, rows.size).astype(np.float32), (rows, cols)), shape=(N, D))
    F.sort_indices()
    W = rng.standard_normal((D, G)).astype(np.float32)
    X = np.array([3, 1, 3, 6, 5, 0][:B], np.int32) if B > 1 else np.array([3], np.int32)
    da0 = rng.standard_normal((B, G)).astype(np.float32)
    want_p, want_ids, want_g = naive_sparse_input(F, W, X.astype(np.int64), da0)
    out = np.full((B, G), 7.0, np.float32)
    cpu_features.sparse_input_product(W, *csr_arrays(F), X, out)
    np.testing.assert_array_equal(out, want_p)
    cap = B * nnz.max() + 3
    ids = np.full(cap, -5, np.int32)
    slots = np.full((cap, G), 7.0, np.float32)
    M = cpu_features.sparse_input_grad(da0, *csr_arrays(F), X, ids, slots)
    assert M == want_ids.size
    np.testing.assert_array_equal(ids[:M], want_ids)
    np.testing.assert_array_equal(slots[:M], want_g)
    assert np.all(ids[M:] == -5) and np.all(slots[M:] == 7.0)
    if B > 1:
        assert np.all(out[1] == 0.0) and np.all(out[4] == 0.0)  # items without features
        np.testing.assert_array_equal(out[0], out[2])  # a duplicate input


# ============================================================================================ whole steps
T_STEPS = 6
B_ROWS, S_SAMPLES = 4, 5


def cases():
    """Every architecture x strategy x feature kind (the strategies need two subnets: parallel only), each with
    cross-entropy and with bpr-max; the ID input modes and the optimizer options spread over them."""
    out = []
    for arch in ("id", "feature", "concat", "parallel"):
        for strategy in (STRATEGIES if arch == "parallel" else ("simultaneous",)):
            for feats in ((None,) if arch == "id" else ("dense", "sparse")):
                out.append((arch, strategy, feats))
    out.append(("parallel", "simultaneous", "both"))
    out.append(("concat", "simultaneous", "both"))
    modes = ("constrained", "embedding", "onehot")
    return [pytest.param(a, s, f, loss, modes[(i + j) % 3], 2 * i + j,
                         id=f"{a}-{s}-{f}-{('ce', 'bprmax')[j]}-{modes[(i + j) % 3]}")
            for i, (a, s, f) in enumerate(out) for j, loss in enumerate(("cross-entropy", "bpr-max"))]


def phase_plan(prnn, n_epochs, T):
    """A phase per step: two steps per epoch, so that the phases of every strategy change inside the run."""
    return [prnn.phase(min(t // 2, n_epochs - 1), t, n_epochs) for t in range(T)]


def schedule(T, B, S, seed):
    inputs, targets, active, reset, samples = make_schedule(T, B, S, N_ITEMS, seed)
    inputs[:, 2] = inputs[:, 0]  # a duplicate input item (its sparse feature rows repeat)
    inputs[1::2, 1] = EMPTY_ROW  # an item without features
    active[1::2, 1] = True
    return inputs, targets, active, reset, samples


def run(be, sched, phases, step0):
    """All steps but the last through train_chunk, the last through train_step with its phase. Losses [T]."""
    inputs, targets, active, reset, samples = sched
    T = inputs.shape[0]
    be.set_phases(phases[:T - 1])
    losses = list(be.train_chunk(*(a[:T - 1] for a in sched), step0))
    Y = np.concatenate([targets[-1], samples[-1]])
    losses.append(be.train_step(inputs[-1], Y, active[-1], reset[-1], step0 + T - 1, phase=phases[-1]))
    return np.array(losses)


def compare(be, b32, b64, losses, l32, l64, **tol):
    """Losses, parameters, optimizer state and hidden state of ``be`` against the numpy pair."""
    assert_within_reference_error("losses", losses, l32, l64, **tol)
    p64, p32, got = b64.get_params(), b32.get_params(), be.get_params()
    assert set(got) == set(p64)
    for k in p64:
        assert got[k].dtype == np.float32, k
        assert_within_reference_error(f"param {k}", got[k], p32[k], p64[k], **tol)
    o64, o32, og = b64.get_opt_state(), b32.get_opt_state(), be.get_opt_state()
    for s in ("acc", "mom"):
        for k in o64[s]:
            assert_within_reference_error(f"{s} {k}", og[s][k], o32[s][k], o64[s][k], **tol)
    h64, h32, hg = b64.get_hidden(), b32.get_hidden(), be.get_hidden()
    assert len(hg) == len(h64) == sum(len(s.layers) for s in be.layout.subnets)
    for l in range(len(h64)):
        assert_within_reference_error(f"hidden {l}", hg[l], h32[l], h64[l], **tol)


@pytest.mark.parametrize("arch,strategy,feats,loss,mode,n", cases())
def test_whole_steps_match_numpy_backend(arch, strategy, feats, loss, mode, n):
    """T_STEPS steps (phases changing inside the chunk) with dropout on the hidden states and the ID embedding,
    momentum, and in turn clipping, logQ, accidental-hit masking, two layers in the ID subnet, final
    activations: the cpu p-RNN backend within float32 error of the float64 numpy p-RNN backend."""
    kw = dict(batch_size=B_ROWS, dropout_p_hidden=0.3, dropout_p_embed=0.3, momentum=0.5 if n % 2 else 0.9,
              grad_cap=0.05 if n % 3 == 1 else 0.0, logq=0.5 if n % 4 == 2 else 0.0,
              mask_accidental_hits=(n // 2) % 2 == 0, final_act=("linear", "elu-0.5", "tanh")[n % 3],
              layers=(5, 4) if n % 5 == 3 else (5,), n_epochs=3)
    cfg, prnn, feat = make_prnn(arch, mode if arch in ("id", "concat", "parallel") else None, feats,
                                strategy=strategy, loss=loss, **kw)
    layout = PRNNLayout(cfg, prnn, N_ITEMS, feat)
    params, *_ = make_prnn_problem(layout, dtype=np.float32, seed=n)
    lq = logq_arrays(cfg, N_ITEMS, seed=n) or (None, None)
    sched = schedule(T_STEPS, B_ROWS, S_SAMPLES, seed=n)
    phases = phase_plan(prnn, cfg.n_epochs, T_STEPS)
    be = PRNNCpuBackend(layout, params, *lq)
    b64 = PRNNNumpyBackend(layout, params, *lq, dtype=np.float64)
    b32 = PRNNNumpyBackend(layout, params, *lq, dtype=np.float32)
    losses = [run(b, sched, phases, 100) for b in (be, b32, b64)]
    compare(be, b32, b64, *losses, mult=4.0, floor=1e-6)


# ============================================================================================ frozen subnets
@pytest.mark.parametrize("strategy,mode", [("alternating", "constrained"), ("interleaving", "onehot"),
                                           ("residual", "embedding")])
def test_frozen_subnets_are_untouched(strategy, mode):
    """With non-zero accumulators and momenta (momentum 0.5, clipping on), every step leaves each frozen
    subnet's parameters, its block of Wy, and their accumulators and momenta bit for bit as they were; the
    trainable subnet's move; a subnet outside the scoring set keeps its hidden state (zeroed on reset rows)."""
    cfg, prnn, feat = make_prnn("parallel", mode, "both", strategy=strategy, batch_size=B_ROWS, momentum=0.5,
                                grad_cap=0.5, dropout_p_hidden=0.2, n_epochs=3)
    layout = PRNNLayout(cfg, prnn, N_ITEMS, feat)
    params, *_ = make_prnn_problem(layout, dtype=np.float32, seed=3)
    be = PRNNCpuBackend(layout, params)
    rng = np.random.default_rng(4)
    state = be.get_opt_state()
    for s in ("acc", "mom"):
        for k, v in state[s].items():
            v[...] = rng.uniform(0.1, 1.0, v.shape) if s == "acc" else rng.normal(0, 0.01, v.shape)
    be.set_opt_state(state)
    inputs, targets, active, reset, samples = schedule(T_STEPS, B_ROWS, S_SAMPLES, seed=5)
    K = len(layout.subnets)
    names = {k: layout.subnet_param_names(k) for k in range(K)}
    for t, phase in enumerate(phase_plan(prnn, cfg.n_epochs, T_STEPS)):
        p0, o0, h0 = be.get_params(), be.get_opt_state(), be.get_hidden()
        be.train_step(inputs[t], np.concatenate([targets[t], samples[t]]), active[t], reset[t], t, phase=phase)
        p1, o1, h1 = be.get_params(), be.get_opt_state(), be.get_hidden()
        for k in range(K):
            c0, c1 = layout.cols[k]
            before = [p0[n] for n in names[k]] + [p0["Wy"][:, c0:c1]]
            after = [p1[n] for n in names[k]] + [p1["Wy"][:, c0:c1]]
            for s in ("acc", "mom"):
                before += [o0[s][n] for n in names[k]] + [o0[s]["Wy"][:, c0:c1]]
                after += [o1[s][n] for n in names[k]] + [o1[s]["Wy"][:, c0:c1]]
            same = [np.array_equal(a, b) for a, b in zip(before, after)]
            if k in phase.trainable:
                assert not any(same[:len(names[k]) + 1]), (t, k, "a trainable subnet's parameters must move")
            else:
                assert all(same), (t, k, phase)
        assert np.array_equal(p0["By"], p1["By"]) != phase.train_bias
        if h0:
            flat = [sum(len(layout.subnets[j].layers) for j in range(k)) for k in range(K)]
            for k in set(range(K)) - set(phase.scoring):
                for l in range(len(layout.subnets[k].layers)):
                    want = np.where(reset[t][:, None], 0, h0[flat[k] + l])
                    np.testing.assert_array_equal(h1[flat[k] + l], want)
    assert any(set(ph.scoring) != set(range(K)) for ph in phase_plan(prnn, cfg.n_epochs, T_STEPS)) == \
        (strategy == "residual")


# ============================================================================================ determinism
def test_chunk_equals_steps_and_any_thread_count():
    """One train_chunk = its steps one by one = the same chunk on one thread, bit for bit."""
    cfg, prnn, feat = make_prnn("parallel", "constrained", "both", strategy="interleaving", batch_size=B_ROWS,
                                momentum=0.5, grad_cap=0.5, dropout_p_hidden=0.3, dropout_p_embed=0.3,
                                n_sample=40)
    layout = PRNNLayout(cfg, prnn, N_ITEMS, feat)
    params, *_ = make_prnn_problem(layout, dtype=np.float32, seed=6)
    sched = schedule(T_STEPS, B_ROWS, 40, seed=7)
    phases = phase_plan(prnn, cfg.n_epochs, T_STEPS)
    results = []
    default = numba.get_num_threads()
    for how, threads in (("chunk", default), ("steps", default), ("chunk", 1)):
        numba.set_num_threads(threads)
        try:
            be = PRNNCpuBackend(layout, params)
            if how == "chunk":
                be.set_phases(phases)
                losses = be.train_chunk(*sched, 3)
            else:
                inputs, targets, active, reset, samples = sched
                losses = [be.train_step(inputs[t], np.concatenate([targets[t], samples[t]]), active[t], reset[t],
                                        3 + t, phase=phases[t]) for t in range(T_STEPS)]
            results.append((np.asarray(losses), be.get_params(), be.get_opt_state(), be.get_hidden()))
        finally:
            numba.set_num_threads(default)
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])
        for k in results[0][1]:
            np.testing.assert_array_equal(other[1][k], results[0][1][k], err_msg=k)
            for s in ("acc", "mom"):
                np.testing.assert_array_equal(other[2][s][k], results[0][2][s][k], err_msg=f"{s} {k}")
        for a, b in zip(other[3], results[0][3]):
            np.testing.assert_array_equal(a, b)


# ============================================================================================ evaluation
@pytest.mark.parametrize("arch,mode,feats,subnets", [("parallel", "onehot", "both", None),
                                                     ("parallel", "constrained", "sparse", (0,)),
                                                     ("concat", "embedding", "dense", None),
                                                     ("feature", None, "sparse", None)])
def test_eval_counts_equal_numpy_backend(arch, mode, feats, subnets):
    """eval_chunk rank counts (= eval_step's, bit for bit) equal the numpy p-RNN backend's in float64, over all
    items and over candidates, with resets, idle lanes (counts 0), an item without features, the scoring subnets
    ``eval_subnets``, and exact ties (items 3 and 9 have identical output rows: both count as equal). Lanes where
    another item scores within 1e-5 of the target in float64 may legitimately differ (none should occur)."""
    cfg, prnn, feat = make_prnn(arch, mode, feats, final_act="tanh")
    layout = PRNNLayout(cfg, prnn, N_ITEMS, feat)
    params, *_ = make_prnn_problem(layout, dtype=np.float32, seed=8)
    params["Wy"][9] = params["Wy"][3]
    params["By"][9] = params["By"][3]
    nb, be = PRNNNumpyBackend(layout, params, dtype=np.float64), PRNNCpuBackend(layout, params)
    nb.eval_subnets = be.eval_subnets = subnets
    T, B = 5, 4
    rng = np.random.default_rng(9)
    inputs = rng.integers(0, N_ITEMS, (T, B))
    inputs[:, 1] = EMPTY_ROW
    targets = rng.integers(0, N_ITEMS, (T, B))
    targets[:, 0] = 3
    reset = rng.random((T, B)) < 0.3
    active = rng.random((T, B)) < 0.8
    cands = np.array([3, 9, 0, 12, 5])
    n_near = 0
    for c in (None, cands):
        be.reset_eval(B)
        got = be.eval_chunk(inputs, targets, reset, active, candidates=c)
        be.reset_eval(B)
        steps = [be.eval_step(inputs[t], targets[t], reset[t], active[t], candidates=c) for t in range(T)]
        for i in range(2):
            np.testing.assert_array_equal(np.stack([s[i] for s in steps]), got[i])
        nb.reset_eval(B)
        for t in range(T):
            want = nb.eval_step(inputs[t], targets[t], reset[t], active[t], candidates=c)
            sc = rp.score_all(nb.params, layout, nb.H_eval, subnets)
            tsc = sc[np.arange(B), targets[t]][:, None]
            sc = sc if c is None else sc[:, c]
            near = ((np.abs(sc - tsc) <= 1e-5 * np.maximum(np.abs(tsc), 1)) & (sc != tsc)).any(axis=1)
            n_near += int((near & active[t]).sum())
            on = active[t] & ~near
            for i in range(2):
                np.testing.assert_array_equal(got[i][t][on], want[i][on], err_msg=f"{c is None} {t} {i}")
                assert np.all(got[i][t][~active[t]] == 0)
            assert np.all(got[1][t][active[t]] >= 1)
        if c is None:
            assert np.all(got[1][active & (targets == 3)] == 2)  # the tie of items 3 and 9
    assert n_near <= 2


# ============================================================================================ inference replay
@pytest.mark.parametrize("arch,mode,feats,subnets", [("parallel", "onehot", "both", None),
                                                     ("parallel", "constrained", "sparse", (1,)),
                                                     ("concat", "embedding", "dense", None),
                                                     ("feature", None, "sparse", None)])
def test_replay_equals_reference_hidden_steps(arch, mode, feats, subnets):
    """PRNNCpuBackend(inference=True).replay of many sessions at once (recommend_batch's schedule: sorted by
    length, right-aligned, a running prefix per step; an empty session, an item without features, two layers)
    equals reference_prnn.hidden_step session by session in float64, within float32 rounding; the subnets
    outside ``subnets`` keep a zero state. The backend runs on the given arrays themselves (an in-place edit is
    seen, nothing is copied) and refuses to train."""
    from gru4rec_kernels.recommend import prefix_schedule
    cfg, prnn, feat = make_prnn(arch, mode, feats, final_act="tanh", layers=(5, 4))
    layout = PRNNLayout(cfg, prnn, N_ITEMS, feat)
    params, *_ = make_prnn_problem(layout, dtype=np.float32, seed=12)
    be = PRNNCpuBackend(layout, params, inference=True)
    assert all(be.params[k] is params[k] for k in params)
    K = len(layout.subnets)
    run = np.zeros(K, bool)
    run[list(range(K)) if subnets is None else list(subnets)] = True
    rng = np.random.default_rng(13)
    sessions = [rng.integers(0, N_ITEMS, L) for L in (3, 0, 7, 1, 4, 4)]
    sessions[2][3] = EMPTY_ROW
    lens = np.array([s.size for s in sessions])
    order, Xt, m_t = prefix_schedule(np.concatenate(sessions).astype(np.int64), lens)
    params["By"][0] += 1.0  # an in-place edit after construction (By is not read by the replay: Wy / E / W are)
    for name in params:
        if name != "By":
            params[name] *= np.float32(1.01)
            break
    hid = [np.zeros((len(sessions), h), np.float32) for h in be.layer_widths]
    be.replay(hid, Xt, m_t, run)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    for row, j in enumerate(order):
        H = [[np.zeros((1, h)) for h in sub.layers] for sub in layout.subnets]
        for i in sessions[j]:
            H = rp.hidden_step(p64, layout, H, np.array([i]), subnets)
        want = np.concatenate([h for Hk in H for h in Hk], axis=1)[0]
        got = np.concatenate([h[row] for h in hid])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"session {j}")
    with pytest.raises(RuntimeError, match="inference=True"):
        be.warmup(2, 3)  # the training driver's entry
    ro = {k: v.copy() for k, v in params.items()}
    ro["By"].setflags(write=False)
    with pytest.raises(ValueError, match="writable float32 C-contiguous"):
        PRNNCpuBackend(layout, ro, inference=True)


def test_bad_input_is_refused():
    from gru4rec_kernels.prnn_config import Phase
    cfg, prnn, feat = make_prnn("parallel", "constrained", "sparse", batch_size=B_ROWS)
    layout = PRNNLayout(cfg, prnn, N_ITEMS, feat)
    params, *_ = make_prnn_problem(layout, dtype=np.float32)
    be = PRNNCpuBackend(layout, params)
    sched = schedule(2, B_ROWS, S_SAMPLES, seed=1)
    with pytest.raises(ValueError, match="needs 2 phases"):
        be.train_chunk(*sched, 0)
    bad = tuple(a.copy() for a in sched)
    bad[4][0, 0] = N_ITEMS
    be.set_phases(phase_plan(prnn, cfg.n_epochs, 2))
    with pytest.raises(ValueError, match="samples holds item ids outside"):
        be.train_chunk(*bad, 0)
    be.set_phases([Phase((1,), (0,), True)] * 2)
    with pytest.raises(ValueError, match="a trainable subnet must score"):
        be.train_chunk(*sched, 0)
    with pytest.raises(ValueError, match="needs its phase"):
        be.train_step(sched[0][0], np.concatenate([sched[1][0], sched[4][0]]), sched[2][0], sched[3][0], 0)
    with pytest.raises(ValueError, match="2 layer arrays"):
        be.set_hidden([np.zeros((B_ROWS, 5), np.float32)])
    with pytest.raises(ValueError, match="is missing"):
        PRNNCpuBackend(layout, {k: v for k, v in params.items() if k != "Wy"})
    be.reset_eval(3)
    with pytest.raises(ValueError, match="reset_eval was called with batch_size=3"):
        be.eval_chunk(*(a[:, :2] for a in sched[:4]))


# ============================================================================================ the trainer
def test_backend_is_built_and_chosen():
    assert prnn_backend_class("cpu") is PRNNCpuBackend
    assert resolve_prnn_backend("auto") != "numpy"


@pytest.fixture(scope="module")
def clicks():
    from gru4rec_kernels.data import SessionData
    from gru4rec_kernels.features import ItemFeatures
    from gru4rec_kernels.synthetic import generate_category_clicks
    clicks, cats = generate_category_clicks(n_items=120, n_categories=8, n_sessions=150, seed=4)
    train = SessionData.from_pandas(clicks)
    return train, ItemFeatures.from_frame(cats, train.item_ids, item_key="ItemId", name="category")


def test_fit_and_evaluate_on_cpu_match_numpy(clicks):
    """Trainer.fit with backend="cpu" (alternating p-RNN over ID + category, dropout, momentum, logQ) and
    evaluate: epoch losses and metrics close to the numpy backend's (float32 rounding differs, nothing else)."""
    from gru4rec_kernels.config import TrainConfig
    from gru4rec_kernels.evaluate import evaluate
    from gru4rec_kernels.prnn_config import PRNNConfig
    from gru4rec_kernels.trainer import Trainer
    train, cat = clicks
    cfg = TrainConfig(layers=[6], batch_size=8, n_sample=5, n_epochs=2, embedding=0, constrained_embedding=True,
                      momentum=0.3, dropout_p_hidden=0.2, dropout_p_embed=0.1, logq=0.5, sample_store_size=97)
    prnn = PRNNConfig.for_architecture("parallel", ["category"], layers=[[6], [4]], scales=[1.0, 0.7],
                                       strategy="alternating")
    models = {b: Trainer(cfg, backend=b, show_progress=False, chunk_steps=7, prnn=prnn, features=cat).fit(train)
              for b in ("numpy", "cpu")}
    np.testing.assert_allclose([h["loss"] for h in models["cpu"].history],
                               [h["loss"] for h in models["numpy"].history], rtol=1e-6)
    for k, v in models["numpy"].params.items():
        np.testing.assert_allclose(models["cpu"].params[k], v, atol=1e-5, err_msg=k)
    res = {b: evaluate(m, train, cutoffs=(5, 20), backend=b) for b, m in models.items()}
    for metric in ("recall", "mrr"):
        for c in (5, 20):
            assert abs(res["cpu"][metric][c] - res["numpy"][metric][c]) < 2e-3, (metric, c, res)  # 1 rank of 755
