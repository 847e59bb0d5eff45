"""What is specific to the Numba CPU backend; the backend contract (training steps and evaluation against the
numpy backend, state exchange, bad input) is tests/test_backends.py, shared with the cuda backend.

The in-kernel dropout masks, determinism (bit-identical runs, a chunk equals its steps, any thread count), a
NaN score's NaN loss, and the GEMM micro-kernel at awkward sizes (with guard bands around its outputs: it writes
through raw pointers).
"""
import numba
import numpy as np
import pytest
from steps import make_cfg, make_problem

from gru4rec_kernels import rng as grng
from gru4rec_kernels.backends.cpu import CpuBackend, gemm, gru
from gru4rec_kernels.backends.numpy import NumpyBackend

N_ITEMS = 97


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
                                   (40, 31, 64), (2080, 32, 100), (9, 530, 7), (13, 1030, 40)])
def test_gemm_microkernel(M, N, K):
    """C = A B, A^T B, the transposed store and A B^T (gemm_nt), against numpy, with guard bands around C
    (raw-pointer writes)."""
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm = rng.standard_normal((K, N)).astype(np.float32)
    want = A.astype(np.float64) @ Bm.astype(np.float64)
    G = 40

    def guarded(shape):
        buf = np.full(int(np.prod(shape)) + 2 * G, 7.0, np.float32)
        return buf, buf[G:-G].reshape(shape)

    for how in ("nn", "tn", "transposed", "nt"):
        buf, C = guarded((N, M) if how == "transposed" else (M, N))
        if how == "nn":
            gemm.mm(A, Bm, C)
        elif how == "tn":
            gemm.mm_tn(np.ascontiguousarray(A.T), Bm, C)
        elif how == "transposed":
            gemm.gemm(A.reshape(-1), K, 1, Bm.reshape(-1), N, C.reshape(-1), 1, M, M, N, K)
            C = C.T
        else:  # C = A (Bm^T)^T with the transposed operand's scratch
            gemm.gemm_nt(A, np.ascontiguousarray(Bm.T), C, np.zeros((K, M + 3), np.float32))
        np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-5 * max(K, 1), err_msg=how)
        assert np.all(buf[:G] == 7.0) and np.all(buf[-G:] == 7.0), f"{how}: wrote outside C"


def test_gemm_batch_packed_and_in_place_strips():
    """Several products in one gemm_batch: one whose B rows are PACK_STRIDE or more floats apart (strips packed),
    one read in place, one with A transposed; against numpy, with guard bands."""
    rng = np.random.default_rng(9)
    G = 40
    shapes = [(7, gemm.PACK_STRIDE + 37, 20, False), (5, 33, 9, False), (11, 600, 6, True)]
    jobs = np.zeros((4, 11), np.int64)
    keep = []
    for q, (M, N, K, trans) in enumerate(shapes):
        A = rng.standard_normal((K, M) if trans else (M, K)).astype(np.float32)
        Bm = rng.standard_normal((K, N)).astype(np.float32)
        buf = np.full(M * N + 2 * G, 7.0, np.float32)
        C = buf[G:-G].reshape(M, N)
        if trans:
            gemm.job(jobs, q, A, 1, M, Bm, N, C, N, M, N, K)
        else:
            gemm.job(jobs, q, A, K, 1, Bm, N, C, N, M, N, K)
        keep.append((A.T if trans else A, Bm, C, buf))
    gemm.gemm_batch(jobs, len(shapes))
    for A, Bm, C, buf in keep:
        np.testing.assert_allclose(C, A.astype(np.float64) @ Bm, rtol=1e-5, atol=1e-5 * A.shape[1])
        assert np.all(buf[:G] == 7.0) and np.all(buf[-G:] == 7.0)


def test_eval_step_scores_only_the_active_rows():
    """Inactive rows are left out of the ranking (counts 0); the active rows' counts equal those of the same
    step with every row active, bit for bit (each score is the same k-ordered chain wherever its row sits)."""
    cfg = make_cfg("cross-entropy", "constrained", (7,), "tanh", batch_size=5)
    params, _, _, _ = make_problem(cfg, n_items=N_ITEMS, B=5, S=3, dtype=np.float32)
    rng = np.random.default_rng(4)
    part, full = CpuBackend(cfg, N_ITEMS, params), CpuBackend(cfg, N_ITEMS, params)
    B = 21
    part.reset_eval(B)
    full.reset_eval(B)
    for t, active in enumerate((np.ones(B, bool), rng.random(B) < 0.4, np.eye(1, B, 20, dtype=bool)[0],
                                np.zeros(B, bool))):
        X, tg = rng.integers(0, N_ITEMS, B), rng.integers(0, N_ITEMS, B)
        reset = np.full(B, t == 0)
        for cand in (None, np.unique(rng.integers(0, N_ITEMS, 30))):
            gt, eq = part.eval_step(X, tg, reset, active, candidates=cand)
            gt_f, eq_f = full.eval_step(X, tg, reset, np.ones(B, bool), candidates=cand)
            np.testing.assert_array_equal(gt[active], gt_f[active], err_msg=str(t))
            np.testing.assert_array_equal(eq[active], eq_f[active], err_msg=str(t))
            assert np.all(gt[~active] == 0) and np.all(eq[~active] == 0)


def test_eval_chunk_equals_its_steps():
    """One eval_chunk call over T steps (resets, idle lanes, candidates) equals T eval_step calls, bit for bit."""
    cfg = make_cfg("bpr-max", "embedding", (6, 5), "elu-0.5", batch_size=4)
    params, _, _, _ = make_problem(cfg, n_items=N_ITEMS, B=4, S=3, dtype=np.float32)
    rng = np.random.default_rng(5)
    T, B = 6, 9
    inputs, targets = rng.integers(0, N_ITEMS, (T, B)), rng.integers(0, N_ITEMS, (T, B))
    reset, active = rng.random((T, B)) < 0.3, rng.random((T, B)) < 0.7
    reset[0] = True
    for cand in (None, np.unique(rng.integers(0, N_ITEMS, 25))):
        chunked, stepped = CpuBackend(cfg, N_ITEMS, params), CpuBackend(cfg, N_ITEMS, params)
        chunked.reset_eval(B)
        stepped.reset_eval(B)
        gt, eq = chunked.eval_chunk(inputs, targets, reset, active, candidates=cand)
        for t in range(T):
            gt_t, eq_t = stepped.eval_step(inputs[t], targets[t], reset[t], active[t], candidates=cand)
            np.testing.assert_array_equal(gt[t], gt_t)
            np.testing.assert_array_equal(eq[t], eq_t)
        assert np.all(gt[~active] == 0) and np.all(eq[~active] == 0) and np.all(eq[active] >= 1)
