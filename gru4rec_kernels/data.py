"""Click logs as flat arrays (``SessionData``); reading them from csv / tsv / parquet / pandas.

A log is ``SessionId, ItemId, Time`` rows. ``SessionData`` holds it as a handful of numpy arrays (no per-event
Python objects, so 10^9 events fit in memory): the item map, every event's item index, per-session offsets.
Sessions are ordered by their first timestamp (ties by session id), events by time within a session (stable:
equal times keep the input order); this is the order the session-parallel schedule and the evaluation use.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SessionData"]

_INT_RE = r"[+-]?\d+"


# ---------------------------------------------------------------------------------------------------- column checks
def _check_no_nan(values: Any, col: str) -> None:
    na = pd.isna(values)
    if np.any(na):
        na = np.asarray(na)
        raise ValueError(f"column {col!r} has {int(na.sum())} missing (NaN/None) value(s), first at row "
                         f"{int(np.argmax(na))}; drop or fill those rows first")


def _column_series(values: Any, col: str, requirement: str) -> pd.Series:
    """The column as a Series (no copy), checked for missing values and booleans (which pandas counts as
    numbers); ``requirement`` finishes the error message for booleans."""
    s = values if isinstance(values, pd.Series) else pd.Series(values, copy=False)
    _check_no_nan(s, col)
    if pd.api.types.is_bool_dtype(s.dtype):
        raise ValueError(f"column {col!r} holds booleans; {requirement}")
    return s


def to_int_ids(values: Any, col: str) -> np.ndarray:
    """Ids -> int64. Accepts integers, floats that are exactly integer, strings of decimal integers."""
    s = _column_series(values, col, "ids must be integers")
    dt = s.dtype
    if pd.api.types.is_integer_dtype(dt):
        a = s.to_numpy()
        if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"column {col!r} has ids above 2**63-1; ids must fit in int64")
        return a.astype(np.int64, copy=False)
    if pd.api.types.is_float_dtype(dt):
        a = s.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(a) | (a != np.floor(a)) | (np.abs(a) > 2.0 ** 63 - 1024)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"column {col!r} has non-integer id {a[i]!r} at row {i}; ids must be integers "
                             f"(or floats that are exactly integer)")
        return a.astype(np.int64)
    if pd.api.types.is_object_dtype(dt) or pd.api.types.is_string_dtype(dt):
        st = s.astype(str).str.strip()
        ok = st.str.fullmatch(_INT_RE).to_numpy(dtype=bool)
        if not ok.all():
            i = int(np.argmax(~ok))
            raise ValueError(f"column {col!r} has non-integer id {s.iloc[i]!r} at row {i}; ids must be integers, "
                             f"floats that are exactly integer, or strings of decimal digits")
        num = pd.to_numeric(st, errors="coerce")
        if not pd.api.types.is_integer_dtype(num.dtype) or (num.dtype == np.uint64 and num.max() >= 2 ** 63):
            raise ValueError(f"column {col!r} has ids that do not fit in int64")
        return num.to_numpy().astype(np.int64)
    raise ValueError(f"column {col!r} has dtype {dt}; ids must be integers")


def to_times(values: Any, col: str) -> np.ndarray:
    """Time column -> float64. Numbers are kept as they are; datetimes / ISO strings become epoch seconds (UTC)."""
    s = _column_series(values, col, "time must be numeric or a date/time")
    dt = s.dtype
    if pd.api.types.is_numeric_dtype(dt):
        a = s.to_numpy(dtype=np.float64)
    elif pd.api.types.is_datetime64_any_dtype(dt):
        a = _datetime_seconds(s)
    elif pd.api.types.is_object_dtype(dt) or pd.api.types.is_string_dtype(dt):
        num = pd.to_numeric(s, errors="coerce")
        if not num.isna().any():
            a = num.to_numpy(dtype=np.float64)
        else:
            try:
                parsed = pd.to_datetime(s, utc=True, format="ISO8601")
            except (ValueError, TypeError):
                try:
                    parsed = pd.to_datetime(s, utc=True, format="mixed")
                except (ValueError, TypeError, OverflowError):
                    bad = num.isna().to_numpy()
                    i = int(np.argmax(bad))
                    raise ValueError(f"column {col!r} has a value that is neither a number nor a date/time: "
                                     f"{s.iloc[i]!r} at row {i}") from None
            a = _datetime_seconds(parsed)
    else:
        raise ValueError(f"column {col!r} has dtype {dt}; time must be numeric or a date/time")
    if not np.all(np.isfinite(a)):
        i = int(np.argmax(~np.isfinite(a)))
        raise ValueError(f"column {col!r} has a non-finite time {a[i]!r} at row {i}")
    return a


def _datetime_seconds(s: pd.Series) -> np.ndarray:
    s = pd.Series(s, copy=False)
    if s.dt.tz is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)  # naive datetimes are taken as UTC, never local time
    ns = s.to_numpy().astype("datetime64[ns]").astype(np.int64)
    # whole seconds + fraction, so 20:21:58.444 becomes the float nearest to ...318.444 (ns/1e9 is not)
    return (ns // 1_000_000_000).astype(np.float64) + (ns % 1_000_000_000) / 1e9


def _release_arrow_memory() -> None:
    """Hand the memory Arrow's allocator keeps cached back to the OS (it would stay in the resident set)."""
    try:
        import pyarrow as pa
        pa.default_memory_pool().release_unused()
    except Exception:  # pragma: no cover - old pyarrow without release_unused
        pass


def missing_columns_error(missing: list[str], have: list[Any], where: str) -> ValueError:
    hint = ""
    if len(have) == 1 and isinstance(have[0], str) and ("\t" in have[0] or "," in have[0] or ";" in have[0]):
        hint = " (only one column was found: is the separator right?)"
    return ValueError(f"{where}: missing column(s) {missing}; the columns are {list(have)}{hint}")


# ---------------------------------------------------------------------------------------------------- building
_CHUNK = 1 << 18  # events per block in the chunked passes (bounds the temporaries to a few MB)


def _chunks(n: int, size: int | None = None):
    size = _CHUNK if size is None else size
    for a in range(0, n, size):
        yield a, min(a + size, n)


def _item_map(its: np.ndarray):
    """(sorted unique ids int64, f: id chunk -> int32 index chunk) without a full-size temporary.

    Dense ids (span <= n/2): a bitmap and a lookup table; otherwise a hash set (pandas) and a hash lookup."""
    n = its.size
    lo, hi = int(its.min()), int(its.max())
    span = hi - lo + 1
    if span <= max(n // 2, 1 << 16):
        present = np.zeros(span, dtype=np.bool_)
        for a, b in _chunks(n):
            present[its[a:b] - lo] = True
        item_ids = np.flatnonzero(present).astype(np.int64)
        item_ids += lo
        lut = np.cumsum(present, dtype=np.int32)
        lut -= 1
        del present
        return item_ids, lambda x: lut[x - lo]
    item_ids = np.sort(pd.unique(its)).astype(np.int64, copy=False)
    index = pd.Index(item_ids)
    return item_ids, lambda x: index.get_indexer(x).astype(np.int32)


def _group_by_session(sess: np.ndarray, t: np.ndarray):
    """Events grouped by session id (ascending), by time within a session, stable (equal times keep the input
    order). Returns (order, starts): ``order[j]`` is the input row of grouped position j, or None when the
    input rows are already grouped by session and time-ordered within (sessions in any order: ``starts`` then
    lists them in input order); ``starts`` is the first position of every session.

    Three paths, all equal to the stable sort by (session, time): (1) rows already grouped by session and
    time-ordered within (the GRU4Rec file format): no event permutation at all; (2) rows in time order (a raw
    log): one stable sort by session; (3) otherwise a lexsort by (session, time)."""
    n = sess.size
    bounds: list[np.ndarray] | None = [np.zeros(1, dtype=np.int64)]
    n_runs = 1
    time_sorted = True  # t non-decreasing over all rows
    runs_sorted = True  # t non-decreasing within every run of equal session ids
    for a, b in _chunks(n - 1):
        new = sess[a + 1:b + 1] != sess[a:b]
        back = t[a + 1:b + 1] < t[a:b]
        if back.any():
            time_sorted = False
            if (back & ~new).any():
                runs_sorted = False
                break
        if bounds is not None:
            nz = np.flatnonzero(new)
            n_runs += nz.size
            if n_runs > n // 2 + 1:  # runs of ~1 row: not a grouped file; don't hold an n-size list
                bounds = None
            else:
                bounds.append(nz.astype(np.int64) + (a + 1))
    if runs_sorted and bounds is not None:
        starts = np.concatenate(bounds)
        del bounds
        run_ids = np.sort(sess[starts])
        if not np.any(run_ids[1:] == run_ids[:-1]):  # every session in one run: path (1)
            return None, starts
        del run_ids, starts
    bounds = None
    order = np.argsort(sess, kind="stable") if time_sorted else np.lexsort((t, sess))
    parts = [np.zeros(1, dtype=np.int64)]
    for a, b in _chunks(n - 1):
        s = sess[order[a:b + 1]]
        parts.append(np.flatnonzero(s[1:] != s[:-1]).astype(np.int64) + (a + 1))
    return order, np.concatenate(parts)


# ---------------------------------------------------------------------------------------------------- SessionData
class SessionData:
    """A click log as flat arrays.

    Attributes
    ----------
    item_ids : int64 [n_items]     sorted unique original item ids; the position is the item index.
    items    : int32 [n_events]    item index of every event, grouped by session.
    offsets  : int64 [n_sessions+1] session ``s`` is events ``offsets[s]:offsets[s+1]``.
    session_ids : int64 [n_sessions] original session ids, in session order.
    times    : float64 [n_events]  event times (the file's numeric unit; dates become epoch seconds, UTC).

    Sessions are ordered by their first time (ties by session id), events by time within a session, stable.
    One-event sessions are kept unless ``min_session_length`` says otherwise: they give no training pair but
    count in evaluation statistics. A log in which no session has 2+ events is rejected.
    When ``time_key=None`` the row order within a session is its time (``times`` is then the row number).
    """

    def __init__(self, item_ids: np.ndarray, items: np.ndarray, offsets: np.ndarray, session_ids: np.ndarray,
                 times: np.ndarray):
        self.item_ids = np.ascontiguousarray(item_ids, dtype=np.int64)
        self.items = np.ascontiguousarray(items, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.session_ids = np.ascontiguousarray(session_ids, dtype=np.int64)
        self.times = np.ascontiguousarray(times, dtype=np.float64)
        if self.offsets.ndim != 1 or self.offsets.size != self.session_ids.size + 1 or self.offsets[0] != 0 \
                or self.offsets[-1] != self.items.size or self.times.size != self.items.size:
            raise ValueError("inconsistent SessionData arrays (offsets / session_ids / items / times sizes)")

    # ------------------------------------------------------------------ sizes
    @property
    def n_events(self) -> int:
        return int(self.items.size)

    @property
    def n_sessions(self) -> int:
        return int(self.session_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    def __len__(self) -> int:
        return self.n_events

    def __repr__(self) -> str:
        return f"SessionData(n_events={self.n_events}, n_sessions={self.n_sessions}, n_items={self.n_items})"

    def item_support(self) -> np.ndarray:
        """float64 [n_items]: number of events of every item index."""
        return np.bincount(self.items, minlength=self.n_items).astype(np.float64)

    def session_lengths(self) -> np.ndarray:
        """int64 [n_sessions]."""
        return np.diff(self.offsets)

    def session(self, s: int) -> np.ndarray:
        """Original item ids of session ``s`` (in session order)."""
        return self.item_ids[self.items[self.offsets[s]:self.offsets[s + 1]]]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, session_ids: Any, item_ids: Any, times: Any = None, *,
                    min_session_length: int = 1) -> "SessionData":
        """Build from three equally long 1-D arrays. ``times=None``: the array order is the time."""
        sess = to_int_ids(np.asarray(session_ids).ravel() if not isinstance(session_ids, pd.Series)
                           else session_ids, "SessionId")
        its = to_int_ids(np.asarray(item_ids).ravel() if not isinstance(item_ids, pd.Series)
                          else item_ids, "ItemId")
        if times is None:
            t = np.arange(sess.size, dtype=np.float64)
        else:
            t = to_times(np.asarray(times).ravel() if not isinstance(times, pd.Series) else times, "Time")
        if not (sess.size == its.size == t.size):
            raise ValueError(f"session_ids, item_ids and times must have the same length; got "
                             f"{sess.size}, {its.size}, {t.size}")
        return cls._build(sess, its, t, min_session_length)

    @classmethod
    def from_pandas(cls, df: pd.DataFrame, session_key: str = "SessionId", item_key: str = "ItemId",
                    time_key: str | None = "Time", *, min_session_length: int = 1) -> "SessionData":
        """Build from a DataFrame (never modified). ``time_key=None``: the row order within a session is its time."""
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"from_pandas expects a pandas DataFrame; got {type(df).__name__}")
        need = [session_key, item_key] + ([time_key] if time_key is not None else [])
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise missing_columns_error(missing, list(df.columns), "from_pandas")
        if len(df) == 0:
            raise ValueError("the click log is empty (no rows)")
        sess = to_int_ids(df[session_key], session_key)
        its = to_int_ids(df[item_key], item_key)
        t = to_times(df[time_key], time_key) if time_key is not None else np.arange(len(df), dtype=np.float64)
        return cls._build(sess, its, t, min_session_length)

    @classmethod
    def from_csv(cls, path: str | os.PathLike, sep: str | None = ",", session_key: str = "SessionId",
                 item_key: str = "ItemId", time_key: str | None = "Time", *, min_session_length: int = 1,
                 **read_kwargs: Any) -> "SessionData":
        """Read a csv / tsv (optionally compressed, e.g. ``.gz``) with a header row.

        ``sep=None`` infers it from the extension: ``.tsv`` / ``.txt`` -> tab, otherwise comma.
        ``time_key=None``: the row order within a session is its time.
        """
        path = os.fspath(path)
        if sep is None:
            sep = _infer_sep(path)
        need = [session_key, item_key] + ([time_key] if time_key is not None else [])
        header = read_csv_checked(path, sep=sep, nrows=0, **read_kwargs)
        missing = [c for c in need if c not in header.columns]
        if missing:
            raise missing_columns_error(missing, list(header.columns), f"{path}")
        df = read_csv_checked(path, sep=sep, usecols=need, **read_kwargs)
        if len(df) == 0:
            raise ValueError(f"{path}: the click log is empty (no rows)")
        try:
            return cls.from_pandas(df, session_key, item_key, time_key, min_session_length=min_session_length)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_parquet(cls, path: str | os.PathLike, session_key: str = "SessionId", item_key: str = "ItemId",
                     time_key: str | None = "Time", *, min_session_length: int = 1) -> "SessionData":
        """Read a parquet file (or dataset directory). ``time_key=None``: row order within a session is time."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        need = [session_key, item_key] + ([time_key] if time_key is not None else [])
        try:
            import pyarrow.parquet as pq
            names = list(pq.read_schema(path).names) if os.path.isfile(path) else None
        except Exception as e:  # pyarrow raises several types for a non-parquet file
            raise ValueError(f"cannot read {path} as parquet: {e}") from None
        if names is not None:
            missing = [c for c in need if c not in names]
            if missing:
                raise missing_columns_error(missing, names, path)
        try:
            table = pq.read_table(path, columns=list(dict.fromkeys(need)))
        except Exception as e:
            raise ValueError(f"cannot read {path} as parquet: {e}") from None
        if table.num_rows == 0:
            raise ValueError(f"{path}: the click log is empty (no rows)")
        # Column by column, each converted to its final numpy form and its Arrow buffers dropped at once: the
        # peak is the Arrow table plus one column (pd.read_parquet would hold the table and a whole DataFrame).
        n = table.num_rows
        conv = {session_key: to_int_ids, item_key: to_int_ids}
        if time_key is not None:
            conv[time_key] = to_times
        out: dict[str, np.ndarray] = {}
        try:
            for key in need:
                if key in out:
                    continue
                i = table.schema.get_field_index(key)
                col = table.column(i)
                table = table.remove_column(i)
                series = col.to_pandas()
                del col
                out[key] = conv[key](series, key)
                del series
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        finally:
            del table
            _release_arrow_memory()
        t = out[time_key] if time_key is not None else np.arange(n, dtype=np.float64)
        try:
            return cls._build(out[session_key], out[item_key], t, min_session_length)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        finally:  # the columns may live in Arrow's memory (zero-copy conversion): give it back once they go
            out.clear()
            del t
            _release_arrow_memory()

    @classmethod
    def _build(cls, sess: np.ndarray, its: np.ndarray, t: np.ndarray, min_session_length: int) -> "SessionData":
        """Group by session (time-ordered within, stable), order sessions by (first time, id), map the items.

        Memory: besides the inputs and the outputs (items int32 + times float64 = 12 bytes/event), at most one
        event permutation (int32 below 2**31 events; none when the rows are already grouped and time-ordered),
        a few per-session and per-item arrays and O(_CHUNK) temporaries; no per-event Python objects and no
        full-size copies of the inputs."""
        if sess.size == 0:
            raise ValueError("the click log is empty (no rows)")
        if int(min_session_length) < 1:
            raise ValueError(f"min_session_length must be >= 1; got {min_session_length!r}")
        n = sess.size
        item_ids, to_index = _item_map(its)
        if item_ids.size >= 2 ** 31:
            raise ValueError(f"too many distinct items ({item_ids.size}); at most 2**31-1 are supported")
        # order: grouped position -> input row (None: the input is already grouped and time-ordered);
        # starts: first grouped position of every session.
        order, starts = _group_by_session(sess, t)
        if order is not None and n < 2 ** 31:
            order = order.astype(np.int32)  # 4 bytes/event less to hold through the output pass
        lengths = np.empty(starts.size, dtype=np.int64)
        lengths[:-1] = starts[1:] - starts[:-1]
        lengths[-1] = n - starts[-1]
        if lengths.max() < 2:
            raise ValueError(f"no session has 2 or more events ({lengths.size} one-event sessions): one-event "
                             f"sessions give no training pair (and nothing to evaluate)")
        first = starts if order is None else order[starts]
        # sessions by first time (events are time-ordered within a session), ties by session id
        sess_order = np.lexsort((sess[first], t[first]))
        session_ids = sess[first[sess_order]]
        del first
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths[sess_order], out=offsets[1:])
        del lengths
        src = None  # per output session: grouped position - output position (None: the same order)
        if not np.array_equal(sess_order, np.arange(sess_order.size)):
            src = starts[sess_order]
            src -= offsets[:-1]
        del starts, sess_order
        items = np.empty(n, dtype=np.int32)
        times = np.empty(n, dtype=np.float64)
        n_sess = session_ids.size
        k0 = 0
        while k0 < n_sess:  # blocks of whole sessions, about _CHUNK events each
            e0 = int(offsets[k0])
            k1 = max(int(np.searchsorted(offsets, e0 + _CHUNK, side="right")) - 1, k0 + 1)
            e1 = int(offsets[k1])
            if src is None:
                ev = slice(e0, e1)
            else:
                ev = np.repeat(src[k0:k1], np.diff(offsets[k0:k1 + 1]))
                ev += np.arange(e0, e1)
            if order is not None:
                ev = order[ev]
            items[e0:e1] = to_index(its[ev])
            times[e0:e1] = t[ev]
            k0 = k1
        del order, src, to_index
        data = cls(item_ids, items, offsets, session_ids, times)
        if min_session_length > 1:
            data, _ = data.filter_min_length(min_session_length)
        return data

    # ------------------------------------------------------------------ transforms
    def _subset(self, event_mask: np.ndarray, keep_sessions: np.ndarray, item_ids: np.ndarray,
                items: np.ndarray) -> "SessionData":
        """Keep the events in ``event_mask`` (all inside ``keep_sessions``); re-sort sessions by first time."""
        sess_idx = np.repeat(np.arange(self.n_sessions), self.session_lengths())
        counts = np.bincount(sess_idx[event_mask], minlength=self.n_sessions)[keep_sessions]
        offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = SessionData(item_ids, items[event_mask], offsets, self.session_ids[keep_sessions],
                          self.times[event_mask])
        return out._sorted_sessions()

    def _sorted_sessions(self) -> "SessionData":
        """Restore the session order (first time, then id) if dropping events changed a session's first time."""
        if self.n_sessions == 0:
            return self
        first_t = self.times[self.offsets[:-1]]
        perm = np.lexsort((self.session_ids, first_t))
        if np.array_equal(perm, np.arange(perm.size)):
            return self
        lengths = self.session_lengths()[perm]
        starts = self.offsets[:-1][perm]
        offsets = np.zeros(perm.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ev = np.repeat(starts - offsets[:-1], lengths) + np.arange(self.n_events)
        return SessionData(self.item_ids, self.items[ev], offsets, self.session_ids[perm], self.times[ev])

    def filter_min_length(self, min_len: int = 2) -> tuple["SessionData", int]:
        """Drop sessions shorter than ``min_len``. Returns ``(new data, number of sessions dropped)``.

        The item map is kept as it is (item indices stay valid)."""
        keep = self.session_lengths() >= int(min_len)
        n_drop = int((~keep).sum())
        if n_drop == 0:
            return self, 0
        ev = np.repeat(keep, self.session_lengths())
        return self._subset(ev, keep, self.item_ids, self.items), n_drop

    def remap(self, item_ids: np.ndarray, *, allow_empty: bool = False) -> tuple["SessionData", dict[str, int]]:
        """Re-express this data in another (sorted, unique) item map, e.g. a model's training ``item_ids``.

        Events whose item is not in ``item_ids`` are dropped, then sessions with fewer than 2 events. Returns
        ``(data, report)`` with report keys unknown_events, dropped_sessions, kept_events, kept_sessions.
        Raises ``ValueError`` if nothing is left (unless ``allow_empty``).
        """
        target = np.asarray(item_ids)
        if target.ndim != 1 or target.size == 0:
            raise ValueError("remap: item_ids must be a non-empty 1-D array of item ids")
        target = to_int_ids(target, "item_ids")
        if target.size > 1 and not np.all(target[1:] > target[:-1]):
            raise ValueError("remap: item_ids must be sorted and unique (as SessionData.item_ids / model.item_ids)")
        orig = self.item_ids[self.items]
        pos = np.searchsorted(target, orig)
        np.minimum(pos, target.size - 1, out=pos)
        known = target[pos] == orig
        sess_idx = np.repeat(np.arange(self.n_sessions), self.session_lengths())
        kept_len = np.bincount(sess_idx[known], minlength=self.n_sessions)
        keep = kept_len >= 2
        ev = known & keep[sess_idx]
        report = {"unknown_events": int((~known).sum()), "dropped_sessions": int((~keep).sum()),
                  "kept_events": int(ev.sum()), "kept_sessions": int(keep.sum())}
        if report["kept_sessions"] == 0 and not allow_empty:
            raise ValueError(f"no session keeps 2 or more events whose items are in the given item map "
                             f"({report['unknown_events']} of {self.n_events} events have unknown items)")
        return self._subset(ev, keep, target, pos.astype(np.int32)), report

    def to_pandas(self) -> pd.DataFrame:
        """DataFrame with columns SessionId, ItemId (original ids), Time, in session order."""
        return pd.DataFrame({"SessionId": np.repeat(self.session_ids, self.session_lengths()),
                             "ItemId": self.item_ids[self.items], "Time": self.times})


# ---------------------------------------------------------------------------------------------------- file reading
def _infer_sep(path: str) -> str:
    p = path.lower()
    for comp in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        if p.endswith(comp):
            p = p[: -len(comp)]
    return "\t" if p.endswith((".tsv", ".txt")) else ","


def read_csv_checked(path: str, **kw: Any) -> pd.DataFrame:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a csv/tsv file")
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as a {'tsv' if kw.get('sep') == chr(9) else 'csv'} file: {e}") \
            from None
