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

A p-RNN checkpoint (format version 2; GRU4Rec checkpoints are still written as version 1) holds the same under
the PRNNLayout's parameter names, the hidden state flattened (subnet 0's layers, then subnet 1's, ...), and in
its metadata the PRNNConfig (``prnn``) and the identity of the item features (``features``: name, kind, shape,
columns and the CRC32 of the arrays, as the model file's ``features`` entries, without the arrays: the resumed
run brings its features, and ``check_model_kind`` refuses other ones). A reader that predates p-RNN refuses the
file as a newer version.
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
GRU4REC_VERSION = 1  # what GRU4Rec checkpoints are written as (unchanged since the first)
PRNN_VERSION = 2  # p-RNN checkpoints: an older reader refuses them as a newer version
CKPT_VERSION = PRNN_VERSION  # the newest version this reader reads
# the fields of a feature entry that say which features a p-RNN was trained on (n_missing / n_unknown follow
# from the matrix and the catalogue file, not the model)
FEATURE_IDENTITY = ("kind", "shape", "columns", "crc32")

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


def feature_entries(features: dict) -> list:
    """The identity of a p-RNN's feature sources (name, kind, shape, columns, counts, CRC32 of the arrays), as the
    model file's ``features`` metadata, without the arrays."""
    from .modelfile import encode_features
    return encode_features(features)[1]


def save(ckpt_dir: str, *, cfg: TrainConfig, params: dict, opt: dict, hidden: list, sched_state: dict | None,
         sampler_state: dict | None, epoch: int, step: int, partial: dict, history: list, fingerprint: str,
         keep: int = 3, prnn=None, features: list | None = None, n_ranks: int = 1) -> str:
    """Write ckpt-<step>.safetensors into ckpt_dir atomically; drop all but the last ``keep``. Returns the path.
    A p-RNN's checkpoint adds its PRNNConfig ``prnn`` and ``features`` (``feature_entries`` of its sources);
    ``n_ranks``: the data-parallel ranks that trained it (informational; the hidden state is the global one)."""
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
    version = GRU4REC_VERSION if prnn is None else PRNN_VERSION
    meta = {"format": CKPT_FORMAT, "format_version": version, "config": cfg.to_json(),
            "epoch": epoch, "step": step, "partial": json.dumps(partial), "history": json.dumps(history, default=float),
            "sampler": json.dumps(sampler_state), "sched": json.dumps(sched_scalars if sched_state is not None
                                                                      else None),
            "fingerprint": fingerprint, "n_hidden": len(hidden), "n_ranks": int(n_ranks)}
    if prnn is not None:
        meta.update(prnn=prnn.to_json(), features=json.dumps(features or []))
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
        out["prnn"] = out["features"] = None
        if "prnn" in meta:
            from .prnn_config import PRNNConfig
            out["prnn"] = PRNNConfig.from_json(meta["prnn"])
            out["features"] = json.loads(meta["features"])
            if not isinstance(out["features"], list) or not all(isinstance(e, dict) for e in out["features"]):
                raise ValueError("'features' is not a list of entries")
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
    n_items = int(params["Wy"].shape[0])
    try:
        if ck["prnn"] is None:
            specs, widths = param_specs(ck["cfg"], n_items), list(ck["cfg"].layers)
        else:
            layout = _stored_layout(ck["cfg"], ck["prnn"], n_items, ck["features"])
            specs, widths = layout.param_specs(), [h for sub in layout.subnets for h in sub.layers]
    except (ValueError, TypeError) as e:
        bad(str(e))
    want = {sp.name: sp.shape for sp in specs}
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
        if len(hidden) != len(widths):
            bad(f"{len(hidden)} hidden-state tensors for {len(widths)} layers")
        rows = hidden[0].shape[0] if hidden[0].ndim == 2 else -1
        for h, units in zip(hidden, widths):
            if h.ndim != 2 or h.shape != (rows, units):
                bad(f"a hidden-state tensor is {h.shape}; expected ({rows}, {units})")


def _stored_layout(cfg: TrainConfig, prnn, n_items: int, entries: list):
    """The PRNNLayout a p-RNN checkpoint's tensors must follow, from its stored config and feature entries: the
    parameter shapes need each source's kind and width only, so zero matrices of the stored shapes (no memory:
    an empty CSR, a zero-stride array) stand in for the features."""
    import scipy.sparse as sps

    from .features import ItemFeatures
    from .prnn_layout import PRNNLayout
    stand_ins = []
    for e in entries:
        try:
            name, kind, (n, d) = str(e["name"]), e["kind"], (int(v) for v in e["shape"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"malformed features entry {e!r}") from None
        if kind not in ("sparse", "dense") or n < 0 or d < 0:
            raise ValueError(f"malformed features entry {e!r}")
        m = sps.csr_matrix((n, d), dtype=np.float32) if kind == "sparse" else np.broadcast_to(np.float32(0), (n, d))
        stand_ins.append(ItemFeatures(name=name, matrix=m, item_ids=np.zeros(0)))
    return PRNNLayout(cfg, prnn, n_items, stand_ins)


def check_model_kind(ck: dict, prnn, features: list | None) -> None:
    """Refuse a checkpoint of another kind of model than the run resuming it: a GRU4Rec checkpoint for a p-RNN
    run or the reverse, another PRNNConfig, or other item features (``features``: the run's
    ``feature_entries``). The message names the difference."""
    path = ck["path"]
    if ck["prnn"] is None and prnn is not None:
        raise CheckpointError(f"checkpoint {path!r} is a GRU4Rec checkpoint; this run trains a p-RNN "
                              f"({prnn.architecture}, strategy {prnn.strategy!r}): resume it without prnn=")
    if ck["prnn"] is not None and prnn is None:
        raise CheckpointError(f"checkpoint {path!r} is a p-RNN checkpoint ({ck['prnn'].architecture}, strategy "
                              f"{ck['prnn'].strategy!r}); this run trains GRU4Rec: resume it with its prnn= and "
                              "features=")
    if prnn is None:
        return
    if ck["prnn"] != prnn:
        was, now = _flat(ck["prnn"].to_dict()), _flat(prnn.to_dict())
        diff = {k: (was.get(k), now.get(k)) for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)}
        raise CheckpointError(f"checkpoint {path!r} was written with another p-RNN config (field: (checkpoint, "
                              f"now)): {diff}")
    was = {e.get("name"): e for e in ck["features"]}
    now = {e["name"]: e for e in features or []}
    if set(was) != set(now):
        raise CheckpointError(f"checkpoint {path!r} was trained on feature source(s) {sorted(was)}; this run "
                              f"gives {sorted(now)}")
    for name, e in now.items():
        diff = {k: (was[name].get(k), e[k]) for k in FEATURE_IDENTITY if was[name].get(k) != e[k]}
        if diff:
            raise CheckpointError(f"checkpoint {path!r} was trained on other features {name!r} than this run's "
                                  f"(field: (checkpoint, now)): {diff}")


def check_phase_plan(ck: dict, prnn, n_epochs: int) -> None:
    """A p-RNN resumed with another ``n_epochs`` (train longer) must keep the phases of the epochs it has begun:
    residual training's default plan splits n_epochs among the subnets, so growing it can move epochs already
    trained into another phase, and the run would then match no uninterrupted run. Refused, naming the plans."""
    old_n = ck["cfg"].n_epochs
    if prnn is None or old_n == n_epochs:
        return
    begun = range(min(ck["epoch"], old_n, n_epochs))
    was = [prnn.phase(e, 0, old_n) for e in begun]
    now = [prnn.phase(e, 0, n_epochs) for e in begun]
    if was != now:
        raise CheckpointError(
            f"checkpoint {ck['path']!r}: with n_epochs {n_epochs} instead of {old_n} the {prnn.strategy} phases "
            f"of the epochs already trained change (trained subnet per epoch {[p.trainable for p in was]} -> "
            f"{[p.trainable for p in now]}; phase epochs {list(prnn.phase_epochs(old_n))} -> "
            f"{list(prnn.phase_epochs(n_epochs))}): resume with n_epochs {old_n}, or start a new run")


def _flat(d: dict, prefix: str = "") -> dict:
    """A PRNNConfig's dict with the subnets' fields as ``subnets[k].field`` keys (to name a difference)."""
    out = {}
    for k, v in d.items():
        if k == "subnets" and isinstance(v, list):
            out[f"{prefix}subnets"] = len(v)
            for i, sub in enumerate(v):
                out.update({f"subnets[{i}].{f}": x for f, x in sub.items()})
        else:
            out[k] = v
    return out
