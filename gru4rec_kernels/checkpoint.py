"""Training checkpoints: everything needed to continue a run exactly, in one atomically written file.

A checkpoint is a safetensors file (modelfile's encoder/decoder: the same checksums and checks) holding
the parameters, the Adagrad accumulators (``acc.<name>``) and momenta (``mom.<name>``), the training hidden
state (``hidden.<l>``), the schedule's slot state (``sched.<field>``) when taken mid-epoch, and in its
metadata the config, the position (epoch, global step, epoch-partial loss sums), the sampler's (refill, pos),
the history, a fingerprint of the training data and the number of ranks that trained it (data parallelism:
the hidden state is always the GLOBAL one, [batch_size, H] per layer, so any number of ranks that divides
batch_size resumes it, one process included). Files are named ``ckpt-<global step>.safetensors``;
writing is temporary file + fsync + rename + fsync of the directory, so a kill at any moment leaves the
previous checkpoint intact; the last ``keep`` are kept.
"""
from __future__ import annotations

import glob
import json
import os
import zlib

import numpy as np

from .config import TrainConfig
from .layout import param_specs
from .modelfile import (
    ModelFileError,
    atomic_write_bytes,
    decode_safetensors,
    encode_safetensors,
    encode_str_ids,
    read_regular_file,
)

CKPT_FORMAT = "gru4rec-kernels-checkpoint"
CKPT_VERSION = 1

# Tests set this to a callable to kill the process in the middle of a checkpoint write.
_mid_write_hook = None


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not belong to this run; the message says which."""


def data_fingerprint(data) -> str:
    """Cheap identity of a SessionData: sizes and CRC32s of its item and offset arrays and of its item ids."""
    crc = zlib.crc32(np.ascontiguousarray(data.items).view(np.uint8))
    crc = zlib.crc32(np.ascontiguousarray(data.offsets).view(np.uint8), crc)
    if data.item_ids.dtype == object:  # string ids: their UTF-8 bytes and lengths, as the model file stores them
        utf8, offsets = encode_str_ids(data.item_ids.tolist())
        crc = zlib.crc32(offsets.view(np.uint8), zlib.crc32(utf8, crc))
    else:
        crc = zlib.crc32(np.ascontiguousarray(data.item_ids).view(np.uint8), crc)
    return f"{data.n_events}:{data.n_sessions}:{data.n_items}:{crc:08x}"


def save(ckpt_dir: str, *, cfg: TrainConfig, params: dict, opt: dict, hidden: list, sched_state: dict | None,
         sampler_state: dict | None, epoch: int, step: int, partial: dict, history: list, fingerprint: str,
         keep: int = 3, n_ranks: int = 1) -> str:
    """Write ckpt-<step>.safetensors into ckpt_dir atomically; drop all but the last ``keep``. Returns the path."""
    os.makedirs(ckpt_dir, exist_ok=True)
    tensors = {k: v for k, v in params.items()}
    for s in ("acc", "mom"):
        for k, v in opt[s].items():
            tensors[f"{s}.{k}"] = v
    for l, h in enumerate(hidden):
        tensors[f"hidden.{l}"] = np.ascontiguousarray(h, dtype=np.float32)
    sched_scalars = {}
    if sched_state is not None:
        for k, v in sched_state.items():
            if isinstance(v, np.ndarray):
                tensors[f"sched.{k}"] = v.astype(np.int64)
            else:
                sched_scalars[k] = int(v)
    meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "config": cfg.to_json(),
            "epoch": epoch, "step": step, "partial": json.dumps(partial), "history": json.dumps(history, default=float),
            "sampler": json.dumps(sampler_state), "sched": json.dumps(sched_scalars if sched_state is not None
                                                                      else None),
            "fingerprint": fingerprint, "n_hidden": len(hidden), "n_ranks": int(n_ranks)}
    chunks = encode_safetensors(tensors, meta)
    path = os.path.join(ckpt_dir, f"ckpt-{step:012d}.safetensors")

    def gen():
        for i, c in enumerate(chunks):
            if _mid_write_hook is not None and i == len(chunks) // 2:
                _mid_write_hook()
            yield c

    atomic_write_bytes(path, gen())
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        os.unlink(old)
    for tmp in glob.glob(os.path.join(ckpt_dir, ".tmp-ckpt-*")):  # left by a write that was killed
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return path


def list_checkpoints(ckpt_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(ckpt_dir, "ckpt-" + "[0-9]" * 12 + ".safetensors")))


def load(path: str) -> dict:
    """Read a checkpoint file, or the newest one of a directory. Raises CheckpointError with the reason."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint (ckpt-*.safetensors) in directory {path!r}")
        path = found[-1]
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        buf = read_regular_file(path, "checkpoint")
        arrays, meta = decode_safetensors(buf, what=f"checkpoint {path!r}")
    except ModelFileError as e:
        raise CheckpointError(str(e)) from None
    if meta.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path!r} is not a gru4rec-kernels checkpoint (format={meta.get('format')!r})")
    try:
        if int(meta["format_version"]) > CKPT_VERSION:
            raise CheckpointError(f"checkpoint {path!r} has a newer format version {meta['format_version']}")
        cfg = TrainConfig.from_json(meta["config"])
        out = {
            "path": path, "cfg": cfg, "epoch": int(meta["epoch"]), "step": int(meta["step"]),
            "partial": json.loads(meta["partial"]), "history": json.loads(meta["history"]),
            "sampler": json.loads(meta["sampler"]), "fingerprint": meta["fingerprint"],
            "n_ranks": int(meta.get("n_ranks", 1)),  # written since data parallelism; one process before
        }
        n_hidden = int(meta["n_hidden"])
        sched_scalars = json.loads(meta["sched"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path!r} has invalid metadata: {e}") from None
    out["opt"] = {"acc": {}, "mom": {}}
    out["params"] = {}
    out["hidden"] = [None] * n_hidden
    sched = {}
    for k, v in arrays.items():
        head, _, tail = k.partition(".")
        if head in ("acc", "mom") and tail:
            out["opt"][head][tail] = v
        elif head == "hidden" and tail.isdigit() and int(tail) < n_hidden:
            out["hidden"][int(tail)] = v
        elif head == "sched" and tail:
            sched[tail] = v
        else:
            out["params"][k] = v
    if any(h is None for h in out["hidden"]):
        raise CheckpointError(f"checkpoint {path!r} is missing hidden-state tensors")
    out["sched"] = None if sched_scalars is None else {**sched, **sched_scalars}
    _check_contents(out, path)
    return out


def _check_contents(ck: dict, path: str) -> None:
    """Every tensor where the config says, with its shape: a crafted or corrupt checkpoint must never be
    broadcast, zero-filled or cut to fit."""
    def bad(msg):
        raise CheckpointError(f"checkpoint {path!r}: {msg}")
    if ck["epoch"] < 0 or ck["step"] < 0:
        bad(f"negative epoch ({ck['epoch']}) or step ({ck['step']})")
    if ck["n_ranks"] < 1:
        bad(f"n_ranks is {ck['n_ranks']}")
    params = ck["params"]
    if "Wy" not in params or np.ndim(params["Wy"]) != 2:
        bad("missing or malformed tensor 'Wy'")
    try:
        want = {sp.name: sp.shape for sp in param_specs(ck["cfg"], int(params["Wy"].shape[0]))}
    except ValueError as e:
        bad(str(e))
    for what, group in (("parameter", params), ("Adagrad accumulator", ck["opt"]["acc"])):
        if set(group) != set(want):
            bad(f"{what} tensors {sorted(group)} do not match the config's {sorted(want)}")
    if ck["opt"]["mom"] and set(ck["opt"]["mom"]) != set(want):
        bad(f"momentum tensors {sorted(ck['opt']['mom'])} do not match the config's {sorted(want)}")
    for group in (params, ck["opt"]["acc"], ck["opt"]["mom"]):
        for k, v in group.items():
            if v.shape != want[k] or v.dtype != np.float32:
                bad(f"tensor {k!r} is {v.dtype} {v.shape}; the config needs float32 {want[k]}")
            if not np.all(np.isfinite(v)):
                bad(f"tensor {k!r} holds NaN or Inf")
    hidden = ck["hidden"]
    if hidden:
        if len(hidden) != len(ck["cfg"].layers):
            bad(f"{len(hidden)} hidden-state tensors for {len(ck['cfg'].layers)} layers")
        rows = hidden[0].shape[0] if hidden[0].ndim == 2 else -1
        for h, units in zip(hidden, ck["cfg"].layers):
            if h.ndim != 2 or h.shape != (rows, units):
                bad(f"a hidden-state tensor is {h.shape}; expected ({rows}, {units})")
