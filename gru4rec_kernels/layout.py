"""Parameter layout of a GRU4Rec v2 model: names, shapes, which are sparse, and the flat dense buffer.

Names (also the tensor names in the .safetensors file):
    Wy [N, H_L], By [N]                 output item matrix and bias (sparse: rows of the step's columns)
    E  [N, E]                           separate input embedding (embedding=E, sparse)
    Wx{l} [in_l, 3 H_l]                 input projection, gate blocks [W_h | W_r | W_z]
                                        (one-hot mode: Wx0 is [N, 3 H_0] and sparse: a row gather)
    Wrz{l} [H_l, 2 H_l]                 hidden projections [U_r | U_z]
    Wh{l} [H_l, H_l]                    U_h
    Bh{l} [3 H_l]                       biases [b_h | b_r | b_z]

Dense parameters live as views into one flat float buffer (``flat``) so that the optimizer, and later an
all-reduce, run over one contiguous array. Sparse parameters are their own arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TrainConfig


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    sparse: bool
    # gate blocks for the initialisation: list of (column start, column stop) sharing one scale
    blocks: tuple[tuple[int, int], ...]


def embed_width(cfg: TrainConfig) -> int:
    """Width of the first layer's gathered input rows: H_L (constrained), E (embedding), 0 (one-hot: no rows
    are gathered, the first layer's input weights are indexed by item). The one place this rule lives."""
    return {"constrained": cfg.layers[-1], "embedding": cfg.embedding, "onehot": 0}[cfg.input_mode]


def input_width(cfg: TrainConfig, n_items: int, layer: int = 0) -> int:
    """Rows of Wx{layer}: the first layer's input width (N in one-hot mode), else the layer below's width."""
    if layer > 0:
        return cfg.layers[layer - 1]
    return n_items if cfg.input_mode == "onehot" else embed_width(cfg)


def param_specs(cfg: TrainConfig, n_items: int) -> list[ParamSpec]:
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1; got {n_items}")
    L = cfg.layers
    specs: list[ParamSpec] = []
    mode = cfg.input_mode
    if mode == "embedding":
        specs.append(ParamSpec("E", (n_items, cfg.embedding), True, ((0, cfg.embedding),)))
    for l, h in enumerate(L):
        in_dim = input_width(cfg, n_items, l)
        gates3 = ((0, h), (h, 2 * h), (2 * h, 3 * h))
        specs.append(ParamSpec(f"Wx{l}", (in_dim, 3 * h), mode == "onehot" and l == 0, gates3))
        specs.append(ParamSpec(f"Wrz{l}", (h, 2 * h), False, ((0, h), (h, 2 * h))))
        specs.append(ParamSpec(f"Wh{l}", (h, h), False, ((0, h),)))
        specs.append(ParamSpec(f"Bh{l}", (3 * h,), False, ()))
    specs.append(ParamSpec("Wy", (n_items, L[-1]), True, ((0, L[-1]),)))
    specs.append(ParamSpec("By", (n_items,), True, ()))
    return specs


def dense_size(specs: list[ParamSpec]) -> int:
    return int(sum(int(np.prod(s.shape)) for s in specs if not s.sparse))


def allocate(specs: list[ParamSpec], dtype=np.float32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Zeroed arrays for every parameter: (flat dense buffer, name -> array; dense ones are views of flat)."""
    flat = np.zeros(dense_size(specs), dtype=dtype)
    out: dict[str, np.ndarray] = {}
    off = 0
    for s in specs:
        if s.sparse:
            out[s.name] = np.zeros(s.shape, dtype=dtype)
        else:
            n = int(np.prod(s.shape))
            out[s.name] = flat[off:off + n].reshape(s.shape)
            off += n
    return flat, out


def init_params(cfg: TrainConfig, n_items: int, dtype=np.float32, seed: int | None = None
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """U(-s, s) with s = sqrt(6 / (rows + cols)) per gate block (as the official code); biases zero; seeded."""
    specs = param_specs(cfg, n_items)
    flat, params = allocate(specs, dtype)
    init_uniform(specs, params, cfg.seed if seed is None else seed)
    return flat, params


def init_uniform(specs: list[ParamSpec], params: dict[str, np.ndarray], seed: int) -> None:
    """Fill every spec's gate blocks in place, in spec order, from one generator seeded by ``seed``: U(-s, s)
    with s = sqrt(6 / (rows + block cols)); specs without blocks (biases) stay as they are (zero)."""
    rng = np.random.default_rng(seed)
    for s in specs:
        p = params[s.name]
        for c0, c1 in s.blocks:
            rows = p.shape[0]
            scale = np.sqrt(6.0 / (rows + (c1 - c0)))
            # blocks of rows, so a 10^6-item matrix never exists in float64
            step = max(1, (1 << 20) // max(c1 - c0, 1))
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                p[r0:r1, c0:c1] = rng.uniform(-scale, scale, size=(r1 - r0, c1 - c0))
