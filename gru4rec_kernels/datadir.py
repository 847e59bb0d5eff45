"""The on-disk SessionData: a directory of memory-mappable arrays, the id maps as Parquet, and ``meta.json``.

Written out of core by ``gru4rec ingest`` (``ingest.py``) and from memory by ``SessionData.save``; opened by
``SessionData.open``, which maps the arrays read-only, so training needs no DataFrame and every process of a
distributed run shares one copy of the data in the page cache.

    items.npy            int32   [n_events]       item index of every event, sessions one after another
    offsets.npy          int64   [n_sessions + 1] session s is items[offsets[s]:offsets[s + 1]]
    session_start.npy    float64 [n_sessions]     the session's first time
    times.npy            float64 [n_events]       every event's time (optional)
    item_ids.parquet     column item_id: row i is the original id of item index i (int64 or string, sorted)
    session_ids.parquet  column session_id, one row per session, in session order
    meta.json            format and version, counts, id kinds, and per file its size and CRC32; provenance

Sessions are in ``SessionData`` order (first time, then session id), events by time within a session (ties in
input order). ``meta.json`` is written last: a directory without it is incomplete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from functools import cached_property

import numpy as np

from .data import SessionData

FORMAT = "gru4rec-kernels/session-data"
VERSION = 1
META = "meta.json"
ARRAYS = {"items": np.dtype("<i4"), "offsets": np.dtype("<i8"), "session_start": np.dtype("<f8"),
          "times": np.dtype("<f8")}
ID_FILES = {"item_ids": "item_id", "session_ids": "session_id"}  # file stem -> its one column
_CHUNK_BYTES = 1 << 24


class DataDirError(ValueError):
    """A SessionData directory that is missing, incomplete or does not match its meta.json."""


# ---------------------------------------------------------------------------------------------------- writing
class NpyWriter:
    """A 1-D ``.npy`` file of known dtype and length, written front to back in chunks, with a running CRC32 of
    the whole file.

    The data goes through plain file writes, not a memory map: written pages stay in the page cache instead of
    the writer's resident set, so streaming 10^9 events out does not count 12 GB against the process."""

    def __init__(self, path: str, dtype, n: int):
        self.path, self.dtype, self.n = path, np.dtype(dtype), int(n)
        self._f = open(path, "wb")
        np.lib.format.write_array_header_1_0(self._f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                       "fortran_order": False, "shape": (self.n,)})
        self._f.flush()
        with open(path, "rb") as h:
            self._crc = zlib.crc32(h.read())
        self._pos = 0

    def write(self, chunk) -> None:
        a = np.ascontiguousarray(chunk, dtype=self.dtype)
        if self._pos + a.size > self.n:
            raise ValueError(f"{self.path}: more than the {self.n} values announced")
        buf = memoryview(a).cast("B")
        self._f.write(buf)
        self._crc = zlib.crc32(buf, self._crc)
        self._pos += a.size

    def close(self) -> dict:
        """Finish the file (its length must be the announced one); returns its meta.json entry."""
        if self._pos != self.n:
            self._f.close()
            raise ValueError(f"{self.path}: {self._pos} values written, {self.n} announced")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return {"file": os.path.basename(self.path), "dtype": self.dtype.str, "shape": [self.n],
                "bytes": os.path.getsize(self.path), "crc32": f"{self._crc:08x}"}

    def abort(self) -> None:
        self._f.close()


def write_array(path: str, a: np.ndarray, dtype) -> dict:
    w = NpyWriter(path, dtype, a.size)
    try:
        for j in range(0, a.size, _CHUNK_BYTES // 8):
            w.write(a[j:j + _CHUNK_BYTES // 8])
    except BaseException:
        w.abort()
        raise
    return w.close()


def file_crc32(path: str) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def file_entry(path: str) -> dict:
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path), "crc32": file_crc32(path)}


def write_ids(path: str, ids: np.ndarray, column: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    arr = pa.array(ids.tolist(), type=pa.string()) if ids.dtype == object else pa.array(ids, type=pa.int64())
    pq.write_table(pa.table({column: arr}), path)
    return file_entry(path)


def write_meta(directory: str, meta: dict) -> None:
    """meta.json last and atomically: its presence marks the directory complete."""
    tmp = os.path.join(directory, META + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, META))


def replace_dir(new: str, target: str) -> None:
    """Move the finished directory ``new`` to ``target``, replacing what was there: the old one is renamed away
    first and deleted only after the new one is in place (a crash in between leaves it as ``target``.old-*)."""
    old = None
    if os.path.lexists(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target) or ".")
        os.rmdir(old)
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save(data: SessionData, path: str | os.PathLike, extra_meta: dict | None = None) -> str:
    """Write ``data`` as a SessionData directory at ``path`` (replaced atomically if it exists)."""
    target = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{target} exists and is not a directory")
    if not os.path.isdir(parent):
        raise ValueError(f"the folder {parent} does not exist")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        files = {
            "items": write_array(os.path.join(tmp, "items.npy"), data.items, ARRAYS["items"]),
            "offsets": write_array(os.path.join(tmp, "offsets.npy"), data.offsets, ARRAYS["offsets"]),
            "session_start": write_array(os.path.join(tmp, "session_start.npy"),
                                         np.asarray(data.times)[data.offsets[:-1]], ARRAYS["session_start"]),
            "times": write_array(os.path.join(tmp, "times.npy"), data.times, ARRAYS["times"]),
            "item_ids": write_ids(os.path.join(tmp, "item_ids.parquet"), data.item_ids, ID_FILES["item_ids"]),
            "session_ids": write_ids(os.path.join(tmp, "session_ids.parquet"), data.session_ids,
                                     ID_FILES["session_ids"]),
        }
        meta = make_meta(data.n_events, data.n_sessions, data.n_items, _kind(data.item_ids),
                         _kind(data.session_ids), files, {"source": "SessionData.save", **(extra_meta or {})})
        write_meta(tmp, meta)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def make_meta(n_events: int, n_sessions: int, n_items: int, item_kind: str, session_kind: str, files: dict,
              provenance: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "n_events": int(n_events), "n_sessions": int(n_sessions),
            "n_items": int(n_items), "item_id_kind": item_kind, "session_id_kind": session_kind, "files": files,
            **provenance}


def _kind(ids: np.ndarray) -> str:
    return "str" if ids.dtype == object else "int"


# ---------------------------------------------------------------------------------------------------- reading
def read_meta(directory: str) -> dict:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no such SessionData directory: {directory}")
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
        subs = [s for s in ("train", "test") if os.path.isfile(os.path.join(directory, s, META))]
        if subs:
            raise DataDirError(f"{directory} holds the splits {subs} of an ingest: open "
                               f"{os.path.join(directory, subs[0])}")
        raise DataDirError(f"{directory} has no {META}: not a SessionData directory, or one whose writing did not "
                           f"finish")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataDirError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataDirError(f"{path}: not a {FORMAT} meta file")
    if meta.get("version") != VERSION:
        raise DataDirError(f"{path}: format version {meta.get('version')!r}; this library reads version {VERSION}")
    for key in ("n_events", "n_sessions", "n_items", "files"):
        if key not in meta:
            raise DataDirError(f"{path}: no {key!r}")
    return meta


def _npy_header(path: str) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, data offset) of a .npy file, checking that the file holds all its data."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise DataDirError(f"{path}: not a .npy file: {e}") from None
        offset = f.tell()
    if fortran or len(shape) != 1:
        raise DataDirError(f"{path}: expected a 1-D C-order array, got shape {shape}")
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if os.path.getsize(path) != need:
        raise DataDirError(f"{path}: {os.path.getsize(path)} bytes, the header announces {need} (truncated?)")
    return dtype, shape, offset


def _open_array(directory: str, meta: dict, name: str, n: int, mmap: bool, verify: bool) -> np.ndarray:
    entry = meta["files"].get(name)
    if entry is None:
        raise DataDirError(f"{directory}: meta.json lists no {name!r} file")
    path = os.path.join(directory, entry["file"])
    if not os.path.isfile(path):
        raise DataDirError(f"{directory}: {entry['file']} is missing")
    dtype, shape, offset = _npy_header(path)
    if verify and (dtype != ARRAYS[name] or shape != (n,) or entry.get("dtype") != dtype.str
                   or entry.get("bytes") != os.path.getsize(path)):
        raise DataDirError(f"{path}: {dtype.str} {shape} ({os.path.getsize(path)} bytes); meta.json and the counts "
                           f"say {ARRAYS[name].str} ({n},) ({entry.get('bytes')} bytes)")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return np.fromfile(path, dtype=dtype, count=n, offset=offset)


def read_ids(path: str, column: str, kind: str, n: int) -> np.ndarray:
    """An id file -> int64 array, or object array of Python str (the id arrays of SessionData)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataDirError(f"cannot read {path}: {e}") from None
    if table.column_names != [column] or table.num_rows != n:
        raise DataDirError(f"{path}: expected one column {column!r} of {n} rows; got {table.column_names} of "
                           f"{table.num_rows} rows")
    col = table.column(0)
    if kind == "str" and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        out = np.empty(n, dtype=object)
        out[:] = col.to_pylist()
        return out
    if kind == "int" and pa.types.is_integer(col.type):
        return col.to_numpy().astype(np.int64, copy=False)
    raise DataDirError(f"{path}: column of type {col.type}, meta.json says the ids are {kind}")


def verify_checksums(directory: str, meta: dict) -> None:
    for name, entry in meta["files"].items():
        path = os.path.join(directory, entry["file"])
        got = file_crc32(path)
        if got != entry.get("crc32"):
            raise DataDirError(f"{path}: CRC32 {got}, meta.json says {entry.get('crc32')} (the file changed or is "
                               f"damaged)")


class MappedSessionData(SessionData):
    """A SessionData opened from a directory (``SessionData.open``).

    ``items``, ``offsets``, ``session_start`` and ``times`` are read-only memory maps (with ``mmap=True``);
    ``item_ids`` are loaded. ``session_ids`` are read from their Parquet file on first use (training never
    needs them). A directory written without times gives every event its session's start time, materialised
    on first use (training never reads times; the evaluation's remap does)."""

    def __init__(self, path: str, meta: dict, item_ids: np.ndarray, items: np.ndarray, offsets: np.ndarray,
                 session_start: np.ndarray, times: np.ndarray | None):
        # SessionData.__init__ would pass every array through np.ascontiguousarray: fine for maps (no copy), but
        # it also needs session_ids and times, which load lazily here.
        self.path, self.meta = path, meta
        self.item_ids, self.items, self.offsets, self.session_start = item_ids, items, offsets, session_start
        if times is not None:
            self.times = times  # an instance attribute: the cached_property below is then never called

    @property
    def n_sessions(self) -> int:
        return int(self.offsets.size - 1)

    @cached_property
    def session_ids(self) -> np.ndarray:
        return read_ids(os.path.join(self.path, self.meta["files"]["session_ids"]["file"]),
                        ID_FILES["session_ids"], self.meta["session_id_kind"], self.n_sessions)

    @cached_property
    def times(self) -> np.ndarray:
        return np.repeat(np.asarray(self.session_start), np.diff(self.offsets))


def open_dir(path: str | os.PathLike, mmap: bool = True, verify: bool = True, checksum: bool = False
             ) -> MappedSessionData:
    directory = os.path.abspath(os.fspath(path))
    meta = read_meta(directory)
    if checksum:
        verify_checksums(directory, meta)
    n_ev, n_sess, n_items = int(meta["n_events"]), int(meta["n_sessions"]), int(meta["n_items"])
    items = _open_array(directory, meta, "items", n_ev, mmap, verify)
    offsets = _open_array(directory, meta, "offsets", n_sess + 1, mmap, verify)
    start = _open_array(directory, meta, "session_start", n_sess, mmap, verify)
    times = _open_array(directory, meta, "times", n_ev, mmap, verify) if "times" in meta["files"] else None
    if verify and (offsets[0] != 0 or offsets[-1] != n_ev):
        raise DataDirError(f"{directory}: offsets run from {offsets[0]} to {offsets[-1]}, not 0 to {n_ev}")
    if checksum and n_ev and (np.any(np.diff(offsets) < 1) or items.min() < 0 or items.max() >= n_items):
        raise DataDirError(f"{directory}: empty sessions or item indices outside [0, {n_items})")
    item_ids = read_ids(os.path.join(directory, meta["files"]["item_ids"]["file"]), ID_FILES["item_ids"],
                        meta["item_id_kind"], n_items)
    return MappedSessionData(directory, meta, item_ids, items, offsets, start, times)
