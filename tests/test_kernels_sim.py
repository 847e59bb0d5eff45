"""Every kernel of kernels/, every version, against gru4rec_kernels.reference at awkward small sizes.

Runs in Numba's CUDA simulator here (tests/conftest.py switches it on where no GPU is usable) with tiny blocks
(2-8 threads, so barriers and the shared-memory tree reductions run with several threads); on a machine with a
GPU the same tests run on the device, and the ``cupy`` variants (marked ``gpu``) pass CuPy arrays.

Tolerance (flash-attention style): the kernel's max error against a float64 run of the reference must be at
most MULT times the float32 reference's own error, plus a tiny floor relative to the values' scale.
Sizes: B = 1 and 3 rows (row 1 inactive), H = 7, N = 97 items, S = 5 samples, duplicate ids among targets and
samples, a sample equal to a target (accidental hit).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from tolerance import assert_within_reference_error

from gru4rec_kernels import reference as ref
from gru4rec_kernels.config import LOSSES, TrainConfig
from gru4rec_kernels.kernels import adagrad as kad
from gru4rec_kernels.kernels import embedding as kemb
from gru4rec_kernels.kernels import evaluate as kev
from gru4rec_kernels.kernels import gru as kgru
from gru4rec_kernels.kernels import scores_loss as ksl
from gru4rec_kernels.kernels import step as kstep
from gru4rec_kernels.kernels.common import NORM_BLOCKS
from gru4rec_kernels.reference import StepInputs
from gru4rec_kernels.rng import dropout_key, dropout_mask_np

MULT = 4.0
FLOOR = 2e-7
N, H, S = 97, 7, 5
ACTS = ("linear", "tanh", "relu", "elu-0.5", "leaky-0.1")
T = 4  # threads per block in most tests


# ============================================================================================ naive references
def naive_gru_forward(xw_rows, Bh, h, Wrz, Wh, mask, dtype):
    """reference.gru_fwd from the input projection rows (x Wx or Wx0[X]) in ``dtype``."""
    c = lambda a: None if a is None else np.asarray(a, dtype)
    return ref.gru_fwd(c(xw_rows) + c(Bh), c(h), c(Wrz), c(Wh), c(mask))


def naive_gru_backward(dout, r, z, c, h, Wrz, Wh, mask, dtype):
    cv = lambda a: None if a is None else np.asarray(a, dtype)
    lc = ref.LayerCache(None, cv(h), cv(r), cv(z), cv(c), cv(mask), None)
    da, _, _ = ref.gru_bwd(cv(dout), lc, cv(Wrz), cv(Wh))
    return da


def naive_scores_loss(h, Wy, By, Y, active, col_logq, cfg, dtype):
    """(step loss, dZ) of reference.forward's score part + reference.loss_and_grad in ``dtype``."""
    h, Wy, By = (np.asarray(a, dtype) for a in (h, Wy, By))
    Z = h @ Wy[Y].T + By[Y]
    if col_logq is not None:
        Z = Z - np.asarray(col_logq, dtype)
    step = StepInputs(X=np.zeros(len(active), np.int64), Y=np.asarray(Y, np.int64), active=np.asarray(active, bool),
                      reset=np.zeros(len(active), bool))
    return ref.loss_and_grad(Z, cfg, step)


def naive_adagrad_dense(p, g, acc, mom, lr, mu, dtype):
    p, g, acc, mom = (np.array(a, dtype) for a in (p, g, acc, mom))
    ref.adagrad_dense(p, g, acc, mom, lr, mu)
    return p, acc, mom


def naive_rank_counts(scores, targets, cand=None):
    """reference.rank_counts over all items, or over the columns ``cand`` with NumpyBackend.eval_step's rule (the
    target's score from its own column; n_equal >= 1)."""
    if cand is None:
        return ref.rank_counts(scores, targets)
    t = scores[np.arange(len(targets)), targets][:, None]
    sc = scores[:, cand]
    return (sc > t).sum(1), np.maximum((sc == t).sum(1), 1)


# ============================================================================================ helpers
def assert_close(name, got, ref32, ref64, mult=MULT, floor=FLOOR):
    assert_within_reference_error(name, got, ref32, ref64, mult, floor, relative_floor=True)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Array module the kernels are handed: numpy (simulator, or host arrays on a GPU), cupy (GPU only)."""
    if request.param == "numpy":
        return np
    import cupy
    return cupy


def dev(xp, a, dtype=None):
    """A fresh C-contiguous copy on the array module (never the caller's array)."""
    return xp.array(a, dtype=dtype, order="C", copy=True)


def host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def ctr_of(xp, step, t=0):
    return dev(xp, np.array([t, step], np.int64))


def scores_problem(B, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    h = (rng.normal(0, 1, (B, H)) * scale).astype(np.float32)
    Wy = rng.normal(0, 0.6, (N, H)).astype(np.float32)
    By = rng.normal(0, 0.3, N).astype(np.float32)
    targets = rng.integers(0, N, B)
    if B > 1:
        targets[-1] = targets[0]  # duplicate target
    samples = rng.integers(0, N, S)
    samples[0] = targets[0]  # accidental hit
    samples[2] = samples[1]  # duplicate sample
    Y = np.concatenate([targets, samples]).astype(np.int32)
    active = np.ones(B, np.uint8)
    if B > 2:
        active[1] = 0
    logq_t = (0.7 * np.log(rng.uniform(0.01, 1, N))).astype(np.float32)
    logq_s = (0.5 * np.log(rng.uniform(0.01, 1, N))).astype(np.float32)
    return h, Wy, By, Y, active, logq_t, logq_s


# ============================================================================================ dropout / Philox
@pytest.mark.parametrize("layer,step,rows,cols,p", [(0, 0, 3, 7, 0.3), (-1, 12345, 1, 5, 0.5), (2, 7, 4, 9, 0.0)])
def test_dropout_masks_equal_rng(xp, layer, step, rows, cols, p):
    seed = 42
    a = dev(xp, np.ones((rows, cols), np.float32))
    kgru.launch_dropout_inplace(a, ctr_of(xp, step), dropout_key(seed, layer), p, threads=T)
    want = dropout_mask_np(seed, layer, step, rows, cols, p)
    np.testing.assert_array_equal(host(a), want)


def test_gather_rows_with_dropout_equals_mask(xp):
    rng = np.random.default_rng(1)
    table = rng.normal(size=(N, H)).astype(np.float32)
    ids = np.array([5, 96, 5, 0], np.int32)
    out = dev(xp, np.zeros((4, H), np.float32))
    kemb.launch_gather_rows(out, dev(xp, table), dev(xp, ids), ctr_of(xp, 3), dropout_key(9, -1), 0.4, threads=T)
    np.testing.assert_array_equal(host(out), table[ids] * dropout_mask_np(9, -1, 3, 4, H, 0.4))
    kemb.launch_gather_rows(out, dev(xp, table), dev(xp, ids), ctr_of(xp, 3), threads=3)
    np.testing.assert_array_equal(host(out), table[ids])


def test_scatter_add_rows_sums_duplicates(xp):
    rng = np.random.default_rng(2)
    table = rng.normal(size=(N, H)).astype(np.float32)
    ids = np.array([3, 7, 3, 3, 96], np.int32)
    rows = rng.normal(size=(5, H)).astype(np.float32)
    t = dev(xp, table)
    kemb.launch_scatter_add_rows(t, dev(xp, ids), dev(xp, rows), threads=T)
    want64 = table.astype(np.float64)
    np.add.at(want64, ids, rows.astype(np.float64))
    want32 = table.copy()
    np.add.at(want32, ids, rows)
    assert_close("scatter_add_rows", host(t), want32, want64)


# ============================================================================================ GRU
@pytest.mark.parametrize("B,gather,p", [(1, False, 0.0), (3, False, 0.3), (3, True, 0.25), (1, True, 0.0)])
def test_gru_forward_backward(xp, B, gather, p):
    rng = np.random.default_rng(B * 10 + gather)
    seed, layer, step = 7, 1, 5
    key = dropout_key(seed, layer)
    X = rng.integers(0, N, B).astype(np.int32)
    if B > 1:
        X[-1] = X[0]
    xw_src = rng.normal(0, 0.7, (N if gather else B, 3 * H)).astype(np.float32)
    Bh = rng.normal(0, 0.1, 3 * H).astype(np.float32)
    h = rng.uniform(-0.8, 0.8, (B, H)).astype(np.float32)
    Wrz = rng.normal(0, 0.5, (H, 2 * H)).astype(np.float32)
    Wh = rng.normal(0, 0.5, (H, H)).astype(np.float32)
    mask = dropout_mask_np(seed, layer, step, B, H, p) if p > 0 else None
    rows = xw_src[X] if gather else xw_src
    d = lambda a, dt=np.float32: dev(xp, a, dt)
    z0 = lambda *shape: d(np.zeros(shape, np.float32))
    ctr = ctr_of(xp, step)
    # ---- forward
    r, z, rh, c, out = z0(B, H), z0(B, H), z0(B, H), z0(B, H), z0(B, H)
    hU = d(h @ Wrz)
    kgru.launch_gru_fwd_rz(r, z, rh, d(xw_src), d(X, np.int32), gather, d(Bh), hU, d(h), threads=T)
    rhU = d(host(rh) @ Wh)
    kgru.launch_gru_fwd_out(c, out, d(xw_src), d(X, np.int32), gather, d(Bh), rhU, d(h), z, ctr, key, p, threads=T)
    ref64 = naive_gru_forward(rows, Bh, h, Wrz, Wh, mask, np.float64)
    ref32 = naive_gru_forward(rows, Bh, h, Wrz, Wh, mask, np.float32)
    for name, got, i in (("r", r, 0), ("z", z, 1), ("c", c, 2), ("out", out, 3)):
        assert_close(f"gru forward {name}", host(got), ref32[i], ref64[i])
    assert_close("gru forward r*h", host(rh), ref32[0] * h, ref64[0] * h)
    # ---- backward (from the float32 forward state)
    dout = rng.normal(0, 1, (B, H)).astype(np.float32)
    rr, zz, cc = host(r), host(z), host(c)
    da, dc, drz, drh = z0(B, 3 * H), z0(B, H), z0(B, 2 * H), z0(B, H)
    kgru.launch_gru_bwd_cz(da, dc, drz, d(dout), d(h), z, c, ctr, key, p, threads=T)
    drh = d(host(dc) @ Wh.T)
    kgru.launch_gru_bwd_r(da, drz, drh, d(h), r, threads=T)
    da64 = naive_gru_backward(dout, rr, zz, cc, h, Wrz, Wh, mask, np.float64)
    da32 = naive_gru_backward(dout, rr, zz, cc, h, Wrz, Wh, mask, np.float32)
    assert_close("gru backward da", host(da), da32, da64)
    np.testing.assert_array_equal(host(dc), host(da)[:, :H])
    np.testing.assert_array_equal(host(drz), host(da)[:, H:])


def naive_hidden_reset(hid_layers, reset):
    """reference.train_step's reset: every layer's state zeroed on reset rows, as the flat [layer][b][j] buffer."""
    return np.concatenate([np.where(reset[:, None] != 0, 0, h).ravel() for h in hid_layers])


def test_hidden_reset(xp):
    """Every layer in one launch over the flat states (layers of 7 and 3 units)."""
    rng = np.random.default_rng(3)
    widths = np.array([H, 3], np.int32)
    hid = [rng.normal(size=(3, w)).astype(np.float32) for w in widths]
    reset = np.array([1, 0, 1], np.uint8)
    h_in = dev(xp, np.full(3 * widths.sum(), 9.0, np.float32))
    flat = np.concatenate([h.ravel() for h in hid])
    kgru.launch_hidden_reset(h_in, dev(xp, flat), dev(xp, widths), dev(xp, reset), threads=T)
    np.testing.assert_array_equal(host(h_in), naive_hidden_reset(hid, reset))


# ============================================================================================ scores + loss
# C: each row in C chunks (C = 3 at B = 1 leaves the last chunk empty: O = 6 columns in chunks of 2)
SL_CASES = [(loss, act, 2, 3, False, False) for loss, act in itertools.product(LOSSES, ACTS)]
SL_CASES += [(loss, "tanh", 1, 3, False, False) for loss in LOSSES]
SL_CASES += [(loss, "linear", 4, 1, False, False) for loss in LOSSES]
SL_CASES += [("cross-entropy", act, C, B, True, mah) for act, C, B, mah
             in [("linear", 3, 3, False), ("tanh", 2, 3, True), ("elu-0.5", 3, 1, True)]]
SL_CASES += [(loss, "linear", 3, 3, False, True) for loss in LOSSES if loss != "cross-entropy"]


@pytest.mark.parametrize("loss,act,C,B,logq,mah", SL_CASES)
def test_scores_loss(xp, loss, act, C, B, logq, mah):
    h, Wy, By, Y, active, logq_t, logq_s = scores_problem(B, seed=LOSSES.index(loss) + 7 * B)
    cfg = TrainConfig(loss=loss, final_act=act, bpreg=0.5, logq=0.5 if logq else 0.0, batch_size=B + 1,
                      mask_accidental_hits=mah, layers=[H])
    col_logq = np.concatenate([logq_t[Y[:B]], logq_s[Y[B:]]]) if logq else None
    L64, dZ64 = naive_scores_loss(h, Wy, By, Y, active, col_logq, cfg, np.float64)
    L32, dZ32 = naive_scores_loss(h, Wy, By, Y, active, col_logq, cfg, np.float32)
    O = Y.shape[0]
    code, a = cfg.final_act_code
    dZ, rl = dev(xp, np.zeros((B, O), np.float32)), dev(xp, np.zeros(B, np.float32))
    part = dev(xp, np.full((B, C, ksl.N_STATS), np.nan, np.float32))  # every entry read is written
    lq = (dev(xp, logq_t), dev(xp, logq_s)) if logq else None
    ksl.launch_row_loss(dZ, rl, part, dev(xp, h @ Wy[Y].T), dev(xp, By), dev(xp, Y), dev(xp, active), lq,
                        loss=cfg.loss_code, act=code, act_a=a, bpreg=cfg.bpreg, mah=mah, inv_batch=1.0 / cfg.batch_size,
                        threads=T if B > 1 else 8)
    assert_close(f"{loss}/{act} dZ", host(dZ), dZ32, dZ64)
    assert_close(f"{loss}/{act} loss", host(rl).sum(dtype=np.float64), L32, L64)
    assert np.all(host(rl)[active == 0] == 0) and np.all(host(dZ)[active == 0] == 0)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "bpr"])
def test_row_loss_chunks_repeat_and_agree(xp, loss):
    """The chunked row loss gives the same bits on every run, and any chunking gives the one-chunk result up to
    float32 rounding (the sums are added in another order, and rescaled for the softmax losses)."""
    B = 3
    h, Wy, By, Y, active, _, _ = scores_problem(B, seed=11, scale=3.0)
    cfg = TrainConfig(loss=loss, final_act="linear", bpreg=0.5, batch_size=B, layers=[H])
    O = len(Y)
    kw = dict(loss=cfg.loss_code, bpreg=cfg.bpreg, inv_batch=1.0 / B, threads=T)
    got = {}
    for C in (1, 2, 2, 3):
        dZ, rl = dev(xp, np.zeros((B, O), np.float32)), dev(xp, np.zeros(B, np.float32))
        part = dev(xp, np.zeros((B, C, ksl.N_STATS), np.float32))
        ksl.launch_row_loss(dZ, rl, part, dev(xp, h @ Wy[Y].T), dev(xp, By), dev(xp, Y), dev(xp, active), **kw)
        if C in got:
            assert host(dZ).tobytes() == got[C][0].tobytes() and host(rl).tobytes() == got[C][1].tobytes()
        got[C] = (host(dZ), host(rl))
    for C in (2, 3):
        np.testing.assert_allclose(got[C][0], got[1][0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got[C][1], got[1][1], rtol=1e-5, atol=1e-7)


# ============================================================================================ Adagrad
@pytest.mark.parametrize("mu,gs", [(0.0, 1.0), (0.9, 0.5)])
def test_adagrad_dense(xp, mu, gs):
    rng = np.random.default_rng(5)
    P = 23
    p, g = rng.normal(size=P).astype(np.float32), rng.normal(size=P).astype(np.float32)
    acc, mom = rng.uniform(0, 2, P).astype(np.float32), rng.normal(0, 0.1, P).astype(np.float32)
    dp, dacc, dmom = dev(xp, p), dev(xp, acc), dev(xp, mom)
    kad.launch_adagrad_dense(dp, dev(xp, g), dacc, dmom, dev(xp, np.array([gs], np.float32)), 0.05, mu, threads=T)
    gg = g * np.float32(gs)
    r64 = naive_adagrad_dense(p, gg, acc, mom, 0.05, mu, np.float64)
    r32 = naive_adagrad_dense(p, gg, acc, mom, 0.05, mu, np.float32)
    for name, got, i in (("p", dp, 0), ("acc", dacc, 1), ("mom", dmom, 2)):
        assert_close(f"adagrad_dense {name}", host(got), r32[i], r64[i])


@pytest.mark.parametrize("cap", [0.5, 1e6])
def test_clip_scale(xp, cap):
    rng = np.random.default_rng(6)
    dense = rng.normal(size=37).astype(np.float32)
    rows = rng.normal(size=(5, 3)).astype(np.float32)
    g = ref.Grads(dense={"a": dense.astype(np.float64)}, sparse={"b": (np.arange(5), rows.astype(np.float64))})
    ref.clip_grads(g, cap)
    want = g.dense["a"][0] / dense[0]
    scale = dev(xp, np.zeros(1, np.float32))
    partials = dev(xp, np.zeros(2 * NORM_BLOCKS, np.float32))
    kad.launch_grad_clip(scale, partials, [dev(xp, dense), dev(xp, rows.reshape(-1))], cap, threads=T)
    assert abs(float(host(scale)[0]) - want) <= 1e-6 * want


# ============================================================================================ evaluation
def dyadic_scores_problem(B, seed):
    """h, Wy, By whose scores are exact in float32 in any summation order, with or without FMA (multiples of 1/64
    far below 2^24 ulps), so the counts are those of exact scores on the simulator and on a GPU alike; many ties:
    an item equal to row 0's target, a block of items scoring exactly 0 after relu, and small-integer scores."""
    rng = np.random.default_rng(seed)
    h = rng.integers(-4, 5, (B, H)).astype(np.float32) / 4
    Wy = rng.integers(-3, 4, (N, H)).astype(np.float32) / 8
    By = rng.integers(-8, 9, N).astype(np.float32) / 64
    targets = rng.integers(0, N, B).astype(np.int32)
    targets[0] = 4
    Wy[10], By[10] = Wy[4], By[4]  # an exact tie with row 0's target
    Wy[20:30], By[20:30] = -0.25 * np.sign(h.sum(0) + 0.5), -1.0  # relu: a block of zero scores
    return h, Wy, By, targets


@pytest.mark.parametrize("act,cand,B,tile,span", [("linear", False, 3, 10, 3), ("relu", False, 1, 97, 4),
                                                 ("relu", True, 3, 4, 2), ("tanh", True, 3, 5, 16),
                                                 ("leaky-0.1", True, 1, 3, 1), ("elu-0.5", False, 3, 40, 7)])
def test_rank_counts(xp, act, cand, B, tile, span):
    """target_scores, then rank_counts over item tiles of S (a tile smaller than N and not dividing it, a tile of
    all N, several blocks per row of a tile), then eval_step_end, into row t = 1 of [T, B] counts; row 1 of B = 3
    inactive (its counts stay 0), other steps' rows untouched."""
    h, Wy, By, targets = dyadic_scores_problem(B, seed=8)
    code, a = TrainConfig(final_act=act, layers=[H]).final_act_code
    S_ = h @ Wy.T  # exact (dyadic)
    scores = ref.final_act(S_ + By, code, a)
    items = np.array([4, 10, 3, 50, 96, 20, 21, 10, 60, 61, 62], np.int32) if cand else np.arange(N, dtype=np.int32)
    want_gt, want_eq = naive_rank_counts(scores, targets, items if cand else None)
    active = np.ones(B, np.uint8)
    if B > 2:
        active[1] = 0
        want_gt[1] = want_eq[1] = 0
    Tn, t = 3, 1
    counts = dev(xp, np.zeros((2, Tn, B), np.int32))
    gt, eq = counts[0], counts[1]
    ctr = ctr_of(xp, 0, t=t)
    tscore, act_d = dev(xp, np.full(B, np.nan, np.float32)), dev(xp, active)
    kev.launch_target_scores(tscore, dev(xp, h), dev(xp, Wy), dev(xp, By), dev(xp, targets), act_d, code, a, threads=2)
    on = active == 1  # numpy's float32 tanh / expm1 may differ from the device's by an ulp
    np.testing.assert_allclose(host(tscore)[on], scores[np.arange(B), targets][on], rtol=1e-6)
    for j0 in range(0, len(items), tile):
        cols = items[j0:j0 + tile]
        kev.launch_rank_counts(gt, eq, dev(xp, S_[:, cols]), dev(xp, By[cols]), tscore, act_d, ctr, code, a, span=span,
                               threads=T)
    kev.launch_eval_step_end(eq, act_d, cand, ctr, threads=2)
    got = host(counts)
    np.testing.assert_array_equal(got[0, t], want_gt)
    np.testing.assert_array_equal(got[1, t], want_eq)
    assert not got[:, [0, 2]].any() and list(host(ctr)) == [t + 1, 0]
    if B > 2:
        assert want_eq[0] >= 2  # the tie with item 10 was counted


@pytest.mark.parametrize("H_,act", [(7, "linear"), (16, "tanh"), (33, "elu-0.5")])
def test_target_scores_equal_the_gemm_column(xp, H_, act):
    """The target's score has the bits of its own column of the GEMM's score tile (random floats, K not a multiple
    of the slab), what makes ties exact: linear, bit for bit; any activation, rank_counts finds the target's own
    column equal to it (n_equal >= 1; another summation order would miss by an ulp). The default GEMM tile here:
    the simulator's, or on a GPU the device's (with FMA)."""
    from gru4rec_kernels.kernels import gemm as kgm
    rng = np.random.default_rng(11)
    B = 5
    h = rng.normal(0, 1, (B, H_)).astype(np.float32)
    Wy = rng.normal(0, 0.5, (N, H_)).astype(np.float32)
    By = rng.normal(0, 0.1, N).astype(np.float32)
    targets = rng.integers(0, N, B).astype(np.int32)
    code, a = TrainConfig(final_act=act, layers=[H_]).final_act_code
    on = dev(xp, np.ones(B, np.uint8))
    S_ = dev(xp, np.zeros((B, N), np.float32))
    kgm.launch_gemm(S_, dev(xp, h), dev(xp, Wy), tb=True)
    tscore = dev(xp, np.zeros(B, np.float32))
    kev.launch_target_scores(tscore, dev(xp, h), dev(xp, Wy), dev(xp, By), dev(xp, targets), on, code, a, threads=2)
    if code == 0:
        col = host(S_)[np.arange(B), targets]
        np.testing.assert_array_equal(host(tscore), col + By[targets])
    counts = dev(xp, np.zeros((2, 1, B), np.int32))
    kev.launch_rank_counts(counts[0], counts[1], S_, dev(xp, By), tscore, on, ctr_of(xp, 0), code, a, threads=T)
    assert np.all(host(counts)[1, 0] >= 1), host(counts)


def test_eval_step_begin(xp):
    rng = np.random.default_rng(9)
    Tn, B = 3, 2
    inputs = rng.integers(0, N, (Tn, B)).astype(np.int32)
    targets = rng.integers(0, N, (Tn, B)).astype(np.int32)
    rst_s = (rng.random((Tn, B)) < 0.5).astype(np.uint8)
    act_s = (rng.random((Tn, B)) < 0.5).astype(np.uint8)
    X, tg = dev(xp, np.zeros(B, np.int32)), dev(xp, np.zeros(B, np.int32))
    reset, active = dev(xp, np.zeros(B, np.uint8)), dev(xp, np.zeros(B, np.uint8))
    ctr = ctr_of(xp, 7, t=2)
    kev.launch_eval_step_begin(X, tg, reset, active, *(dev(xp, a) for a in (inputs, targets, rst_s, act_s)), ctr,
                               threads=T)
    np.testing.assert_array_equal(host(X), inputs[2])
    np.testing.assert_array_equal(host(tg), targets[2])
    np.testing.assert_array_equal(host(reset), rst_s[2])
    np.testing.assert_array_equal(host(active), act_s[2])
    assert list(host(ctr)) == [2, 7]  # eval_step_end advances it, not begin


# ============================================================================================ step counter
@pytest.mark.parametrize("x0_width,p", [(H, 0.3), (4, 0.0), (None, 0.0)])
def test_step_begin_end(xp, x0_width, p):
    """step_begin stages row t of the chunk and does the step's first gathers: the hidden reset of two layers,
    x0 = emb[X] with the embedding dropout (x0_width H: the constrained Wy; 4: an embedding E; None: one-hot,
    no x0) and WyY = Wy[Y], each against reference.forward's arrays."""
    rng = np.random.default_rng(9)
    Tn, B, t, step = 3, 2, 1, 100
    inputs = rng.integers(0, N, (Tn, B)).astype(np.int32)
    targets = rng.integers(0, N, (Tn, B)).astype(np.int32)
    samples = rng.integers(0, N, (Tn, S)).astype(np.int32)
    act_s = (rng.random((Tn, B)) < 0.5).astype(np.uint8)
    rst_s = np.array([[0, 0], [1, 0], [0, 1]], np.uint8)
    ids, active, reset = dev(xp, np.zeros(2 * B + S, np.int32)), dev(xp, np.zeros(B, np.uint8)), dev(
        xp, np.zeros(B, np.uint8))
    widths = np.array([3, H], np.int32)
    hid = [rng.normal(size=(B, w)).astype(np.float32) for w in widths]
    h_in = dev(xp, np.full(B * widths.sum(), 9.0, np.float32))
    Wy = rng.normal(size=(N, H)).astype(np.float32)
    WyY = dev(xp, np.zeros((B + S, H), np.float32))
    x0 = emb = None
    if x0_width is not None:
        table = Wy if x0_width == H else rng.normal(size=(N, x0_width)).astype(np.float32)
        x0, emb = dev(xp, np.zeros((B, x0_width), np.float32)), dev(xp, table)
    ctr = ctr_of(xp, step, t=t)
    losses = dev(xp, np.zeros(Tn, np.float32))
    chunk = tuple(dev(xp, a) for a in (inputs, targets, samples, act_s, rst_s))
    hidden = (h_in, dev(xp, np.concatenate([h.ravel() for h in hid])), dev(xp, widths))
    kstep.launch_step_begin(ids, active, reset, chunk, ctr, hidden, WyY, dev(xp, Wy), x0=x0, emb=emb,
                            key=dropout_key(5, -1), p=p, threads=T)
    Y = np.concatenate([targets[t], samples[t]])
    np.testing.assert_array_equal(host(ids), np.concatenate([Y, inputs[t]]))
    np.testing.assert_array_equal(host(active), act_s[t])
    np.testing.assert_array_equal(host(reset), rst_s[t])
    np.testing.assert_array_equal(host(h_in), naive_hidden_reset(hid, rst_s[t]))
    np.testing.assert_array_equal(host(WyY), Wy[Y])
    if x0 is not None:
        mask = dropout_mask_np(5, -1, step, B, x0_width, p) if p > 0 else 1.0
        np.testing.assert_array_equal(host(x0), table[inputs[t]] * mask)
    rl = np.array([0.25, 0.5, 0.125], np.float32)
    kstep.launch_step_end(losses, dev(xp, rl), ctr, threads=2)
    assert host(losses)[1] == 0.875 and list(host(ctr)) == [2, 101]


# ============================================================================================ launcher checks
def _ok_row_loss_args(B=3):
    h, Wy, By, Y, active, logq_t, logq_s = scores_problem(B)
    O = len(Y)
    return dict(dZ=np.zeros((B, O), np.float32), row_loss_=np.zeros(B, np.float32),
                part=np.zeros((B, 2, ksl.N_STATS), np.float32), S=np.zeros((B, O), np.float32), By=By, Y=Y,
                active=active)


@pytest.mark.parametrize("arg,bad,msg", [
    ("dZ", lambda a: a.astype(np.float64), "dZ"),
    ("S", lambda a: np.asfortranarray(np.zeros((a.shape[0], a.shape[1] + 1), np.float32))[:, 1:], "S"),
    ("Y", lambda a: a.astype(np.int64), "Y"),
    ("Y", lambda a: a[:-1], "Y"),
    ("active", lambda a: a.astype(bool), "active"),
    ("row_loss_", lambda a: np.zeros(len(a) + 1, np.float32), "row_loss"),
    ("part", lambda a: np.zeros((a.shape[0], 2, 4), np.float32), "part"),
    ("part", lambda a: np.zeros((a.shape[0], 0, a.shape[2]), np.float32), "part"),
])
def test_row_loss_launcher_rejects(arg, bad, msg):
    kw = _ok_row_loss_args()
    kw[arg] = bad(kw[arg])
    with pytest.raises(ValueError, match=msg):
        ksl.launch_row_loss(kw["dZ"], kw["row_loss_"], kw["part"], kw["S"], kw["By"], kw["Y"], kw["active"], loss=0,
                            threads=T)


def test_launchers_reject_bad_arguments():
    f32 = lambda *s: np.zeros(s, np.float32)
    B = 3
    with pytest.raises(ValueError, match="hU"):
        kgru.launch_gru_fwd_rz(f32(B, H), f32(B, H), f32(B, H), f32(B, 3 * H), np.zeros(B, np.int32), False,
                               f32(3 * H), f32(B, H), f32(B, H))
    with pytest.raises(ValueError, match="xw"):
        kgru.launch_gru_fwd_rz(f32(B, H), f32(B, H), f32(B, H), f32(B, 3 * H)[:, ::1].T.copy(), np.zeros(B, np.int32),
                               False, f32(3 * H), f32(B, 2 * H), f32(B, H))
    with pytest.raises(ValueError, match="ids"):
        kgru.launch_gru_fwd_out(f32(B, H), f32(B, H), f32(N, 3 * H), np.zeros(B, np.int64), True, f32(3 * H),
                                f32(B, H), f32(B, H), f32(B, H), np.zeros(2, np.int64), 1, 0.0)
    with pytest.raises(ValueError, match="ctr"):
        kgru.launch_dropout_inplace(f32(B, H), np.zeros(2, np.int32), 1, 0.5)
    with pytest.raises(ValueError, match="p must"):
        kgru.launch_dropout_inplace(f32(B, H), np.zeros(2, np.int64), 1, 1.0)
    with pytest.raises(ValueError, match="da"):
        kgru.launch_gru_bwd_r(f32(B, 2 * H), f32(B, 2 * H), f32(B, H), f32(B, H), f32(B, H))
    with pytest.raises(ValueError, match="table"):
        kemb.launch_gather_rows(f32(B, H), f32(N, H + 1), np.zeros(B, np.int32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="rows"):
        kemb.launch_scatter_add_rows(f32(N, H), np.zeros(B, np.int32), f32(B, H + 1))
    with pytest.raises(ValueError, match="mom"):
        kad.launch_adagrad_dense(f32(5), f32(5), f32(5), f32(4), np.ones(1, np.float32), 0.1, 0.0)
    with pytest.raises(ValueError, match="lr"):
        kad.launch_adagrad_dense(f32(5), f32(5), f32(5), f32(5), np.ones(1, np.float32), 0.0, 0.0)
    with pytest.raises(ValueError, match="threads"):
        ksl.launch_row_loss(f32(B, 8), f32(B), f32(B, 1, ksl.N_STATS), f32(B, 8), f32(N), np.zeros(8, np.int32),
                            np.ones(B, np.uint8), loss=0, threads=6)
    cnt = lambda *s: np.zeros(s, np.int32)
    u8 = lambda n: np.ones(n, np.uint8)
    ctr = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="threads"):
        kev.launch_rank_counts(cnt(2, B), cnt(2, B), f32(B, N), f32(N), f32(B), u8(B), ctr, threads=6)
    with pytest.raises(ValueError, match="By"):
        kev.launch_rank_counts(cnt(2, B), cnt(2, B), f32(B, N), f32(N + 1), f32(B), u8(B), ctr)
    with pytest.raises(ValueError, match="n_equal"):
        kev.launch_rank_counts(cnt(2, B), cnt(3, B), f32(B, N), f32(N), f32(B), u8(B), ctr)
    with pytest.raises(ValueError, match="n_greater"):
        kev.launch_rank_counts(np.zeros((2, B), np.int64), cnt(2, B), f32(B, N), f32(N), f32(B), u8(B), ctr)
    with pytest.raises(ValueError, match="span"):
        kev.launch_rank_counts(cnt(2, B), cnt(2, B), f32(B, N), f32(N), f32(B), u8(B), ctr, span=0)
    with pytest.raises(ValueError, match="targets"):
        kev.launch_target_scores(f32(B), f32(B, H), f32(N, H), f32(N), np.zeros(B + 1, np.int32), u8(B))
    with pytest.raises(ValueError, match="Wy"):
        kev.launch_target_scores(f32(B), f32(B, H), f32(N, H + 1), f32(N), np.zeros(B, np.int32), u8(B))
    with pytest.raises(ValueError, match="act"):
        kev.launch_target_scores(f32(B), f32(B, H), f32(N, H), f32(N), np.zeros(B, np.int32), u8(B), act=9)
    with pytest.raises(ValueError, match="reset_s"):
        kev.launch_eval_step_begin(cnt(B), cnt(B), u8(B), u8(B), cnt(2, B), cnt(2, B), np.zeros((3, B), np.uint8),
                                   np.zeros((2, B), np.uint8), ctr)
    with pytest.raises(ValueError, match="ctr"):
        kev.launch_eval_step_end(cnt(2, B), u8(B), True, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="loss"):
        ksl.launch_row_loss(f32(B, 8), f32(B), f32(B, 1, ksl.N_STATS), f32(B, 8), f32(N), np.zeros(8, np.int32),
                            np.ones(B, np.uint8), loss=7)
    with pytest.raises(ValueError, match="widths"):
        kgru.launch_hidden_reset(f32(B * H), f32(B * H), np.array([H], np.int64), np.zeros(B, np.uint8))
    with pytest.raises(ValueError, match="h_in must hold"):
        kgru.launch_hidden_reset(f32(B * H + 1), f32(B * H + 1), np.array([H], np.int32), np.zeros(B, np.uint8))
    chunk = (np.zeros((2, B), np.int32), np.zeros((2, B), np.int32), np.zeros((3, S), np.int32),
             np.zeros((2, B), np.uint8), np.zeros((2, B), np.uint8))
    hidden = (f32(B * H), f32(B * H), np.array([H], np.int32))
    step_bufs = (np.zeros(2 * B + S, np.int32), np.zeros(B, np.uint8), np.zeros(B, np.uint8))
    with pytest.raises(ValueError, match="samples"):
        kstep.launch_step_begin(*step_bufs, chunk, np.zeros(2, np.int64), hidden, f32(B + S, H), f32(N, H))
    chunk = chunk[:2] + (np.zeros((2, S), np.int32),) + chunk[3:]
    with pytest.raises(ValueError, match="WyY"):
        kstep.launch_step_begin(*step_bufs, chunk, np.zeros(2, np.int64), hidden, f32(B, H), f32(N, H))
    with pytest.raises(ValueError, match="emb"):
        kstep.launch_step_begin(*step_bufs, chunk, np.zeros(2, np.int64), hidden, f32(B + S, H), f32(N, H),
                                x0=f32(B, 4), emb=f32(N, 5))
