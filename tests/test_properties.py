"""Property tests over generated click logs (hypothesis).

The logs are drawn from a small item pool (duplicates within and across sessions), with 1-event sessions,
coarse integer times (so ties happen, across and within sessions), sparse session ids, and an arbitrary row
order. The properties:

- the session-parallel schedule consumes every (input, target) pair of every session of length >= 2 exactly
  once per epoch, each session's pairs in order in one slot, sessions handed out in SessionData order;
- hidden states reset exactly at session boundaries (and at step 0);
- SessionData and one epoch of training do not depend on the row order of the input (when there are no
  within-session time ties: with ties, the order within the session is the file order, by design);
- no public entry point modifies the caller's DataFrame;
- ``evaluate`` counts (and logs) unknown test items and dropped sessions exactly.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gru4rec_kernels as g
from gru4rec_kernels.batching import EpochSchedule
from gru4rec_kernels.data import SessionData
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.preprocess import preprocess

ITEM_POOL = 6  # small: many duplicate items


# ---------------------------------------------------------------------------------------------------- strategies
@st.composite
def click_logs(draw, distinct_times: bool = False, max_sessions: int = 10, max_len: int = 6,
               min_item: int = 0, n_pool: int = ITEM_POOL):
    """A shuffled click log (SessionId, ItemId, Time) as a DataFrame with at least one session of length >= 2.

    ``distinct_times``: times are unique within every session (ties across sessions still happen)."""
    n_sess = draw(st.integers(1, max_sessions))
    # sparse, distinct session ids in a random order (so the id tie-break of equal first times is exercised)
    gaps = draw(st.lists(st.integers(1, 10 ** 5), min_size=n_sess, max_size=n_sess))
    ids = np.cumsum(gaps).tolist()
    sids = [ids[i] for i in draw(st.permutations(range(n_sess)))]
    rows = []
    for k, sid in enumerate(sids):
        lo = 2 if k == 0 else 1  # one session with a pair, so the log is a valid training log
        n = draw(st.integers(lo, max_len))
        items = draw(st.lists(st.integers(min_item, min_item + n_pool - 1), min_size=n, max_size=n))
        if distinct_times:
            times = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n, unique=True))
        else:
            times = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
        rows += [(sid, it, float(t)) for it, t in zip(items, times)]
    perm = draw(st.permutations(range(len(rows))))
    rows = [rows[i] for i in perm]
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])


def _session_pairs(data: SessionData) -> list[list[tuple[int, int]]]:
    """The consecutive (input, target) pairs of every session of length >= 2, in session order."""
    out = []
    for s in range(data.n_sessions):
        it = data.items[data.offsets[s]:data.offsets[s + 1]].tolist()
        if len(it) >= 2:
            out.append(list(zip(it[:-1], it[1:])))
    return out


def _run_schedule(data: SessionData, batch_size: int, chunk: int):
    sched = EpochSchedule(data.offsets, data.items, batch_size)
    chunks = list(sched.chunks(chunk))
    step = 0
    for c in chunks:
        assert c.step0 == step
        assert c.n_steps <= chunk
        assert c.n_events == int(c.active.sum())
        step += c.n_steps
    assert all(c.n_steps == chunk for c in chunks[:-1])
    cat = {k: np.concatenate([getattr(c, k) for c in chunks]) for k in ("inputs", "targets", "active", "reset")}
    assert cat["inputs"].shape == (sched.n_steps_total, batch_size)
    assert sched.done and sched.next_chunk(chunk) is None
    return sched, cat


# ---------------------------------------------------------------------------------------------------- schedule
@settings(max_examples=300, deadline=None)
@given(df=click_logs(), batch_size=st.integers(1, 8), chunk=st.integers(1, 9))
def test_every_event_consumed_exactly_once_per_epoch(df, batch_size, chunk):
    data = SessionData.from_pandas(df)
    sessions = _session_pairs(data)
    sched, s = _run_schedule(data, batch_size, chunk)
    act = s["active"]
    # the multiset of (input, target) pairs is exactly the sessions' consecutive pairs
    got = Counter(zip(s["inputs"][act].tolist(), s["targets"][act].tolist()))
    want = Counter(p for sess in sessions for p in sess)
    assert got == want
    assert sum(got.values()) == sched.n_events_total == sum(len(p) for p in sessions)
    # inactive rows feed zeros; a slot never comes back once it went inactive (no session is left then)
    assert np.all(s["inputs"][~act] == 0) and np.all(s["targets"][~act] == 0)
    for b in range(batch_size):
        col = act[:, b]
        n_on = int(col.sum())
        assert np.all(col[:n_on]) and not np.any(col[n_on:])
    # the last step has at least one active slot (the epoch ends when every slot is inactive)
    assert act[-1].any()
    # per slot, cutting the active pairs at the reset flags gives whole sessions, pairs in order; ordered by
    # (start step, slot) they are the sessions in SessionData order
    segments = []
    for b in range(batch_size):
        for t in np.flatnonzero(act[:, b]):
            pair = (int(s["inputs"][t, b]), int(s["targets"][t, b]))
            if s["reset"][t, b]:
                segments.append(((int(t), b), [pair]))
            else:
                assert segments and segments[-1][0][1] == b, "a slot continued a session it never started"
                segments[-1][1].append(pair)
    segments.sort(key=lambda x: x[0])
    assert [seg for _, seg in segments] == sessions


@settings(max_examples=300, deadline=None)
@given(df=click_logs(), batch_size=st.integers(1, 8), chunk=st.integers(1, 9))
def test_reset_exactly_at_session_boundaries(df, batch_size, chunk):
    """reset[t, b] is True iff t == 0 or slot b starts a new session at step t.

    The expected flags come from an independent replay of the schedule's definition: sessions of length >= 2
    in SessionData order, handed to the slots that are free, in slot order."""
    data = SessionData.from_pandas(df)
    lens = np.diff(data.offsets)
    queue = [s for s in range(data.n_sessions) if lens[s] >= 2]
    _, s = _run_schedule(data, batch_size, chunk)
    T = s["reset"].shape[0]
    exp_reset = np.zeros((T, batch_size), bool)
    exp_reset[0] = True
    left = [0] * batch_size  # pairs left in the slot's session
    pos = [0] * batch_size
    q = 0
    for b in range(batch_size):
        if q < len(queue):
            pos[b], left[b] = int(data.offsets[queue[q]]), int(lens[queue[q]] - 1)
            q += 1
    for t in range(T):
        for b in range(batch_size):
            if left[b] == 0:
                assert not s["active"][t, b]
                continue
            assert s["active"][t, b]
            assert s["inputs"][t, b] == data.items[pos[b]] and s["targets"][t, b] == data.items[pos[b] + 1]
            pos[b] += 1
            left[b] -= 1
            if left[b] == 0 and q < len(queue):
                pos[b], left[b] = int(data.offsets[queue[q]]), int(lens[queue[q]] - 1)
                q += 1
                if t + 1 < T:
                    exp_reset[t + 1, b] = True
    assert q == len(queue) and all(x == 0 for x in left)
    np.testing.assert_array_equal(s["reset"], exp_reset)


# ---------------------------------------------------------------------------------------------------- row order
_ARRAYS = ("items", "offsets", "session_ids", "times", "item_ids")


@settings(max_examples=200, deadline=None)
@given(df=click_logs(distinct_times=True), seed=st.integers(0, 2 ** 31 - 1))
def test_sessiondata_does_not_depend_on_row_order(df, seed):
    a = SessionData.from_pandas(df)
    b = SessionData.from_pandas(df.sample(frac=1, random_state=seed))
    c = SessionData.from_arrays(df["SessionId"].to_numpy()[::-1], df["ItemId"].to_numpy()[::-1],
                                df["Time"].to_numpy()[::-1])
    for other in (b, c):
        for k in _ARRAYS:
            x, y = getattr(a, k), getattr(other, k)
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y, err_msg=k)


@settings(max_examples=200, deadline=None)
@given(df=click_logs(distinct_times=False), seed=st.integers(0, 2 ** 31 - 1))
def test_row_order_with_time_ties(df, seed):
    """With equal times inside a session, the order of those events is the file order (stable sort, by design:
    a click log has no other information about it), so only the per-session item multisets, the session order
    and the times are row-order independent; with the file order kept, the result is the same."""
    a = SessionData.from_pandas(df)
    b = SessionData.from_pandas(df.sample(frac=1, random_state=seed))
    for k in ("offsets", "session_ids", "times", "item_ids"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    for s in range(a.n_sessions):
        sl = slice(a.offsets[s], a.offsets[s + 1])
        assert sorted(zip(a.times[sl], a.items[sl])) == sorted(zip(b.times[sl], b.items[sl]))
    # equal times keep the input order: the events of a session at one time appear in file order
    sess_of_event = np.repeat(a.session_ids, np.diff(a.offsets))
    for sid, grp in df.groupby("SessionId", sort=False):
        m = sess_of_event == sid
        got = list(zip(a.times[m], a.item_ids[a.items[m]]))
        want = list(grp.sort_values("Time", kind="stable")[["Time", "ItemId"]].itertuples(index=False, name=None))
        assert got == want


def _reference_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """SessionData's arrays by brute force in pure Python: sessions by (first time, id), events by time within
    a session with equal times in file order (Python's sort is stable), items indexed in sorted id order."""
    rows = list(zip(df["SessionId"].tolist(), df["ItemId"].tolist(), df["Time"].tolist()))
    by_sess: dict[int, list] = {}
    for sid, it, t in rows:
        by_sess.setdefault(sid, []).append((t, it))
    sessions = {sid: sorted(ev, key=lambda e: e[0]) for sid, ev in by_sess.items()}
    order = sorted(sessions, key=lambda sid: (sessions[sid][0][0], sid))
    item_ids = sorted({it for _, it, _ in rows})
    index = {it: k for k, it in enumerate(item_ids)}
    ev = [e for sid in order for e in sessions[sid]]
    return {"items": np.array([index[it] for _, it in ev], np.int32),
            "offsets": np.concatenate([[0], np.cumsum([len(sessions[sid]) for sid in order])]).astype(np.int64),
            "session_ids": np.array(order, np.int64), "times": np.array([t for t, _ in ev], np.float64),
            "item_ids": np.array(item_ids, np.int64)}


@settings(max_examples=200, deadline=None)
@given(df=click_logs(max_sessions=12), layout=st.sampled_from(["as_drawn", "grouped", "time_ordered"]),
       item_scale=st.sampled_from([1, 7, 10 ** 12]), item_shift=st.integers(-2 ** 40, 2 ** 40),
       sess_shift=st.integers(-2 ** 40, 2 ** 40), chunk=st.integers(1, 7))
def test_sessiondata_equals_brute_force(df, layout, item_scale, item_shift, sess_shift, chunk):
    """Every construction path of SessionData (input already grouped by session and time: no sort; input in
    time order: one stable sort; anything else: a lexsort; dense item ids: a lookup table; sparse ids: a hash)
    gives the brute-force arrays, also with the chunked passes cut into blocks of a few events."""
    from unittest import mock

    import gru4rec_kernels.data as data_mod

    df = df.assign(ItemId=df["ItemId"] * item_scale + item_shift, SessionId=df["SessionId"] + sess_shift)
    if layout == "grouped":
        df = df.sort_values(["SessionId", "Time"], kind="stable")
    elif layout == "time_ordered":
        df = df.sort_values("Time", kind="stable")
    want = _reference_arrays(df)
    with mock.patch.object(data_mod, "_CHUNK", chunk):
        got = SessionData.from_pandas(df)
    for k in _ARRAYS:
        x = getattr(got, k)
        assert x.dtype == want[k].dtype, k
        np.testing.assert_array_equal(x, want[k], err_msg=k)


_TINY = dict(layers=[4], n_sample=4, batch_size=3, sample_store_size=64, n_epochs=1)


@settings(max_examples=40, deadline=None)
@given(df=click_logs(distinct_times=True, max_sessions=8), seed=st.integers(0, 2 ** 31 - 1))
def test_training_does_not_depend_on_row_order(df, seed):
    cfg = g.TrainConfig(**_TINY)
    m1 = g.Trainer(cfg, backend="numpy", show_progress=False).fit(SessionData.from_pandas(df))
    m2 = g.Trainer(cfg, backend="numpy", show_progress=False).fit(
        SessionData.from_pandas(df.sample(frac=1, random_state=seed)))
    np.testing.assert_array_equal(m1.item_ids, m2.item_ids)
    assert m1.params.keys() == m2.params.keys()
    for k in m1.params:
        assert m1.params[k].tobytes() == m2.params[k].tobytes(), k  # bit-identical
    assert m1.history[0]["loss"] == m2.history[0]["loss"]


# ---------------------------------------------------------------------------------------------------- no mutation
@st.composite
def decorated_logs(draw):
    """A click log with an extra column, a non-default index and, sometimes, string / datetime columns."""
    df = draw(click_logs())
    df["Extra"] = [f"x{i}" for i in range(len(df))]
    idx = np.cumsum(draw(st.lists(st.integers(1, 1000), min_size=len(df), max_size=len(df)))) - 500
    df.index = pd.Index([int(idx[i]) for i in draw(st.permutations(range(len(df))))], name="row")
    kind = draw(st.sampled_from(["plain", "int32", "str_ids", "datetime"]))
    if kind == "int32":
        df["SessionId"] = df["SessionId"].astype(np.int32)
        df["ItemId"] = df["ItemId"].astype(np.int32)
    elif kind == "str_ids":
        df["ItemId"] = df["ItemId"].astype(str)
    elif kind == "datetime":
        df["Time"] = pd.to_datetime(df["Time"] * 3600.0, unit="s")
    cols = list(df.columns)
    order = draw(st.permutations(cols))
    return df[list(order)]


def _assert_unchanged(df: pd.DataFrame, before: pd.DataFrame, what: str) -> None:
    assert list(df.columns) == list(before.columns), what
    assert list(df.dtypes) == list(before.dtypes), what
    assert df.index.equals(before.index) and df.index.name == before.index.name, what
    pd.testing.assert_frame_equal(df, before, check_exact=True, obj=what)


def _tiny_model(item_ids) -> g.Model:
    cfg = g.TrainConfig(layers=[4], n_sample=0, batch_size=4)
    _, params = init_params(cfg, len(item_ids))
    return g.Model(cfg, np.asarray(item_ids, np.int64), params)


@settings(max_examples=100, deadline=None)
@given(df=decorated_logs(), n_known=st.integers(1, ITEM_POOL))
def test_caller_dataframe_never_modified(df, n_known):
    before = df.copy(deep=True)
    data = SessionData.from_pandas(df)
    _assert_unchanged(df, before, "from_pandas")
    SessionData.from_pandas(df, time_key=None)
    _assert_unchanged(df, before, "from_pandas(time_key=None)")
    SessionData.from_arrays(df["SessionId"], df["ItemId"], df["Time"])
    _assert_unchanged(df, before, "from_arrays(Series)")
    known = np.arange(n_known)  # of the data's id type: string ids are never matched to integers
    data.remap(known if data.item_ids.dtype != object else np.array(sorted(map(str, known)), dtype=object),
               allow_empty=True)
    _assert_unchanged(df, before, "remap")
    try:
        preprocess(df, min_item_support=1, min_session_length=2, test_days=1.0 / 24)
    except ValueError:
        pass  # nothing left after filtering: fine, the input must still be intact
    _assert_unchanged(df, before, "preprocess")
    arrays = {k: getattr(data, k).copy() for k in _ARRAYS}
    try:
        g.evaluate(_tiny_model(np.arange(n_known)), data, cutoffs=(1, 3), batch_size=3, backend="numpy")
    except ValueError:
        pass  # no test session keeps 2 known events
    _assert_unchanged(df, before, "evaluate")
    for k in _ARRAYS:
        np.testing.assert_array_equal(getattr(data, k), arrays[k], err_msg=f"evaluate modified data.{k}")


# ---------------------------------------------------------------------------------------------------- evaluate counts
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=click_logs(max_sessions=8), known=st.sets(st.integers(0, ITEM_POOL + 2), min_size=1, max_size=ITEM_POOL),
       batch_size=st.integers(1, 5))
def test_evaluate_counts_unknown_items_and_dropped_sessions(caplog, df, known, batch_size):
    test = SessionData.from_pandas(df)
    model = _tiny_model(sorted(known))
    # brute force over the raw rows
    unknown = int((~df["ItemId"].isin(known)).sum())
    kept = df[df["ItemId"].isin(known)].groupby("SessionId").size()
    kept_sessions = int((kept >= 2).sum())
    dropped = df["SessionId"].nunique() - kept_sessions
    n_pairs = int((kept[kept >= 2] - 1).sum())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gru4rec_kernels"):
        if kept_sessions == 0:
            with pytest.raises(ValueError, match="no session keeps 2 or more events"):
                g.evaluate(model, test, cutoffs=(1, 2), batch_size=batch_size, backend="numpy")
            return
        res = g.evaluate(model, test, cutoffs=(1, 2), batch_size=batch_size, backend="numpy")
    assert res["unknown_events"] == unknown
    assert res["dropped_sessions"] == dropped
    assert res["n_events"] == n_pairs
    msgs = [r.getMessage() for r in caplog.records if r.name == "gru4rec_kernels"]
    if unknown or dropped:
        assert any(f"dropped {unknown} test events" in m and f"{dropped} sessions" in m for m in msgs), msgs
    else:
        assert not any("dropped" in m for m in msgs), msgs
