"""The cuda backend (kernels/ + GEMMs) against the numpy backend: 20 whole training steps, evaluation steps.

Here the backend runs in Numba's CUDA simulator (tests/conftest.py); on a machine with a GPU the same tests run
on the device, plus the ``gpu`` tests (CUDA-graph replay equals eager steps).

Tolerance: the cuda backend's parameters, losses and hidden state after 20 steps are compared to a float64 run of
the numpy backend; their error must be at most MULT times the float32 numpy backend's error plus a small floor.
Every case draws the same dropout masks (the numpy backend builds them with rng.dropout_mask_np, the kernels
in place), uses the same inputs, samples, inactive rows and resets.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.layout import init_params

from steps import make_cfg

MULT = 8.0
FLOOR = 2e-7  # one step
# 20 free-running steps: Adagrad divides by sqrt(acc) with tiny accumulators early on and momentum carries any
# difference on, so rounding differences grow chaotically (measured: ~1e-7 per step, up to ~4e-5 after 20 steps
# at lr 0.1, momentum 0.9, for the float32 numpy backend and this one alike). A real bug (a wrong mask, sample,
# row or sign) moves parameters by ~lr = 1e-1.
FLOOR_RUN = 1e-4
N_ITEMS = 17


# ============================================================================================ naive reference
def naive_train(cfg, params, sched, step0, dtype, logq=None):
    """The numpy backend (the reference) over the schedule in ``dtype``: (losses, backend)."""
    be = NumpyBackend(cfg, N_ITEMS, params, *(logq or (None, None)), dtype=dtype)
    losses = be.train_chunk(*sched, step0)
    return losses, be


# ============================================================================================ helpers
def schedule(T, B, S, seed):
    """inputs, targets, active, reset [T, B], samples [T, S]: inactive rows (input 0), resets, duplicates."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, N_ITEMS, (T, B)).astype(np.int32)
    targets = rng.integers(0, N_ITEMS, (T, B)).astype(np.int32)
    active = rng.random((T, B)) < 0.85
    active[:, 0] = True
    inputs[~active] = 0
    targets[~active] = 0
    reset = rng.random((T, B)) < 0.25
    samples = rng.integers(0, N_ITEMS, (T, S)).astype(np.int32)
    samples[:, 0] = targets[:, 0]  # accidental hit
    samples[:, 1] = samples[:, 2]  # duplicate sample
    targets[:, -1] = targets[:, 0]  # duplicate target
    return inputs, targets, active, reset, samples


def assert_close(name, got, r32, r64, mult=MULT, floor=FLOOR):
    got, r32, r64 = (np.asarray(a, np.float64) for a in (got, r32, r64))
    err_k = np.abs(got - r64).max(initial=0.0)
    err_r = np.abs(r32 - r64).max(initial=0.0)
    bound = mult * err_r + floor * max(1.0, np.abs(r64).max(initial=0.0))
    assert err_k <= bound, (f"{name}: cuda error {err_k:.3g} > {mult} x numpy float32 error {err_r:.3g} + floor "
                            f"(bound {bound:.3g})")


def cuda_backend(cfg, params, logq=None, **kw):
    from gru4rec_kernels.backends.cuda import CudaBackend
    return CudaBackend(cfg, N_ITEMS, params, *(logq or (None, None)), **kw)


def logq_arrays(cfg, seed=0):
    if cfg.logq <= 0:
        return None
    rng = np.random.default_rng(seed)
    supp = rng.integers(1, 50, N_ITEMS).astype(np.float64)
    p0 = supp / supp.sum()
    ps = supp ** 0.5 / (supp ** 0.5).sum()
    return cfg.logq * np.log(p0), cfg.logq * np.log(ps)


# Each loss, each input mode and both depths; dropout, momentum, logq, accidental-hit masking, gradient clipping,
# every final activation and both score versions appear somewhere.
CASES = {
    "ce-constrained-1": dict(loss="cross-entropy", mode="constrained", layers=(5,), final_act="linear",
                             dropout_p_embed=0.2, dropout_p_hidden=0.3, momentum=0.5, logq=0.5),
    "bprmax-onehot-2": dict(loss="bpr-max", mode="onehot", layers=(4, 5), final_act="tanh", dropout_p_hidden=0.2),
    "top1max-embedding-1-fused": dict(loss="top1-max", mode="embedding", layers=(5,), final_act="elu-0.5",
                                      dropout_p_embed=0.25, momentum=0.3, scores="fused"),
    "bpr-constrained-2": dict(loss="bpr", mode="constrained", layers=(4, 5), final_act="relu",
                              mask_accidental_hits=True, momentum=0.9),
    "top1-onehot-1-clip": dict(loss="top1", mode="onehot", layers=(5,), final_act="leaky-0.1", grad_cap=0.05),
    "ce-embedding-2-fused": dict(loss="cross-entropy", mode="embedding", layers=(4, 5), final_act="linear",
                                 dropout_p_hidden=0.1, mask_accidental_hits=True, scores="fused"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_twenty_training_steps_match_numpy(case):
    """20 steps free-running (chunks of 12 and 7 steps, then one train_step): losses, parameters, optimizer state
    and hidden state within float32 drift of the float64 numpy backend; then the last step once more from the
    float64 run's state (rounded to float32) in fresh backends: strictly within MULT x the float32 numpy
    backend's error of that one step."""
    kw = dict(CASES[case])
    scores = kw.pop("scores", None)
    B, S, T = 3, 5, 20
    cfg = make_cfg(batch_size=B, learning_rate=0.1, **kw)
    _, params = init_params(cfg, N_ITEMS, seed=1)
    lq = logq_arrays(cfg)
    sched = schedule(T, B, S, seed=len(case))
    inputs, targets, active, reset, samples = sched
    step0 = 1000
    # ---- free-running: 20 steps
    l64, b64 = naive_train(cfg, params, sched, step0, np.float64, lq)
    l32, b32 = naive_train(cfg, params, sched, step0, np.float32, lq)
    be = cuda_backend(cfg, params, lq, scores=scores)
    lc = list(be.train_chunk(inputs[:12], targets[:12], active[:12], reset[:12], samples[:12], step0))
    lc += list(be.train_chunk(inputs[12:19], targets[12:19], active[12:19], reset[12:19], samples[12:19],
                              step0 + 12))
    Y = np.concatenate([targets[19], samples[19]])
    lc.append(be.train_step(inputs[19], Y, active[19], reset[19], step0 + 19))
    compare_backends(cfg, be, b32, b64, lc, l32, l64, mult=MULT, floor=FLOOR_RUN)
    be.close()
    # ---- the last step again from one state, strictly
    _, r64 = naive_train(cfg, params, [a[:19] for a in sched], step0, np.float64, lq)
    state = ({k: v.astype(np.float32) for k, v in r64.get_params().items()}, r64.get_opt_state(), r64.get_hidden())
    fresh = [NumpyBackend(cfg, N_ITEMS, state[0], *(lq or (None, None)), dtype=np.float64),
             NumpyBackend(cfg, N_ITEMS, state[0], *(lq or (None, None)), dtype=np.float32),
             cuda_backend(cfg, state[0], lq, scores=scores)]
    last = [a[19:] for a in sched]
    losses = []
    for b in fresh:
        b.set_opt_state(state[1])
        b.set_hidden(state[2])
        losses.append(b.train_chunk(*last, step0 + 19))
    compare_backends(cfg, fresh[2], fresh[1], fresh[0], losses[2], losses[1], losses[0], mult=4.0, floor=FLOOR)


def compare_backends(cfg, be, b32, b64, lc, l32, l64, mult, floor):
    assert_close("losses", lc, l32, l64, mult, floor)
    p64, p32, pc = b64.get_params(), b32.get_params(), be.get_params()
    assert set(pc) == set(p64)
    for k in p64:
        assert pc[k].dtype == np.float32 and pc[k].shape == p64[k].shape
        assert_close(f"param {k}", pc[k], p32[k], p64[k], mult, floor)
    o64, o32, oc = b64.get_opt_state(), b32.get_opt_state(), be.get_opt_state()
    for s in ("acc", "mom"):
        for k in o64[s]:
            assert_close(f"{s} {k}", oc[s][k], o32[s][k], o64[s][k], mult, floor)
    for l, (h64, h32, hc) in enumerate(zip(b64.get_hidden(), b32.get_hidden(), be.get_hidden())):
        assert_close(f"hidden {l}", hc, h32, h64, mult, floor)


@pytest.mark.parametrize("mode,layers,act", [("constrained", (5,), "linear"), ("onehot", (4, 5), "tanh"),
                                             ("embedding", (5,), "relu")])
def test_eval_step_matches_numpy(mode, layers, act):
    cfg = make_cfg("cross-entropy", mode, layers, act)
    _, params = init_params(cfg, N_ITEMS, seed=2)
    params["Wy"][7] = params["Wy"][3]  # exact ties in the scores
    params["By"][7] = params["By"][3]
    nb = NumpyBackend(cfg, N_ITEMS, params)
    be = cuda_backend(cfg, params)
    rng = np.random.default_rng(3)
    Be = 3
    for b in (nb, be):
        b.reset_eval(Be)
    cands = np.array([3, 7, 0, 16, 5], np.int64)
    for t in range(4):
        X = rng.integers(0, N_ITEMS, Be)
        tg = rng.integers(0, N_ITEMS, Be)
        tg[0] = 3
        reset = rng.random(Be) < 0.3
        act_ = np.ones(Be, bool)
        c = cands if t % 2 else None
        want = nb.eval_step(X, tg, reset, act_, candidates=c)
        got = be.eval_step(X, tg, reset, act_, candidates=c)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    be.close()


def test_state_exchange_and_bad_input():
    cfg = make_cfg("top1-max", "constrained", (5,), momentum=0.2)
    _, params = init_params(cfg, N_ITEMS, seed=4)
    be = cuda_backend(cfg, params)
    for k, v in be.get_params().items():
        np.testing.assert_array_equal(v, params[k])
    opt = be.get_opt_state()
    opt["acc"]["Wy"][...] = 0.5
    opt["mom"]["Wh0"][...] = -0.25
    be.set_opt_state(opt)
    got = be.get_opt_state()
    assert np.all(got["acc"]["Wy"] == 0.5) and np.all(got["mom"]["Wh0"] == -0.25)
    H = [np.full((3, 5), 0.125, np.float32)]
    be.set_hidden(H)
    np.testing.assert_array_equal(be.get_hidden()[0], H[0])
    inputs, targets, active, reset, samples = schedule(2, 3, 4, seed=0)
    with pytest.raises(ValueError, match="targets"):
        be.train_chunk(inputs, targets[:1], active, reset, samples, 0)
    with pytest.raises(ValueError, match="samples"):
        be.train_chunk(inputs, targets, active, reset, samples[:1], 0)
    bad = inputs.copy()
    bad[0, 0] = N_ITEMS
    with pytest.raises(ValueError, match="inputs"):
        be.train_chunk(bad, targets, active, reset, samples, 0)
    be.train_chunk(inputs, targets, active, reset, samples, 0)  # the pending hidden state is used
    be.reset_hidden()
    assert np.all(be.get_hidden()[0] == 0)
    be.close()


def test_cuda_backend_without_gpu_or_simulator_raises():
    """Outside the simulator, on a machine without a usable GPU, backend='cuda' raises at once, actionably."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("a real GPU is usable here")
    code = textwrap.dedent("""
        import numpy as np
        from gru4rec_kernels.backends import resolve
        from gru4rec_kernels.config import TrainConfig
        from gru4rec_kernels.layout import init_params
        try:
            resolve("cuda")
        except RuntimeError as e:
            print("RESOLVE:", e)
        from gru4rec_kernels.backends.cuda import CudaBackend
        cfg = TrainConfig(layers=[4])
        _, params = init_params(cfg, 5)
        try:
            CudaBackend(cfg, 5, params)
        except RuntimeError as e:
            print("CONSTRUCT:", e)
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "RESOLVE:" in out and "CONSTRUCT:" in out, out
    assert "backend='cpu'" in out and "NUMBA_ENABLE_CUDASIM" in out, out


# ============================================================================================ GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("case", ["ce-constrained-1", "bprmax-onehot-2", "top1-onehot-1-clip"])
def test_graph_replay_equals_eager_steps(case):
    kw = dict(CASES[case])
    scores = kw.pop("scores", None)
    cfg = make_cfg(batch_size=3, learning_rate=0.1, **kw)
    _, params = init_params(cfg, N_ITEMS, seed=5)
    lq = logq_arrays(cfg)
    sched = schedule(29, 3, 5, seed=6)
    eager = cuda_backend(cfg, params, lq, scores=scores, graph_steps=0)
    graph = cuda_backend(cfg, params, lq, scores=scores, graph_steps=8)
    le = np.concatenate([eager.train_chunk(*[a[:13] for a in sched], 7), eager.train_chunk(*[a[13:] for a in sched],
                                                                                            20)])
    lg = np.concatenate([graph.train_chunk(*[a[:13] for a in sched], 7), graph.train_chunk(*[a[13:] for a in sched],
                                                                                            20)])
    assert graph._graphs, "no CUDA graph was captured"
    np.testing.assert_allclose(lg, le, rtol=1e-6, atol=1e-7)
    pe, pg = eager.get_params(), graph.get_params()
    for k in pe:
        np.testing.assert_allclose(pg[k], pe[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_caller_params_are_not_aliased():
    """The backend copies the parameters on the way in: training never writes into the caller's arrays (under
    the simulator xp is numpy, where ``xp.asarray`` of a float32 array would be the caller's array itself)."""
    cfg = make_cfg("cross-entropy", "onehot", (5,), learning_rate=0.1, batch_size=3)
    _, params = init_params(cfg, N_ITEMS, seed=9)
    before = {k: v.copy() for k, v in params.items()}
    be = cuda_backend(cfg, params)
    be.train_chunk(*schedule(3, 3, 4, seed=1), 0)
    for k, v in params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"the caller's {k} was written by training")
    assert any(not np.array_equal(be.get_params()[k], before[k]) for k in ("Wy", "By", "Wx0"))
    be.close()
