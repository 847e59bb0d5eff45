"""Out-of-core ingestion: a click log on disk -> SessionData directories (``datadir.py``), one per split, by DuckDB
under a memory limit (optional extra ``ingest``: ``pip install "gru4rec-kernels[ingest]"``).

Input: a directory of Parquet files (hive partitions such as ``day=2014-04-01/part-0.parquet`` included), one
Parquet file, or a CSV / TSV file (gzip too) with a header. The protocol is ``preprocess.preprocess``'s, and
the artifacts equal ``SessionData.from_pandas`` of its splits (``tests/test_ingest.py`` checks it):

1. ``load``: the three columns, typed as ``columns.py`` types them (ids int64 or exact strings, ``id_type``;
   time in float seconds, dates as UTC epoch seconds), validated, copied into a DuckDB table in input order
   (the row order breaks ties between equal times within a session, as the stable in-memory sort does);
2. ``filter``: drop sessions shorter than ``min_session_length``, items with fewer than ``min_item_support``
   events, short sessions again; repeated until nothing changes (``iterate``) or once;
3. ``split``: test = the sessions whose last event is within ``test_days`` days of the log's last event; the
   item map = train's items, sorted; test events of other items dropped, then short test sessions;
4. ``write train``, ``write test``: per split, events sorted by (session start, session, time, input row) out
   of core, streamed in Arrow batches into the ``.npy`` files, the id maps written as Parquet, ``meta.json``.

Everything is built in a work directory next to the output (``.<name>.ingest``: the DuckDB database, its spill
files, the new output), which is renamed over the output only when complete: a failure leaves the previous
output as it was. The work directory keeps each finished stage, keyed by the input files' sizes and mtimes and
the options, so a rerun after a failure starts at the first unfinished stage; a rerun with the output complete
for the same key does nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time

import numpy as np

from . import datadir
from .columns import check_id_type
from .data import _infer_sep, missing_columns_error

__all__ = ["ingest", "IngestError", "STAGES"]

log = logging.getLogger("gru4rec_kernels")

STAGES = ("load", "filter", "split", "write train", "write test")
INGEST_FORMAT = "gru4rec-kernels/ingest"
SUMMARY = "ingest.json"
_DAY = 86400.0
_BATCH_ROWS = 1 << 20
_PARQUET_EXT = (".parquet", ".parq", ".pq")
_INSTALL = 'pip install "gru4rec-kernels[ingest]"   (or: pip install "duckdb>=1.2")'


class IngestError(ValueError):
    """Bad input or options of an ingestion (the message names the column, value or option)."""


def _duckdb():
    try:
        import duckdb
    except ImportError:
        raise RuntimeError(f"ingestion needs DuckDB, which is not installed: {_INSTALL}") from None
    # older versions read Parquet nanosecond timestamps at microsecond precision, and need more memory
    if tuple(int(p) for p in re.findall(r"\d+", duckdb.__version__)[:2]) < (1, 2):
        raise RuntimeError(f"ingestion needs DuckDB 1.2 or newer; this is {duckdb.__version__}: {_INSTALL}")
    return duckdb


# ---------------------------------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class _Options:
    """What the output depends on (the restart key hashes these with the input files)."""
    session_key: str
    item_key: str
    time_key: str
    id_type: str
    sep: str | None
    min_item_support: int
    min_session_length: int
    test_days: float | None
    iterate: bool
    times: bool

    def check(self) -> "_Options":
        for name in ("session_key", "item_key", "time_key"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise IngestError(f"{name} must be a non-empty column name; got {v!r}")
        if len({self.session_key, self.item_key, self.time_key}) < 3:
            raise IngestError(f"session_key, item_key and time_key must be three different columns; got "
                              f"{self.session_key!r}, {self.item_key!r}, {self.time_key!r}")
        check_id_type(self.id_type)
        for name in ("min_item_support", "min_session_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise IngestError(f"{name} must be an int >= 1; got {v!r}")
        if self.test_days is not None and (isinstance(self.test_days, bool) or not isinstance(
                self.test_days, (int, float)) or not math.isfinite(self.test_days) or self.test_days <= 0):
            raise IngestError(f"test_days must be a positive number of days (or None: no test split); got "
                              f"{self.test_days!r}")
        if self.sep is not None and (not isinstance(self.sep, str) or len(self.sep) != 1 or self.sep in "\"\n\r"):
            raise IngestError(f"sep must be one character (not a quote or a newline); got {self.sep!r}")
        # one spelling per value, so that equal options give the same restart key
        return dataclasses.replace(self, min_item_support=int(self.min_item_support),
                                   min_session_length=int(self.min_session_length),
                                   test_days=None if self.test_days is None else float(self.test_days),
                                   iterate=bool(self.iterate), times=bool(self.times))


_MEMORY_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}
_MIN_MEMORY = 16 * 10**6  # below this DuckDB fails even to checkpoint its own tables


def _check_memory_limit(v: str) -> str:
    m = _MEMORY_RE.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise IngestError(f"memory_limit must be a size such as '2GB' or '512MiB'; got {v!r}")
    if float(m.group(1)) * _UNITS[m.group(2).upper()] < _MIN_MEMORY:
        raise IngestError(f"memory_limit must be at least 16MB; got {v!r}")
    return v.strip()


# ---------------------------------------------------------------------------------------------------- the input
@dataclasses.dataclass(frozen=True)
class _Source:
    path: str
    kind: str            # "parquet" or "csv"
    files: tuple         # absolute paths, sorted
    hive: bool           # a directory with key=value folders

    def fingerprint(self) -> list:
        out = []
        for f in self.files:
            st = os.stat(f)
            out.append([os.path.relpath(f, self.path) if f != self.path else os.path.basename(f), st.st_size,
                        st.st_mtime_ns])
        return out


def find_source(source) -> _Source:
    """A directory (its Parquet files, recursively, hidden and ``_``-prefixed names skipped as Spark / Hive
    write them), a Parquet file, or a CSV / TSV file."""
    path = os.path.abspath(os.fspath(source))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {source}")
    if os.path.isdir(path):
        files, hive = [], False
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            for n in names:
                if n.lower().endswith(_PARQUET_EXT) and not n.startswith((".", "_")):
                    files.append(os.path.join(root, n))
                    hive = hive or "=" in os.path.relpath(root, path)
        if not files:
            raise IngestError(f"{source}: no Parquet file (*.parquet) in this directory or below it")
        return _Source(path, "parquet", tuple(sorted(files)), hive)
    with open(path, "rb") as f:
        magic = f.read(4)
    kind = "parquet" if path.lower().endswith(_PARQUET_EXT) or magic == b"PAR1" else "csv"
    return _Source(path, kind, (path,), False)


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source_sql(src: _Source, sep: str | None) -> str:
    if src.kind == "parquet":
        files = "[" + ", ".join(_sql_str(f) for f in src.files) + "]"
        return f"read_parquet({files}, hive_partitioning={str(src.hive).lower()}, union_by_name=true)"
    sep = _infer_sep(src.path) if sep is None else sep
    # every column as text: the ids stay the file's exact strings and the time is converted below
    return f"read_csv({_sql_str(src.path)}, delim={_sql_str(sep)}, header=true, all_varchar=true)"


# ---------------------------------------------------------------------------------------------------- typing
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
              "UBIGINT", "UHUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE"}
_TIME_US_TYPES = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "DATE"}
_TIME_TZ = "TIMESTAMP WITH TIME ZONE"
_CANONICAL_INT = r"-?(?:0|[1-9][0-9]{0,18})"  # data._canonical_ints: the one spelling of an int64
_NUMBER = r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*"


def _is_numeric(typ: str) -> bool:
    return typ in _INT_TYPES or typ in _FLOAT_TYPES or typ.startswith("DECIMAL")


def _is_text(typ: str) -> bool:
    return typ == "VARCHAR" or typ.startswith("ENUM")


def _epoch_seconds(us: str, per_second: int) -> str:
    """Whole seconds plus the fraction, as columns.to_times computes them from nanoseconds (the float nearest to
    the exact time, which a single division would not give); floor division, so times before 1970 are right."""
    frac = f"((({us}) % {per_second} + {per_second}) % {per_second})"
    whole = f"CAST((({us}) - {frac}) // {per_second} AS DOUBLE)"
    return f"({whole} + CAST({frac} AS DOUBLE) / CAST({per_second} AS DOUBLE))"


@dataclasses.dataclass
class _Check:
    bad: str       # SQL condition true for a bad row
    message: str   # with {n} (count) and {example} (a bad value)


@dataclasses.dataclass
class _Variant:
    expr: str      # SQL converting the column
    kind: str      # "int" / "str" (ids), "number" / "date" (time)
    checks: list


@dataclasses.dataclass
class _Column:
    name: str
    null: str                # SQL: the row's value is missing
    variants: list           # one, or two chosen between by ``decide``
    decide: str | None = None  # SQL aggregate: true -> variants[0], false -> variants[1]


def _id_column(name: str, typ: str, id_type: str, csv: bool) -> _Column:
    q = _ident(name)
    fit = f"column {name!r} has {{n}} id(s) that do not fit in int64, e.g. {{example}}"
    if typ == "BOOLEAN":
        raise IngestError(f"column {name!r} holds booleans; ids must be integers or strings")
    if typ in _INT_TYPES:
        as_int = f"TRY_CAST({q} AS BIGINT)"
        checks = [_Check(f"{as_int} IS NULL", fit)] if typ in ("UBIGINT", "HUGEINT", "UHUGEINT") else []
        if id_type == "str":
            return _Column(name, f"{q} IS NULL", [_Variant(f"CAST({as_int} AS VARCHAR)", "str", checks)])
        return _Column(name, f"{q} IS NULL", [_Variant(as_int, "int", checks)])
    if typ in _FLOAT_TYPES or typ.startswith("DECIMAL"):
        d = f"CAST({q} AS DOUBLE)"
        checks = [_Check(f"NOT (isfinite({d}) AND {d} = floor({d}) AND abs({d}) <= 9223372036854774784.0)",
                         f"column {name!r} has {{n}} non-integer id(s), e.g. {{example}}; ids must be integers "
                         f"(or floats that are exactly integer)")]
        as_int = f"CAST({d} AS BIGINT)"
        variant = _Variant(f"CAST({as_int} AS VARCHAR)", "str", checks) if id_type == "str" else \
            _Variant(as_int, "int", checks)
        return _Column(name, f"({q} IS NULL OR isnan({d}))", [variant])
    if not _is_text(typ):
        raise IngestError(f"column {name!r} has type {typ}; ids must be integers or strings")
    text = f"CAST({q} AS VARCHAR)"
    empty = [_Check(f"{text} = ''", f"column {name!r} has {{n}} missing (empty) value(s); drop or fill those rows "
                                    f"first")] if csv else []
    as_str = _Variant(text, "str", empty)
    if id_type == "int":  # the caller's explicit choice: decimal strings parsed ("007" is 7), as to_int_ids
        digits = rf"regexp_extract({text}, '^\s*([+-]?[0-9]+)\s*$', 1)"
        return _Column(name, f"{q} IS NULL", [_Variant(f"TRY_CAST({digits} AS BIGINT)", "int", [
            _Check(f"{digits} = ''", f"column {name!r} has {{n}} non-integer id(s), e.g. {{example}}; ids must be "
                                     f"integers, floats that are exactly integer, or strings of decimal digits"),
            _Check(f"{digits} <> '' AND TRY_CAST({digits} AS BIGINT) IS NULL", fit)])])
    if id_type == "auto" and csv:  # integers only if every id is an int64 in its one spelling (from_csv's rule)
        canonical = f"(regexp_full_match({text}, '{_CANONICAL_INT}') AND TRY_CAST({text} AS BIGINT) IS NOT NULL)"
        return _Column(name, f"{q} IS NULL", [_Variant(f"TRY_CAST({text} AS BIGINT)", "int", []), as_str],
                       decide=f"coalesce(bool_and({canonical}), true)")
    return _Column(name, f"{q} IS NULL", [as_str])


def _time_column(name: str, typ: str) -> _Column:
    q = _ident(name)
    finite = "column {name!r} has {{n}} non-finite time(s), e.g. {{example}}".format(name=name)
    if _is_numeric(typ):
        d = f"CAST({q} AS DOUBLE)"
        return _Column(name, f"({q} IS NULL OR isnan({d}))", [_Variant(d, "number", [_Check(f"NOT isfinite({d})",
                                                                                             finite)])])
    if typ in _TIME_US_TYPES:
        return _Column(name, f"{q} IS NULL", [_Variant(_epoch_seconds(f"epoch_us(CAST({q} AS TIMESTAMP))",
                                                                      1_000_000), "date", [])])
    if typ == _TIME_TZ:
        return _Column(name, f"{q} IS NULL", [_Variant(_epoch_seconds(f"epoch_us({q})", 1_000_000), "date", [])])
    if typ == "TIMESTAMP_NS":
        return _Column(name, f"{q} IS NULL", [_Variant(_epoch_seconds(f"epoch_ns({q})", 1_000_000_000),
                                                       "date", [])])
    if not _is_text(typ):
        raise IngestError(f"column {name!r} has type {typ}; time must be numeric or a date/time")
    text = f"CAST({q} AS VARCHAR)"
    d = f"TRY_CAST({text} AS DOUBLE)"
    ts = f"TRY_CAST({text} AS TIMESTAMPTZ)"
    # as columns.to_times: numbers if every value is one, else every value must be a date/time (UTC)
    return _Column(name, f"({q} IS NULL OR trim({text}) = '')", [
        _Variant(d, "number", [_Check(f"{d} IS NULL OR NOT isfinite({d})", finite)]),
        _Variant(_epoch_seconds(f"epoch_us({ts})", 1_000_000), "date", [
            _Check(f"{ts} IS NULL", f"column {name!r} has {{n}} value(s) that are neither a number nor a "
                                    f"date/time, e.g. {{example}}")])],
        decide=f"coalesce(bool_and(regexp_full_match({text}, '{_NUMBER}')), true)")


# ---------------------------------------------------------------------------------------------------- stages
def _stage_load(con, src: _Source, opts: _Options) -> dict:
    """The typed, checked events as table ``ev`` (s, i, t) in input order (its rowid)."""
    where = src.path
    from_sql = _source_sql(src, opts.sep)
    try:
        if src.kind == "csv":  # parse the text once; every later pass reads DuckDB's own table
            cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {from_sql}").fetchall()]
            _require_columns(cols, opts, where)
            keep = ", ".join(_ident(c) for c in (opts.session_key, opts.item_key, opts.time_key))
            _in_order(con, f"CREATE OR REPLACE TABLE raw AS SELECT {keep} FROM {from_sql}")
            from_sql = "raw"
        schema = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {from_sql}").fetchall()}
    except _duckdb().Error as e:
        raise IngestError(f"cannot read {where} as {src.kind}: {_first_line(e)}") from None
    _require_columns(list(schema), opts, where)
    csv = src.kind == "csv"
    columns = {"s": _id_column(opts.session_key, schema[opts.session_key], opts.id_type, csv),
               "i": _id_column(opts.item_key, schema[opts.item_key], opts.id_type, csv),
               "t": _time_column(opts.time_key, schema[opts.time_key])}
    # one scan: the row count, the missing values, the choices (int or str ids, numbers or dates) and every
    # candidate conversion's checks
    aggs = ["count(*)"]
    for c in columns.values():
        aggs.append(f"count_if({c.null})")
        aggs.append(c.decide or "true")
        aggs += [f"count_if(NOT ({c.null}) AND ({k.bad}))" for v in c.variants for k in v.checks]
    try:
        row = list(con.execute(f"SELECT {', '.join(aggs)} FROM {from_sql}").fetchall()[0])
    except _duckdb().Error as e:
        raise IngestError(f"cannot read {where} as {src.kind}: {_first_line(e)}") from None
    n = row.pop(0)
    if n == 0:
        raise IngestError(f"{where}: the click log is empty (no rows)")
    chosen = {}
    for key, c in columns.items():
        n_null, decision = row.pop(0), row.pop(0)
        counts = [[row.pop(0) for _ in v.checks] for v in c.variants]
        if n_null:
            raise IngestError(f"{where}: column {c.name!r} has {n_null} missing (NULL/NaN/empty) value(s); drop or "
                              f"fill those rows first")
        pick = 0 if decision or len(c.variants) == 1 else 1
        variant = c.variants[pick]
        for check, bad in zip(variant.checks, counts[pick]):
            if bad:
                example = con.execute(f"SELECT {_ident(c.name)} FROM {from_sql} WHERE {check.bad} LIMIT 1").fetchall()
                raise IngestError(f"{where}: " + check.message.format(n=bad, example=repr(example[0][0])))
        chosen[key] = variant
    _in_order(con, f"CREATE OR REPLACE TABLE ev AS SELECT {chosen['s'].expr} AS s, {chosen['i'].expr} AS i, "
                f"{chosen['t'].expr} AS t FROM {from_sql}")
    con.execute("DROP TABLE IF EXISTS raw")
    return {"raw_events": int(n), "session_id_kind": chosen["s"].kind, "item_id_kind": chosen["i"].kind,
            "time_kind": chosen["t"].kind}


def _in_order(con, sql: str) -> None:
    """Run a statement whose output must keep the order its query produces (the input's, or its ORDER BY): a
    CREATE TABLE AS whose rowid is then the row's position, or a COPY. Elsewhere DuckDB may reorder rows, which
    saves memory (it need not hold batches back to emit them in order)."""
    con.execute("SET preserve_insertion_order = true")
    try:
        con.execute(sql)
    finally:
        con.execute("SET preserve_insertion_order = false")


def _require_columns(have: list, opts: _Options, where: str) -> None:
    missing = [c for c in (opts.session_key, opts.item_key, opts.time_key) if c not in have]
    if missing:
        raise missing_columns_error(missing, have, where)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _stage_filter(con, opts: _Options) -> dict:
    """preprocess.filter_support as SQL, into table ``flt`` (s, i, t, ord), ord being the input row.

    A pass drops the sessions shorter than msl, then the items with fewer than mis events, then the sessions
    now shorter than msl. The first step copies the log's remaining events into ``flt``; the other two delete
    from it in place, and only the sessions that lost an event in the second can fail the third. After a pass
    every session has >= msl events, so a next pass starts at the items: none below mis means stable
    (filter_support's loop stops there: its next pass would remove nothing)."""
    msl, mis = int(opts.min_session_length), int(opts.min_item_support)
    con.execute(f"CREATE OR REPLACE TABLE long_s AS SELECT s FROM ev GROUP BY s HAVING count(*) >= {msl}")
    con.execute("CREATE OR REPLACE TABLE flt AS SELECT s, i, t, rowid AS ord FROM ev "
                "WHERE s IN (SELECT s FROM long_s)")
    con.execute("DROP TABLE long_s")
    con.execute("DROP TABLE ev")  # flt holds the input row (ord): ev is not read again
    passes = 0
    while True:
        passes += 1
        con.execute(f"CREATE OR REPLACE TABLE rare AS SELECT i FROM flt GROUP BY i HAVING count(*) < {mis}")
        if passes > 1 and not con.execute("SELECT count(*) FROM rare").fetchall()[0][0]:
            passes -= 1  # this pass would remove nothing: the previous one was the last
            break
        con.execute("CREATE OR REPLACE TABLE touched AS SELECT DISTINCT s FROM flt WHERE i IN (SELECT i FROM rare)")
        con.execute("DELETE FROM flt WHERE i IN (SELECT i FROM rare)")
        con.execute(f"""DELETE FROM flt WHERE s IN (SELECT s FROM flt WHERE s IN (SELECT s FROM touched)
                                                    GROUP BY s HAVING count(*) < {msl})""")
        con.execute("CHECKPOINT")  # DuckDB holds deletions in memory until a checkpoint writes them out
        if not opts.iterate:
            break
    con.execute("DROP TABLE IF EXISTS rare")
    con.execute("DROP TABLE IF EXISTS touched")
    # count(DISTINCT ...) does not spill: grouping does. But the bare "count(*) FROM (SELECT s FROM flt GROUP BY
    # s)" also ran out of memory under 2GB at 3e8 events (61M sessions, DuckDB 2.0: a 512 MiB allocation),
    # where the same grouping with an aggregate and a filter on it finished in 22 s.
    n, n_s, n_i = (int(v) for v in con.execute(
        "SELECT (SELECT count(*) FROM flt), "
        "(SELECT count(*) FROM (SELECT s, count(*) AS c FROM flt GROUP BY s) WHERE c > 0), "
        "(SELECT count(*) FROM (SELECT i, count(*) AS c FROM flt GROUP BY i) WHERE c > 0)").fetchall()[0])
    if n == 0:
        raise IngestError(f"nothing is left after dropping sessions shorter than {msl} and items with fewer than "
                          f"{mis} events")
    return {"events": n, "sessions": n_s, "items": n_i, "passes": passes}


def _stage_split(con, opts: _Options) -> dict:
    """preprocess.split_by_time as SQL: tables ``sess_train`` / ``sess_test`` (s, start, n) in session order
    (their rowid is the session index) and ``item_map`` (i) sorted (its rowid is the item index)."""
    msl = int(opts.min_session_length)
    con.execute("CREATE OR REPLACE TABLE sess_all AS SELECT s, min(t) AS start, max(t) AS tend, count(*) AS n "
                "FROM flt GROUP BY s")
    t_max = float(con.execute("SELECT max(tend) FROM sess_all").fetchall()[0][0])
    info: dict = {"t_max": t_max}
    if opts.test_days is None:
        is_test = "false"
    else:
        threshold = t_max - float(opts.test_days) * _DAY  # the same float64 arithmetic as split_by_time
        info["threshold"] = threshold
        con.execute("CREATE OR REPLACE TABLE split_param AS SELECT CAST(? AS DOUBLE) AS threshold", [threshold])
        is_test = "tend >= (SELECT threshold FROM split_param)"
    _in_order(con, f"CREATE OR REPLACE TABLE sess_train AS SELECT s, start, n FROM sess_all WHERE NOT ({is_test}) "
                   f"ORDER BY start, s")
    _in_order(con, "CREATE OR REPLACE TABLE item_map AS SELECT DISTINCT i FROM flt "
                   "WHERE s IN (SELECT s FROM sess_train) ORDER BY i")
    if opts.test_days is not None:
        # test events of items unknown to train dropped, then short test sessions
        _in_order(con, f"""CREATE OR REPLACE TABLE sess_test AS
            SELECT s, min(t) AS start, count(*) AS n FROM flt
            WHERE s IN (SELECT s FROM sess_all WHERE {is_test}) AND i IN (SELECT i FROM item_map)
            GROUP BY s HAVING count(*) >= {msl} ORDER BY start, s""")
    con.execute("DROP TABLE sess_all")
    for split in _splits(opts):
        n_ev, n_s = con.execute(f"SELECT coalesce(sum(n), 0), count(*) FROM sess_{split}").fetchall()[0]
        info[split] = {"events": int(n_ev), "sessions": int(n_s)}
    info["n_items"] = int(con.execute("SELECT count(*) FROM item_map").fetchall()[0][0])
    if info["train"]["sessions"] == 0:
        raise IngestError(f"the split left no training session: every session ends in the last {opts.test_days} "
                          f"day(s) of the log (is the time in seconds?)")
    if con.execute("SELECT max(n) FROM sess_train").fetchall()[0][0] < 2:
        raise IngestError("no training session has 2 or more events: one-event sessions give no training pair")
    if opts.test_days is not None and info["test"]["sessions"] == 0:
        raise IngestError(f"the split left no test session of {msl} or more events with items seen in training "
                          f"(the last {opts.test_days} day(s); is the time in seconds?)")
    if info["n_items"] >= 2 ** 31:
        raise IngestError(f"too many distinct items ({info['n_items']}); at most 2**31-1 are supported")
    return info


def _splits(opts: _Options) -> tuple:
    return ("train",) if opts.test_days is None else ("train", "test")


def _stages(opts: _Options) -> tuple:
    return tuple(s for s in STAGES if not s.startswith("write") or s.split()[1] in _splits(opts))


def _arrow_batches(con, sql: str):
    rel = con.sql(sql)
    reader = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader  # newer / older duckdb
    return reader(_BATCH_ROWS)


def _stage_write(con, split: str, out: str, opts: _Options, provenance: dict, id_kinds: dict, n_items: int,
                 progress) -> dict:
    """One split's directory: arrays streamed from DuckDB's sorted output, the id maps, meta.json last."""
    os.makedirs(out)
    n_ev, n_s = (int(v) for v in con.execute(f"SELECT sum(n), count(*) FROM sess_{split}").fetchall()[0])
    files = {}
    offsets = datadir.NpyWriter(os.path.join(out, "offsets.npy"), datadir.ARRAYS["offsets"], n_s + 1)
    start = datadir.NpyWriter(os.path.join(out, "session_start.npy"), datadir.ARRAYS["session_start"], n_s)
    offsets.write(np.zeros(1, dtype=np.int64))
    end = 0
    for batch in _arrow_batches(con, f"SELECT n, start FROM sess_{split} ORDER BY rowid"):
        ends = np.cumsum(batch.column(0).to_numpy(), dtype=np.int64)
        ends += end
        offsets.write(ends)
        start.write(batch.column(1).to_numpy())
        end = int(ends[-1]) if ends.size else end
    files["offsets"], files["session_start"] = offsets.close(), start.close()
    items = datadir.NpyWriter(os.path.join(out, "items.npy"), datadir.ARRAYS["items"], n_ev)
    times = datadir.NpyWriter(os.path.join(out, "times.npy"), datadir.ARRAYS["times"], n_ev) if opts.times else None
    # the split's events are its sessions' events with train's items; the input row (ord) breaks ties between
    # equal times, as the stable in-memory sort does
    events = f"""SELECT CAST(m.idx AS INTEGER) AS idx, f.t FROM flt f
        JOIN (SELECT rowid AS sidx, s FROM sess_{split}) x ON f.s = x.s
        JOIN (SELECT rowid AS idx, i FROM item_map) m ON f.i = m.i
        ORDER BY x.sidx, f.t, f.ord"""
    for batch in _arrow_batches(con, events):
        items.write(batch.column(0).to_numpy())
        if times is not None:
            times.write(batch.column(1).to_numpy())
        progress(batch.num_rows)
    files["items"] = items.close()
    if times is not None:
        files["times"] = times.close()
    for stem, table, col in (("item_ids", "item_map", "i"), ("session_ids", f"sess_{split}", "s")):
        path = os.path.join(out, stem + ".parquet")
        _in_order(con, f"COPY (SELECT {col} AS {datadir.ID_FILES[stem]} FROM {table} ORDER BY rowid) TO "
                    f"{_sql_str(path)} (FORMAT parquet)")
        files[stem] = datadir.file_entry(path)
    meta = datadir.make_meta(n_ev, n_s, n_items, id_kinds["item_id_kind"], id_kinds["session_id_kind"], files,
                             {"split": split, **provenance})
    datadir.write_meta(out, meta)
    return {"events": n_ev, "sessions": n_s, "items": n_items}


# ---------------------------------------------------------------------------------------------------- state
def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _tables(con) -> set:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def _split_complete(directory: str) -> bool:
    try:
        datadir.open_dir(directory, verify=True)
        return True
    except (ValueError, OSError):
        return False


# the DuckDB tables a stage reads
_INPUTS = {"load": set(), "filter": {"ev"}, "split": {"flt"}, "write train": {"flt", "item_map", "sess_train"},
           "write test": {"flt", "item_map", "sess_test"}}


def _first_stage_to_run(stages: tuple, state: dict, tables: set, out: str) -> int:
    """The first stage not finished before (a write stage also needs its directory complete), moved back to
    an earlier one while its input tables are missing (e.g. a database lost with the work directory)."""
    first = 0
    while first < len(stages):
        stage = stages[first]
        if stage not in state["done"]:
            break
        if stage.startswith("write") and not _split_complete(os.path.join(out, stage.split()[1])):
            break
        first += 1
    while first > 0 and first < len(stages) and not _INPUTS[stages[first]] <= tables:
        first -= 1
    return first


def _is_up_to_date(target: str, key: str, opts: _Options) -> dict | None:
    summary = _read_json(os.path.join(target, SUMMARY))
    if not isinstance(summary, dict) or summary.get("key") != key:
        return None
    if all(_split_complete(os.path.join(target, s)) for s in _splits(opts)):
        return summary
    return None


# ---------------------------------------------------------------------------------------------------- entry
def ingest(source, out_dir, *, session_key: str = "SessionId", item_key: str = "ItemId", time_key: str = "Time",
           id_type: str | None = None, sep: str | None = None, min_item_support: int = 5,
           min_session_length: int = 2, test_days: float | None = 1.0, iterate: bool = True, times: bool = True,
           memory_limit: str = "2GB", threads: int | None = None, temp_dir: str | None = None,
           progress: bool = True) -> dict:
    """Ingest a click log into ``out_dir/train`` and ``out_dir/test`` (SessionData directories: open them with
    ``SessionData.open``) plus ``out_dir/ingest.json`` (the summary), out of core (see the module docstring).

    ``id_type``: how ids are read, as ``SessionData`` reads them: default 'str' for CSV (the exact strings;
    'auto' makes a column integers when every id is an integer in canonical form; 'int' parses them) and 'auto'
    for Parquet (integer columns integers, string columns strings). ``sep``: CSV separator (default: tab for
    .tsv / .txt, comma otherwise). ``test_days=None``: no split (everything in ``train``). ``iterate``: repeat
    the support filter until stable (False: the official script's single pass). ``times=False``: no
    ``times.npy`` (8 bytes an event less; training never reads it). ``memory_limit``: DuckDB's, which spills
    to ``temp_dir`` (default: inside the work directory next to ``out_dir``) beyond it. Returns the summary
    (counts, stages run or skipped, seconds), also written as ``out_dir/ingest.json``.
    """
    src = find_source(source)
    if id_type is None:
        id_type = "str" if src.kind == "csv" else "auto"
    opts = _Options(session_key, item_key, time_key, id_type, sep, min_item_support, min_session_length, test_days,
                    iterate, times).check()
    memory_limit = _check_memory_limit(memory_limit)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise IngestError(f"threads must be an int >= 1; got {threads!r}")
    target = os.path.abspath(os.fspath(out_dir))
    parent = os.path.dirname(target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise IngestError(f"the output {target} exists and is not a directory")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise IngestError(f"cannot write the output {target}: its folder {parent} does not exist or is read-only")
    if os.path.isdir(src.path) and (target + os.sep).startswith(src.path + os.sep):
        raise IngestError(f"the output {target} is inside the input directory {src.path}")
    key_obj = {"source": src.fingerprint(), "options": dataclasses.asdict(opts), "format": datadir.VERSION}
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:32]

    done = _is_up_to_date(target, key, opts)
    if done is not None:
        log.info("ingest: %s is up to date for %s", target, src.path)
        return {**done, "stages": {s: "up to date" for s in _stages(opts)}, "seconds": {}}
    duckdb = _duckdb()
    work = os.path.join(parent, f".{os.path.basename(target)}.ingest")
    state_path = os.path.join(work, "state.json")
    state = _read_json(state_path)
    if not isinstance(state, dict) or state.get("key") != key:  # another input or options: start afresh
        shutil.rmtree(work, ignore_errors=True)
        state = {"key": key, "done": {}}
    os.makedirs(work, exist_ok=True)
    new_out = os.path.join(work, "out")
    spill = os.path.abspath(temp_dir) if temp_dir else os.path.join(work, "spill")
    con = duckdb.connect(os.path.join(work, "work.duckdb"))
    report: dict = {"format": INGEST_FORMAT, "version": datadir.VERSION, "key": key, "source": src.path,
                    "source_kind": src.kind, "n_files": len(src.files), "options": dataclasses.asdict(opts),
                    "memory_limit": memory_limit, "duckdb": duckdb.__version__, "stages": {}, "seconds": {}}
    try:
        con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
        con.execute(f"SET temp_directory = {_sql_str(spill)}")
        con.execute("SET preserve_insertion_order = false")  # but in _in_order: reordering saves memory
        con.execute("SET TimeZone = 'UTC'")  # date/time strings without an offset are UTC, as in columns.py
        con.execute("SET enable_progress_bar = false")
        if threads is not None:
            con.execute(f"SET threads = {int(threads)}")
        stages = _stages(opts)
        first = _first_stage_to_run(stages, state, _tables(con), new_out)
        bar = _progress_bar(len(stages), progress)
        for k, stage in enumerate(stages):
            bar.set_description(f"ingest: {stage}")
            if k < first:
                report["stages"][stage] = "skipped (done before)"
                bar.update(1)
                continue
            state["done"].pop(stage, None)
            t0 = time.perf_counter()
            try:
                info = _run_stage(stage, con, src, opts, state["done"], new_out, key, memory_limit, progress)
                con.execute("CHECKPOINT")
            except duckdb.Error as e:
                if isinstance(e, duckdb.OutOfMemoryException) or re.search(
                        r"out of memory|failed to pin block|could not allocate", str(e), re.IGNORECASE):
                    raise RuntimeError(f"ingest, stage {stage!r}: DuckDB ran out of memory under memory_limit="
                                       f"{memory_limit} ({_first_line(e)}): raise the memory limit or use fewer "
                                       f"threads; finished stages are kept for the rerun") from None
                raise RuntimeError(f"ingest, stage {stage!r}: DuckDB failed: {_first_line(e)}") from None
            state["done"][stage] = info
            _write_json(state_path, state)
            report["stages"][stage] = "done"
            report["seconds"][stage] = round(time.perf_counter() - t0, 3)
            bar.update(1)
        bar.close()
        report["work_bytes"] = _dir_bytes(work)
        con.close()
        report["counts"] = {"raw": {"events": state["done"]["load"]["raw_events"]},
                            "filtered": {k: state["done"]["filter"][k] for k in ("events", "sessions", "items")},
                            **{s: state["done"][f"write {s}"] for s in _splits(opts)}}
        report["id_kinds"] = {k: state["done"]["load"][k] for k in ("session_id_kind", "item_id_kind", "time_kind")}
        report["filter_passes"] = state["done"]["filter"]["passes"]
        _write_json(os.path.join(new_out, SUMMARY), report)
        datadir.replace_dir(new_out, target)
    finally:
        con.close()
    shutil.rmtree(work, ignore_errors=True)
    return report


def _run_stage(stage: str, con, src: _Source, opts: _Options, done: dict, new_out: str, key: str,
               memory_limit: str, progress: bool) -> dict:
    if stage == "load":
        return _stage_load(con, src, opts)
    if stage == "filter":
        return _stage_filter(con, opts)
    if stage == "split":
        return _stage_split(con, opts)
    split = stage.split()[1]
    shutil.rmtree(os.path.join(new_out, split), ignore_errors=True)
    os.makedirs(new_out, exist_ok=True)
    provenance = {"written_by": "gru4rec ingest", "source": src.path, "ingest_key": key,
                  "filters": {k: getattr(opts, k) for k in ("min_item_support", "min_session_length", "iterate")},
                  "time_split": {"test_days": opts.test_days, "threshold": done["split"].get("threshold"),
                                 "t_max": done["split"]["t_max"]},
                  "memory_limit": memory_limit}
    with _progress_bar(done["split"][split]["events"], progress, unit="ev", leave=False,
                       desc=f"writing {split}") as bar:
        return _stage_write(con, split, os.path.join(new_out, split), opts, provenance, done["load"],
                            done["split"]["n_items"], bar.update)


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                total += os.path.getsize(os.path.join(root, n))
            except OSError:
                pass
    return total


def _progress_bar(total: int, show: bool, **kw):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not show, **kw)
