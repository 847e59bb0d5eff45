"""Data parallelism on the cuda backend, in Numba's CUDA simulator (tests/conftest.py): 2 simulated ranks (their
device GradLayout buffers summed by hand, as the all-reduce sums them) equal the numpy backend's 2-rank run, one
case per input mode; and the row-loss kernel on a slice of a global batch equals the reference's. Tiny sizes and
blocks: the simulator runs every CUDA thread as a Python thread."""
from __future__ import annotations

import numpy as np
import pytest
from steps import RUN_CASES, logq_arrays, make_cfg
from tolerance import assert_within_reference_error

from gru4rec_kernels import reference as ref
from gru4rec_kernels.backends import cuda_usable
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.dataparallel import lane_slice
from gru4rec_kernels.layout import init_params

pytestmark = pytest.mark.skipif(not cuda_usable()[0], reason="no GPU and no CUDA simulator")

N_ITEMS = 19
B_GLOBAL, N_SAMPLE, N_STEPS = 4, 3, 3


def schedule(seed=4):
    """inputs, targets, active, reset [T, B_g] and samples [T, S]: lanes go inactive (rank 1 wholly at the last
    step), resets, a duplicate target, a sample equal to a target and one equal to an input."""
    rng = np.random.default_rng(seed)
    T, B, S = N_STEPS, B_GLOBAL, N_SAMPLE
    inputs = rng.integers(0, N_ITEMS, (T, B)).astype(np.int32)
    targets = rng.integers(0, N_ITEMS, (T, B)).astype(np.int32)
    active = np.ones((T, B), bool)
    active[1, 1] = False
    active[2, 2:] = False
    inputs[~active] = 0
    targets[~active] = 0
    reset = np.zeros((T, B), bool)
    reset[0] = True
    reset[1, 3] = True
    targets[:, 3] = np.where(active[:, 3], targets[:, 0], 0)
    samples = rng.integers(0, N_ITEMS, (T, S)).astype(np.int32)
    samples[:, 0] = targets[:, 0]
    samples[:, 1] = inputs[:, 1]
    return inputs, targets, active, reset, samples


def host(a) -> np.ndarray:
    """A float64 host copy of a buffer (numpy, or CuPy on a GPU)."""
    return np.array(a.get() if hasattr(a, "get") else a, np.float64)


def run_ranks(make, cfg, sched):
    """Two ranks (make() builds one) over the schedule: per step grad_step into a buffer each, their sum, then
    apply_grad_buffer on both. Returns (rank backends, losses [T, 2], rank 0's buffers [T, size] on the host)."""
    ranks = [make() for _ in range(2)]
    inputs, targets, active, reset, samples = sched
    losses, bufs = [], []
    for t in range(inputs.shape[0]):
        Y = np.concatenate([targets[t], samples[t]]).astype(np.int32)
        total = None
        for r, be in enumerate(ranks):
            rows = lane_slice(r, 2, B_GLOBAL)
            buf = be.grad_buffer()
            buf[:] = np.nan  # grad_step must write every element
            be.grad_step(inputs[t, rows], Y, active[t, rows], reset[t, rows], 10 + t, rows.start, active[t], buf)
            if r == 0:
                bufs.append(host(buf))
            total = buf.copy() if total is None else total + buf
        losses.append([be.apply_grad_buffer(total, inputs[t], Y) for be in ranks])
    return ranks, np.array(losses), np.array(bufs)


@pytest.mark.parametrize("case", ["ce-constrained-1", "top1-onehot-1-clip", "top1max-embedding-1"])
def test_two_cuda_ranks_equal_two_numpy_ranks(case):
    """One case per input mode (dropout, logQ, clipping among them): losses, every rank's buffer of rank 0 (dense,
    slot rows, its input rows, zeros in rank 1's, loss), and the parameters and Adagrad state after the steps
    are within float32 rounding of the numpy backend's float64 2-rank run; the two cuda replicas are equal."""
    from gru4rec_kernels.backends.cuda import CudaBackend

    kw = dict(RUN_CASES[case], layers=(4,))
    cfg = make_cfg(batch_size=B_GLOBAL, n_sample=N_SAMPLE, learning_rate=0.2, **kw)
    _, params = init_params(cfg, N_ITEMS, seed=5)
    lq = logq_arrays(cfg, N_ITEMS) or (None, None)
    sched = schedule()
    cuda, lc, bc = run_ranks(lambda: CudaBackend(cfg, N_ITEMS, params, *lq, graph_steps=0), cfg, sched)
    numpy = {dt: run_ranks(lambda: NumpyBackend(cfg, N_ITEMS, params, *lq, dtype=dt), cfg, sched)
             for dt in (np.float32, np.float64)}
    (n32, l32, b32), (n64, l64, b64) = numpy[np.float32], numpy[np.float64]
    np.testing.assert_array_equal(lc[:, 0], lc[:, 1])
    assert_within_reference_error("losses", lc[:, 0], l32[:, 0], l64[:, 0])
    assert_within_reference_error("rank 0 buffers", bc, b32, b64, relative_floor=True)
    lay = cuda[0].grad_layout()
    assert np.all(bc[:, lay.inp:lay.loss].reshape(N_STEPS, B_GLOBAL, -1)[:, 2:] == 0)  # rank 1's input rows
    pc, p32, p64 = cuda[0].get_params(), n32[0].get_params(), n64[0].get_params()
    oc, o32, o64 = cuda[0].get_opt_state(), n32[0].get_opt_state(), n64[0].get_opt_state()
    for k in p64:
        assert_within_reference_error(f"param {k}", pc[k], p32[k], p64[k])
        for s in ("acc", "mom"):
            assert_within_reference_error(f"{s} {k}", oc[s][k], o32[s][k], o64[s][k], relative_floor=True)
        np.testing.assert_array_equal(cuda[1].get_params()[k], pc[k], err_msg=k)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1-max", "bpr", "top1"])
def test_row_loss_of_a_slice_of_the_global_batch(loss):
    """launch_row_loss on rows row0 = 2.. of a global batch of 5 (col_active the global flags, one of them off,
    a masked accidental hit, logQ of the target and sample columns) equals reference.loss_and_grad with
    StepInputs.row0 / col_active."""
    from gru4rec_kernels.kernels import scores_loss as ksl

    rng = np.random.default_rng(7)
    Bg, B, row0, S, H, N = 5, 2, 2, 3, 4, 11
    O = Bg + S
    ce = loss == "cross-entropy"  # logQ: cross-entropy only
    cfg = make_cfg(loss, batch_size=Bg, final_act="tanh", mask_accidental_hits=True, logq=0.3 if ce else 0.0)
    h = rng.normal(0, 1, (B, H))
    Wy = rng.normal(0, 1, (N, H))
    By = rng.normal(0, 0.1, N)
    Y = rng.integers(0, N, O)
    Y[Bg] = Y[row0]  # a sample equal to row 0's target: masked for it
    col_active = np.array([1, 0, 1, 1, 1], bool)
    active = col_active[row0:row0 + B]
    lq_t, lq_s = rng.uniform(-2, 0, N), rng.uniform(-2, 0, N)
    col_logq = np.concatenate([lq_t[Y[:Bg]], lq_s[Y[Bg:]]]) if ce else np.zeros(O)

    def reference(dt):
        params = {"Wy": Wy.astype(dt), "By": By.astype(dt)}
        st = ref.StepInputs(X=np.zeros(B, np.int64), Y=Y, active=active, reset=np.zeros(B, bool),
                            col_logq=col_logq.astype(dt), row0=row0, col_active=col_active)
        Z = h.astype(dt) @ params["Wy"][Y].T + params["By"][Y] - st.col_logq
        return ref.loss_and_grad(Z, cfg, st)

    f32 = lambda a: np.ascontiguousarray(a, np.float32)
    dZ, rl = np.zeros((B, O), np.float32), np.zeros(B, np.float32)
    part = np.zeros((B, 2, ksl.N_STATS), np.float32)
    ksl.launch_row_loss(dZ, rl, part, f32(h @ Wy[Y].T), f32(By), Y.astype(np.int32), active.view(np.uint8),
                        (f32(lq_t), f32(lq_s)) if ce else None, loss=cfg.loss_code, act=cfg.final_act_code[0],
                        bpreg=cfg.bpreg, mah=True, inv_batch=1.0 / Bg, col_active=col_active.view(np.uint8), row0=row0,
                        threads=2)
    (l32, d32), (l64, d64) = reference(np.float32), reference(np.float64)
    assert_within_reference_error("loss", rl.sum(), l32, l64)
    assert_within_reference_error("dZ", dZ, d32, d64)
    assert np.all(dZ[:, 1] == 0) and dZ[0, Bg] == 0  # the inactive column; row 0's masked hit
    with pytest.raises(ValueError, match="row0"):
        ksl.launch_row_loss(dZ, rl, part, dZ, f32(By), Y.astype(np.int32), active.view(np.uint8), loss=0,
                            col_active=col_active.view(np.uint8), row0=4)
