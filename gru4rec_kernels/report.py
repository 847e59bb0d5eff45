"""Reports: the metrics table (model and baselines) and training curves (matplotlib, an optional extra).

``format_table({"GRU4Rec": res, "POP": res, ...})`` lays out recall@k and MRR@k for every cutoff, one row per
recommender (``res`` as returned by ``evaluate`` / ``Baseline.evaluate``). ``load_history(path)`` reads the
per-epoch history from ``gru4rec train --json`` output ({"history": [...], "test": {...}}), a bare JSON list,
or a saved ``.safetensors`` model (its header carries the history; only the header is read).
``plot_history(history, out)`` draws the loss curve and, when a validation set was used, the recall@k and
mrr@k curves, into a PNG (Agg backend, no display needed).
"""
from __future__ import annotations

import json
import os
import struct

__all__ = ["format_table", "results_json", "load_history", "plot_history", "fit_baselines"]


def _cutoffs(results: dict) -> list[int]:
    ks = set()
    for res in results.values():
        ks.update(int(k) for k in res["recall"])
    return sorted(ks)


def _get(d: dict, k: int):
    return d.get(k, d.get(str(k)))


def format_table(results: dict, title: str | None = None) -> str:
    """A plain-text table: one row per recommender, recall@k, MRR@k and NDCG@k for every cutoff, the
    beyond-accuracy columns (coverage@k, popularity@k, gini@k) where present, evaluated events."""
    if not results:
        raise ValueError("no results to tabulate")
    ks = _cutoffs(results)
    beyond = ("coverage", "popularity", "gini")
    extra = sorted({c for res in results.values() for c in res if c.split("@")[0] in beyond})
    cols = [f"recall@{k}" for k in ks] + [f"mrr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + extra
    name_w = max(len("model"), *(len(n) for n in results))
    col_w = max(9, *(len(c) for c in cols))
    lines = []
    if title:
        lines.append(title)
    head = f"{'model':<{name_w}}  " + "  ".join(f"{c:>{col_w}}" for c in cols) + "  events"
    lines.append(head)
    lines.append("-" * len(head))
    for name, res in results.items():
        vals = ([_get(res["recall"], k) for k in ks] + [_get(res["mrr"], k) for k in ks]
                + [_get(res.get("ndcg", {}), k) for k in ks] + [res.get(c) for c in extra])
        cells = "  ".join(f"{'-':>{col_w}}" if v is None else f"{v:>{col_w}.4f}" for v in vals)
        lines.append(f"{name:<{name_w}}  {cells}  {res.get('n_events', '')}")
    return "\n".join(lines)


def results_json(results: dict) -> dict:
    """JSON-ready copy (cutoff keys as strings, numpy scalars as floats, no rank arrays)."""
    out = {}
    for name, res in results.items():
        r = {k: v for k, v in res.items() if k != "ranks"}
        r["recall"] = {str(k): float(v) for k, v in res["recall"].items()}
        for name_ in ("mrr", "ndcg", "hit_rate"):
            if name_ in res:
                r[name_] = {str(k): float(v) for k, v in res[name_].items()}
        out[name] = r
    return out


def fit_baselines(train, test, cutoffs, mode: str = "standard", candidates=None, beyond_accuracy_k=None) -> dict:
    """POP, S-POP and item-kNN fitted on ``train`` and evaluated on ``test``: {name: result} (with coverage,
    popularity and Gini of their top-k lists when ``beyond_accuracy_k`` is given)."""
    from .baselines import POP, SPOP, ItemKNN
    from .evaluate import beyond_accuracy
    out = {}
    for b in (POP(), SPOP(), ItemKNN()):
        b.fit(train)
        out[b.name] = b.evaluate(test, cutoffs=cutoffs, mode=mode, candidates=candidates)
        if beyond_accuracy_k:
            out[b.name].update(beyond_accuracy(b, test, beyond_accuracy_k))
    return out


# ------------------------------------------------------------------------------------------------ history
def _safetensors_metadata(path: str) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated (not a safetensors model file)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 1024 * 1024:
            raise ValueError(f"{path}: header size {n} is implausible (not a safetensors model file)")
        raw = f.read(n)
    if len(raw) < n:
        raise ValueError(f"{path}: truncated header (not a safetensors model file)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path}: header is not valid JSON (not a safetensors model file)") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return meta if isinstance(meta, dict) else {}


def load_history(path) -> list[dict]:
    """Per-epoch history dicts from a ``train --json`` file, a JSON list, or a .safetensors model."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if path.endswith(".safetensors"):
        meta = _safetensors_metadata(path)
        try:
            hist = json.loads(meta.get("history", "[]"))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: the stored history is not valid JSON") from None
    else:
        try:
            with open(path) as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a JSON file ({e}); give `gru4rec train --json` output or a "
                             ".safetensors model") from None
        hist = data.get("history") if isinstance(data, dict) else data
    if not isinstance(hist, list) or not all(isinstance(r, dict) for r in hist):
        raise ValueError(f"{path}: no training history (a list of per-epoch records) found")
    if not hist:
        raise ValueError(f"{path}: the training history is empty")
    for r in hist:
        if "epoch" not in r or "loss" not in r:
            raise ValueError(f"{path}: history records need 'epoch' and 'loss'; got keys {sorted(r)}")
    return hist


def plot_history(history: list[dict], out, title: str | None = None) -> str:
    """Loss per epoch, and recall@k / mrr@k per epoch when present, into one PNG. Returns the path."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib, an optional extra: pip install 'gru4rec-kernels[report]' "
                           "(or pip install matplotlib)") from None
    if not history:
        raise ValueError("the training history is empty")
    out = os.fspath(out)
    epochs = [r["epoch"] for r in history]
    metric_keys = sorted({k for r in history for k in r if k.startswith(("recall@", "mrr@"))},
                         key=lambda s: (s.split("@")[0], int(s.split("@")[1])))
    n = 1 + (1 if any(k.startswith("recall@") for k in metric_keys) else 0) \
        + (1 if any(k.startswith("mrr@") for k in metric_keys) else 0)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.0), squeeze=False)
    axes = axes[0]
    ax = axes[0]
    ax.plot(epochs, [r["loss"] for r in history], marker="o", color="tab:red")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (per event)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    j = 1
    for prefix, label in (("recall@", "recall@k"), ("mrr@", "MRR@k")):
        keys = [k for k in metric_keys if k.startswith(prefix)]
        if not keys:
            continue
        ax = axes[j]
        j += 1
        for k in keys:
            pts = [(r["epoch"], r[k]) for r in history if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"validation {label}")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        plt.close(fig)
        raise FileNotFoundError(f"directory {d!r} does not exist (writing {out!r})")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
