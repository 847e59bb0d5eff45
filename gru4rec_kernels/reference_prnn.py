"""The numpy reference of one p-RNN training step: the subnets' forward, the summed scores, backward, Adagrad.

Readable, never optimised: the oracle the cpu and cuda p-RNN steps will be tested against, itself checked
against central finite differences in float64 (tests/test_prnn_reference.py). It reuses reference.py for every
piece GRU4Rec already has (the GRU stack, the losses, clipping, Adagrad), so a one-subnet ID model computes
exactly reference.train_step (tested bit for bit). p-RNN: Hidasi, Quadrana, Karatzoglou, Tikk, RecSys 2016
(doi:10.1145/2959100.2959167). The math is docs/prnn.md; the notation is reference.py's, plus:

    K subnets, subnet k: a GRU stack of top width H_k, sources s (the item ID and / or features), scale a_k,
    output block W_k = Wy[:, c_k : c_k + H_k]; F_f a feature matrix [N, D_f] (dense, or CSR with rows nz(i)).

First-layer input pre-activations of subnet k: the sum of its sources' products, then the bias:
    a_0 = sum_s P_s + Bh0, in source order
    P_id = W_x0[X]  (one-hot),  (W_k[X] * m_e) W_x0  (constrained),  (E[X] * m_e) W_x0  (embedding)
    P_f  = F_f[X] W_f  (dense),  P_f[b] = sum_{j in nz(X_b), CSR order} F_f[X_b, j] W_f[j]  (sparse: a weighted
           gather-sum of rows, never a dense [B, D] or [N, D] product)
Scores and loss (the scoring subnets of the step's phase; the others do not run):
    h_cat = [a_1 h_1 | ... | a_K h_K]  (a zero block for a subnet that does not score)
    Z = h_cat Wy[Y]^T + By[Y] - logq * log q[Y] = sum_k a_k h_k W_k[Y]^T + By[Y] - ...     [B, O]
Backward reaches the trainable subnets of the phase only: dW_k[Y] = dZ^T (a_k h_k), dh_k = a_k dZ W_k[Y].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import reference as ref
from .prnn_config import Phase
from .prnn_layout import PRNNLayout
from .reference import Grads, LayerCache, StepInputs
from .rng import dropout_mask_np

# Dropout streams: subnet 0 uses reference's layer numbers (layer l, -1 for the embedding), so a one-subnet
# model draws GRU4Rec's masks; subnet k > 0 draws layer l as stream k * SUBNET_STREAM_STRIDE + l.
SUBNET_STREAM_STRIDE = 1 << 16


@dataclass
class SubnetMasks:
    """Scaled keep masks of one subnet (None: no dropout there)."""

    emb: np.ndarray | None = None  # [B, width of the ID embedding] (constrained / embedding ID input)
    hidden: list | None = None  # per layer [B, H_l]


@dataclass
class SparseRows:
    """The non-zeros of the rows X of a CSR matrix, batch row by batch row, CSR order within a row."""

    seg: np.ndarray  # int64 [M] batch row of each non-zero
    cols: np.ndarray  # int64 [M] column (= row of the input weights W_f)
    vals: np.ndarray  # [M] value, in the step's float dtype


@dataclass
class SubnetCache:
    layers: list[LayerCache]
    x_id: np.ndarray | None = None  # the ID embedding rows after dropout (constrained / embedding)
    x_dense: dict = field(default_factory=dict)  # feature name -> F[X] [B, D]
    x_sparse: dict = field(default_factory=dict)  # feature name -> SparseRows


@dataclass
class PRNNCache:
    subnets: dict  # subnet index -> SubnetCache (the subnets that ran: the phase's scoring set)
    h_cat: np.ndarray  # [B, sum H_k]
    Wy_Y: np.ndarray  # Wy[Y] [O, sum H_k]
    Z: np.ndarray


# --------------------------------------------------------------------------------------------- sparse input
def sparse_rows(F, X, dtype) -> SparseRows:
    """The non-zeros of rows X of the CSR matrix F (duplicates in X give their rows again)."""
    starts, ends = F.indptr[X].astype(np.int64), F.indptr[np.asarray(X) + 1].astype(np.int64)
    counts = ends - starts
    seg = np.repeat(np.arange(len(X), dtype=np.int64), counts)
    pos = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()), dtype=np.int64)
    return SparseRows(seg, F.indices[pos].astype(np.int64), F.data[pos].astype(dtype))


def sparse_input_product(W, rows: SparseRows, n_rows: int):
    """out[b] = sum over the non-zeros (j, v) of row b, in CSR order, of v W[j]  [B, cols of W]."""
    out = np.zeros((n_rows, W.shape[1]), dtype=W.dtype)
    np.add.at(out, rows.seg, rows.vals[:, None] * W[rows.cols])
    return out


def sparse_input_grad(rows: SparseRows, da0):
    """The gradient of sparse_input_product w.r.t. W, as uncoalesced (ids, rows) pairs: (j, v da0[b]) for every
    non-zero (b, j, v), in batch-row then CSR order (duplicate j are summed by the optimizer, in this order; the
    twin of the cpu kernels in backends/cpu/features.py and the cuda one in kernels/features.py)."""
    return rows.cols, rows.vals[:, None] * da0[rows.seg]


# --------------------------------------------------------------------------------------------- forward
def subnet_forward(params, layout: PRNNLayout, k: int, H: list, X, masks: SubnetMasks):
    """Subnet k's GRU stack on the input items X: (SubnetCache; the new hidden state is its layers' out)."""
    sub = layout.subnets[k]
    p = layout.subnet_params(params, k)
    dtype = params["Wy"].dtype
    cache = SubnetCache(layers=[])
    a0 = None
    for src in layout.sources[k]:
        if src.kind == "id":
            if sub.id_input == "onehot":
                prod = p["Wx0"][X]
            else:
                if sub.id_input == "constrained":
                    c0, c1 = layout.cols[k]
                    rows = params["Wy"][X][:, c0:c1]
                else:
                    rows = p["E"][X]
                x = rows * masks.emb if masks.emb is not None else np.ascontiguousarray(rows)
                cache.x_id = x
                prod = x @ p["Wx0"]
        elif src.kind == "dense":
            x = np.asarray(layout.features[src.name].matrix[X], dtype=dtype)
            cache.x_dense[src.name] = x
            prod = x @ p[f"Wf.{src.name}"]
        else:
            sr = sparse_rows(layout.features[src.name].matrix, X, dtype)
            cache.x_sparse[src.name] = sr
            prod = sparse_input_product(p[f"Wf.{src.name}"], sr, len(X))
        a0 = prod if a0 is None else a0 + prod
    a0 = a0 + p["Bh0"]
    # layer 0's input weights are the sources' (backward handles them), so its cached x is only informative
    cache.layers = ref.gru_stack_fwd(p, a0, cache.x_id, H, masks.hidden or [None] * len(sub.layers))
    return cache


def concat_hidden(layout: PRNNLayout, tops: dict, B: int, dtype):
    """h_cat [B, sum H_k]: a_k h_k in subnet k's block for the given top states, zeros elsewhere."""
    h_cat = np.zeros((B, layout.hidden_total), dtype=dtype)
    for k, h in tops.items():
        c0, c1 = layout.cols[k]
        h_cat[:, c0:c1] = np.asarray(layout.subnets[k].scale, dtype) * h
    return h_cat


def forward(params, layout: PRNNLayout, H: list, step: StepInputs, masks: list, phase: Phase):
    """Scores Z [B, O] (before the final activation) and the cache. H: per subnet, per layer (zeroed on reset
    rows already). Only the phase's scoring subnets run."""
    if step.emb_mask is not None or step.hidden_masks is not None:
        raise ValueError("a p-RNN step takes its dropout masks per subnet (masks), not in StepInputs")
    B = step.X.shape[0]
    dtype = params["Wy"].dtype
    subs = {k: subnet_forward(params, layout, k, H[k], step.X, masks[k]) for k in phase.scoring}
    h_cat = concat_hidden(layout, {k: c.layers[-1].out for k, c in subs.items()}, B, dtype)
    Wy_Y = params["Wy"][step.Y]
    Z = h_cat @ Wy_Y.T + params["By"][step.Y]
    if step.col_logq is not None:
        Z = Z - step.col_logq
    return Z, PRNNCache(subs, h_cat, Wy_Y, Z)


# --------------------------------------------------------------------------------------------- backward
def backward(params, layout: PRNNLayout, cache: PRNNCache, dZ, step: StepInputs, masks: list, phase: Phase
             ) -> Grads:
    """Gradients of the phase's trainable parameters only: dense arrays, sparse uncoalesced (ids, rows) pairs;
    subnet k's rows of Wy under the key ``layout.wy_key(k)`` (its column block)."""
    g = Grads()
    X, Y = step.X, step.Y
    dtype = dZ.dtype
    trainable = sorted(phase.trainable)
    for k in trainable:
        c0, c1 = layout.cols[k]
        g.sparse[layout.wy_key(k)] = [(Y, dZ.T @ cache.h_cat[:, c0:c1])]
    if phase.train_bias:
        g.sparse["By"] = [(Y, dZ.sum(axis=0))]
    for k in trainable:
        sub, sc = layout.subnets[k], cache.subnets[k]
        P = sub.prefix
        p = layout.subnet_params(params, k)
        c0, c1 = layout.cols[k]
        dh = np.asarray(sub.scale, dtype) * (dZ @ cache.Wy_Y[:, c0:c1])
        local: dict = {}
        da0 = ref.gru_stack_bwd(p, sc.layers, dh, local)
        g.dense.update({P + name: v for name, v in local.items()})
        for src in layout.sources[k]:
            if src.kind == "id":
                if sub.id_input == "onehot":
                    g.sparse[src.param] = [(X, da0)]
                    continue
                g.dense[src.param] = sc.x_id.T @ da0
                dx = da0 @ p["Wx0"].T
                if masks[k].emb is not None:
                    dx = dx * masks[k].emb
                key = layout.wy_key(k) if sub.id_input == "constrained" else f"{P}E"
                g.sparse.setdefault(key, []).append((X, dx))
            elif src.kind == "dense":
                g.dense[src.param] = sc.x_dense[src.name].T @ da0
            else:
                g.sparse[src.param] = [sparse_input_grad(sc.x_sparse[src.name], da0)]
    g.sparse = {k: (np.concatenate([i for i, _ in v]), np.concatenate([r for _, r in v])) for k, v in g.sparse.items()}
    return g


# --------------------------------------------------------------------------------------------- optimizer
def apply_grads(params, opt, layout: PRNNLayout, g: Grads) -> None:
    """reference.apply_grads over the trainable parameters: global-norm clipping, then Adagrad with momentum
    (dense whole, sparse on the touched rows; a Wy block on its own columns of those rows)."""
    cfg = layout.cfg
    ref.clip_grads(g, cfg.grad_cap)
    for k, v in g.dense.items():
        ref.adagrad_dense(params[k], v, opt["acc"][k], opt["mom"][k], cfg.learning_rate, cfg.momentum)
    for key, (ids, rows) in g.sparse.items():
        name, cols = layout.grad_target(key)
        p, acc, mom = params[name], opt["acc"][name], opt["mom"][name]
        if cols is not None:
            p, acc, mom = p[:, cols], acc[:, cols], mom[:, cols]  # views: the update writes through
        ref.sparse_adagrad(p, ids, rows, acc, mom, cfg.learning_rate, cfg.momentum)


# --------------------------------------------------------------------------------------------- a whole step
def train_step(params, opt, layout: PRNNLayout, H: list, step: StepInputs, masks: list, phase: Phase):
    """One training step in place: (loss, new hidden state per subnet). Subnets outside the phase's scoring
    set do not run and keep their state (zeroed on reset rows)."""
    H = [[np.where(step.reset[:, None], 0, h).astype(h.dtype) for h in Hk] for Hk in H]
    Z, cache = forward(params, layout, H, step, masks, phase)
    loss, dZ = ref.loss_and_grad(Z, layout.cfg, step)
    g = backward(params, layout, cache, dZ, step, masks, phase)
    apply_grads(params, opt, layout, g)
    new_H = [[lc.out for lc in cache.subnets[k].layers] if k in cache.subnets else H[k] for k in range(len(H))]
    return loss, new_H


def dropout_masks(layout: PRNNLayout, step: int, B: int, dtype=np.float32) -> list[SubnetMasks]:
    """The masks of every subnet at a global step, drawn as the fast backends draw them in place (see
    SUBNET_STREAM_STRIDE); subnet 0's are reference's (Backend.dropout_masks)."""
    seed, out = layout.cfg.seed, []
    for k, sub in enumerate(layout.subnets):
        base = k * SUBNET_STREAM_STRIDE
        emb = None
        if sub.dropout_p_embed > 0 and sub.id_input in ("constrained", "embedding"):
            width = sub.hidden if sub.id_input == "constrained" else sub.embedding
            emb = dropout_mask_np(seed, base - 1, step, B, width, sub.dropout_p_embed, dtype)
        hidden = None
        if sub.dropout_p_hidden > 0:
            hidden = [dropout_mask_np(seed, base + l, step, B, h, sub.dropout_p_hidden, dtype)
                      for l, h in enumerate(sub.layers)]
        out.append(SubnetMasks(emb, hidden))
    return out


def no_masks(layout: PRNNLayout) -> list[SubnetMasks]:
    return [SubnetMasks() for _ in layout.subnets]


# --------------------------------------------------------------------------------------------- inference
def hidden_step(params, layout: PRNNLayout, H: list, X, subnets=None) -> list:
    """Inference step (no dropout) of the given subnets (default all): the new hidden state per subnet (the
    others keep theirs)."""
    run = range(len(layout.subnets)) if subnets is None else subnets
    out = list(H)
    for k in run:
        out[k] = [lc.out for lc in subnet_forward(params, layout, k, H[k], X, SubnetMasks()).layers]
    return out


def score_all(params, layout: PRNNLayout, H: list, subnets=None):
    """Final-activation scores of every item [B, N] from the top states of the given subnets (default all)."""
    run = range(len(layout.subnets)) if subnets is None else subnets
    top = {k: H[k][-1] for k in run}
    B = next(iter(top.values())).shape[0]
    return ref.score_all(params, layout.cfg, concat_hidden(layout, top, B, params["Wy"].dtype))
