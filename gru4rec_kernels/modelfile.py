"""The model file (and the container checkpoints share): safetensors, plus the checks this project adds on top.

The ``safetensors`` library writes and reads the tensors. On top of it: CRC32s of the header and of the tensor
data stored in the header metadata (a flipped bit anywhere is a ``ModelFileError``, never a different model),
a header size limit, the metadata read before any tensor, only the dtypes this project stores, and for model
files the format name / version, the stored config, and every tensor's shape, dtype and finiteness checked
against that config. Saving is atomic (temporary file in the same directory, fsync, rename, fsync of the
directory).

A model file holds every parameter under its layout name (``layout.param_specs``), the original item ids,
sorted, and ``item_support`` (float64, training event counts: the popularity fallback and logq); its metadata
holds the format name and version, the config and the training history as JSON. Integer ids are one int64
tensor ``item_ids`` (format version 1, as files always were); string ids, which safetensors has no dtype for,
are their UTF-8 bytes concatenated (``item_ids_utf8``, uint8) and the byte offsets of every id
(``item_ids_offsets``, int64, n_items + 1 entries); a reader that predates them finds no ``item_ids``
and says so.

A p-RNN model file adds the PRNNConfig (metadata ``prnn``), the scoring subnets (``scoring``) and the item
features themselves, row i aligned with item i of ``item_ids``: a dense source as ``feature.<name>.dense`` (F32
[N, D]), a CSR source as ``feature.<name>.indptr`` (I64 [N + 1]), ``.indices`` (I32) and ``.data`` (F32). The
metadata ``features`` lists each source's name, kind, shape, column names, missing / unknown counts and a CRC32
of its arrays (``feature_checksum``), checked at load independently of the container's: a model that needs its
features at serving time carries exactly the features it was trained with, never a reference to a file that can
drift. (An older reader refuses a p-RNN file: its feature tensors are unexpected there.)
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import zlib

import numpy as np
import safetensors
import safetensors.numpy

from .config import TrainConfig
from .layout import param_specs

FORMAT_NAME = "gru4rec-kernels"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit; a larger header is not ours
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_CRC_KEYS = ("payload_crc32", "header_crc32")


class ModelFileError(ValueError):
    """A model file that is not a valid gru4rec-kernels safetensors file; the message says what is wrong."""


def _tmp_prefix(target: str) -> str:
    return ".tmp-" + os.path.basename(target) + "."


def _remove_stale_temporaries(target: str) -> None:
    """Delete temporaries that earlier, killed saves of ``target`` left behind (their writer is gone)."""
    d, prefix = os.path.dirname(target), _tmp_prefix(target)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer still runs (a concurrent save): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.unlink(os.path.join(d, name))
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_destination(path) -> str:
    """The file a save will replace: symlinks are followed (the link stays, its target is replaced); a
    destination that exists must be a regular, writable file. Returns the real path to write."""
    path = os.fspath(path)
    target = os.path.realpath(path)
    d = os.path.dirname(target)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"directory {d!r} does not exist (writing {path!r})")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"cannot write {path!r}: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"refusing to replace {path!r}: it is not a regular file (a device, FIFO or socket)")
    if not st.st_mode & 0o222:  # checked on the bits: root would otherwise overwrite a read-only file
        raise PermissionError(f"refusing to replace {path!r}: the file is read-only")
    return target


def atomic_write_bytes(path, data_chunks) -> None:
    """Replace ``path`` atomically: write a temporary file beside it, fsync, rename over it, fsync the folder.

    A symlink is followed; a destination that is not a regular file, or is read-only, is refused before any
    byte is written. The new file has the mode a plain ``open(path, 'w')`` would give (0666 minus the umask),
    or the replaced file's mode. Temporaries are removed on failure, and those of killed earlier saves on the
    next save of the same path."""
    target = check_destination(path)
    d = os.path.dirname(target)
    _remove_stale_temporaries(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(target)}{os.getpid()}.", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in data_chunks:
                f.write(chunk)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
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


def read_regular_file(path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path`` after checking, before reading, that it is a regular file of a sane size: a FIFO,
    device or /dev/zero behind a symlink is refused at once instead of hanging or exhausting memory."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ModelFileError(f"cannot read {what} {path!r}: {e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{what} {path!r} is not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ModelFileError(f"{what} {path!r} is {st.st_size} bytes, over the {max_bytes}-byte limit")
        head = os.read(fd, 8)
        if len(head) == 8:
            hlen = int.from_bytes(head, "little")
            if hlen > min(MAX_HEADER_BYTES, st.st_size - 8):
                raise ModelFileError(f"{what} {path!r}: header declares {hlen} bytes but the file holds "
                                     f"{st.st_size - 8} after the size field (truncated or not a safetensors file)")
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(0)
            return f.read(st.st_size)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- container
def _header_crc(header: dict) -> str:
    """CRC32 of the header (tensor entries and metadata) in canonical JSON, without the header_crc32 entry.

    Canonical, so it does not depend on how the library formats the header; it covers every tensor's dtype,
    shape and data offsets, so a corrupt header cannot silently move or reshape a tensor."""
    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k != "header_crc32"}
    canon = json.dumps({**header, "__metadata__": meta}, sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(canon.encode()):08x}"


def _split(buf) -> tuple[int, dict]:
    """(data start, parsed header) of bytes the library just wrote."""
    hlen = int.from_bytes(bytes(buf[:8]), "little")
    return 8 + hlen, json.loads(bytes(buf[8:8 + hlen]))


def encode_safetensors(tensors: dict, metadata: dict) -> list:
    """Serialise with the safetensors library, with the header and payload CRC32s added to the metadata.

    Returns two chunks, (size + header, tensor data), that joined are the file (a writer may stop between)."""
    arrays = {}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} is not storable (use one of "
                             f"{sorted(d.name for d in _DTYPE_NAMES)})")
        arrays[name] = a
    meta = {k: str(v) for k, v in metadata.items()}
    clash = [k for k in _CRC_KEYS if k in meta]
    if clash:
        raise ValueError(f"metadata key(s) {clash} are reserved for the file's checksums")
    # The library lays out the data from the tensors' names, dtypes and shapes only, so a draft written with
    # placeholder checksums has the final layout: its data gives the payload CRC, its header the header CRC.
    draft = safetensors.numpy.save(arrays, {**meta, "payload_crc32": "", "header_crc32": ""})
    start, header = _split(draft)
    meta["payload_crc32"] = f"{zlib.crc32(memoryview(draft)[start:]):08x}"
    header["__metadata__"] = meta
    meta["header_crc32"] = _header_crc(header)
    del draft, header
    final = memoryview(safetensors.numpy.save(arrays, meta))
    start, header = _split(final)
    if (_header_crc(header) != meta["header_crc32"]
            or f"{zlib.crc32(final[start:]):08x}" != meta["payload_crc32"]):
        raise RuntimeError("the safetensors library laid out the same tensors differently twice; "
                           "the checksums would not match the file")
    return [final[:start], final[start:]]


def _data_extent(header: dict) -> int | None:
    """Bytes of tensor data the header declares (the largest end offset); None if an entry is malformed."""
    end = 0
    for info in header.values():
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
            return None
        end = max(end, offs[1])
    return end


def decode_safetensors(buf, what: str = "model file") -> tuple[dict, dict]:
    """Check the header (size, JSON, CRC) and the payload CRC, then read the tensors with the safetensors
    library. Returns (writable arrays by name, metadata). Every problem is a ModelFileError saying which."""
    n = len(buf)
    if n < 8:
        raise ModelFileError(f"{what}: truncated ({n} bytes; a safetensors file starts with an 8-byte header size)")
    hlen = int.from_bytes(bytes(buf[:8]), "little")
    if hlen > min(MAX_HEADER_BYTES, n - 8):
        raise ModelFileError(f"{what}: header declares {hlen} bytes but the file holds {n - 8} after the size field"
                             " (truncated or not a safetensors file)")
    # The library's byte-level reader does not return the metadata: the header is parsed here too.
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also a 5000-digit integer
        raise ModelFileError(f"{what}: header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{what}: header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ModelFileError(f"{what}: __metadata__ must map strings to strings")
    if meta.get("header_crc32") is None or meta.get("payload_crc32") is None:
        raise ModelFileError(f"{what}: no checksums in the metadata (not written by gru4rec-kernels)")
    if _header_crc(header) != meta["header_crc32"]:
        raise ModelFileError(f"{what}: header checksum mismatch (the file is corrupt)")
    header.pop("__metadata__")
    data = memoryview(buf)[8 + hlen:]
    extent = _data_extent(header)
    if extent is not None and extent > len(data):
        raise ModelFileError(f"{what}: truncated (the header declares {extent} bytes of tensor data, the file "
                             f"holds {len(data)})")
    if extent is not None and extent < len(data):
        raise ModelFileError(f"{what}: {len(data) - extent} trailing bytes after the last tensor")
    if f"{zlib.crc32(data):08x}" != meta["payload_crc32"]:
        raise ModelFileError(f"{what}: payload checksum mismatch (the file is corrupt)")
    for name, info in header.items():
        dt = info.get("dtype") if isinstance(info, dict) else None
        if dt not in _DTYPES:
            raise ModelFileError(f"{what}: tensor {name!r} has unsupported dtype {dt!r}")
    del data
    try:
        views = safetensors.numpy.load(buf if isinstance(buf, bytes) else bytes(buf))
    except safetensors.SafetensorError as e:
        raise ModelFileError(f"{what}: not a valid safetensors layout ({e})") from None
    arrays = {}
    for name in list(views):  # copy out of the library's read-only buffers, one tensor at a time
        arrays[name] = np.array(views.pop(name))
    meta = {k: v for k, v in meta.items() if k not in _CRC_KEYS}
    return arrays, meta


# ---------------------------------------------------------------------------------------------------- model file
def encode_str_ids(ids) -> tuple[np.ndarray, np.ndarray]:
    """Python strs -> (their UTF-8 bytes concatenated, uint8; byte offsets int64 [n + 1])."""
    try:
        enc = [v.encode("utf-8") for v in ids]
    except UnicodeEncodeError as e:
        raise ValueError(f"item id {e.object!r} cannot be stored: it is not valid Unicode ({e.reason})") from None
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in enc], out=offsets[1:])
    return np.frombuffer(b"".join(enc), dtype=np.uint8), offsets


def decode_str_ids(utf8: np.ndarray, offsets: np.ndarray, what: str) -> np.ndarray:
    """The inverse of ``encode_str_ids`` -> object array of str; ModelFileError if the tensors do not fit."""
    if utf8.dtype != np.uint8 or utf8.ndim != 1 or offsets.dtype != np.int64 or offsets.ndim != 1:
        raise ModelFileError(f"{what}: item_ids_utf8 must be 1-D uint8 and item_ids_offsets 1-D int64")
    if offsets.size < 2 or offsets[0] != 0 or offsets[-1] != utf8.size or np.any(np.diff(offsets) < 0):
        raise ModelFileError(f"{what}: item_ids_offsets must rise from 0 to the size of item_ids_utf8 "
                             f"({utf8.size} bytes), one entry per item plus one")
    blob = utf8.tobytes()
    bounds = offsets.tolist()
    try:
        ids = [blob[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]
    except UnicodeDecodeError:
        raise ModelFileError(f"{what}: item_ids_utf8 is not valid UTF-8") from None
    out = np.empty(len(ids), dtype=object)
    out[:] = ids
    return out


def feature_checksum(name: str, arrays: list) -> str:
    """CRC32 of a feature source: its name, then every array's dtype, shape and bytes, in the stored order."""
    crc = zlib.crc32(name.encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(f"{a.dtype.str}{a.shape}".encode(), crc)
        crc = zlib.crc32(memoryview(a).cast("B"), crc)
    return f"{crc:08x}"


def _feature_arrays(f) -> dict:
    """Tensor suffix -> array of one ItemFeatures, in checksum order."""
    if f.sparse:
        m = f.matrix
        return {"indptr": np.asarray(m.indptr, np.int64), "indices": np.asarray(m.indices, np.int32),
                "data": np.asarray(m.data, np.float32)}
    return {"dense": np.ascontiguousarray(f.matrix, dtype=np.float32)}


def encode_features(features: dict) -> tuple[dict, list]:
    """(tensors, metadata entries) storing the feature sources of a p-RNN model file."""
    tensors, entries = {}, []
    for name, f in features.items():
        arrays = _feature_arrays(f)
        for suffix, a in arrays.items():
            tensors[f"feature.{name}.{suffix}"] = a
        entries.append({"name": name, "kind": "sparse" if f.sparse else "dense", "shape": list(f.matrix.shape),
                        "columns": list(f.columns), "n_missing": int(f.n_missing), "n_unknown": int(f.n_unknown),
                        "crc32": feature_checksum(name, list(arrays.values()))})
    return tensors, entries


def decode_features(arrays: dict, entries, item_ids, what: str) -> list:
    """The ItemFeatures of a p-RNN model file (their tensors popped from ``arrays``); ModelFileError on a checksum
    mismatch or a malformed matrix."""
    import scipy.sparse as sp

    from .features import ItemFeatures

    if not isinstance(entries, list):
        raise ModelFileError(f"{what}: stored features are not a list")
    out = []
    for e in entries:
        try:
            name, kind, (n, d) = str(e["name"]), e["kind"], (int(v) for v in e["shape"])
            columns = tuple(str(c) for c in e["columns"])
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{what}: malformed features entry {e!r}") from None
        suffixes = ("indptr", "indices", "data") if kind == "sparse" else ("dense",)
        if kind not in ("sparse", "dense"):
            raise ModelFileError(f"{what}: features {name!r} have unknown kind {kind!r}")
        keys = [f"feature.{name}.{x}" for x in suffixes]
        absent = [k for k in keys if k not in arrays]
        if absent:
            raise ModelFileError(f"{what}: features {name!r} miss tensor(s) {absent}")
        parts = [arrays.pop(k) for k in keys]
        if feature_checksum(name, parts) != e.get("crc32"):
            raise ModelFileError(f"{what}: features {name!r} fail their checksum (the stored feature arrays are not "
                                 "the ones the model was trained with)")
        if n != len(item_ids):
            raise ModelFileError(f"{what}: features {name!r} have {n} rows for {len(item_ids)} items")
        if kind == "dense":
            m = parts[0]
            if m.dtype != np.float32 or m.shape != (n, d):
                raise ModelFileError(f"{what}: features {name!r} must be float32 {(n, d)}; got {m.dtype} {m.shape}")
        else:
            indptr, indices, data = parts
            if (indptr.dtype != np.int64 or indices.dtype != np.int32 or data.dtype != np.float32
                    or indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
                    or indptr[-1] != indices.size or indices.shape != data.shape
                    or (indices.size and (indices.min() < 0 or indices.max() >= d))):
                raise ModelFileError(f"{what}: features {name!r} are not a valid CSR matrix of shape {(n, d)}")
            m = sp.csr_matrix((data, indices, indptr), shape=(n, d))
        if not np.all(np.isfinite(m.data if kind == "sparse" else m)):
            raise ModelFileError(f"{what}: features {name!r} contain NaN or Inf")
        out.append(ItemFeatures(name=name, matrix=m, item_ids=item_ids, columns=columns,
                                n_missing=int(e.get("n_missing", 0)), n_unknown=int(e.get("n_unknown", 0))))
    return out


def encode_model(cfg: TrainConfig, item_ids, item_support, params: dict, history: list, prnn=None,
                 features=None, scoring=None) -> list:
    """The chunks of a model file (see the module docstring); ``prnn`` / ``features`` / ``scoring`` for a p-RNN."""
    tensors = dict(params)
    item_ids = np.asarray(item_ids)
    if item_ids.dtype == object:
        tensors["item_ids_utf8"], tensors["item_ids_offsets"] = encode_str_ids(item_ids.tolist())
    else:
        tensors["item_ids"] = item_ids.astype(np.int64, copy=False)
    tensors["item_support"] = np.asarray(item_support, dtype=np.float64)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": cfg.to_json(),
            "history": json.dumps(history, default=float)}
    if prnn is not None:
        ftensors, entries = encode_features(features or {})
        tensors.update(ftensors)
        meta.update(prnn=prnn.to_json(), features=json.dumps(entries),
                    scoring=json.dumps(None if scoring is None else list(scoring)))
    return encode_safetensors(tensors, meta)


def read_model_file(path) -> dict:
    """Read and check a model file: the keyword arguments of ``Model`` (see ``decode_model``)."""
    path = os.fspath(path)
    return decode_model(read_regular_file(path, "model file"), what=f"model file {path!r}")


def decode_model(buf, what: str = "model file") -> dict:
    """Check a model file's bytes against its stored config before one parameter is used.

    Returns the keyword arguments of ``Model``: cfg, item_ids, params, history, item_support (and prnn, features,
    scoring for a p-RNN)."""
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
    except (ValueError, RecursionError):
        raise ModelFileError(f"{what}: stored history is not valid JSON") from None
    if not isinstance(history, list):
        raise ModelFileError(f"{what}: stored history is not a list")
    str_ids = "item_ids_utf8" in arrays or "item_ids_offsets" in arrays
    if str_ids and "item_ids" in arrays:
        raise ModelFileError(f"{what}: both integer (item_ids) and string (item_ids_utf8) item ids")
    needed = (("item_ids_utf8", np.uint8), ("item_ids_offsets", np.int64)) if str_ids else (("item_ids", np.int64),)
    for name, dt in needed + (("item_support", np.float64),):
        if name not in arrays:
            raise ModelFileError(f"{what}: missing tensor {name!r}")
        if arrays[name].dtype != dt or arrays[name].ndim != 1:
            raise ModelFileError(f"{what}: tensor {name!r} must be 1-D {np.dtype(dt).name}")
    if str_ids:
        item_ids = decode_str_ids(arrays.pop("item_ids_utf8"), arrays.pop("item_ids_offsets"), what)
    else:
        item_ids = arrays.pop("item_ids")
    support = arrays.pop("item_support")
    if item_ids.size == 0 or (item_ids.size > 1 and not np.all(item_ids[1:] > item_ids[:-1])):
        raise ModelFileError(f"{what}: item_ids must be non-empty, sorted and unique")
    if support.shape != item_ids.shape or not np.all(np.isfinite(support)):
        raise ModelFileError(f"{what}: item_support must be finite with one entry per item")
    extra_kw = {}
    try:
        if "prnn" in meta:
            from .prnn_config import PRNNConfig
            from .prnn_layout import PRNNLayout
            prnn = PRNNConfig.from_json(meta["prnn"])
            features = decode_features(arrays, json.loads(meta.get("features", "[]")), item_ids, what)
            scoring = json.loads(meta.get("scoring", "null"))
            specs = PRNNLayout(cfg, prnn, item_ids.size, features).param_specs()
            extra_kw = {"prnn": prnn, "features": features, "scoring": scoring}
        else:
            specs = param_specs(cfg, item_ids.size)
    except (ValueError, TypeError) as e:
        if isinstance(e, ModelFileError):
            raise
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
    return {"cfg": cfg, "item_ids": item_ids, "params": arrays, "history": history, "item_support": support,
            **extra_kw}
