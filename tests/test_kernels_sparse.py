"""The sparse update of the cuda backend: the host grouping of duplicate ids (backends/segments.py) and the
``sparse_adagrad`` kernel over its segments (kernels/adagrad.py), against numpy oracles and the reference.

* ``segment_step`` / ``segment_chunk`` against ``np.argsort(kind="stable")`` + ``np.unique`` on random Zipf ids
  and on the hand-made cases below, for any number of parallel parts, with the scratch restored.
* ``sparse_adagrad`` against ``reference.sparse_adagrad`` (``coalesce``: duplicates summed in slot order) for
  the rows, and for the bias on the bias slots only, bitwise in the simulator, on ids with adjacent duplicates,
  a duplicate in the first / last slot, a long run (one id in a third of the slots), one id everywhere, all
  distinct, a target equal to a sample, and an id only in the constrained mode's input slots (its bias is not
  touched). Each case is row 1 of a 3-step chunk, so the kernel must find its row through the step counter.
* The whole step: a constrained-mode cuda step leaves the bias of an input-only id exactly as it was.
"""
from __future__ import annotations

import numpy as np
import pytest
from steps import make_cfg, make_schedule
from tolerance import assert_within_reference_error

from gru4rec_kernels import reference as ref
from gru4rec_kernels.backends.segments import segment_chunk, segment_step
from gru4rec_kernels.kernels import adagrad as kad
from gru4rec_kernels.kernels.common import SIM
from gru4rec_kernels.layout import init_params

N = 41  # items
D = 5  # row width


# ============================================================================================ naive references
def naive_segments(ids):
    """The oracle grouping of one step's ids [K]: (slots of each distinct id in increasing id order, each in
    increasing slot order, concatenated; the distinct ids; their counts)."""
    uniq, counts = np.unique(ids, return_counts=True)
    return np.argsort(ids, kind="stable"), uniq, counts


def naive_sparse_adagrad(p, acc, mom, rows, ids, pb, accb, momb, brows, n_bslots, gscale, lr, mu, dtype):
    """reference.sparse_adagrad on the rows at all slots and on the bias at the slots k < n_bslots, with the
    gradients scaled by gscale first (reference.clip_grads), in ``dtype``."""
    c = lambda a: np.array(a, dtype)  # noqa: E731
    p, acc, mom, pb, accb, momb = map(c, (p, acc, mom, pb, accb, momb))
    s = np.asarray(np.float32(gscale), dtype)  # the kernel gets gscale as float32
    ids = np.asarray(ids, np.int64)
    ref.sparse_adagrad(p, ids, c(rows) * s, acc, mom, lr, mu)
    if n_bslots:
        ref.sparse_adagrad(pb, ids[:n_bslots], c(brows)[:n_bslots] * s, accb, momb, lr, mu)
    return p, acc, mom, pb, accb, momb


# ============================================================================================ helpers
def zipf_ids(rng, T, K, n=N, a=1.0):
    """[T, K] int32 ids with p(rank r) ~ r^-a over n items (ids shuffled): many duplicates, long runs."""
    p = 1.0 / np.arange(1, n + 1) ** a
    return rng.choice(rng.permutation(n), size=(T, K), p=p / p.sum()).astype(np.int32)


def segments_of(ids, parts=1):
    """segment_chunk over ids [T, K] with ``parts`` parallel parts: perm, seg_start, seg_id."""
    T, K = ids.shape
    head = np.full((parts, N), -1, np.int32)
    perm, seg_start, seg_id = (np.full((T, w), -7, np.int32) for w in (K, K + 1, K))
    segment_chunk(perm, seg_start, seg_id, ids, head)
    assert np.all(head == -1), "the scratch must be restored"
    return perm, seg_start, seg_id


def assert_segments(ids, perm, seg_start, seg_id):
    """One step's segments against the oracle, and the layout the kernel relies on."""
    K = ids.shape[0]
    oracle_perm, uniq, counts = naive_segments(ids)
    n_seg = int(np.argmax(seg_start == K)) if K else 0
    assert n_seg == len(uniq), f"{n_seg} segments for {len(uniq)} distinct ids"
    assert np.all(seg_start[n_seg:] == K), "seg_start must be K from n_seg on"
    bounds = seg_start[:n_seg + 1]
    assert bounds[0] == 0 and np.all(np.diff(bounds) >= 1), f"segments must be non-empty and ordered: {bounds}"
    segs = [perm[bounds[q]:bounds[q + 1]] for q in range(n_seg)]
    for q, sl in enumerate(segs):
        assert np.all(ids[sl] == seg_id[q]), f"segment {q} holds ids {ids[sl]}, not seg_id {seg_id[q]}"
        assert np.all(np.diff(sl) > 0), f"segment {q} not in slot order: {sl}"
    firsts = [sl[0] for sl in segs]
    assert firsts == sorted(firsts), "segments come in the order of their ids' first slots"
    by_id = np.argsort(seg_id[:n_seg], kind="stable")
    np.testing.assert_array_equal(np.sort(seg_id[:n_seg]), uniq)
    np.testing.assert_array_equal([len(segs[q]) for q in by_id], counts)
    np.testing.assert_array_equal(np.concatenate([segs[q] for q in by_id]), oracle_perm)


# The cases of one step, K = 12 slots: the first O = 9 are output (bias) slots, the last 3 the inputs of the
# constrained mode. Ids in [0, N).
K_CASE, O_CASE = 12, 9
CASES = {
    "adjacent duplicates": [5, 5, 7, 7, 7, 2, 11, 12, 13, 5, 20, 7],
    "duplicate in the last slot": [3, 8, 1, 9, 10, 14, 15, 16, 17, 18, 19, 8],
    "first slot repeated later": [4, 1, 2, 6, 4, 21, 22, 23, 4, 24, 25, 26],
    "long run (a third of the slots)": [30, 1, 30, 2, 30, 3, 30, 4, 5, 6, 7, 8],
    "long contiguous run": [9, 33, 33, 33, 33, 10, 11, 12, 13, 14, 15, 16],
    "one id everywhere": [17] * 12,
    "all distinct": [40, 0, 39, 1, 38, 2, 37, 3, 36, 4, 35, 34],
    "a target equal to a sample": [6, 7, 8, 6, 19, 20, 21, 22, 8, 23, 24, 25],
    "input-only ids (no bias change)": [1, 2, 3, 4, 5, 6, 7, 8, 9, 29, 31, 29],
}


# ============================================================================================ host grouping
@pytest.mark.parametrize("case", list(CASES))
def test_segment_step_on_the_cases(case):
    ids = np.array(CASES[case], np.int32)
    K = ids.shape[0]
    perm, seg_start, seg_id = np.empty(K, np.int32), np.empty(K + 1, np.int32), np.empty(K, np.int32)
    head = np.full(N, -1, np.int32)
    n_seg = segment_step(perm, seg_start, seg_id, ids, head, np.empty(K, np.int32), np.empty(K, np.int32))
    assert n_seg == len(np.unique(ids)) and np.all(head == -1)
    assert_segments(ids, perm, seg_start, seg_id)


@pytest.mark.parametrize("K", [1, 2, 7, 300])
@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_segment_chunk_matches_stable_argsort_on_zipf_ids(K, a):
    rng = np.random.default_rng(K + int(10 * a))
    ids = zipf_ids(rng, 9, K, a=a)
    got = segments_of(ids)
    for t in range(ids.shape[0]):
        assert_segments(ids[t], *(g[t] for g in got))
    for parts in (2, 3, 16):  # any split of the steps over parallel parts gives the same arrays
        for a_, b_ in zip(got, segments_of(ids, parts)):
            np.testing.assert_array_equal(a_, b_)


def test_segment_chunk_writes_only_its_rows():
    ids = zipf_ids(np.random.default_rng(3), 2, 6)
    perm, seg_start, seg_id = (np.full((4, w), -7, np.int32) for w in (6, 7, 6))
    segment_chunk(perm, seg_start, seg_id, ids, np.full((2, N), -1, np.int32))
    assert np.all(perm[2:] == -7) and np.all(seg_start[2:] == -7) and np.all(seg_id[2:] == -7)
    for t in range(2):
        assert_segments(ids[t], perm[t], seg_start[t], seg_id[t])


def test_segment_chunk_rejects_bad_input():
    ids = np.zeros((2, 4), np.int32)
    out = lambda: tuple(np.empty((2, w), np.int32) for w in (4, 5, 4))  # noqa: E731
    head = np.full((1, N), -1, np.int32)
    with pytest.raises(ValueError, match=r"ids must be item ids in \[0, 41\)"):
        segment_chunk(*out(), np.full((2, 4), N, np.int32), head)
    with pytest.raises(ValueError, match=r"ids must be item ids"):
        segment_chunk(*out(), np.full((2, 4), -1, np.int32), head)
    with pytest.raises(ValueError, match="ids must be a"):
        segment_chunk(*out(), ids.astype(np.int64), head)
    with pytest.raises(ValueError, match="seg_start"):
        segment_chunk(out()[0], np.empty((2, 4), np.int32), out()[2], ids, head)
    with pytest.raises(ValueError, match="perm"):
        segment_chunk(np.empty((1, 4), np.int32), *out()[1:], ids, head)
    with pytest.raises(ValueError, match="head"):
        segment_chunk(*out(), ids, np.full((0, N), -1, np.int32))
    assert np.all(head == -1)


# ============================================================================================ the kernel
def kernel_problem(ids_t, seed):
    """A 3-step chunk whose row 1 is ``ids_t`` (rows 0 and 2 other ids), the segments, and random state."""
    rng = np.random.default_rng(seed)
    K = len(ids_t)
    ids = zipf_ids(rng, 3, K)
    ids[1] = ids_t
    perm, seg_start, seg_id = segments_of(ids)
    p = rng.normal(size=(N, D)).astype(np.float32)
    acc = rng.uniform(0, 1, (N, D)).astype(np.float32)
    mom = rng.normal(0, 0.1, (N, D)).astype(np.float32)
    pb = rng.normal(size=N).astype(np.float32)
    accb = rng.uniform(0, 1, N).astype(np.float32)
    momb = rng.normal(0, 0.1, N).astype(np.float32)  # non-zero: a wrong zero-gradient bias touch would show
    rows = rng.normal(size=(K, D)).astype(np.float32)
    rows[K // 2] = 0  # a touched row with a zero gradient still moves with momentum
    brows = rng.normal(size=K).astype(np.float32)
    return ids, (perm, seg_start, seg_id), (p, acc, mom, pb, accb, momb), rows, brows


def run_kernel(segs, state, rows, brows, n_bslots, gscale, mu, threads, t=1):
    dev = [np.array(a, copy=True) for a in state]
    p, acc, mom, pb, accb, momb = dev
    kad.launch_sparse_adagrad(p, acc, mom, rows, *segs, np.array([t, 77], np.int64),
                              np.array([gscale], np.float32), 0.1, mu, pb, accb, momb, brows, n_bslots,
                              threads=threads)
    return dev


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mu,gscale,threads", [(0.0, 1.0, 4), (0.9, 0.37, 2), (0.5, 1.0, 8)])
def test_sparse_adagrad_matches_reference(case, mu, gscale, threads):
    """Rows over all K slots, the bias over the first O (the constrained mode's Wy + By launch); D = 5 is more
    than 2 and 4 threads (the bias thread also has columns) and fewer than 8 (it has none)."""
    ids, segs, state, rows, brows = kernel_problem(np.array(CASES[case], np.int32), seed=len(case))
    got = run_kernel(segs, state, rows, brows, O_CASE, gscale, mu, threads)
    args = (rows, ids[1], *state[3:], brows, O_CASE, gscale, 0.1, mu)
    r32 = naive_sparse_adagrad(*state[:3], *args, np.float32)
    r64 = naive_sparse_adagrad(*state[:3], *args, np.float64)
    names = ("p", "acc", "mom", "pb", "accb", "momb")
    for name, g, w32, w64 in zip(names, got, r32, r64):
        assert_within_reference_error(f"{case}: {name}", g, w32, w64, mult=4.0, floor=2e-7, relative_floor=True)
    if SIM:  # slot order from zero, as np.add.at: bitwise (a GPU may contract into FMAs)
        for name, g, w32 in zip(names, got, r32):
            np.testing.assert_array_equal(g, w32, err_msg=f"{case}: {name}")
    # the bias of an id that appears only in the input slots is not touched, even with momentum
    only_x = np.setdiff1d(ids[1, O_CASE:], ids[1, :O_CASE])
    for g, s in zip(got[3:], state[3:]):
        np.testing.assert_array_equal(g[only_x], s[only_x])
    # rows of ids not in the step stay as they were
    untouched = np.setdiff1d(np.arange(N), ids[1])
    for g, s in zip(got, state):
        np.testing.assert_array_equal(g[untouched], s[untouched])


def test_sparse_adagrad_without_bias_and_repeatable():
    """n_bslots = 0 (E / Wx0): the bias arrays are not touched; two runs give the same bits."""
    ids, segs, state, rows, brows = kernel_problem(np.array(CASES["long run (a third of the slots)"], np.int32), 4)
    got = run_kernel(segs, state, rows, brows, 0, 1.0, 0.9, 4)
    again = run_kernel(segs, state, rows, brows, 0, 1.0, 0.9, 4)
    for g, a in zip(got, again):
        np.testing.assert_array_equal(g, a)
    for g, s in zip(got[3:], state[3:]):
        np.testing.assert_array_equal(g, s)
    r32 = naive_sparse_adagrad(*state[:3], rows, ids[1], *state[3:], brows, 0, 1.0, 0.1, 0.9, np.float32)
    r64 = naive_sparse_adagrad(*state[:3], rows, ids[1], *state[3:], brows, 0, 1.0, 0.1, 0.9, np.float64)
    for name, g, w32, w64 in zip(("p", "acc", "mom"), got, r32, r64):
        assert_within_reference_error(name, g, w32, w64, mult=4.0, floor=2e-7, relative_floor=True)


def test_sparse_adagrad_reads_the_row_of_the_step_counter():
    """The same chunk at ctr[0] = 0 and 2 updates the ids of rows 0 and 2."""
    ids, segs, state, rows, brows = kernel_problem(np.array(CASES["all distinct"], np.int32), 5)
    for t in (0, 2):
        got = run_kernel(segs, state, rows, brows, O_CASE, 1.0, 0.0, 4, t=t)
        want = naive_sparse_adagrad(*state[:3], rows, ids[t], *state[3:], brows, O_CASE, 1.0, 0.1, 0.0, np.float32)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_sparse_adagrad_rejects_bad_input():
    ids, segs, state, rows, brows = kernel_problem(np.array(CASES["all distinct"], np.int32), 6)
    p, acc, mom, pb, accb, momb = state
    perm, seg_start, seg_id = segs
    ctr, gs = np.zeros(2, np.int64), np.ones(1, np.float32)

    def call(**kw):
        a = dict(p=p, acc=acc, mom=mom, rows=rows, perm=perm, seg_start=seg_start, seg_id=seg_id, ctr=ctr, gscale=gs,
                 lr=0.1, mu=0.0, pb=pb, accb=accb, momb=momb, brows=brows, n_bslots=O_CASE)
        a.update(kw)
        kad.launch_sparse_adagrad(**a)

    with pytest.raises(ValueError, match="rows"):
        call(rows=rows[:, :-1].copy())
    with pytest.raises(ValueError, match="perm"):
        call(perm=perm.astype(np.int64))
    with pytest.raises(ValueError, match="seg_start"):
        call(seg_start=seg_start[:, :-1].copy())
    with pytest.raises(ValueError, match="seg_id"):
        call(seg_id=seg_id[:2].copy())
    with pytest.raises(ValueError, match="ctr"):
        call(ctr=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="momb"):
        call(momb=momb[:-1].copy())
    with pytest.raises(ValueError, match="n_bslots"):
        call(n_bslots=K_CASE + 1)
    with pytest.raises(ValueError, match="mu"):
        call(mu=1.0)
    for a, s in zip((p, acc, mom, pb, accb, momb), kernel_problem(np.array(CASES["all distinct"], np.int32), 6)[2]):
        np.testing.assert_array_equal(a, s)  # nothing ran


# ============================================================================================ the whole step
def test_constrained_step_leaves_the_bias_of_input_only_ids():
    """cuda backend, constrained mode, momentum, non-zero momenta: an item that is only an input (never a target
    or a sample) gets its Wy row updated (it is in the Wy slots) but its By entry stays bit for bit."""
    from gru4rec_kernels.backends.cuda import CudaBackend
    from gru4rec_kernels.backends.numpy import NumpyBackend

    n_items, B, S = 17, 3, 4
    cfg = make_cfg("cross-entropy", "constrained", (5,), batch_size=B, momentum=0.9, learning_rate=0.1)
    _, params = init_params(cfg, n_items, seed=2)
    inputs, targets, active, reset, samples = make_schedule(1, B, S, n_items, seed=3)
    active[:] = True
    inputs[0] = [15, 16, 15]  # 15 and 16 appear only as inputs
    targets[0] = [1, 2, 1]
    samples[0] = [1, 3, 4, 4]
    rng = np.random.default_rng(4)
    opt = {"acc": {k: rng.uniform(0, 1, v.shape) for k, v in params.items()},
           "mom": {k: rng.normal(0, 0.1, v.shape) for k, v in params.items()}}
    be = CudaBackend(cfg, n_items, params)
    b32 = NumpyBackend(cfg, n_items, params, dtype=np.float32)
    for b in (be, b32):
        b.set_opt_state(opt)
        b.train_chunk(inputs, targets, active, reset, samples, 0)
    got, want = be.get_params(), b32.get_params()
    go, wo = be.get_opt_state(), b32.get_opt_state()
    only_x = [15, 16]
    np.testing.assert_array_equal(got["By"][only_x], params["By"][only_x].astype(np.float32))
    np.testing.assert_array_equal(go["mom"]["By"][only_x], np.float32(opt["mom"]["By"][only_x]))
    assert np.all(got["Wy"][only_x] != params["Wy"][only_x]), "the input-only ids' Wy rows must be updated"
    for k in ("Wy", "By"):
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)
        np.testing.assert_allclose(go["mom"][k], wo["mom"][k], rtol=2e-5, atol=2e-6, err_msg=k)
    be.close()
