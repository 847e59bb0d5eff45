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

from .columns import ID_TYPES, check_id_type, encode_ids, to_ids, to_int_ids, to_times  # noqa: F401  (re-exported)

__all__ = ["SessionData"]


# ---------------------------------------------------------------------------------------------------- helpers
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


def _id_array(a: Any) -> np.ndarray:
    """An id array as SessionData keeps it: object (strs) stays object, anything else becomes int64."""
    a = np.asarray(a)
    return np.ascontiguousarray(a) if a.dtype == object else np.ascontiguousarray(a, dtype=np.int64)


def _flat(values: Any) -> Any:
    """from_arrays input -> a 1-D array or Series. A list mixing ints and strs stays objects (numpy would turn
    every element into a string, and 7 would become "7")."""
    if isinstance(values, pd.Series):
        return values
    a = np.asarray(values)
    if a.dtype.kind in "US" and not isinstance(values, np.ndarray) and a.ndim == 1:
        o = np.empty(a.size, dtype=object)
        o[:] = list(values)
        return o
    return a.ravel()


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
    item_ids : [n_items]           sorted unique original item ids (int64, or object-dtype Python str); the
                                   position is the item index.
    items    : int32 [n_events]    item index of every event, grouped by session.
    offsets  : int64 [n_sessions+1] session ``s`` is events ``offsets[s]:offsets[s+1]``.
    session_ids : [n_sessions]     original session ids (int64, or object-dtype str), in session order.
    times    : float64 [n_events]  event times (the file's numeric unit; dates become epoch seconds, UTC).

    Sessions are ordered by their first time (ties by session id), events by time within a session, stable.
    One-event sessions are kept unless ``min_session_length`` says otherwise: they give no training pair but
    count in evaluation statistics. A log in which no session has 2+ events is rejected.
    When ``time_key=None`` the row order within a session is its time (``times`` is then the row number).

    Ids are integers or strings (``id_type``, see ``encode_ids``): distinct ids never merge ("007" and "7" are
    two items). ``from_csv`` reads ids as strings unless told ``id_type='int'``.
    """

    def __init__(self, item_ids: np.ndarray, items: np.ndarray, offsets: np.ndarray, session_ids: np.ndarray,
                 times: np.ndarray):
        self.item_ids = _id_array(item_ids)
        self.items = np.ascontiguousarray(items, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.session_ids = _id_array(session_ids)
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
    def from_arrays(cls, session_ids: Any, item_ids: Any, times: Any = None, *, min_session_length: int = 1,
                    id_type: str = "auto") -> "SessionData":
        """Build from three equally long 1-D arrays. ``times=None``: the array order is the time.
        ``id_type``: how ids are read ('auto', 'str', 'int'; see ``encode_ids``)."""
        check_id_type(id_type)
        sess = encode_ids(_flat(session_ids), "SessionId", id_type)
        its = encode_ids(_flat(item_ids), "ItemId", id_type)
        if times is None:
            t = np.arange(sess[0].size, dtype=np.float64)
        else:
            t = to_times(_flat(times), "Time")
        if not (sess[0].size == its[0].size == t.size):
            raise ValueError(f"session_ids, item_ids and times must have the same length; got "
                             f"{sess[0].size}, {its[0].size}, {t.size}")
        return cls._build(sess, its, t, min_session_length)

    @classmethod
    def from_pandas(cls, df: pd.DataFrame, session_key: str = "SessionId", item_key: str = "ItemId",
                    time_key: str | None = "Time", *, min_session_length: int = 1,
                    id_type: str = "auto") -> "SessionData":
        """Build from a DataFrame (never modified). ``time_key=None``: the row order within a session is its time.
        ``id_type``: how ids are read ('auto', 'str', 'int'; see ``encode_ids``)."""
        check_id_type(id_type)
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"from_pandas expects a pandas DataFrame; got {type(df).__name__}")
        need = [session_key, item_key] + ([time_key] if time_key is not None else [])
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise missing_columns_error(missing, list(df.columns), "from_pandas")
        if len(df) == 0:
            raise ValueError("the click log is empty (no rows)")
        sess = encode_ids(df[session_key], session_key, id_type)
        its = encode_ids(df[item_key], item_key, id_type)
        t = to_times(df[time_key], time_key) if time_key is not None else np.arange(len(df), dtype=np.float64)
        return cls._build(sess, its, t, min_session_length)

    @classmethod
    def from_csv(cls, path: str | os.PathLike, sep: str | None = ",", session_key: str = "SessionId",
                 item_key: str = "ItemId", time_key: str | None = "Time", *, min_session_length: int = 1,
                 id_type: str = "str", **read_kwargs: Any) -> "SessionData":
        """Read a csv / tsv (optionally compressed, e.g. ``.gz``) with a header row.

        ``sep=None`` infers it from the extension: ``.tsv`` / ``.txt`` -> tab, otherwise comma.
        ``time_key=None``: the row order within a session is its time.
        ``id_type``: 'str' (default) reads the ids as the exact strings of the file ("NA" is an id too; an
        empty field is an error), so distinct ids never merge; 'int' reads integer ids ("007" is 7); 'auto'
        reads the strings and makes a column integers only if every id is an integer written canonically
        ("7", "-12"; not "007", "+7" or " 7"), which no two distinct ids share.
        """
        check_id_type(id_type)
        path = os.fspath(path)
        if sep is None:
            sep = _infer_sep(path)
        need = [session_key, item_key] + ([time_key] if time_key is not None else [])
        header = read_csv_checked(path, sep=sep, **{**read_kwargs, "nrows": 0})
        missing = [c for c in need if c not in header.columns]
        if missing:
            raise missing_columns_error(missing, list(header.columns), f"{path}")
        if id_type != "int":
            read_kwargs = _str_id_kwargs(read_kwargs, [session_key, item_key], time_key)
        df = read_csv_checked(path, sep=sep, usecols=need, **read_kwargs)
        if len(df) == 0:
            raise ValueError(f"{path}: the click log is empty (no rows)")
        try:
            if id_type != "int":
                df = df.copy(deep=False)
                for col in (session_key, item_key):
                    _check_no_empty(df[col], col)
                    if id_type == "auto" and _canonical_ints(df[col]):
                        df[col] = to_int_ids(df[col], col)
            return cls.from_pandas(df, session_key, item_key, time_key, min_session_length=min_session_length,
                                   id_type=id_type)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_parquet(cls, path: str | os.PathLike, session_key: str = "SessionId", item_key: str = "ItemId",
                     time_key: str | None = "Time", *, min_session_length: int = 1,
                     id_type: str = "auto") -> "SessionData":
        """Read a parquet file (or dataset directory). ``time_key=None``: row order within a session is time.
        ``id_type``: how ids are read ('auto': integer columns as integers, string columns as strings)."""
        check_id_type(id_type)
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
        conv = {session_key: lambda v, c: encode_ids(v, c, id_type), item_key: lambda v, c: encode_ids(v, c, id_type)}
        if time_key is not None:
            conv[time_key] = to_times
        out: dict[str, Any] = {}
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
    def _build(cls, sess_enc: tuple, its_enc: tuple, t: np.ndarray, min_session_length: int) -> "SessionData":
        """Group by session (time-ordered within, stable), order sessions by (first time, id), map the items.

        ``sess_enc`` / ``its_enc`` are ``encode_ids`` results: (int64 ids, None) or (codes, sorted unique strs).
        String ids are grouped and sorted by their codes, which order like the strings.

        Memory: besides the inputs and the outputs (items int32 + times float64 = 12 bytes/event), at most one
        event permutation (int32 below 2**31 events; none when the rows are already grouped and time-ordered),
        a few per-session and per-item arrays and O(_CHUNK) temporaries; no per-event Python objects and no
        full-size copies of the inputs."""
        sess, sess_names = sess_enc
        its, item_names = its_enc
        if sess.size == 0:
            raise ValueError("the click log is empty (no rows)")
        if int(min_session_length) < 1:
            raise ValueError(f"min_session_length must be >= 1; got {min_session_length!r}")
        n = sess.size
        if item_names is None:
            item_ids, to_index = _item_map(its)
        else:  # the codes are already the sorted item indices
            item_ids, to_index = item_names, lambda x: x.astype(np.int32)
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
        if sess_names is not None:
            session_ids = sess_names[session_ids]
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
        from .itemmap import ItemMap, id_kind
        target = np.asarray(item_ids)
        if target.ndim != 1 or target.size == 0:
            raise ValueError("remap: item_ids must be a non-empty 1-D array of item ids")
        if target.dtype.kind in "fb":  # exact-integer floats as before; booleans rejected by name
            target = to_int_ids(target, "item_ids")
        try:
            imap = ItemMap(target)
        except ValueError as e:
            raise ValueError(f"remap: {e} (as SessionData.item_ids / model.item_ids)") from None
        if imap.kind != id_kind(self.item_ids):
            kinds = {"str": "strings", "int": "integers"}
            raise ValueError(f"the model's item ids are {kinds[imap.kind]}, the test data's are "
                             f"{kinds[id_kind(self.item_ids)]}: read both with the same id_type")
        target = imap.ids
        # one lookup per distinct item, then per event by index
        item_pos, item_known = imap.lookup(self.item_ids)
        pos = item_pos[self.items]
        known = item_known[self.items]
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

    # ------------------------------------------------------------------ directories (the format: datadir.py)
    @classmethod
    def open(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = True,
             checksum: bool = False) -> "SessionData":
        """Open a SessionData directory written by ``gru4rec ingest`` (one split: ``out/train``, ``out/test``) or
        by ``save``. ``mmap=True``: items, offsets and times are read-only memory maps (nothing is read until
        used; processes that open the same directory share the pages); ``False`` reads them into memory.
        ``verify``: check meta.json against every file's dtype, shape and size (cheap); ``checksum``: also
        the CRC32 of every file and the item index range (reads everything once). Raises
        ``datadir.DataDirError`` (a ValueError) naming the file that does not match."""
        from .datadir import open_dir
        return open_dir(path, mmap=mmap, verify=verify, checksum=checksum)

    def save(self, path: str | os.PathLike) -> str:
        """Write this data as a SessionData directory (the format of ``gru4rec ingest``; see ``open``), replacing
        ``path`` atomically. Returns the absolute path."""
        from .datadir import save
        return save(self, path)


# ---------------------------------------------------------------------------------------------------- file reading
try:  # pandas' default missing-value strings, for the time column only
    from pandas._libs.parsers import STR_NA_VALUES as _NA_STRINGS
except ImportError:  # pragma: no cover - other pandas versions
    _NA_STRINGS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                   "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def _str_id_kwargs(kw: dict, id_cols: list, time_key: str | None) -> dict:
    """read_csv arguments that read the id columns as exact strings ("NA", "007" and " 7 " stay ids as written)
    and the time column as before. The caller's own dtype / NA settings win."""
    kw = dict(kw)
    dtype = kw.get("dtype")
    if dtype is None or isinstance(dtype, dict):
        kw["dtype"] = {**{c: str for c in id_cols}, **(dtype or {})}
    if "keep_default_na" not in kw and "na_values" not in kw:
        kw["keep_default_na"] = False
        kw["na_values"] = {time_key: sorted(_NA_STRINGS)} if time_key is not None else {}
    return kw


def _canonical_ints(s: pd.Series) -> bool:
    """Every string an int64 in its one canonical spelling (so reading them as integers merges nothing)."""
    if not (pd.api.types.is_string_dtype(s.dtype) or s.dtype == object):
        return False
    ok = s.astype(str).str.fullmatch(r"-?(?:0|[1-9][0-9]{0,18})").to_numpy(dtype=bool, na_value=False)
    if not ok.all():
        return False
    n = pd.to_numeric(s, errors="coerce")
    return bool(pd.api.types.is_integer_dtype(n.dtype) and (n.dtype != np.uint64 or n.max() < 2 ** 63))


def _check_no_empty(s: pd.Series, col: str) -> None:
    """An empty field of a string id column is a missing value, not the id ''."""
    empty = (s == "").to_numpy(dtype=bool, na_value=False)
    if empty.any():
        raise ValueError(f"column {col!r} has {int(empty.sum())} missing (empty) value(s), first at row "
                         f"{int(np.argmax(empty))}; drop or fill those rows first")


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
