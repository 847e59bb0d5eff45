"""Data parallelism on the cpu backend: P simulated ranks in one process (dataparallel.GradLayout buffers summed
by hand, as the all-reduce sums them) equal the one-process cpu backend at the global batch, and a rank's buffer
equals the numpy backend's (tests/test_dataparallel.py is the numpy oracle's own check)."""
from __future__ import annotations

import numpy as np
import pytest
from steps import RUN_CASES, logq_arrays, make_cfg

from gru4rec_kernels.backends.cpu import CpuBackend
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.batching import EpochSchedule
from gru4rec_kernels.dataparallel import lane_slice
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.sampling import SampleStore

N_ITEMS = 17


def uneven_sessions(seed=0, n_sessions=23):
    """offsets and items of sessions of 2..9 events (uneven, so lanes finish at different steps)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 10, n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, N_ITEMS, offsets[-1]).astype(np.int32)
    return offsets, items


def schedule_steps(cfg, n_steps, sessions):
    """(inputs, targets, active, reset, samples) of every step, [T, B] / [T, S], epochs restarted as needed."""
    offsets, items = sessions
    support = np.bincount(items, minlength=N_ITEMS).astype(np.float64) + 1
    store = SampleStore(support, cfg.sample_alpha, 64, cfg.n_sample, cfg.seed)
    parts, T = [], 0
    sched = EpochSchedule(offsets, items, cfg.batch_size)
    while T < n_steps:
        chunk = sched.next_chunk(n_steps - T)
        if chunk is None:
            sched = EpochSchedule(offsets, items, cfg.batch_size)
            continue
        n = chunk.inputs.shape[0]
        parts.append((chunk.inputs, chunk.targets, chunk.active, chunk.reset, store.next_many(n)))
        T += n
    store.close()
    return [np.concatenate(a) for a in zip(*parts)]


def dp_step(ranks, layout, cfg, sched, t, bufs=None):
    """One data-parallel step of every rank: grad_step into a buffer each, the sum (the all-reduce), then
    apply_grad_buffer on every rank. Returns the ranks' losses; ``bufs`` collects the rank buffers."""
    inputs, targets, active, reset, samples = (a[t] for a in sched)
    Y = np.concatenate([targets, samples]).astype(np.int32)
    total = layout.zeros(np.float32)
    for r, be in enumerate(ranks):
        rows = lane_slice(r, len(ranks), cfg.batch_size)
        buf = np.full(layout.size, np.nan, np.float32)  # grad_step must write every element
        be.grad_step(inputs[rows], Y, active[rows], reset[rows], t, rows.start, active, buf)
        if bufs is not None:
            bufs.append(buf.copy())
        total += buf
    return [be.apply_grad_buffer(total, inputs, Y) for be in ranks]


def run_cpu(cfg, n_ranks, n_steps, sessions):
    """(one-process cpu backend, cpu rank backends, one-process losses [T], rank losses [T, P], the schedule):
    the one process runs the whole schedule as one chunk (an epoch's first step resets every lane)."""
    _, params = init_params(cfg, N_ITEMS, seed=3)
    lq = logq_arrays(cfg, N_ITEMS) or (None, None)
    one = CpuBackend(cfg, N_ITEMS, params, *lq)
    ranks = [CpuBackend(cfg, N_ITEMS, params, *lq) for _ in range(n_ranks)]
    sched = schedule_steps(cfg, n_steps, sessions)
    layout = ranks[0].grad_layout()
    losses_one = one.train_chunk(*sched, 0)
    losses_dp = [dp_step(ranks, layout, cfg, sched, t) for t in range(n_steps)]
    return one, ranks, losses_one, np.array(losses_dp), sched


def dropout_case(case):
    """The run case with dropout on (the rank's masks are its rows of the global masks) and logQ arrays."""
    kw = dict(RUN_CASES[case])
    kw.setdefault("dropout_p_hidden", 0.2)
    if kw["mode"] != "onehot":
        kw.setdefault("dropout_p_embed", 0.15)
    return kw


def assert_states_close(be, ref, rtol, atol, tag):
    p, pr = be.get_params(), ref.get_params()
    for k in pr:
        np.testing.assert_allclose(p[k], pr[k], rtol=rtol, atol=atol, err_msg=f"{tag} param {k}")
    o, orf = be.get_opt_state(), ref.get_opt_state()
    for s in ("acc", "mom"):
        for k in orf[s]:
            np.testing.assert_allclose(o[s][k], orf[s][k], rtol=rtol, atol=atol, err_msg=f"{tag} {s} {k}")


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_two_cpu_ranks_equal_one_cpu_process(case):
    """50 steps, uneven sessions, dropout on, every loss and input mode: 2 ranks at B_l = 4 equal one process at
    B = 8 in float32 (rtol 1e-5 on parameters, Adagrad state and losses; the ranks sum their partial gradients
    in another order than the one-process GEMMs), and the replicas are bitwise equal."""
    cfg = make_cfg(batch_size=8, n_sample=5, sample_store_size=64, **dropout_case(case))
    one, ranks, l1, ldp = run_cpu(cfg, 2, 50, uneven_sessions())[:4]
    assert ldp.shape == (50, 2) and np.all(np.isfinite(ldp))
    np.testing.assert_array_equal(ldp[:, 0], ldp[:, 1])  # every rank reads the same all-reduced loss
    np.testing.assert_allclose(ldp[:, 0], l1, rtol=1e-5, atol=1e-7)
    assert_states_close(ranks[0], one, 1e-5, 1e-6, case)
    p0, p1 = ranks[0].get_params(), ranks[1].get_params()
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    for r, be in enumerate(ranks):  # each rank's hidden state is its lanes of the one process's
        for h, h1 in zip(be.get_hidden(), one.get_hidden()):
            np.testing.assert_allclose(h, h1[4 * r:4 * r + 4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["ce-constrained-1", "bprmax-onehot-2", "top1max-embedding-1"])
def test_cpu_rank_buffers_equal_numpy_rank_buffers(case):
    """Step by step, every cpu rank's GradLayout buffer (dense, Wy / By slot rows, its input rows and zeros in
    the other ranks', loss) equals the numpy backend's rank buffer in float32 tolerance, and the all-reduced
    step keeps both in agreement."""
    cfg = make_cfg(batch_size=8, n_sample=5, sample_store_size=64, **dropout_case(case))
    _, params = init_params(cfg, N_ITEMS, seed=3)
    lq = logq_arrays(cfg, N_ITEMS) or (None, None)
    cpu = [CpuBackend(cfg, N_ITEMS, params, *lq) for _ in range(2)]
    ref = [NumpyBackend(cfg, N_ITEMS, params, *lq) for _ in range(2)]
    layout = cpu[0].grad_layout()
    sched = schedule_steps(cfg, 6, uneven_sessions())
    for t in range(6):
        bc, br = [], []
        lc = dp_step(cpu, layout, cfg, sched, t, bc)
        lr = dp_step(ref, layout, cfg, sched, t, br)
        np.testing.assert_allclose(lc, lr, rtol=1e-5)
        for r in range(2):
            scale = np.abs(br[r]).max()
            np.testing.assert_allclose(bc[r], br[r], rtol=1e-4, atol=1e-5 * scale, err_msg=f"step {t} rank {r}")
            inp = bc[r][layout.inp:layout.loss].reshape(layout.global_batch, layout.in_width)
            other = np.ones(layout.global_batch, bool)
            other[lane_slice(r, 2, 8)] = False
            assert np.all(inp[other] == 0), "another rank's input rows must be zero"


def test_four_ranks_with_a_rank_without_active_lanes():
    """P = 4 at B_l = 1: in the epoch's tail whole ranks have no active lane and still join every step."""
    cfg = make_cfg(batch_size=4, n_sample=3, sample_store_size=64, dropout_p_hidden=0.3, dropout_p_embed=0.2)
    sessions = uneven_sessions(seed=1, n_sessions=9)
    one, ranks, l1, ldp, sched = run_cpu(cfg, 4, 30, sessions)
    idle = ~sched[2]  # [T, 4]: lane b (= rank b) inactive
    assert idle.any() and not idle.all(axis=1).any(), "the schedule must idle some ranks while others train"
    np.testing.assert_allclose(ldp[:, 3], l1, rtol=1e-5, atol=1e-7)
    for be in ranks:
        assert_states_close(be, one, 1e-5, 1e-6, "4 ranks")


def test_bad_data_parallel_arguments():
    cfg = make_cfg(batch_size=4, n_sample=2)
    _, params = init_params(cfg, N_ITEMS, seed=3)
    be = CpuBackend(cfg, N_ITEMS, params)
    lay = be.grad_layout()
    X, Y, on = np.zeros(2, np.int32), np.zeros(6, np.int32), np.ones(2, bool)
    with pytest.raises(ValueError, match="buf must be a contiguous float32"):
        be.grad_step(X, Y, on, on, 0, 0, np.ones(4, bool), np.zeros(lay.size, np.float64))
    with pytest.raises(ValueError, match="buf must be a contiguous float32"):
        be.grad_step(X, Y, on, on, 0, 0, np.ones(4, bool), np.zeros(lay.size + 1, np.float32))
    with pytest.raises(ValueError, match="row0"):
        be.grad_step(X, Y, on, on, 0, 3, np.ones(4, bool), be.grad_buffer())
    with pytest.raises(ValueError, match="col_active"):
        be.grad_step(X, Y, on, on, 0, 0, np.ones(2, bool), be.grad_buffer())
    with pytest.raises(ValueError, match="Y must be"):
        be.grad_step(X, Y[:5], on, on, 0, 0, np.ones(4, bool), be.grad_buffer())
    with pytest.raises(ValueError, match="item ids outside"):
        be.grad_step(X + N_ITEMS, Y, on, on, 0, 0, np.ones(4, bool), be.grad_buffer())
    with pytest.raises(ValueError, match="X_global"):
        be.apply_grad_buffer(be.grad_buffer(), X, Y)
