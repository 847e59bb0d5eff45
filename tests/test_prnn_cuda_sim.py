"""The p-RNN cuda backend (backends/cuda_prnn.py) and its kernels (kernels/features.py, kernels/subnets.py) in
Numba's CUDA simulator (tests/conftest.py), against reference_prnn and the numpy p-RNN backend.

* The sparse feature input: ``sparse_input_product`` / ``sparse_input_grad`` against their reference twins
  (duplicate input ids, an empty CSR row, several non-zeros a row, a column touched by several rows), the host
  slot layout, and the sparse Adagrad of the touched columns against the reference's coalesced update.
* The subnet blocks: ``concat_hidden`` / ``split_hidden_grad`` against reference_prnn.concat_hidden and the
  backward's scaling.
* Whole steps: train_chunk (and train_step for the last step) of every architecture (ID only, features only,
  concatenated, parallel), sparse CSR and dense features, every strategy, cross-entropy and bpr-max, dropout,
  resets, inactive rows, logQ, momentum, clipping; losses, parameters, Adagrad state and hidden state against a
  float64 run of the numpy p-RNN backend within tolerance.assert_within_reference_error (the float32 run's own
  error sets the bound); frozen and never-scoring subnets bit for bit unchanged.
* Evaluation counts equal to the numpy p-RNN backend's; a Trainer fit and evaluate() on backend="cuda".

Tiny sizes (B <= 4, H <= 8, N = 13, S <= 3) and the simulator's tiny blocks: every CUDA thread is a Python thread.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
import scipy.sparse as sp
from prnn_steps import EMPTY_ROW, N_ITEMS, make_prnn
from steps import make_schedule
from tolerance import assert_within_reference_error

from gru4rec_kernels import reference as ref
from gru4rec_kernels import reference_prnn as rp
from gru4rec_kernels.backends import cuda_usable
from gru4rec_kernels.backends.prnn_numpy import PRNNNumpyBackend, prnn_backend_class
from gru4rec_kernels.backends.segments import segment_chunk
from gru4rec_kernels.kernels import adagrad as kad
from gru4rec_kernels.kernels import common as kc
from gru4rec_kernels.kernels import features as kf
from gru4rec_kernels.kernels import subnets as ksn
from gru4rec_kernels.prnn_config import Phase
from gru4rec_kernels.prnn_layout import PRNNLayout, init_prnn_params

pytestmark = pytest.mark.skipif(not cuda_usable()[0], reason="no GPU and no CUDA simulator")


# ============================================================================================ naive references
def naive_sparse_input_product(W, F, X, dtype):
    """reference_prnn's product of the CSR rows X with W, in ``dtype``."""
    return rp.sparse_input_product(np.asarray(W, dtype), rp.sparse_rows(F, X, dtype), len(X))


def naive_sparse_input_grad(F, X, da, dtype):
    """reference_prnn's uncoalesced (columns, rows) pairs of W's gradient, in ``dtype``."""
    return rp.sparse_input_grad(rp.sparse_rows(F, X, dtype), np.asarray(da, dtype))


def naive_sparse_update(p, acc, mom, cols, rows, lr, mu, dtype):
    """reference.sparse_adagrad (duplicates coalesced in slot order) on copies, in ``dtype``."""
    p, acc, mom = (np.array(a, dtype) for a in (p, acc, mom))
    ref.sparse_adagrad(p, cols, np.asarray(rows, dtype), acc, mom, lr, mu)
    return p, acc, mom


def naive_concat_hidden(layout, tops, scoring, B):
    return rp.concat_hidden(layout, {k: tops[k] for k in scoring}, B, np.float32)


# ============================================================================================ the sparse input
def csr_problem(seed=0):
    """F [9, 6] CSR: row 0 three non-zeros, row 1 empty, row 3 shares column 2 with row 0, row 5 four non-zeros
    (the most: m = 4); X with a duplicate (0 twice), the empty row and rows sharing columns."""
    rng = np.random.default_rng(seed)
    rows = [[(0, 1.5), (2, 0.5), (5, 2.0)], [], [(4, 1.0)], [(2, 3.0), (3, 0.25)], [(1, 1.0)],
            [(0, 0.5), (1, 2.5), (2, 1.25), (4, 0.75)], [(5, 1.0)], [], [(3, 2.0)]]
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [j for row in rows for j, _ in row]
    v = [x for row in rows for _, x in row]
    F = sp.csr_matrix((np.array(v, np.float32), (r, c)), shape=(9, 6))
    F.sort_indices()
    X = np.array([0, 1, 3, 0, 5], np.int32)
    C = 7
    W = rng.normal(0, 1, (6, C)).astype(np.float32)
    da = rng.normal(0, 1, (len(X), C)).astype(np.float32)
    return F, X, W, da


def dev_csr(F):
    return (np.asarray(F.indptr, np.int32).copy(), np.asarray(F.indices, np.int32).copy(),
            np.asarray(F.data, np.float32).copy())


@pytest.mark.parametrize("accumulate,threads", [(False, 4), (True, 8)])
def test_sparse_input_product_equals_its_twin(accumulate, threads):
    F, X, W, _ = csr_problem()
    before = np.random.default_rng(1).normal(0, 1, (len(X), W.shape[1])).astype(np.float32)
    out = before.copy() if accumulate else np.full_like(before, np.nan)
    kf.launch_sparse_input_product(out, W, *dev_csr(F), X, accumulate=accumulate, threads=threads)
    r32, r64 = (naive_sparse_input_product(W, F, X, dt) for dt in (np.float32, np.float64))
    if accumulate:
        r32, r64 = before + r32, before.astype(np.float64) + r64
    assert_within_reference_error("product", out, r32, r64, mult=4.0, floor=1e-7)
    if kc.SIM:  # each term rounded, then summed from zero in CSR order, as np.add.at: bit for bit
        np.testing.assert_array_equal(out, r32)
    assert np.all(out[1] == (before[1] if accumulate else 0))  # the empty row adds nothing
    if not accumulate:
        np.testing.assert_array_equal(out[0], out[3])  # a duplicate input gives its row again


def test_sparse_input_grad_slots_are_the_twins_pairs():
    """The slot rows without their padding are the reference's pairs in order; padding rows are 0; the host slot
    columns are the pairs' columns with the padding id D."""
    F, X, _, da = csr_problem()
    m = kf.max_row_nnz(F.indptr)
    assert m == 4
    g = np.full((len(X) * m, da.shape[1]), np.nan, np.float32)
    kf.launch_sparse_input_grad(g, da, np.asarray(F.indptr, np.int32), np.asarray(F.data, np.float32), X, threads=4)
    cols = kf.slot_columns(F.indptr, F.indices, X[None], m, F.shape[1])[0]
    real = cols != F.shape[1]
    want_cols, want32 = naive_sparse_input_grad(F, X, da, np.float32)
    _, want64 = naive_sparse_input_grad(F, X, da, np.float64)
    np.testing.assert_array_equal(cols[real], want_cols)
    assert_within_reference_error("slot rows", g[real], want32, want64, mult=4.0, floor=1e-7)
    if kc.SIM:
        np.testing.assert_array_equal(g[real], want32)
    assert np.all(g[~real] == 0)
    assert real.reshape(len(X), m).sum(1).tolist() == [3, 0, 2, 3, 4]


def test_sparse_feature_update_equals_the_coalesced_reference():
    """The grad slots grouped by column on the host (segments.segment_chunk over slot_columns), then sparse_adagrad
    with the padding id skipped: the reference's update of the touched columns (column 2 is touched by rows 0, 3
    twice and 5: its slot rows sum in slot order); untouched rows keep their bits."""
    F, X, _, da = csr_problem()
    D, m = F.shape[1], kf.max_row_nnz(F.indptr)
    rng = np.random.default_rng(2)
    C = da.shape[1]
    p = rng.normal(0, 1, (D, C)).astype(np.float32)
    acc = rng.uniform(0, 1, (D, C)).astype(np.float32)
    mom = rng.normal(0, 0.1, (D, C)).astype(np.float32)
    g = np.zeros((len(X) * m, C), np.float32)
    kf.launch_sparse_input_grad(g, da, np.asarray(F.indptr, np.int32), np.asarray(F.data, np.float32), X, threads=4)
    ids = kf.slot_columns(F.indptr, F.indices, X[None], m, D)
    K = ids.shape[1]
    perm, seg_start, seg_id = np.zeros((1, K), np.int32), np.zeros((1, K + 1), np.int32), np.zeros((1, K), np.int32)
    segment_chunk(perm, seg_start, seg_id, ids, np.full((1, D + 1), -1, np.int32))
    got = [a.copy() for a in (p, acc, mom)]
    nb = np.zeros(1, np.float32)  # no bias slots: any vectors
    kad.launch_sparse_adagrad(*got, g, perm, seg_start, seg_id, np.zeros(2, np.int64), np.ones(1, np.float32), 0.1,
                              0.5, nb, nb, nb, np.zeros(K, np.float32), 0, threads=4)
    cols, rows = naive_sparse_input_grad(F, X, da, np.float64)
    _, rows32 = naive_sparse_input_grad(F, X, da, np.float32)
    w32 = naive_sparse_update(p, acc, mom, cols, rows32, 0.1, 0.5, np.float32)
    w64 = naive_sparse_update(p, acc, mom, cols, rows, 0.1, 0.5, np.float64)
    for name, a, r32, r64 in zip(("p", "acc", "mom"), got, w32, w64):
        assert_within_reference_error(name, a, r32, r64, mult=4.0, floor=1e-7, relative_floor=True)
    untouched = np.setdiff1d(np.arange(D), cols)
    for a, s in zip(got, (p, acc, mom)):
        np.testing.assert_array_equal(a[untouched], s[untouched])


def test_sparse_input_launchers_reject_bad_input():
    F, X, W, da = csr_problem()
    indptr, indices, data = dev_csr(F)
    out = np.zeros((len(X), W.shape[1]), np.float32)
    with pytest.raises(ValueError, match="W"):
        kf.launch_sparse_input_product(out, W[:, :-1].copy(), indptr, indices, data, X)
    with pytest.raises(ValueError, match="indptr"):
        kf.launch_sparse_input_product(out, W, indptr.astype(np.int64), indices, data, X)
    with pytest.raises(ValueError, match="data"):
        kf.launch_sparse_input_product(out, W, indptr, indices, data[:-1].copy(), X)
    with pytest.raises(ValueError, match="g must have B m rows"):
        kf.launch_sparse_input_grad(np.zeros((len(X) * 2 + 1, W.shape[1]), np.float32), da, indptr, data, X)


# ============================================================================================ the subnet blocks
def test_concat_and_split_equal_the_reference():
    """Three subnets of widths 2, 3, 3 (scales 1, 0.7, 0.7) at B = 3: subnet 1 does not score (its block is 0) and
    only subnet 2 trains (the others' top gradients are left as they were)."""
    cfg, prnn, feats = make_prnn("parallel", "constrained", "both", layers=(2,), feature_layers=(3,))
    lay = PRNNLayout(cfg, prnn, N_ITEMS, feats)
    Bn, Hc = 3, lay.hidden_total
    tops_off = [Bn * 1, Bn * 3, Bn * 6]  # the flat state: a width-1 layer first, so no top starts at 0
    rng = np.random.default_rng(3)
    hid = rng.normal(0, 1, Bn * 9).astype(np.float32)
    cols = np.array([c0 for c0, _ in lay.cols] + [Hc], np.int32)
    scale = lambda ks_: np.array([s.scale if s.index in ks_ else 0 for s in lay.subnets], np.float32)
    h_cat = np.full((Bn, Hc), np.nan, np.float32)
    hs = np.zeros(Bn * Hc, np.float32)
    ksn.launch_concat_hidden(h_cat, hs, hid, cols, np.array(tops_off, np.int32), scale((0, 2)), threads=4)
    tops = {k: hid[o:o + Bn * (c1 - c0)].reshape(Bn, c1 - c0) for k, (o, (c0, c1)) in enumerate(zip(tops_off,
                                                                                                   lay.cols))}
    want = naive_concat_hidden(lay, tops, (0, 2), Bn)
    np.testing.assert_array_equal(h_cat, want)
    for k in (0, 2):
        c0, c1 = lay.cols[k]
        np.testing.assert_array_equal(hs[Bn * c0:Bn * c1].reshape(Bn, c1 - c0), want[:, c0:c1])
    dh = rng.normal(0, 1, (Bn, Hc)).astype(np.float32)
    dtop = np.full(Bn * Hc, 7.0, np.float32)
    ksn.launch_split_hidden_grad(dtop, dh, cols, scale((2,)), threads=4)
    c0, c1 = lay.cols[2]
    np.testing.assert_array_equal(dtop[Bn * c0:].reshape(Bn, c1 - c0),
                                  np.float32(lay.subnets[2].scale) * dh[:, c0:c1])  # reference_prnn.backward's dh
    assert np.all(dtop[:Bn * c0] == 7.0)


# ============================================================================================ whole steps
B, S = 3, 3


def prnn_layout(arch, id_mode, feats, strategy, loss, n_epochs=3, **kw):
    cfg, prnn, features = make_prnn(arch, id_mode, feats, strategy=strategy, loss=loss, batch_size=4,
                                    learning_rate=0.1, n_epochs=n_epochs, **kw)
    return PRNNLayout(cfg, prnn, N_ITEMS, features)


def start_state(layout, seed):
    """Parameters with non-zero biases, non-zero Adagrad state (so that a wrong touch of a frozen subnet shows), a
    non-zero hidden state, and the logQ columns when the config has logq."""
    rng = np.random.default_rng(seed)
    _, params = init_prnn_params(layout, seed=seed)
    for k in params:
        if ".Bh" in k or k == "By":
            params[k][...] = rng.normal(0, 0.1, params[k].shape)
    opt = {"acc": {k: rng.uniform(0, 0.5, v.shape).astype(np.float32) for k, v in params.items()},
           "mom": {k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in params.items()}}
    H = [rng.uniform(-0.5, 0.5, (B, h)).astype(np.float32) for sub in layout.subnets for h in sub.layers]
    lq = None
    if layout.cfg.logq > 0:
        lq = tuple(layout.cfg.logq * np.log(rng.uniform(0.01, 1.0, N_ITEMS)) for _ in range(2))
    return params, opt, H, lq


def run(be, sched, phases, step0):
    """All steps but the last through train_chunk, the last through train_step: losses [T]."""
    inputs, targets, active, reset, samples = sched
    T = inputs.shape[0]
    be.set_phases(phases[:T - 1])
    losses = list(be.train_chunk(*(a[:T - 1] for a in sched), step0))
    Y = np.concatenate([targets[-1], samples[-1]])
    losses.append(be.train_step(inputs[-1], Y, active[-1], reset[-1], step0 + T - 1, phase=phases[-1]))
    return np.array(losses)


def compare(be, b32, b64, losses, **tol):
    assert_within_reference_error("losses", *losses, **tol)
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
    assert len(hg) == len(h64)
    for i in range(len(h64)):
        assert_within_reference_error(f"hidden {i}", hg[i], h32[i], h64[i], **tol)


# name: (architecture, id input, features, strategy, loss, epochs of the steps, TrainConfig extras). The steps'
# phases are PRNNConfig.phase(epoch, step) at those epochs (interleaving: one phase per step).
STEP_CASES = {
    "id-constrained-ce": ("id", "constrained", None, "simultaneous", "cross-entropy", (0, 0, 0),
                          dict(logq=0.5, dropout_p_embed=0.3, dropout_p_hidden=0.3, momentum=0.5)),
    "feature-both-bprmax": ("feature", None, "both", "simultaneous", "bpr-max", (0, 0, 0),
                            dict(dropout_p_hidden=0.3, feature_layers=(4,))),
    "concat-onehot-both-2layers-clip": ("concat", "onehot", "both", "simultaneous", "cross-entropy", (0, 0, 0),
                                        dict(layers=(3, 4), grad_cap=0.05, momentum=0.5, dropout_p_hidden=0.2)),
    "parallel-constrained-sparse-alternating": ("parallel", "constrained", "sparse", "alternating", "bpr-max",
                                                (1, 1, 1), dict(momentum=0.5, dropout_p_embed=0.2)),
    "parallel-embedding-both-interleaving": ("parallel", "embedding", "both", "interleaving", "cross-entropy",
                                             (0, 0, 0, 0), dict(logq=0.5, momentum=0.5, dropout_p_embed=0.2,
                                                                dropout_p_hidden=0.2)),
    "parallel-onehot-both-residual": ("parallel", "onehot", "both", "residual", "bpr-max", (1, 1, 1),
                                      dict(momentum=0.5, grad_cap=0.5)),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_whole_steps_match_the_numpy_prnn_backend(case):
    arch, id_mode, feats, strategy, loss, epochs, kw = STEP_CASES[case]
    lay = prnn_layout(arch, id_mode, feats, strategy, loss, **kw)
    params, opt, H, lq = start_state(lay, seed=len(case))
    T = len(epochs)
    sched = make_schedule(T, B, S, N_ITEMS, seed=len(case) + 1)
    sched[0][0, 1] = EMPTY_ROW  # an input without features (a zero dense row, an empty CSR row)
    sched[2][0, 1] = True
    step0 = 40
    phases = [lay.prnn.phase(e, step0 + t, lay.cfg.n_epochs) for t, e in enumerate(epochs)]
    be = prnn_backend_class("cuda")(lay, params, *(lq or (None, None)))
    b32 = PRNNNumpyBackend(lay, params, *(lq or (None, None)), dtype=np.float32)
    b64 = PRNNNumpyBackend(lay, params, *(lq or (None, None)), dtype=np.float64)
    try:
        for b in (be, b32, b64):
            b.set_opt_state(opt)
            b.set_hidden(H)
        losses = [run(b, sched, phases, step0) for b in (be, b32, b64)]
        compare(be, b32, b64, losses, mult=4.0, floor=1e-6)
        # a subnet that no step of the case trains keeps its parameters, its block of Wy and its Adagrad state
        # bit for bit (frozen: no update, no momentum decay); one that never scores also keeps its state but for
        # the reset rows
        trained = set().union(*(p.trainable for p in phases))
        got, opt_got = be.get_params(), be.get_opt_state()
        for k in set(range(len(lay.subnets))) - trained:
            names = lay.subnet_param_names(k)
            c0, c1 = lay.cols[k]
            for name in names:
                np.testing.assert_array_equal(got[name], params[name], err_msg=name)
                for s in ("acc", "mom"):
                    np.testing.assert_array_equal(opt_got[s][name], opt[s][name], err_msg=f"{s} {name}")
            np.testing.assert_array_equal(got["Wy"][:, c0:c1], params["Wy"][:, c0:c1])
            for s in ("acc", "mom"):
                np.testing.assert_array_equal(opt_got[s]["Wy"][:, c0:c1], opt[s]["Wy"][:, c0:c1])
        if not any(p.train_bias for p in phases):
            np.testing.assert_array_equal(got["By"], params["By"])
        assert trained != set(range(len(lay.subnets))) or strategy in ("simultaneous", "interleaving")
    finally:
        be.close()


def test_a_subnet_that_never_scores_only_resets():
    """Residual phase 0 of three subnets: subnets 1 and 2 do not run; their hidden states are the start states with
    the reset rows zeroed (as the numpy backend's), not advanced."""
    lay = prnn_layout("parallel", "constrained", "both", "residual", "cross-entropy")
    params, _, H, _ = start_state(lay, seed=8)
    sched = make_schedule(2, B, S, N_ITEMS, seed=9)
    sched[3][:] = False
    sched[3][1, 2] = True  # one reset, on the second step
    be = prnn_backend_class("cuda")(lay, params)
    be.set_hidden(H)
    be.set_phases([lay.prnn.phase(0, t, 3) for t in range(2)])
    be.train_chunk(*sched, 0)
    hid = be.get_hidden()
    want = [h.copy() for h in H]
    for h in want[1:]:
        h[2] = 0
    for i in (1, 2):
        np.testing.assert_array_equal(hid[i], want[i])
    assert not np.array_equal(hid[0], H[0])
    be.close()


def test_launches_follow_the_phase():
    """Launches (CUDA graph nodes) of one step of a parallel ID + category p-RNN (constrained ID, one-hot CSR
    category, one layer each): every subnet's forward, the trainable ones' backward and updates only."""
    lay = prnn_layout("parallel", "constrained", "sparse", "alternating", "cross-entropy", n_epochs=2)
    params, _, _, _ = start_state(lay, seed=1)
    sched = make_schedule(2, B, S, N_ITEMS, seed=3)
    counts = {}
    for name, ph in (("both", Phase((0, 1), (0, 1), True)), ("id", lay.prnn.phase(0, 0, 2)),
                     ("category", lay.prnn.phase(1, 0, 2))):
        be = prnn_backend_class("cuda")(lay, params)
        be.set_phases([ph])
        be.train_chunk(*[a[:1] for a in sched], 0)
        be.set_phases([ph])
        with kc.record_launches() as names:
            be.train_chunk(*[a[1:] for a in sched], 1)
        be.close()
        c = counts[name] = collections.Counter(names)
        print(f"\nparallel ID + category, trainable {ph.trainable}: {len(names)} launches: {' '.join(names)}")
        assert names[0] == "step_begin" and names[-1] == "step_end"
        assert c["gru_fwd_rz"] == c["gru_fwd_out"] == 2 and c["concat_hidden"] == 1
        assert c["gru_bwd_cz"] == c["gru_bwd_r"] == len(ph.trainable)
        assert c["sparse_input_product"] == 1 and c["sparse_input_grad"] == (1 in ph.trainable)
        # a block of Wy per trainable subnet (By with the first), and the category's W_f rows
        assert c["sparse_adagrad"] == len(ph.trainable) + (1 in ph.trainable)
        assert c["adagrad_dense"] == 1  # adjacent trainable ranges of the flat buffer are one launch
    assert sum(counts["both"].values()) == 30
    assert sum(counts["both"].values()) - sum(counts["category"].values()) == 5  # the ID subnet's backward + Wy


# ============================================================================================ evaluation
def naive_eval_chunk(nb, inputs, targets, reset, active, candidates=None):
    """The numpy p-RNN backend's eval_step, step by step; 0 on inactive lanes."""
    T, B_ = np.shape(inputs)
    gt, eq = np.zeros((T, B_), np.int64), np.zeros((T, B_), np.int64)
    for t in range(T):
        g, e = nb.eval_step(inputs[t], targets[t], reset[t], active[t], candidates=candidates)
        on = np.asarray(active[t], bool)
        gt[t, on], eq[t, on] = np.asarray(g)[on], np.asarray(e)[on]
    return gt, eq


@pytest.mark.parametrize("arch,id_mode,feats,subnets", [("parallel", "constrained", "both", None),
                                                        ("parallel", "onehot", "both", (0, 2)),
                                                        ("concat", "embedding", "both", None)])
def test_eval_chunk_equals_numpy(arch, id_mode, feats, subnets):
    """Two chunks (all items, then candidates; the state carries over) with ties (item 7 = item 3, lane 0's
    target) and the scoring subnets of an early-stopped residual run (eval_subnets)."""
    lay = prnn_layout(arch, id_mode, feats, "simultaneous", "cross-entropy")
    params, _, _, _ = start_state(lay, seed=4)
    params["Wy"][7], params["By"][7] = params["Wy"][3], params["By"][3]
    rng = np.random.default_rng(5)
    nb = PRNNNumpyBackend(lay, params)
    be = prnn_backend_class("cuda")(lay, params, eval_tile=5)
    for b in (nb, be):
        b.eval_subnets = subnets
        b.reset_eval(B)
    cands = np.array([3, 7, 0, 12, 5, 9], np.int64)
    try:
        for T, cand in ((3, None), (2, cands)):
            inputs = rng.integers(0, N_ITEMS, (T, B))
            targets = rng.integers(0, N_ITEMS, (T, B))
            targets[:, 0] = 3
            reset = rng.random((T, B)) < 0.3
            active = rng.random((T, B)) < 0.8
            active[:, 0] = True
            inputs[~active] = targets[~active] = 0
            want = naive_eval_chunk(nb, inputs, targets, reset, active, candidates=cand)
            got = be.eval_chunk(inputs, targets, reset, active, candidates=cand)
            for w, g in zip(want, got):
                np.testing.assert_array_equal(g, w)
            assert want[1][:, 0].min() >= 2  # the tie with item 7
    finally:
        be.close()


def test_fit_and_evaluate_on_cuda_equal_numpy():
    """Trainer.fit on backend='cuda' (alternating: a phase change at the epoch boundary, reset_hidden, set_phases
    per chunk) equals the numpy fit; evaluate() gives the same ranks on both backends."""
    import pandas as pd

    from gru4rec_kernels.data import SessionData
    from gru4rec_kernels.evaluate import evaluate
    from gru4rec_kernels.trainer import Trainer

    rng = np.random.default_rng(6)
    sess = np.repeat(np.arange(5), [3, 2, 4, 2, 3])
    clicks = pd.DataFrame({"SessionId": sess, "ItemId": rng.integers(100, 100 + N_ITEMS, sess.size),
                           "Time": np.arange(sess.size)})
    train = SessionData.from_pandas(clicks, time_key="Time")
    lay = prnn_layout("parallel", "constrained", "sparse", "alternating", "cross-entropy", n_epochs=2)
    cat = lay.features["cat"]
    from gru4rec_kernels.features import ItemFeatures
    cat = ItemFeatures.from_matrix(cat.matrix[:train.n_items], train.item_ids, train.item_ids, name="cat")
    cfg = lay.cfg.replace(batch_size=2, n_sample=2, momentum=0.3, dropout_p_hidden=0.2)
    models = {}
    for backend in ("numpy", "cuda"):
        models[backend] = Trainer(cfg, backend=backend, show_progress=False, prnn=lay.prnn, features=[cat],
                                  chunk_steps=3).fit(train)
    a, b = models["numpy"], models["cuda"]
    np.testing.assert_allclose([h["loss"] for h in b.history], [h["loss"] for h in a.history], rtol=1e-5)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-4, atol=1e-6, err_msg=k)
    ranks = [evaluate(b, train, batch_size=2, backend=be, return_ranks=True)["ranks"] for be in ("numpy", "cuda")]
    np.testing.assert_array_equal(ranks[1], ranks[0])


# ============================================================================================ bad input
def test_bad_input_is_refused_with_a_clear_error():
    lay = prnn_layout("parallel", "constrained", "sparse", "alternating", "cross-entropy")
    params, _, _, _ = start_state(lay, seed=1)
    be = prnn_backend_class("cuda")(lay, params)
    sched = make_schedule(2, B, S, N_ITEMS, seed=3)
    with pytest.raises(ValueError, match="needs 2 phases"):
        be.train_chunk(*sched, 0)
    with pytest.raises(ValueError, match="only subnets that score"):
        be.set_phases([Phase((1,), (0,), True)])
    with pytest.raises(ValueError, match="Phase objects"):
        be.set_phases([(0, 1)])
    with pytest.raises(ValueError, match="needs its phase"):
        be.train_step(sched[0][0], np.concatenate([sched[1][0], sched[4][0]]), sched[2][0], sched[3][0], 0)
    with pytest.raises(ValueError, match="2 layer arrays"):
        be.set_hidden([np.zeros((B, 5), np.float32)])
    with pytest.raises(ValueError, match="subnet 1's layer 0"):
        be.set_hidden([np.zeros((B, 5), np.float32), np.zeros((B, 4), np.float32)])
    be.set_phases([lay.prnn.phase(0, 0, 3)] * 2)
    bad = (sched[0] + N_ITEMS,) + sched[1:]
    with pytest.raises(ValueError, match="inputs holds item ids outside"):
        be.train_chunk(*bad, 0)
    be.eval_subnets = (3,)
    be.reset_eval(B)
    with pytest.raises(ValueError, match="eval_subnets"):
        be.eval_chunk(*(np.zeros((1, B), int) for _ in range(2)), np.zeros((1, B), bool), np.ones((1, B), bool))
    with pytest.raises(ValueError, match="params is missing"):
        prnn_backend_class("cuda")(lay, {k: v for k, v in params.items() if k != "Wy"})
    be.close()
