"""Data parallelism's math in one process: P simulated ranks (dataparallel.GradLayout buffers summed by hand, as
the all-reduce sums them) equal one process at the global batch. The MPI runs are tests/test_distributed.py."""
from __future__ import annotations

import numpy as np
import pytest
from steps import RUN_CASES, make_cfg

from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.batching import EpochSchedule
from gru4rec_kernels.dataparallel import GradLayout, lane_slice
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


def run_both(cfg, n_ranks, n_steps, dtype=np.float64):
    """(one-process backend, [rank backends], one-process losses, data-parallel losses) after n_steps."""
    offsets, items = uneven_sessions()
    _, params = init_params(cfg, N_ITEMS, dtype=dtype, seed=3)
    support = np.bincount(items, minlength=N_ITEMS).astype(np.float64) + 1
    one = NumpyBackend(cfg, N_ITEMS, params, dtype=dtype)
    ranks = [NumpyBackend(cfg, N_ITEMS, params, dtype=dtype) for _ in range(n_ranks)]
    layout = GradLayout.build(cfg, N_ITEMS)
    store = SampleStore(support, cfg.sample_alpha, 64, cfg.n_sample, cfg.seed) if cfg.n_sample else None
    sched = EpochSchedule(offsets, items, cfg.batch_size)
    losses_one, losses_dp = [], []
    step = 0
    while step < n_steps:
        chunk = sched.next_chunk(n_steps - step)
        if chunk is None:
            sched = EpochSchedule(offsets, items, cfg.batch_size)
            for be in (one, *ranks):
                be.reset_hidden()
            continue
        T = chunk.inputs.shape[0]
        samples = store.next_many(T) if store else np.zeros((T, 0), np.int32)
        losses_one.extend(one.train_chunk(chunk.inputs, chunk.targets, chunk.active, chunk.reset, samples, step))
        for t in range(T):
            Y = np.concatenate([chunk.targets[t], samples[t]]).astype(np.int32)
            total = layout.zeros(dtype)
            for r, be in enumerate(ranks):
                rows = lane_slice(r, n_ranks, cfg.batch_size)
                buf = layout.zeros(dtype)
                be.grad_step(chunk.inputs[t, rows], Y, chunk.active[t, rows], chunk.reset[t, rows], step + t,
                             rows.start, chunk.active[t], buf)
                total += buf  # what the sum all-reduce does
            losses_dp.append([be.apply_grad_buffer(total.copy(), chunk.inputs[t], Y) for be in ranks])
        step += T
    if store:
        store.close()
    return one, ranks, np.array(losses_one), np.array(losses_dp)


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_two_ranks_equal_one_process_float64(case):
    """50 steps, uneven sessions, dropout where the case has it, every loss and input mode: parameters, Adagrad
    state and per-step losses of 2 ranks at B_l = 4 equal one process at B = 8 to 1e-10 relative."""
    kw = dict(RUN_CASES[case])
    cfg = make_cfg(batch_size=8, n_sample=5, sample_store_size=64, **kw)
    one, ranks, l1, ldp = run_both(cfg, 2, 50)
    assert ldp.shape == (50, 2)
    np.testing.assert_array_equal(ldp[:, 0], ldp[:, 1])  # every rank reads the same all-reduced loss
    np.testing.assert_allclose(ldp[:, 0], l1, rtol=1e-10, atol=1e-14)
    p1, o1 = one.get_params(), one.get_opt_state()
    for be in ranks:
        for k, v in be.get_params().items():
            np.testing.assert_allclose(v, p1[k], rtol=1e-10, atol=1e-13, err_msg=k)
        o = be.get_opt_state()
        for s in ("acc", "mom"):
            for k, v in o[s].items():
                np.testing.assert_allclose(v, o1[s][k], rtol=1e-10, atol=1e-13, err_msg=f"{s} {k}")
    # the replicas are bitwise equal: they applied the identical buffer
    for k, v in ranks[0].get_params().items():
        np.testing.assert_array_equal(v, ranks[1].get_params()[k])


def test_four_ranks_and_a_rank_without_active_lanes():
    """P = 4 at B_l = 1 over 3 sessions: in the epoch's tail some ranks have no active lane and still join."""
    cfg = make_cfg(batch_size=4, n_sample=3, sample_store_size=64, dropout_p_hidden=0.3)
    one, ranks, l1, ldp = run_both(cfg, 4, 30)
    np.testing.assert_allclose(ldp[:, 0], l1, rtol=1e-10, atol=1e-14)
    for k, v in one.get_params().items():
        np.testing.assert_allclose(ranks[3].get_params()[k], v, rtol=1e-10, atol=1e-13)


def test_lane_slices_cover_the_batch_and_refuse_uneven_splits():
    for P, Bg in ((1, 8), (2, 8), (4, 8), (8, 8), (3, 12)):
        rows = np.concatenate([np.arange(Bg)[lane_slice(r, P, Bg)] for r in range(P)])
        np.testing.assert_array_equal(rows, np.arange(Bg))
    with pytest.raises(ValueError, match="not divisible by the 3 ranks"):
        lane_slice(0, 3, 8)
    with pytest.raises(ValueError, match="outside"):
        lane_slice(2, 2, 8)


def test_layout_pack_unpack_places_each_rank_rows():
    """A rank's input rows land at its global rows, the others stay zero: summing two packed buffers gives every
    input row exactly once, and the loss adds."""
    cfg = make_cfg(mode="onehot", batch_size=4, n_sample=2)
    layout = GradLayout.build(cfg, N_ITEMS)
    from gru4rec_kernels.reference import Grads
    bufs = []
    for r in range(2):
        g = Grads()
        for name, shape in layout.dense:
            g.dense[name] = np.full(shape, r + 1.0)
        O = layout.n_out
        g.sparse["Wy"] = (np.zeros(O), np.full((O, layout.top_width), 10.0 * (r + 1)))
        g.sparse["By"] = (np.zeros(O), np.full(O, 1.0))
        g.sparse["Wx0"] = (np.zeros(2), np.full((2, layout.in_width), 100.0 * (r + 1)))
        b = layout.zeros(np.float64)
        layout.pack(b, 0.25 * (r + 1), g, 2 * r)
        bufs.append(b)
    loss, g = layout.unpack(bufs[0] + bufs[1], np.arange(4), np.arange(layout.n_out))
    assert loss == 0.75
    np.testing.assert_array_equal(g.sparse["Wx0"][1][:, 0], [100, 100, 200, 200])
    assert np.all(g.sparse["Wy"][1] == 30) and np.all(g.sparse["By"][1] == 2)
    assert all(np.all(v == 3) for v in g.dense.values())
