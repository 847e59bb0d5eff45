"""The Numba CPU backend against the numpy reference.

Whole training steps (5 in a row, so that the optimizer state and the hidden state carry over) of every loss x
input mode x {1, 2 layers} x final activation {linear, elu-0.5, tanh}, at awkward sizes, compared with
NumpyBackend in float64. The tolerance is derived, not guessed: the same steps run through the reference in
float32, and the CpuBackend's error against float64 may be at most 4x the float32 reference's error (plus 1e-6).
Then the in-kernel dropout masks, evaluation counts, determinism, the GEMM micro-kernel at awkward sizes (with
guard bands around its outputs: it writes through raw pointers), and the state exchange.
"""
import itertools

import numba
import numpy as np
import pytest

from gru4rec_kernels import rng as grng
from gru4rec_kernels.backends.cpu import gemm, gru
from gru4rec_kernels.backends.cpu import CpuBackend
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.config import LOSSES
from gru4rec_kernels.reference import final_act

from steps import make_cfg, make_problem

N_ITEMS = 97
N_STEPS = 5
MODES = ("constrained", "embedding", "onehot")
CASES = list(itertools.product(LOSSES, MODES, ((7,), (6, 7)), ("linear", "elu-0.5", "tanh")))


def _run_three(cfg, B, S, seed, logq):
    """The same N_STEPS steps through NumpyBackend float64, float32 and CpuBackend; returns the three backends
    and the losses [3, N_STEPS]. Steps come from make_problem (duplicate ids among targets and samples, an
    accidental hit, an input equal to a sample, an inactive row, random resets)."""
    params, _, _, _ = make_problem(cfg, n_items=N_ITEMS, B=B, S=S, seed=seed)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    lq = (None, None)
    if logq:
        r = np.random.default_rng(seed + 7)
        lq = (cfg.logq * np.log(r.uniform(0.01, 1.0, N_ITEMS)), cfg.logq * np.log(r.uniform(0.01, 1.0, N_ITEMS)))
    backends = [NumpyBackend(cfg, N_ITEMS, p32, *lq, dtype=np.float64),
                NumpyBackend(cfg, N_ITEMS, p32, *lq, dtype=np.float32), CpuBackend(cfg, N_ITEMS, p32, *lq)]
    losses = np.zeros((3, N_STEPS))
    for t in range(N_STEPS):
        st = make_problem(cfg, n_items=N_ITEMS, B=B, S=S, seed=1000 * seed + t, inactive=(1,) if t % 2 else ())[3]
        for n, be in enumerate(backends):
            losses[n, t] = be.train_step(st.X, st.Y, st.active, st.reset, 100 + t)
    return backends, losses


def _assert_close(name, ref64, ref32, got):
    ref64, ref32, got = (np.asarray(a, dtype=np.float64) for a in (ref64, ref32, got))
    e32 = np.abs(ref32 - ref64).max(initial=0.0)
    err = np.abs(got - ref64).max(initial=0.0)
    assert np.all(np.isfinite(got)), f"{name}: not finite"
    assert err <= 4 * e32 + 1e-6, f"{name}: error {err:.3e} vs float64; the float32 reference's is {e32:.3e}"


def _compare(backends, losses):
    _assert_close("loss", losses[0], losses[1], losses[2])
    P = [b.get_params() for b in backends]
    for k in P[0]:
        _assert_close(f"param {k}", P[0][k], P[1][k], P[2][k])
    O = [b.get_opt_state() for b in backends]
    for s in ("acc", "mom"):
        for k in O[0][s]:
            _assert_close(f"{s} {k}", O[0][s][k], O[1][s][k], O[2][s][k])
    H = [b.get_hidden() for b in backends]
    assert len(H[2]) == len(H[0])
    for l in range(len(H[0])):
        _assert_close(f"hidden {l}", H[0][l], H[1][l], H[2][l])


@pytest.mark.parametrize("loss,mode,layers,act", CASES)
def test_whole_steps_match_reference(loss, mode, layers, act):
    n = CASES.index((loss, mode, layers, act))
    # B=3, S=5 with dropout 0.3 (and logq for cross-entropy); B=1, S=0 without. Momentum, accidental-hit
    # masking and clipping alternate over the cases.
    for B, S in ((3, 5), (1, 0)):
        dropout = 0.3 if B == 3 else 0.0
        cfg = make_cfg(loss, mode, layers, act, batch_size=4, dropout_p_embed=dropout, dropout_p_hidden=dropout,
                       momentum=0.9 if n % 2 else 0.0, mask_accidental_hits=n % 3 == 1,
                       grad_cap=0.05 if n % 4 == 2 else 0.0,
                       logq=0.5 if (loss == "cross-entropy" and B == 3) else 0.0)
        backends, losses = _run_three(cfg, B, S, seed=n, logq=cfg.logq > 0)
        _compare(backends, losses)


def test_grad_cap_actually_clips():
    # a tiny cap clips every step: the comparison then covers the scaled gradients
    cfg = make_cfg("bpr-max", "embedding", (6, 7), "elu-0.5", batch_size=3, grad_cap=1e-3, momentum=0.9,
                   dropout_p_embed=0.3, dropout_p_hidden=0.3)
    backends, losses = _run_three(cfg, 3, 5, seed=11, logq=False)
    _compare(backends, losses)


def test_dropout_masks_are_the_philox_masks():
    """The masks drawn inside the kernels equal rng.dropout_mask_np (= Backend.dropout_masks)."""
    seed, B, W, p = 1234, 5, 13, 0.3
    for layer, step in ((-1, 0), (-1, 77), (0, 3), (1, 2**32 + 5)):
        key = grng.dropout_key(seed, layer)
        scale = np.float32(1.0 / (1.0 - p))
        want = grng.dropout_mask_np(seed, layer, step, B, W, p)
        if layer == -1:  # the input-embedding kernel: x = src[X] * mask
            x = np.zeros((B, W), np.float32)
            mask = np.zeros((B, W), np.float32)
            gru.embed_input(np.ones((3, W), np.float32), np.array([0, 2, 1, 1, 0], np.int32), x, mask, p,
                            key, step, scale)
            np.testing.assert_array_equal(x, want)
        else:  # the GRU output kernel: out = h' * mask
            mask = np.zeros((B, W), np.float32)
            out = np.zeros((B, W), np.float32)
            z = np.ones((B, W), np.float32)  # z = 1: h' = c = tanh(a + t1) = tanh(1)
            a = np.ones((B, 3 * W), np.float32)
            gru.gru_fwd_out(a, np.zeros((B, W), np.float32), np.zeros((B, W), np.float32), z,
                            np.zeros((B, W), np.float32), out, mask, p, key, step, scale)
            np.testing.assert_array_equal(out, np.float32(np.tanh(1.0)) * want)
        np.testing.assert_array_equal(mask, want)


def test_dropout_masks_of_a_training_step_are_the_backend_masks():
    cfg = make_cfg("cross-entropy", "embedding", (6, 7), "linear", batch_size=3, dropout_p_embed=0.3,
                   dropout_p_hidden=0.3)
    params, _, _, st = make_problem(cfg, n_items=N_ITEMS, B=3, S=5, dtype=np.float32)
    be = CpuBackend(cfg, N_ITEMS, params)
    be.train_step(st.X, st.Y, st.active, st.reset, 41)
    emb, hidden = be.dropout_masks(41, 3)
    work = be._train["work"]
    np.testing.assert_array_equal(work.mask0, emb)
    for l in range(len(cfg.layers)):
        np.testing.assert_array_equal(work.layers[l].mask, hidden[l])


@pytest.mark.parametrize("act", ["linear", "tanh", "elu-0.5", "leaky-0.1"])
@pytest.mark.parametrize("mode,layers", [("constrained", (7,)), ("onehot", (6, 7)), ("embedding", (7,))])
def test_eval_counts_match_reference(mode, layers, act):
    """Rank counts over all items and over candidates, against float64 scores: exact away from ties; within
    a 1e-5 band around the target's score the order may legitimately differ between precisions."""
    cfg = make_cfg("cross-entropy", mode, layers, act)
    params, _, _, _ = make_problem(cfg, n_items=N_ITEMS, seed=3)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = NumpyBackend(cfg, N_ITEMS, p32, dtype=np.float64)
    cpu = CpuBackend(cfg, N_ITEMS, p32)
    B = 5
    rng = np.random.default_rng(0)
    cands = np.unique(rng.integers(0, N_ITEMS, 40))
    for be in (ref, cpu):
        be.reset_eval(B)
    for t in range(4):
        X = rng.integers(0, N_ITEMS, B)
        targets = rng.integers(0, N_ITEMS, B)
        targets[0] = cands[3]  # one target inside the candidates
        reset = rng.random(B) < 0.3
        active = np.ones(B, bool)
        for items in (None, cands):
            gt_r, eq_r = ref.eval_step(X, targets, reset, active, candidates=items)
            gt_c, eq_c = cpu.eval_step(X, targets, reset, active, candidates=items)
            sc = final_act(ref.H_eval[-1] @ ref.params["Wy"].T + ref.params["By"], *cfg.final_act_code)
            t_sc = sc[np.arange(B), targets][:, None]
            if items is not None:
                sc = sc[:, items]
            band = 1e-5 * np.maximum(np.abs(t_sc), 1.0)
            assert np.all(gt_c >= (sc > t_sc + band).sum(axis=1)), (t, gt_c, gt_r)
            assert np.all(gt_c <= (sc > t_sc - band).sum(axis=1)), (t, gt_c, gt_r)
            # rows with no other item inside the band: exactly the reference's counts
            n_target = 1 if items is None else (items[None, :] == targets[:, None]).sum(axis=1)
            exact = (np.abs(sc - t_sc) <= band).sum(axis=1) == n_target
            assert exact.sum() >= B - 2
            np.testing.assert_array_equal(gt_c[exact], gt_r[exact])
            np.testing.assert_array_equal(eq_c[exact], eq_r[exact])
            assert np.all(eq_c >= 1)
        # the hidden states advance identically
        np.testing.assert_allclose(cpu._split_hidden(cpu._eval["hid"], B)[-1], ref.H_eval[-1], atol=1e-5)


def test_eval_ties_are_counted_exactly():
    """relu scores: every item with a negative pre-activation scores exactly 0, the target among them."""
    cfg = make_cfg("cross-entropy", "constrained", (7,), "relu")
    params, _, _, _ = make_problem(cfg, n_items=N_ITEMS, seed=5)
    params["By"][:60] = -50.0  # these items score exactly 0 after relu
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = NumpyBackend(cfg, N_ITEMS, p32, dtype=np.float32)
    cpu = CpuBackend(cfg, N_ITEMS, p32)
    B = 3
    for be in (ref, cpu):
        be.reset_eval(B)
    X = np.array([1, 2, 3])
    targets = np.array([5, 10, 70])
    for items in (None, np.arange(0, 97, 2)):
        gt_r, eq_r = ref.eval_step(X, targets, np.zeros(B, bool), np.ones(B, bool), candidates=items)
        gt_c, eq_c = cpu.eval_step(X, targets, np.zeros(B, bool), np.ones(B, bool), candidates=items)
        np.testing.assert_array_equal(gt_c[:2], gt_r[:2])
        np.testing.assert_array_equal(eq_c[:2], eq_r[:2])
        assert eq_c[0] >= 30


def test_bit_identical_runs_and_chunk_equals_steps():
    cfg = make_cfg("top1-max", "constrained", (6, 7), "elu-0.5", batch_size=4, momentum=0.9,
                   dropout_p_embed=0.2, dropout_p_hidden=0.2, grad_cap=0.5)
    params, _, _, _ = make_problem(cfg, n_items=N_ITEMS, B=4, S=9, dtype=np.float32)
    rng = np.random.default_rng(1)
    T, B, S = 6, 4, 9
    inputs = rng.integers(0, N_ITEMS, (T, B)).astype(np.int32)
    targets = rng.integers(0, N_ITEMS, (T, B)).astype(np.int32)
    samples = rng.integers(0, N_ITEMS, (T, S)).astype(np.int32)
    samples[:, 0] = targets[:, 0]
    active = rng.random((T, B)) > 0.2
    reset = rng.random((T, B)) < 0.3
    runs = []
    for how in ("chunk", "chunk", "steps"):
        be = CpuBackend(cfg, N_ITEMS, params)
        if how == "chunk":
            losses = be.train_chunk(inputs, targets, active, reset, samples, 10)
        else:
            losses = np.array([be.train_step(inputs[t], np.concatenate([targets[t], samples[t]]), active[t],
                                             reset[t], 10 + t) for t in range(T)])
        runs.append((losses, be.get_params(), be.get_opt_state(), be.get_hidden()))
    for other in runs[1:]:
        np.testing.assert_array_equal(other[0], runs[0][0])
        for k in runs[0][1]:
            np.testing.assert_array_equal(other[1][k], runs[0][1][k])
            np.testing.assert_array_equal(other[2]["acc"][k], runs[0][2]["acc"][k])
            np.testing.assert_array_equal(other[2]["mom"][k], runs[0][2]["mom"][k])
        for a, b in zip(other[3], runs[0][3]):
            np.testing.assert_array_equal(a, b)


def test_results_do_not_depend_on_the_thread_count():
    cfg = make_cfg("cross-entropy", "constrained", (6, 7), "tanh", batch_size=4, momentum=0.9, grad_cap=0.5,
                   dropout_p_hidden=0.2)
    params, _, _, _ = make_problem(cfg, n_items=N_ITEMS, B=4, S=40, dtype=np.float32)
    rng = np.random.default_rng(2)
    T, B, S = 4, 4, 40
    chunk = (rng.integers(0, N_ITEMS, (T, B)), rng.integers(0, N_ITEMS, (T, B)), np.ones((T, B), bool),
             rng.random((T, B)) < 0.3, rng.integers(0, N_ITEMS, (T, S)))
    results = []
    default = numba.get_num_threads()
    for threads in (1, default):
        numba.set_num_threads(threads)
        try:
            be = CpuBackend(cfg, N_ITEMS, params)
            results.append((be.train_chunk(*chunk, 0), be.get_params()))
        finally:
            numba.set_num_threads(default)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k in results[0][1]:
        np.testing.assert_array_equal(results[0][1][k], results[1][1][k])


def test_nan_scores_give_a_nan_loss():
    """The trainer's divergence check relies on it: a NaN score must not vanish in the softmax."""
    cfg = make_cfg("cross-entropy", "constrained", (7,), "linear", batch_size=3)
    params, _, _, st = make_problem(cfg, n_items=N_ITEMS, B=3, S=5, dtype=np.float32, inactive=())
    params["By"][st.Y[4]] = np.nan  # a sample column
    assert np.isnan(CpuBackend(cfg, N_ITEMS, params).train_step(st.X, st.Y, st.active, st.reset, 0))
    assert np.isnan(NumpyBackend(cfg, N_ITEMS, params).train_step(st.X, st.Y, st.active, st.reset, 0))


@pytest.mark.parametrize("M,N,K", [(1, 1, 0), (1, 1, 1), (3, 5, 7), (7, 15, 3), (8, 16, 8), (9, 17, 20),
                                   (16, 32, 5), (17, 33, 2), (33, 40, 20), (8, 100, 32), (100, 300, 13),
                                   (40, 31, 64), (2080, 32, 100)])
def test_gemm_microkernel(M, N, K):
    """C = A B, A^T B and the transposed store, against numpy, with guard bands around C (raw-pointer writes)."""
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm = rng.standard_normal((K, N)).astype(np.float32)
    want = A.astype(np.float64) @ Bm.astype(np.float64)
    G = 40

    def guarded(shape):
        buf = np.full(int(np.prod(shape)) + 2 * G, 7.0, np.float32)
        return buf, buf[G:-G].reshape(shape)

    for how in ("nn", "tn", "transposed"):
        buf, C = guarded((N, M) if how == "transposed" else (M, N))
        if how == "nn":
            gemm.mm(A, Bm, C)
        elif how == "tn":
            gemm.mm_tn(np.ascontiguousarray(A.T), Bm, C)
        else:
            gemm.gemm(A.reshape(-1), K, 1, Bm.reshape(-1), N, C.reshape(-1), 1, M, M, N, K)
            C = C.T
        np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-5 * max(K, 1), err_msg=how)
        assert np.all(buf[:G] == 7.0) and np.all(buf[-G:] == 7.0), f"{how}: wrote outside C"


def test_state_exchange_and_errors():
    cfg = make_cfg("bpr", "onehot", (6, 7), "tanh", batch_size=3, momentum=0.5)
    params, _, H, st = make_problem(cfg, n_items=N_ITEMS, B=3, S=5, dtype=np.float32)
    be = CpuBackend(cfg, N_ITEMS, params)
    ref = NumpyBackend(cfg, N_ITEMS, params, dtype=np.float64)
    assert be.get_hidden() == []
    for b in (be, ref):
        b.set_hidden(H)
        b.train_step(st.X, st.Y, st.active, st.reset, 0)
    state = ref.get_opt_state()
    be.set_opt_state(state)
    got = be.get_opt_state()
    for s in ("acc", "mom"):
        for k in state[s]:
            np.testing.assert_allclose(got[s][k], state[s][k], rtol=1e-6)
    for a, b in zip(be.get_hidden(), ref.get_hidden()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    be.reset_hidden()
    assert be.get_hidden() == []
    be.train_step(st.X, st.Y, st.active, st.reset, 1)  # from a zero hidden state
    assert [h.shape for h in be.get_hidden()] == [(3, 6), (3, 7)]
    with pytest.raises(ValueError, match="outside"):
        be.train_step(st.X, np.full_like(st.Y, N_ITEMS), st.active, st.reset, 2)
    with pytest.raises(ValueError, match="missing"):
        CpuBackend(cfg, N_ITEMS, {k: v for k, v in params.items() if k != "Wy"})
    with pytest.raises(RuntimeError, match="reset_eval"):
        CpuBackend(cfg, N_ITEMS, params).eval_step(st.X, st.X, st.reset, st.active)
