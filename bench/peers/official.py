"""PEER: the official GRU4Rec PyTorch code (hidasib/GRU4Rec_PyTorch_Official), run on the CPU for benchmarks.

The official code is never part of this repository. Point ``GRU4REC_OFFICIAL`` at a folder holding its
``gru4rec_pytorch.py`` (and, for evaluation, its ``evaluation.py``); without it, or without torch, ``load()``
returns (None, reason) and the benchmarks record the peer as not installed.

    gru, why = load()                                   # the module, or None and why not
    r = fit(gru, df, cfg_kwargs)                        # train on a SessionId/ItemId/Time DataFrame
    r = evaluate(r["model"], test_df, cutoff=20)        # its own batch_eval, conservative ranks
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import time

import numpy as np

ENV = "GRU4REC_OFFICIAL"
# The official fit prints "Epoch1 --> loss: 6.123456 \t(12.34s) \t[123.45 mb/s | 4567 e/s]": its own epoch
# timer (the loop only, without the data iterator and sample-cache set-up), the figure comparable to ours.
_EPOCH_RE = re.compile(r"Epoch(\d+) --> loss: ([-+0-9.eEnaif]+)\s+\(([0-9.]+)s\)\s+\[([0-9.]+) mb/s \| ([0-9.]+) e/s\]")


def _import(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load():
    """(module gru4rec_pytorch, None) or (None, why it is not available)."""
    folder = os.environ.get(ENV)
    if not folder:
        return None, f"not installed ({ENV} unset)"
    path = os.path.join(folder, "gru4rec_pytorch.py")
    if not os.path.isfile(path):
        return None, f"not installed (no gru4rec_pytorch.py in {ENV}={folder!r})"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "not installed (torch is not importable)"
    mod = _import(path, "gru4rec_pytorch_official")
    mod.torch = _TorchCompat(mod.torch)
    return mod, None


class _TorchCompat:
    """torch as the official module sees it, for today's numpy 2 / torch (the official code predates both):

    - torch refuses ``torch.tensor(pandas.Series)`` (the official fit's logq popularity P0): the Series' values
      are passed instead;
    - under numpy 2 promotion, ``float32 array * np.float64 scalar`` is float64, so the official weight init
      (compatibility mode) hands float64 arrays to ``Tensor.set_`` on float32 parameters, which torch refuses:
      a float64 array without an explicit dtype becomes float32, the dtype it had under numpy 1.
    Every other attribute is torch's own."""

    def __init__(self, torch):
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def tensor(self, data, *args, **kwargs):
        import pandas as pd
        if isinstance(data, pd.Series):
            data = data.values
        if isinstance(data, np.ndarray) and data.dtype == np.float64 and "dtype" not in kwargs:
            data = data.astype(np.float32)
        return self._torch.tensor(data, *args, **kwargs)


def official_kwargs(cfg) -> dict:
    """TrainConfig -> the official GRU4Rec constructor's arguments (its names: elu_param, not final_act)."""
    fa = cfg.final_act
    if fa == "linear":
        elu = 0.0
    elif fa.startswith("elu-"):
        elu = float(fa[4:])
    else:
        raise ValueError(f"the official PyTorch code has no final_act={fa!r}")
    return dict(layers=list(cfg.layers), loss=cfg.loss, batch_size=cfg.batch_size,
                dropout_p_embed=cfg.dropout_p_embed, dropout_p_hidden=cfg.dropout_p_hidden,
                learning_rate=cfg.learning_rate, momentum=cfg.momentum, sample_alpha=cfg.sample_alpha,
                n_sample=cfg.n_sample, embedding=cfg.embedding, constrained_embedding=cfg.constrained_embedding,
                n_epochs=cfg.n_epochs, bpreg=cfg.bpreg, elu_param=elu, logq=cfg.logq)


def fit(mod, df, cfg, seed: int = 42) -> dict:
    """Train the official model on the CPU; returns wall seconds of fit(), its own per-epoch records, the model."""
    import torch
    torch.manual_seed(seed)
    gru = mod.GRU4Rec(device=torch.device("cpu"), **official_kwargs(cfg))
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        gru.fit(df.copy())  # fit sorts its frame in place
    wall = time.perf_counter() - t0
    epochs = [dict(epoch=int(m[1]), loss=float(m[2]), seconds=float(m[3]), mb_per_s=float(m[4]),
                   events_per_s=float(m[5])) for m in _EPOCH_RE.finditer(out.getvalue())]
    if getattr(gru, "error_during_train", False) or not epochs:
        raise RuntimeError(f"official fit failed: {out.getvalue()[-500:]}")
    return {"model": gru, "fit_wall_s": wall, "epochs": epochs,
            "steps": None, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def evaluate(gru, test_df, cutoff: int = 20, batch_size: int = 512, mode: str = "conservative") -> dict:
    """The official batch_eval (from evaluation.py next to gru4rec_pytorch.py) timed; recall/mrr at ``cutoff``."""
    folder = os.environ[ENV]
    ev = _import(os.path.join(folder, "evaluation.py"), "gru4rec_official_evaluation")
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        rec, mrr = ev.batch_eval(gru, test_df.copy(), cutoff=[cutoff], batch_size=batch_size, mode=mode)
        dt = time.perf_counter() - t0
    return {"seconds": dt, f"recall@{cutoff}": float(rec[cutoff]), f"mrr@{cutoff}": float(mrr[cutoff])}
