"""Parameter layout of a p-RNN: names, shapes, which are sparse, each subnet's output block, the initialisation.

Subnet k (prefix ``s{k}.``) is a GRU stack as in layout.py; its first layer reads one or more sources, each with
input weights of its own, and its top layer's H_k units own the column block [c_k, c_k + H_k) of the output
weights:

    s{k}.E          [N, E_k]       the item ID's embedding (id_input='embedding'; sparse)
    s{k}.Wx0        [in, 3 H_0]    the item ID's input weights: in = H_k (constrained: the rows Wy[X] of the
                                   subnet's own block), E_k (embedding), N (one-hot: sparse, a row gather)
    s{k}.Wf.{name}  [D, 3 H_0]     feature source ``name``'s input weights (sparse when its matrix is CSR: the
                                   step touches the rows at the non-zero columns of the input items' rows)
    s{k}.Wx{l} (l >= 1), s{k}.Wrz{l}, s{k}.Wh{l}, s{k}.Bh{l}   as layout.py
    Wy              [N, sum H_k]   the output weights, subnet k's block W_k = Wy[:, c_k : c_k + H_k]
    By              [N]            the shared output bias

The blocks sit side by side in one matrix, so the summed scores sum_k a_k h_k W_k[Y]^T are one product of the
concatenated scaled hidden states [a_1 h_1 | ... | a_K h_K] with Wy[Y] (the concatenated formulation of the
paper), and evaluation and top-k score a p-RNN like a GRU4Rec of width sum H_k. A one-subnet ID model has
today's GRU4Rec layout and initialisation, its names prefixed ``s0.`` (``Wy`` and ``By`` keep theirs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .features import ItemFeatures
from .layout import ParamSpec, allocate, init_uniform
from .prnn_config import ID_SOURCE, PRNNConfig, Subnet

__all__ = ["PRNNLayout", "Source", "init_prnn_params"]


@dataclass(frozen=True)
class Source:
    """One input of a subnet's first layer."""

    name: str  # 'id' or the feature name
    kind: str  # 'id' | 'dense' | 'sparse'
    param: str  # its input weights: s{k}.Wx0 (id) or s{k}.Wf.{name}
    width: int  # rows of those weights


class PRNNLayout:
    """A p-RNN's structure for N items and the given features: resolved subnets, sources, output blocks and
    parameter specs. ``features``: ItemFeatures (or a dict name -> ItemFeatures) of N rows, exactly the feature
    sources the config names."""

    def __init__(self, cfg: TrainConfig, prnn: PRNNConfig, n_items: int, features=()):
        if not isinstance(prnn, PRNNConfig):
            raise ValueError(f"prnn must be a PRNNConfig; got {type(prnn).__name__}")
        if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
            raise ValueError(f"n_items must be an int >= 1; got {n_items!r}")
        prnn.check(cfg)
        self.cfg, self.prnn, self.n_items = cfg, prnn, int(n_items)
        self.subnets: tuple[Subnet, ...] = prnn.resolve(cfg)
        self.features = _features_by_name(features, prnn, self.n_items)
        sources, cols, c = [], [], 0
        for sub in self.subnets:
            row = []
            for name in sub.sources:
                if name == ID_SOURCE:
                    width = {"constrained": sub.hidden, "embedding": sub.embedding, "onehot": self.n_items}
                    row.append(Source(name, "id", f"{sub.prefix}Wx0", width[sub.id_input]))
                else:
                    f = self.features[name]
                    row.append(Source(name, "sparse" if f.sparse else "dense", f"{sub.prefix}Wf.{name}", f.dim))
            sources.append(tuple(row))
            cols.append((c, c + sub.hidden))
            c += sub.hidden
        self.sources: tuple[tuple[Source, ...], ...] = tuple(sources)
        self.cols: tuple[tuple[int, int], ...] = tuple(cols)  # subnet k's block of Wy's columns
        self.hidden_total = c

    def param_specs(self) -> list[ParamSpec]:
        """Specs in initialisation order: per subnet (E, first-layer input weights, then the layers as
        layout.py), then Wy (one gate block per subnet) and By."""
        N, specs = self.n_items, []
        for sub, srcs in zip(self.subnets, self.sources):
            P = sub.prefix
            if sub.id_input == "embedding":
                specs.append(ParamSpec(f"{P}E", (N, sub.embedding), True, ((0, sub.embedding),)))
            for l, h in enumerate(sub.layers):
                gates3 = ((0, h), (h, 2 * h), (2 * h, 3 * h))
                if l == 0:
                    for s in srcs:
                        sparse = s.kind == "sparse" or (s.kind == "id" and sub.id_input == "onehot")
                        specs.append(ParamSpec(s.param, (s.width, 3 * h), sparse, gates3))
                else:
                    specs.append(ParamSpec(f"{P}Wx{l}", (sub.layers[l - 1], 3 * h), False, gates3))
                specs.append(ParamSpec(f"{P}Wrz{l}", (h, 2 * h), False, ((0, h), (h, 2 * h))))
                specs.append(ParamSpec(f"{P}Wh{l}", (h, h), False, ((0, h),)))
                specs.append(ParamSpec(f"{P}Bh{l}", (3 * h,), False, ()))
        specs.append(ParamSpec("Wy", (N, self.hidden_total), True, self.cols))
        specs.append(ParamSpec("By", (N,), True, ()))
        return specs

    def subnet_params(self, params: dict, k: int) -> dict:
        """Subnet k's parameters under their layout.py names (Wx{l}, Wrz{l}, ...; no prefix): the arrays
        themselves, not copies."""
        P = self.subnets[k].prefix
        return {name[len(P):]: v for name, v in params.items() if name.startswith(P)}

    def subnet_param_names(self, k: int) -> list[str]:
        P = self.subnets[k].prefix
        return [s.name for s in self.param_specs() if s.name.startswith(P)]

    # the sparse gradient of subnet k's output block is kept under a key of its own, so that a frozen subnet's
    # columns of a touched Wy row get no update
    @staticmethod
    def wy_key(k: int) -> str:
        return f"Wy.s{k}"

    def grad_target(self, key: str) -> tuple[str, slice | None]:
        """Gradient key -> (parameter name, column slice or None for the whole rows)."""
        if key.startswith("Wy.s"):
            c0, c1 = self.cols[int(key[4:])]
            return "Wy", slice(c0, c1)
        return key, None


def init_prnn_params(layout: PRNNLayout, dtype=np.float32, seed: int | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(flat dense buffer, name -> array), initialised as layout.init_params: U(-s, s) per gate block with
    s = sqrt(6 / (rows + block cols)) (Wy: one block per subnet), biases zero, seeded by ``seed`` (default
    TrainConfig.seed). A one-subnet ID model gets exactly layout.init_params' values."""
    specs = layout.param_specs()
    flat, params = allocate(specs, dtype)
    init_uniform(specs, params, layout.cfg.seed if seed is None else seed)
    return flat, params


def _features_by_name(features, prnn: PRNNConfig, n_items: int) -> dict[str, ItemFeatures]:
    if isinstance(features, ItemFeatures):
        features = [features]
    items = list(features.values()) if isinstance(features, dict) else list(features)
    out: dict[str, ItemFeatures] = {}
    for f in items:
        if not isinstance(f, ItemFeatures):
            raise ValueError(f"features must be ItemFeatures; got {type(f).__name__}")
        if f.name in out:
            raise ValueError(f"two feature sources are named {f.name!r}")
        if f.n_items != n_items:
            raise ValueError(f"features {f.name!r} have {f.n_items} rows but the model has {n_items} items; build "
                             f"them with the clicks' item map")
        out[f.name] = f
    need = set(prnn.features)
    missing = sorted(need - set(out))
    if missing:
        raise ValueError(f"the config reads feature source(s) {missing} but the features given are "
                         f"{sorted(out)}")
    unused = sorted(set(out) - need)
    if unused:
        raise ValueError(f"feature source(s) {unused} are given but no subnet reads them (sources: "
                         f"{sorted(need)})")
    return out
