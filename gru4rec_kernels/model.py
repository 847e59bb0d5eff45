"""A trained GRU4Rec model: parameters, item-id map, config; safetensors save/load; recommend.

The model file is ONE ``.safetensors`` file (never pickle): every parameter under its layout name
(``layout.param_specs``), plus ``item_ids`` (int64, the original ids, sorted) and ``item_support`` (float64,
training event counts: the popularity fallback and logq). The header metadata holds the format name, the
format version and the config as JSON. Saving is atomic (temporary file in the same directory, fsync, rename,
fsync of the directory). Loading parses the header itself and checks everything against the stored config
before one parameter byte is used; any problem is a ``ModelFileError`` that says which.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib

import numpy as np

from .config import TrainConfig
from .itemmap import ItemMap, UnknownItemError  # noqa: F401  (UnknownItemError: re-exported)
from .layout import param_specs

FORMAT_NAME = "gru4rec-kernels"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024  # a header larger than this is not ours
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class ModelFileError(ValueError):
    """A model file that is not a valid gru4rec-kernels safetensors file; the message says what is wrong."""


def atomic_write_bytes(path: str, data_chunks) -> None:
    """Write to a temporary file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError(f"directory {d!r} does not exist (writing {path!r})")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in data_chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


def encode_safetensors(tensors: dict, metadata: dict) -> list:
    """Serialise to the safetensors layout (8-byte little-endian header size, JSON header, raw data)."""
    header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    off = 0
    blobs = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} is not storable")
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPE_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    crc = 0
    for b in blobs:
        crc = zlib.crc32(b, crc)
    header["__metadata__"]["payload_crc32"] = f"{crc:08x}"  # catches bit rot and tampering in the payload
    header["__metadata__"]["header_crc32"] = _header_crc(header)  # ... and in the header (config, shapes)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # keep the data 8-byte aligned
    return [struct.pack("<Q", len(h)), h] + blobs


def _header_crc(header: dict) -> str:
    """CRC32 of the header in canonical JSON, without the header_crc32 entry itself."""
    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k != "header_crc32"}
    canon = json.dumps({**header, "__metadata__": meta}, sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(canon.encode()):08x}"


def decode_safetensors(buf: bytes | memoryview, what: str = "model file") -> tuple[dict, dict]:
    """Parse and validate the safetensors layout without trusting a single declared size."""
    n = len(buf)
    if n < 8:
        raise ModelFileError(f"{what}: truncated ({n} bytes; a safetensors file starts with an 8-byte header size)")
    (hlen,) = struct.unpack("<Q", bytes(buf[:8]))
    if hlen > min(_MAX_HEADER, n - 8):
        raise ModelFileError(f"{what}: header declares {hlen} bytes but the file holds {n - 8} after the size field"
                             " (truncated or not a safetensors file)")
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{what}: header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{what}: header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ModelFileError(f"{what}: __metadata__ must map strings to strings")
    if meta.get("header_crc32") is None:
        raise ModelFileError(f"{what}: no header checksum in the metadata (not written by gru4rec-kernels)")
    if _header_crc(header) != meta["header_crc32"]:
        raise ModelFileError(f"{what}: header checksum mismatch (the file is corrupt)")
    header.pop("__metadata__", None)
    data = memoryview(buf)[8 + hlen:]
    spans = []
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ModelFileError(f"{what}: tensor {name!r} has a malformed header entry")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dt not in _DTYPES:
            raise ModelFileError(f"{what}: tensor {name!r} has unsupported dtype {dt!r}")
        if (not isinstance(shape, list) or len(shape) > 4
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in shape)):
            raise ModelFileError(f"{what}: tensor {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ModelFileError(f"{what}: tensor {name!r} has invalid data_offsets {offs!r}")
        b, e = offs
        itemsize = np.dtype(_DTYPES[dt]).itemsize
        count = 1
        for s in shape:
            count *= s
        if not (0 <= b <= e <= len(data)):
            raise ModelFileError(f"{what}: tensor {name!r} declares bytes [{b}, {e}) but the file holds "
                                 f"{len(data)} bytes of data (truncated?)")
        if e - b != count * itemsize:
            raise ModelFileError(f"{what}: tensor {name!r} of shape {shape} {dt} needs {count * itemsize} bytes, "
                                 f"declares {e - b}")
        spans.append((b, e, name))
        tensors[name] = (dt, tuple(shape), b, e)
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise ModelFileError(f"{what}: tensor {name!r} data does not follow the previous one "
                                 f"(gap or overlap at byte {pos})")
        pos = e
    if pos != len(data):
        raise ModelFileError(f"{what}: {len(data) - pos} trailing bytes after the last tensor")
    want_crc = meta.get("payload_crc32")
    if want_crc is None:
        raise ModelFileError(f"{what}: no payload checksum in the metadata (not written by gru4rec-kernels)")
    if f"{zlib.crc32(data):08x}" != want_crc:
        raise ModelFileError(f"{what}: payload checksum mismatch (the file is corrupt)")
    arrays = {}
    for name, (dt, shape, b, e) in tensors.items():
        arrays[name] = np.frombuffer(data[b:e], dtype=np.dtype(_DTYPES[dt]).newbyteorder("<")).reshape(shape).copy()
    return arrays, meta


class Model:
    """A trained GRU4Rec v2 model. ``params`` are host float32 arrays under their layout names."""

    def __init__(self, cfg: TrainConfig, item_ids, params: dict, history=None, item_support=None):
        self.cfg = cfg
        self.item_map = ItemMap(item_ids)
        self.params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
        self.history = list(history or [])
        self.item_support = (np.zeros(self.n_items) if item_support is None
                             else np.asarray(item_support, dtype=np.float64))
        self._check_params()

    @property
    def item_ids(self) -> np.ndarray:
        """The original item ids, sorted; an item's index is its position here."""
        return self.item_map.ids

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    def _check_params(self, error=ValueError) -> None:
        specs = param_specs(self.cfg, self.n_items)
        want = {s.name: s.shape for s in specs}
        missing = sorted(set(want) - set(self.params))
        extra = sorted(set(self.params) - set(want))
        if missing:
            raise error(f"missing parameter tensor(s) {missing}")
        if extra:
            raise error(f"unexpected parameter tensor(s) {extra}")
        for k, shape in want.items():
            if self.params[k].shape != shape:
                raise error(f"parameter {k!r} has shape {self.params[k].shape}, the config needs {shape}")
        if self.item_support.shape != (self.n_items,):
            raise error(f"item_support has shape {self.item_support.shape}, expected ({self.n_items},)")

    # ------------------------------------------------------------------ save / load
    def save(self, path) -> None:
        tensors = dict(self.params)
        tensors["item_ids"] = self.item_ids
        tensors["item_support"] = self.item_support
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": self.cfg.to_json(),
                "history": json.dumps(self.history, default=float)}
        atomic_write_bytes(path, encode_safetensors(tensors, meta))

    @classmethod
    def load(cls, path) -> "Model":
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise ModelFileError(f"cannot read model file {path!r}: {e}") from None
        return cls.from_bytes(buf, what=f"model file {path!r}")

    @classmethod
    def from_bytes(cls, buf, what="model file") -> "Model":
        arrays, meta = decode_safetensors(buf, what)
        if meta.get("format") != FORMAT_NAME:
            raise ModelFileError(f"{what}: not a {FORMAT_NAME} model (format={meta.get('format')!r})")
        try:
            version = int(meta.get("format_version", ""))
        except ValueError:
            raise ModelFileError(f"{what}: format_version {meta.get('format_version')!r} is not an int") from None
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{what}: format version {version} is newer than this library's {FORMAT_VERSION};"
                                 " upgrade gru4rec-kernels")
        if version < 1:
            raise ModelFileError(f"{what}: invalid format version {version}")
        try:
            cfg = TrainConfig.from_json(meta.get("config", ""))
        except (ValueError, TypeError) as e:
            raise ModelFileError(f"{what}: stored config is invalid: {e}") from None
        try:
            history = json.loads(meta.get("history", "[]"))
        except (json.JSONDecodeError, RecursionError):
            raise ModelFileError(f"{what}: stored history is not valid JSON") from None
        if not isinstance(history, list):
            raise ModelFileError(f"{what}: stored history is not a list")
        for name, dt in (("item_ids", np.int64), ("item_support", np.float64)):
            if name not in arrays:
                raise ModelFileError(f"{what}: missing tensor {name!r}")
            if arrays[name].dtype != dt or arrays[name].ndim != 1:
                raise ModelFileError(f"{what}: tensor {name!r} must be 1-D {np.dtype(dt).name}")
        item_ids = arrays.pop("item_ids")
        support = arrays.pop("item_support")
        if item_ids.size == 0 or (item_ids.size > 1 and not np.all(item_ids[1:] > item_ids[:-1])):
            raise ModelFileError(f"{what}: item_ids must be non-empty, sorted and unique")
        if support.shape != item_ids.shape or not np.all(np.isfinite(support)):
            raise ModelFileError(f"{what}: item_support must be finite with one entry per item")
        try:
            specs = param_specs(cfg, item_ids.size)
        except ValueError as e:
            raise ModelFileError(f"{what}: {e}") from None
        want = {s.name: s.shape for s in specs}
        missing = sorted(set(want) - set(arrays))
        extra = sorted(set(arrays) - set(want))
        if missing:
            raise ModelFileError(f"{what}: missing parameter tensor(s) {missing}")
        if extra:
            raise ModelFileError(f"{what}: unexpected tensor(s) {extra}")
        for k, shape in want.items():
            a = arrays[k]
            if a.dtype != np.float32:
                raise ModelFileError(f"{what}: parameter {k!r} has dtype {a.dtype}, expected float32")
            if a.shape != shape:
                raise ModelFileError(f"{what}: parameter {k!r} has shape {a.shape}, the stored config needs {shape}")
            if not np.all(np.isfinite(a)):
                raise ModelFileError(f"{what}: parameter {k!r} contains NaN or Inf")
        return cls(cfg, item_ids, arrays, history=history, item_support=support)

    # ------------------------------------------------------------------ item ids
    def item_index(self, ids, on_unknown: str = "warn"):
        """Original ids -> item indices; unknown ids are dropped with a warning ('warn'), silently ('ignore')
        or raise UnknownItemError ('raise'). Returns (indices int64, known mask)."""
        return self.item_map.index(ids, on_unknown, stacklevel=4)

    # ------------------------------------------------------------------ inference
    def hidden_state(self, session_idx) -> list:
        """Replay a session (item indices) from a zero state: the hidden state per layer, batch of one."""
        from .reference import hidden_step
        H = [np.zeros((1, h), dtype=np.float32) for h in self.cfg.layers]
        for i in np.asarray(session_idx, dtype=np.int64):
            H = hidden_step(self.params, self.cfg, H, np.array([i]))
        return H

    def recommend(self, session_items, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
        """Top-k next items for one session (a sequence of original item ids, oldest first).

        Returns (item_ids, scores), best first, in original ids. ``exclude``: ids never to recommend (e.g. the
        session's own items); ``candidates``: restrict to these ids. Unknown ids are skipped with a warning
        (``on_unknown='raise'`` to raise). A session with no known item gets the most popular items.
        """
        from .recommend import recommend_one
        return recommend_one(self, session_items, k=k, exclude=exclude, candidates=candidates,
                             on_unknown=on_unknown)

    def recommend_batch(self, sessions, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
        """Top-k for many sessions at once: (item_ids [n, k], scores [n, k]); see ``recommend``."""
        from .recommend import recommend_batch
        return recommend_batch(self, sessions, k=k, exclude=exclude, candidates=candidates, on_unknown=on_unknown)

    def __repr__(self) -> str:
        return (f"Model(layers={self.cfg.layers}, loss={self.cfg.loss!r}, items={self.n_items}, "
                f"epochs_trained={len(self.history)})")
