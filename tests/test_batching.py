"""Session-parallel schedule: every pair once, in order, resets where sessions start, chunking and resume."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gru4rec_kernels.batching import EpochSchedule, ScheduleChunk


def _data(lengths, seed=0):
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    items = np.random.default_rng(seed).integers(0, 1000, int(offsets[-1])).astype(np.int32)
    return offsets, items


def _reference(offsets, items, B):
    """Plain-Python statement of the rule: slot order for simultaneous refills, skip sessions of length < 2."""
    queue = [s for s in range(len(offsets) - 1) if offsets[s + 1] - offsets[s] >= 2]
    q = 0
    slots = []  # [pos, end] or None
    for _ in range(B):
        if q < len(queue):
            s = queue[q]
            q += 1
            slots.append([offsets[s], offsets[s + 1]])
        else:
            slots.append(None)
    pending = [True] * B
    rows = []
    while any(sl is not None for sl in slots):
        row = []
        for b in range(B):
            r = pending[b]
            pending[b] = False
            if slots[b] is None:
                row.append((0, 0, False, r))
                continue
            p, e = slots[b]
            row.append((items[p], items[p + 1], True, r))
            p += 1
            if p + 1 >= e:
                if q < len(queue):
                    s = queue[q]
                    q += 1
                    slots[b] = [offsets[s], offsets[s + 1]]
                    pending[b] = True
                else:
                    slots[b] = None
            else:
                slots[b][0] = p
        rows.append(row)
    arr = np.array(rows, dtype=object).reshape(len(rows), B, 4) if rows else np.zeros((0, B, 4), dtype=object)
    return (arr[:, :, 0].astype(np.int32), arr[:, :, 1].astype(np.int32), arr[:, :, 2].astype(bool),
            arr[:, :, 3].astype(bool))


def _collect(sched: EpochSchedule, max_steps: int):
    chunks = list(sched.chunks(max_steps))
    B = sched.batch_size
    if not chunks:
        return (np.zeros((0, B), np.int32), np.zeros((0, B), np.int32), np.zeros((0, B), bool),
                np.zeros((0, B), bool)), chunks
    cat = tuple(np.concatenate([getattr(c, f) for c in chunks]) for f in ("inputs", "targets", "active", "reset"))
    return cat, chunks


def _check_semantics(offsets, items, B, inputs, targets, active, reset):
    """Properties that do not depend on the reference: every pair once, in order, in one slot; resets."""
    T = inputs.shape[0]
    assert inputs.dtype == np.int32 and targets.dtype == np.int32 and active.dtype == bool and reset.dtype == bool
    if T:
        assert reset[0].all()  # zero hidden state at epoch start
    assert not inputs[~active].any() and not targets[~active].any()
    # inactive only at the end: once a slot goes inactive it stays inactive
    for b in range(B):
        col = active[:, b]
        if not col.all():
            first_off = int(np.argmin(col))
            assert not col[first_off:].any()
    if T:
        assert active[-1].any()  # no trailing all-inactive step
    # walk each slot: split into sessions at resets and check the session contents
    seen = []
    for b in range(B):
        cur = None
        for t in range(T):
            if not active[t, b]:
                break
            if reset[t, b]:
                if cur is not None:
                    seen.append(cur)
                cur = [inputs[t, b], targets[t, b]]
            else:
                assert cur is not None and targets[t - 1, b] == inputs[t, b]  # continues its session
                cur.append(targets[t, b])
        if cur is not None:
            seen.append(cur)
        assert not reset[1:, b][~active[1:, b]].any()
    expected = [items[offsets[s]:offsets[s + 1]].tolist() for s in range(len(offsets) - 1)
                if offsets[s + 1] - offsets[s] >= 2]
    assert sorted(map(tuple, seen)) == sorted(map(tuple, expected))
    assert int(active.sum()) == sum(len(e) - 1 for e in expected)


@pytest.mark.parametrize("lengths,B", [
    ([3, 1, 2, 5, 4, 2, 1, 7, 2], 3),
    ([2, 2, 2, 2], 1),
    ([5, 1, 3], 8),       # batch larger than the number of sessions
    ([1, 1, 0, 4], 2),    # one-event and empty sessions never occupy a slot
])
def test_matches_reference_and_semantics(lengths, B):
    offsets, items = _data(lengths)
    sched = EpochSchedule(offsets, items, B)
    (inp, tgt, act, rst), chunks = _collect(sched, 4)
    ref = _reference(offsets, items, B)
    for a, r in zip((inp, tgt, act, rst), ref):
        np.testing.assert_array_equal(a, r)
    _check_semantics(offsets, items, B, inp, tgt, act, rst)
    assert sched.n_steps_total == inp.shape[0]
    assert [c.step0 for c in chunks] == list(range(0, inp.shape[0], 4))
    assert sum(c.n_events for c in chunks) == int(act.sum()) == sched.n_events_total
    assert sched.next_chunk(4) is None and sched.done


def test_exact_small_schedule():
    # sessions: a=[0,1,2] b=[3] c=[4,5] d=[6,7,8,9]; B=2
    offsets = np.array([0, 3, 4, 6, 10])
    items = np.arange(10, dtype=np.int32)
    c = EpochSchedule(offsets, items, 2).next_chunk(100)
    assert isinstance(c, ScheduleChunk) and c.n_steps == 4 and c.step0 == 0 and c.n_events == 6
    np.testing.assert_array_equal(c.inputs, [[0, 4], [1, 6], [0, 7], [0, 8]])
    np.testing.assert_array_equal(c.targets, [[1, 5], [2, 7], [0, 8], [0, 9]])
    np.testing.assert_array_equal(c.active, [[1, 1], [1, 1], [0, 1], [0, 1]])
    np.testing.assert_array_equal(c.reset, [[1, 1], [0, 1], [0, 0], [0, 0]])


def test_chunk_sizes_give_identical_arrays():
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 12, 300)
    offsets, items = _data(lengths, 1)
    B = 16
    runs = [_collect(EpochSchedule(offsets, items, B), m)[0] for m in (1, 7, 10_000)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    assert runs[0][0].shape[0] == EpochSchedule(offsets, items, B).n_steps_total
    _check_semantics(offsets, items, B, *runs[0])


def test_resume_from_state():
    rng = np.random.default_rng(7)
    offsets, items = _data(rng.integers(1, 9, 200), 2)
    B = 5
    full, _ = _collect(EpochSchedule(offsets, items, B), 13)
    s = EpochSchedule(offsets, items, B)
    for _ in range(4):
        s.next_chunk(13)
    st_ = s.state()
    assert st_["step"] == 52
    st_["slot_pos"] = st_["slot_pos"].tolist()  # as after a JSON round trip
    r = EpochSchedule.from_state(offsets, items, B, st_)
    rest, chunks = _collect(r, 13)
    assert chunks[0].step0 == 52
    for a, b in zip(full, rest):
        np.testing.assert_array_equal(a[52:], b)
    # the state does not alias the iterator
    s2 = EpochSchedule(offsets, items, B)
    st2 = s2.state()
    s2.next_chunk(3)
    assert st2["step"] == 0 and EpochSchedule.from_state(offsets, items, B, st2).next_chunk(3).step0 == 0
    with pytest.raises(ValueError, match="batch size"):
        EpochSchedule.from_state(offsets, items, B + 1, s.state())
    with pytest.raises(ValueError, match="not an EpochSchedule state"):
        EpochSchedule.from_state(offsets, items, B, {"step": 0})


def test_no_trainable_session_and_errors():
    offsets, items = _data([1, 1, 0])
    s = EpochSchedule(offsets, items, 4)
    assert s.n_steps_total == 0 and s.next_chunk(5) is None
    with pytest.raises(ValueError, match="batch_size"):
        EpochSchedule(offsets, items, 0)
    with pytest.raises(ValueError, match="offsets"):
        EpochSchedule(np.array([0, 5]), items, 1)
    with pytest.raises(ValueError, match="max_steps"):
        EpochSchedule(*_data([3]), 1).next_chunk(0)


def test_large_epoch_is_fast():
    import time
    rng = np.random.default_rng(0)
    offsets, items = _data(np.clip(rng.geometric(0.2, 200_000), 1, 60), 3)
    s = EpochSchedule(offsets, items, 64)
    s.n_steps_total  # compile outside the timing
    t0 = time.perf_counter()
    n = EpochSchedule(offsets, items, 64).n_steps_total
    steps = sum(c.n_steps for c in s.chunks(4096))
    assert steps == n
    assert time.perf_counter() - t0 < 5.0


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=40), B=st.integers(1, 7),
       max_steps=st.integers(1, 9), cut=st.integers(0, 5))
def test_property_random_sessions(lengths, B, max_steps, cut):
    offsets, items = _data(lengths)
    ref = _reference(offsets, items, B)
    s = EpochSchedule(offsets, items, B)
    assert s.n_steps_total == ref[0].shape[0]
    # produce `cut` chunks, save/restore, finish: must equal the reference
    got = []
    for _ in range(cut):
        c = s.next_chunk(max_steps)
        if c is None:
            break
        got.append(c)
    s = EpochSchedule.from_state(offsets, items, B, s.state())
    got += list(s.chunks(max_steps))
    if got:
        arrs = [np.concatenate([getattr(c, f) for c in got]) for f in ("inputs", "targets", "active", "reset")]
    else:
        arrs = [np.zeros((0, B))] * 4
    for a, r in zip(arrs, ref):
        np.testing.assert_array_equal(a, r)
    if got:
        _check_semantics(offsets, items, B, *arrs)
