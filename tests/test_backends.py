"""The backend contract (backends/base.py), written once and run on every fast backend against the numpy one.

* Training: whole steps through train_chunk (and train_step) of every loss x input mode x depth x final
  activation, with dropout, logq, momentum, clipping, duplicate ids, accidental hits, inactive rows and resets;
  losses, parameters, optimizer state and hidden state against a float64 run of the numpy backend, within
  tolerance.assert_within_reference_error (the float32 numpy backend's own error sets the bound).
* Evaluation: eval_step's rank counts against the numpy backend's (ties included).
* State exchange: get/set of parameters, optimizer state and hidden state round-trip, and the caller's arrays
  are never written into.
* Bad input: out-of-range ids and wrong shapes raise errors that name the problem.

The cuda backend runs in Numba's CUDA simulator here (tests/conftest.py), where every CUDA thread is a Python
thread: its cases are kept few and tiny, and the rest of the grid is marked ``gpu`` (it runs on a real GPU).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import GPU
from steps import RUN_CASES, logq_arrays, make_cfg, make_problem, make_schedule
from tolerance import assert_within_reference_error

from gru4rec_kernels.backends.cpu import CpuBackend
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.config import LOSSES
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.reference import final_act

BACKENDS = ["cpu", "cuda"]
MODES = ("constrained", "embedding", "onehot")


def make_backend(name, cfg, n_items, params, lq=None):
    """The backend under test."""
    lq = lq or (None, None)
    if name == "cpu":
        return CpuBackend(cfg, n_items, params, *lq)
    from gru4rec_kernels.backends.cuda import CudaBackend
    return CudaBackend(cfg, n_items, params, *lq)


def numpy_pair(cfg, n_items, params, lq=None):
    """The numpy backend in float64 (the answer) and in float32 (what float32 rounding alone costs)."""
    lq = lq or (None, None)
    return (NumpyBackend(cfg, n_items, params, *lq, dtype=np.float64),
            NumpyBackend(cfg, n_items, params, *lq, dtype=np.float32))


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
        assert set(og[s]) == set(o64[s])
        for k in o64[s]:
            assert_within_reference_error(f"{s} {k}", og[s][k], o32[s][k], o64[s][k], **tol)
    h64, h32, hg = b64.get_hidden(), b32.get_hidden(), be.get_hidden()
    assert len(hg) == len(h64) == len(be.cfg.layers)
    for l in range(len(h64)):
        assert_within_reference_error(f"hidden {l}", hg[l], h32[l], h64[l], **tol)


def run_schedule(be, sched, step0):
    """A chunk of all steps but the last through train_chunk, then the last through train_step: both entry
    points, and the hidden state carried from one call to the next. Losses [T]."""
    inputs, targets, active, reset, samples = sched
    T = inputs.shape[0]
    losses = list(be.train_chunk(*(a[:T - 1] for a in sched), step0))
    Y = np.concatenate([targets[-1], samples[-1]])
    losses.append(be.train_step(inputs[-1], Y, active[-1], reset[-1], step0 + T - 1))
    return np.array(losses)


# ============================================================================================ training: the grid
GRID_ITEMS = 97
GRID_STEPS = 5
GRID = list(itertools.product(LOSSES, MODES, ((7,), (6, 7)), ("linear", "elu-0.5", "tanh")))


def grid_params():
    for be in BACKENDS:
        for case in GRID:
            # under the simulator (CI) the cuda grid is left to a GPU: the six RUN_CASES below train every loss
            # and every input mode in the simulator, and CI's time budget does not fit the grid as well
            marks = [pytest.mark.gpu] if be == "cuda" else []
            yield pytest.param(be, *case, marks=marks, id=f"{be}-{'-'.join(map(str, case))}")


def grid_schedule(cfg, B, S, seed):
    """GRID_STEPS steps from make_problem (duplicate targets, a sample equal to a target and one equal to an
    input, random resets; row 1 inactive on odd steps)."""
    steps = [make_problem(cfg, n_items=GRID_ITEMS, B=B, S=S, seed=1000 * seed + t, inactive=(1,) if t % 2 else ())[3]
             for t in range(GRID_STEPS)]
    return (np.stack([s.X for s in steps]), np.stack([s.Y[:B] for s in steps]), np.stack([s.active for s in steps]),
            np.stack([s.reset for s in steps]), np.stack([s.Y[B:] for s in steps]).reshape(GRID_STEPS, S))


def run_grid_case(backend, cfg, B, S, seed, logq):
    params, _, _, _ = make_problem(cfg, n_items=GRID_ITEMS, B=B, S=S, seed=seed)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    lq = None
    if logq:
        r = np.random.default_rng(seed + 7)
        lq = tuple(cfg.logq * np.log(r.uniform(0.01, 1.0, GRID_ITEMS)) for _ in range(2))
    sched = grid_schedule(cfg, B, S, seed)
    b64, b32 = numpy_pair(cfg, GRID_ITEMS, p32, lq)
    be = make_backend(backend, cfg, GRID_ITEMS, p32, lq)
    try:
        losses = [run_schedule(b, sched, 100) for b in (be, b32, b64)]
        compare(be, b32, b64, *losses, mult=4.0, floor=1e-6)
    finally:
        be.close()


@pytest.mark.parametrize("backend,loss,mode,layers,act", list(grid_params()))
def test_whole_steps_match_reference(backend, loss, mode, layers, act):
    n = GRID.index((loss, mode, layers, act))
    # B=3, S=5 with dropout 0.3 (and logq for cross-entropy); B=1, S=0 without. Momentum, accidental-hit
    # masking and clipping alternate over the cases.
    for B, S in ((3, 5), (1, 0)):
        dropout = 0.3 if B == 3 else 0.0
        cfg = make_cfg(loss, mode, layers, act, batch_size=4, dropout_p_embed=dropout, dropout_p_hidden=dropout,
                       momentum=0.9 if n % 2 else 0.0, mask_accidental_hits=n % 3 == 1,
                       grad_cap=0.05 if n % 4 == 2 else 0.0,
                       logq=0.5 if (loss == "cross-entropy" and B == 3) else 0.0)
        run_grid_case(backend, cfg, B, S, seed=n, logq=cfg.logq > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_cap_actually_clips(backend):
    # a tiny cap clips every step: the comparison then covers the scaled gradients
    cfg = make_cfg("bpr-max", "embedding", (6, 7), "elu-0.5", batch_size=3, grad_cap=1e-3, momentum=0.9,
                   dropout_p_embed=0.3, dropout_p_hidden=0.3)
    run_grid_case(backend, cfg, 3, 5, seed=11, logq=False)


# ============================================================================================ training: long runs
RUN_ITEMS = 17
RUN_MULT = 8.0
# 20 free-running steps: Adagrad divides by sqrt(acc) with tiny accumulators early on and momentum carries any
# difference on, so rounding differences grow chaotically (measured: ~1e-7 per step, up to ~4e-5 after 20 steps
# at lr 0.1, momentum 0.9, for the float32 numpy backend and the cuda one alike). A real bug (a wrong mask,
# sample, row or sign) moves parameters by ~lr = 1e-1.
RUN_FLOOR = 1e-4
STEP_FLOOR = 2e-7  # one step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(RUN_CASES))
def test_twenty_training_steps_match_numpy(backend, case):
    """20 steps free-running (chunks of 12 and 7 steps, then one train_step): losses, parameters, optimizer state
    and hidden state within float32 drift of the float64 numpy backend; then the last step once more from the
    float64 run's state (rounded to float32) in fresh backends: strictly within 4x the float32 numpy backend's
    error of that one step."""
    B, S = 3, 5
    T = 20 if backend != "cuda" or GPU else 8  # the simulator runs 8 (CI's time budget); a GPU all 20
    c1, c2 = (12, 19) if T == 20 else (4, 7)
    cfg = make_cfg(batch_size=B, learning_rate=0.1, **RUN_CASES[case])
    _, params = init_params(cfg, RUN_ITEMS, seed=1)
    lq = logq_arrays(cfg, RUN_ITEMS)
    sched = make_schedule(T, B, S, RUN_ITEMS, seed=len(case))
    step0 = 1000
    # ---- free-running: 20 steps
    b64, b32 = numpy_pair(cfg, RUN_ITEMS, params, lq)
    l64, l32 = (b.train_chunk(*sched, step0) for b in (b64, b32))
    be = make_backend(backend, cfg, RUN_ITEMS, params, lq)
    lc = list(be.train_chunk(*(a[:c1] for a in sched), step0))
    lc += list(be.train_chunk(*(a[c1:c2] for a in sched), step0 + c1))
    inputs, targets, active, reset, samples = sched
    lc.append(be.train_step(inputs[c2], np.concatenate([targets[c2], samples[c2]]), active[c2], reset[c2],
                            step0 + c2))
    compare(be, b32, b64, lc, l32, l64, mult=RUN_MULT, floor=RUN_FLOOR, relative_floor=True)
    be.close()
    # ---- the last step again from one state, strictly
    r64 = NumpyBackend(cfg, RUN_ITEMS, params, *(lq or (None, None)), dtype=np.float64)
    r64.train_chunk(*(a[:c2] for a in sched), step0)
    state = ({k: v.astype(np.float32) for k, v in r64.get_params().items()}, r64.get_opt_state(), r64.get_hidden())
    f64, f32 = numpy_pair(cfg, RUN_ITEMS, state[0], lq)
    fresh = make_backend(backend, cfg, RUN_ITEMS, state[0], lq)
    losses = []
    for b in (fresh, f32, f64):
        b.set_opt_state(state[1])
        b.set_hidden(state[2])
        losses.append(b.train_chunk(*(a[c2:] for a in sched), step0 + c2))
    compare(fresh, f32, f64, *losses, mult=4.0, floor=STEP_FLOOR, relative_floor=True)
    fresh.close()


# ============================================================================================ evaluation
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ["linear", "tanh", "elu-0.5", "leaky-0.1"])
@pytest.mark.parametrize("mode,layers", [("constrained", (7,)), ("onehot", (6, 7)), ("embedding", (7,))])
def test_eval_counts_match_reference(backend, mode, layers, act):
    """Rank counts over all items and over candidates, against float64 scores: exact away from ties; within
    a 1e-5 band around the target's score the order may legitimately differ between precisions."""
    n_items = GRID_ITEMS
    cfg = make_cfg("cross-entropy", mode, layers, act)
    params, _, _, _ = make_problem(cfg, n_items=n_items, seed=3)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = NumpyBackend(cfg, n_items, p32, dtype=np.float64)
    be = make_backend(backend, cfg, n_items, p32)
    B = 5
    rng = np.random.default_rng(0)
    cands = np.unique(rng.integers(0, n_items, 40))
    for b in (ref, be):
        b.reset_eval(B)
    for t in range(4):
        X = rng.integers(0, n_items, B)
        targets = rng.integers(0, n_items, B)
        targets[0] = cands[3]  # one target inside the candidates
        reset = rng.random(B) < 0.3
        active = np.ones(B, bool)
        for items in (None, cands):
            gt_r, eq_r = ref.eval_step(X, targets, reset, active, candidates=items)
            gt_c, eq_c = (np.asarray(a) for a in be.eval_step(X, targets, reset, active, candidates=items))
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
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_ties_are_counted_exactly(backend):
    """relu scores: every item with a negative pre-activation scores exactly 0, the target among them."""
    n_items = GRID_ITEMS
    cfg = make_cfg("cross-entropy", "constrained", (7,), "relu")
    params, _, _, _ = make_problem(cfg, n_items=n_items, seed=5)
    params["By"][:60] = -50.0  # these items score exactly 0 after relu
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = NumpyBackend(cfg, n_items, p32, dtype=np.float32)
    be = make_backend(backend, cfg, n_items, p32)
    B = 3
    for b in (ref, be):
        b.reset_eval(B)
    X = np.array([1, 2, 3])
    targets = np.array([5, 10, 70])
    for items in (None, np.arange(0, 97, 2)):
        gt_r, eq_r = ref.eval_step(X, targets, np.zeros(B, bool), np.ones(B, bool), candidates=items)
        gt_c, eq_c = be.eval_step(X, targets, np.zeros(B, bool), np.ones(B, bool), candidates=items)
        np.testing.assert_array_equal(gt_c[:2], gt_r[:2])
        np.testing.assert_array_equal(eq_c[:2], eq_r[:2])
        assert eq_c[0] >= 30
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,layers,act", [("constrained", (5,), "linear"), ("onehot", (4, 5), "tanh"),
                                             ("embedding", (5,), "relu")])
def test_eval_step_equals_numpy(backend, mode, layers, act):
    """Exactly the float32 numpy backend's counts, with exact ties (two identical output rows)."""
    cfg = make_cfg("cross-entropy", mode, layers, act)
    _, params = init_params(cfg, RUN_ITEMS, seed=2)
    params["Wy"][7] = params["Wy"][3]  # exact ties in the scores
    params["By"][7] = params["By"][3]
    nb = NumpyBackend(cfg, RUN_ITEMS, params)
    be = make_backend(backend, cfg, RUN_ITEMS, params)
    rng = np.random.default_rng(3)
    B = 3
    for b in (nb, be):
        b.reset_eval(B)
    cands = np.array([3, 7, 0, 16, 5], np.int64)
    for t in range(4):
        X = rng.integers(0, RUN_ITEMS, B)
        tg = rng.integers(0, RUN_ITEMS, B)
        tg[0] = 3
        reset = rng.random(B) < 0.3
        c = cands if t % 2 else None
        want = nb.eval_step(X, tg, reset, np.ones(B, bool), candidates=c)
        got = be.eval_step(X, tg, reset, np.ones(B, bool), candidates=c)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    be.close()


# ============================================================================================ state exchange
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_round_trips(backend):
    n_items = RUN_ITEMS
    cfg = make_cfg("bpr", "onehot", (6, 7), "tanh", batch_size=3, momentum=0.5)
    params, _, H, st = make_problem(cfg, n_items=n_items, B=3, S=5, dtype=np.float32)
    be = make_backend(backend, cfg, n_items, params)
    ref = NumpyBackend(cfg, n_items, params, dtype=np.float64)
    for k, v in be.get_params().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, params[k])
    assert be.get_hidden() == []
    # hidden state in, one step, hidden state out: the reference's
    for b in (be, ref):
        b.set_hidden(H)
    for a, b in zip(be.get_hidden(), H):
        np.testing.assert_array_equal(a, b)
    for b in (be, ref):
        b.train_step(st.X, st.Y, st.active, st.reset, 0)
    for a, b in zip(be.get_hidden(), ref.get_hidden()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # optimizer state in and out
    state = ref.get_opt_state()
    state["acc"]["Wy"][...] = 0.5
    state["mom"]["Wh0"][...] = -0.25
    be.set_opt_state(state)
    got = be.get_opt_state()
    for s in ("acc", "mom"):
        assert set(got[s]) == set(state[s])
        for k in state[s]:
            np.testing.assert_allclose(got[s][k], state[s][k], rtol=1e-6)
    # what get_* hand out are copies: writing into them changes nothing inside
    snap = (be.get_params(), be.get_opt_state(), be.get_hidden())
    for v in snap[0].values():
        v[...] = 9.0
    for d in snap[1].values():
        for v in d.values():
            v[...] = 9.0
    for h in snap[2]:
        h[...] = 9.0
    assert not any(np.any(v == 9.0) for v in be.get_params().values())
    assert not any(np.any(v == 9.0) for d in be.get_opt_state().values() for v in d.values())
    assert not any(np.any(h == 9.0) for h in be.get_hidden())
    # reset_hidden: the next step starts from zeros (its forward pass uses the parameters before the update, which
    # the optimizer state set above does not touch)
    for b in (be, ref):
        b.reset_hidden()
    assert all(np.all(h == 0) for h in be.get_hidden())
    for b in (be, ref):
        b.train_step(st.X, st.Y, st.active, st.reset, 1)
    assert [h.shape for h in be.get_hidden()] == [(3, 6), (3, 7)]
    for a, b in zip(be.get_hidden(), ref.get_hidden()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_caller_arrays_are_not_written(backend):
    """The backend copies what it is handed: training never writes into the caller's parameters, optimizer
    state or hidden state (under the simulator xp is numpy, where ``xp.asarray`` of a float32 array would be
    the caller's array itself)."""
    cfg = make_cfg("cross-entropy", "onehot", (5,), learning_rate=0.1, batch_size=3, momentum=0.5)
    _, params = init_params(cfg, RUN_ITEMS, seed=9)
    before = {k: v.copy() for k, v in params.items()}
    be = make_backend(backend, cfg, RUN_ITEMS, params)
    opt = be.get_opt_state()
    opt_before = {s: {k: v.copy() for k, v in d.items()} for s, d in opt.items()}
    be.set_opt_state(opt)
    H = [np.full((3, 5), 0.125, np.float32)]
    be.set_hidden(H)
    be.train_chunk(*make_schedule(3, 3, 4, RUN_ITEMS, seed=1), 0)
    for k, v in params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"the caller's {k} was written by training")
    for s in opt:
        for k, v in opt[s].items():
            np.testing.assert_array_equal(v, opt_before[s][k], err_msg=f"the caller's {s} {k} was written")
    assert np.all(H[0] == 0.125), "the caller's hidden state was written"
    assert any(not np.array_equal(be.get_params()[k], before[k]) for k in ("Wy", "By", "Wx0"))
    be.close()


# ============================================================================================ bad input
def small_backend(backend):
    cfg = make_cfg("top1-max", "constrained", (5,), momentum=0.2, batch_size=3)
    _, params = init_params(cfg, RUN_ITEMS, seed=4)
    return cfg, params, make_backend(backend, cfg, RUN_ITEMS, params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["inputs", "targets", "samples"])
@pytest.mark.parametrize("bad_id", [RUN_ITEMS, -1])
def test_training_ids_out_of_range(backend, which, bad_id):
    _, _, be = small_backend(backend)
    sched = dict(zip(("inputs", "targets", "active", "reset", "samples"), make_schedule(2, 3, 4, RUN_ITEMS, seed=0)))
    sched[which] = sched[which].copy()
    sched[which][1, 1] = bad_id
    with pytest.raises(ValueError, match=f"{which} holds item ids outside"):
        be.train_chunk(*sched.values(), 0)
    st = {k: v[1] for k, v in sched.items()}
    with pytest.raises(ValueError, match="holds item ids outside"):
        be.train_step(st["inputs"], np.concatenate([st["targets"], st["samples"]]), st["active"], st["reset"], 0)
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["targets", "active", "reset", "samples"])
def test_training_wrong_shapes(backend, which):
    _, _, be = small_backend(backend)
    sched = dict(zip(("inputs", "targets", "active", "reset", "samples"), make_schedule(2, 3, 4, RUN_ITEMS, seed=0)))
    sched[which] = sched[which][:1]  # T = 1 where inputs has T = 2
    with pytest.raises(ValueError, match=which):
        be.train_chunk(*sched.values(), 0)
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_bad_input(backend):
    _, _, be = small_backend(backend)
    X = np.array([1, 2, 3])
    with pytest.raises(RuntimeError, match="reset_eval"):
        be.eval_step(X, X, np.zeros(3, bool), np.ones(3, bool))
    be.reset_eval(3)
    with pytest.raises(ValueError, match="reset_eval"):  # rows != the reset_eval batch size
        be.eval_step(X[:2], X[:2], np.zeros(2, bool), np.ones(2, bool))
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["X", "targets", "candidates"])
def test_eval_ids_out_of_range(backend, which):
    _, _, be = small_backend(backend)
    be.reset_eval(3)
    args = dict(X=np.array([1, 2, 3]), targets=np.array([4, 5, 6]), candidates=np.array([0, 4, 9]))
    args[which] = args[which].copy()
    args[which][1] = RUN_ITEMS
    with pytest.raises(ValueError, match=f"{which} holds item ids outside"):
        be.eval_step(args["X"], args["targets"], np.zeros(3, bool), np.ones(3, bool), candidates=args["candidates"])
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_params_and_hidden(backend):
    cfg, params, be = small_backend(backend)
    with pytest.raises(ValueError, match="missing"):
        make_backend(backend, cfg, RUN_ITEMS, {k: v for k, v in params.items() if k != "Wy"})
    with pytest.raises(ValueError, match=r"params\['Wy'\]"):
        make_backend(backend, cfg, RUN_ITEMS, {**params, "Wy": params["Wy"][:-1]})
    with pytest.raises(ValueError, match="set_hidden"):  # one array per layer
        be.set_hidden([np.zeros((3, 5), np.float32)] * 2)
    be.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_hidden_shape(backend, request):
    _, _, be = small_backend(backend)
    with pytest.raises(ValueError, match="hidden"):
        be.set_hidden([np.zeros((3, 4), np.float32)])  # the layer has 5 units
        be.train_chunk(*make_schedule(1, 3, 4, RUN_ITEMS, seed=0), 0)
    be.close()
