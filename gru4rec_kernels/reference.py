"""The numpy reference of one GRU4Rec v2 training step: forward, losses, backward, Adagrad with momentum.

Readable, never optimised: this is the oracle that the Numba CPU backend and the numba.cuda kernels are tested
against, and it is itself checked against central finite differences in float64 (tests/test_reference.py).
GRU4Rec: Hidasi, Karatzoglou, Baltrunas, Tikk, ICLR 2016 (doi:10.48550/arXiv.1511.06939); its v2 losses, extra
samples and constrained embeddings: Hidasi & Karatzoglou, CIKM 2018 (doi:10.1145/3269206.3271761).
The math is docs/design.md section 2; the notation is:

    B rows (session-parallel slots), H_l units of layer l, N items, S extra samples, O = B + S output columns,
    X [B] input item ids, Y [O] = [targets (B) | samples (S)], column i of row i is row i's target.

GRU layer (gate blocks stacked [h | r | z]; no hidden-side biases; tanh hidden activation):
    a  = x Wx + Bh                               [B, 3H]   (one-hot input: a = Wx0[X] + Bh0)
    r  = sigmoid(a_r + h U_r),  z = sigmoid(a_z + h U_z)
    c  = tanh(a_h + (r * h) U_h)
    h' = ((1 - z) h + z c) * mask                mask = 0 or 1/(1-p): inverted dropout, passed in as an array
Scores and loss:
    Z = h'_L Wy[Y]^T + By[Y] - logq * log q[Y]   [B, O]    R = f(Z), f the final activation
    loss = sum over active rows of loss_i(R_i) / batch_size
Backpropagation is one step deep: the incoming hidden state is a constant.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import ACT_ELU, ACT_LEAKY, ACT_LINEAR, ACT_RELU, ACT_TANH, TrainConfig

ADAGRAD_EPS = 1e-6
BPR_MAX_EPS = 1e-24  # inside the log of bpr-max, as the official code


# --------------------------------------------------------------------------------------------- helpers
def sigmoid(x):
    # two-sided form: no overflow warning for large |x|
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def final_act(z, code: int, a: float):
    """R = f(Z) for the final activation (code, a) of config.parse_final_act."""
    if code == ACT_LINEAR:
        return z.copy()
    if code == ACT_TANH:
        return np.tanh(z)
    if code == ACT_RELU:
        return np.maximum(z, 0)
    if code == ACT_ELU:
        return np.where(z > 0, z, a * np.expm1(np.minimum(z, 0)))
    if code == ACT_LEAKY:
        return np.where(z > 0, z, a * z)
    raise ValueError(f"unknown final activation code {code}")


def final_act_grad(z, r, code: int, a: float):
    """dR/dZ, elementwise, given Z and R = f(Z)."""
    if code == ACT_LINEAR:
        return np.ones_like(z)
    if code == ACT_TANH:
        return 1 - r * r
    if code == ACT_RELU:
        return (z > 0).astype(z.dtype)
    if code == ACT_ELU:
        return np.where(z > 0, 1, r + a).astype(z.dtype)
    if code == ACT_LEAKY:
        return np.where(z > 0, 1, a).astype(z.dtype)
    raise ValueError(f"unknown final activation code {code}")


def negative_mask(Y, active, n_rows: int, mask_accidental_hits: bool, row0: int = 0):
    """neg[i, j]: column j is a negative of row i.

    A column j < len(active) belongs to batch row j: it is a negative of every other row if row j is active (an
    inactive row's column holds no real item). Sample columns are negatives of every row. With
    mask_accidental_hits, a column whose item equals row i's target is not a negative of row i.
    Data parallelism: the n_rows rows computed here are batch rows row0 .. row0 + n_rows - 1 of the global batch
    whose flags ``active`` and targets Y[:len(active)] are; row i's target is column row0 + i.
    """
    B, O = n_rows, Y.shape[0]
    valid = np.ones(O, dtype=bool)
    valid[:len(active)] = active
    neg = np.broadcast_to(valid, (B, O)).copy()
    rows = np.arange(B)
    neg[rows, row0 + rows] = False
    if mask_accidental_hits:
        neg &= Y[None, :] != Y[row0:row0 + B, None]
    return neg


# --------------------------------------------------------------------------------------------- step data
@dataclass
class StepInputs:
    """Everything one training step reads besides the parameters and the hidden state."""

    X: np.ndarray  # int [B] input item ids (anything valid, e.g. 0, on inactive rows)
    Y: np.ndarray  # int [O] targets [B] then samples [S]
    active: np.ndarray  # bool [B]
    reset: np.ndarray  # bool [B]: zero this row's hidden state before the step (new session)
    emb_mask: np.ndarray | None = None  # [B, in_0] scaled keep mask of the input embedding, or None
    hidden_masks: list | None = None  # per layer [B, H_l] scaled keep masks, or None
    col_logq: np.ndarray | None = None  # [O] logq * log q_j, subtracted from the scores, or None
    # data parallelism (dataparallel.py): these B rows are rows row0 .. row0 + B - 1 of a global batch of
    # len(col_active) rows, whose targets are Y[:len(col_active)]; None / 0 in one process
    row0: int = 0
    col_active: np.ndarray | None = None


@dataclass
class LayerCache:
    x: np.ndarray | None  # layer input (None for the one-hot first layer)
    h: np.ndarray  # incoming hidden state
    r: np.ndarray
    z: np.ndarray
    c: np.ndarray
    mask: np.ndarray | None
    out: np.ndarray  # h' after dropout: the layer's output and next hidden state


@dataclass
class ForwardCache:
    layers: list[LayerCache] = field(default_factory=list)
    x0: np.ndarray | None = None  # the input embedding after dropout (constrained / embedding modes)
    Wy_Y: np.ndarray | None = None  # Wy[Y]
    Z: np.ndarray | None = None


# --------------------------------------------------------------------------------------------- forward
def gru_fwd(a, h, Wrz, Wh, mask):
    """One GRU step given the input pre-activations a = x Wx + Bh [B, 3H] (blocks [h | r | z])."""
    H = h.shape[1]
    rz = sigmoid(a[:, H:] + h @ Wrz)
    r, z = rz[:, :H], rz[:, H:]
    c = np.tanh(a[:, :H] + (r * h) @ Wh)
    hn = (1 - z) * h + z * c
    out = hn * mask if mask is not None else hn
    return r, z, c, out


def gru_stack_fwd(params, a0, x0, H: list, masks: list) -> list[LayerCache]:
    """The layers of one GRU stack, given layer 0's input pre-activations a0 [B, 3H_0] (x0: layer 0's dense
    input, kept for backward; None when there is none, as in one-hot mode). params: Wx{l} (l >= 1), Wrz{l},
    Wh{l}, Bh{l}; H and masks: per layer. The new hidden state is [lc.out for lc in the returned caches]."""
    layers: list[LayerCache] = []
    a, x = a0, x0
    for l in range(len(H)):
        if l > 0:
            x = layers[-1].out
            a = x @ params[f"Wx{l}"] + params[f"Bh{l}"]
        r, z, c, out = gru_fwd(a, H[l], params[f"Wrz{l}"], params[f"Wh{l}"], masks[l])
        layers.append(LayerCache(x, H[l], r, z, c, masks[l], out))
    return layers


def forward(params, cfg: TrainConfig, H: list, step: StepInputs):
    """Scores Z [B, O] (before the final activation) and the cache for backward. H: hidden state per layer
    (already zeroed on reset rows). The new hidden state is [lc.out for lc in cache.layers]."""
    X, Y = step.X, step.Y
    cache = ForwardCache()
    mode = cfg.input_mode
    masks = step.hidden_masks or [None] * len(cfg.layers)
    Wx0, Bh0 = params["Wx0"], params["Bh0"]
    if mode == "onehot":
        x0 = None
        a0 = Wx0[X] + Bh0
    else:
        emb = params["Wy"] if mode == "constrained" else params["E"]
        x0 = emb[X] * step.emb_mask if step.emb_mask is not None else emb[X].copy()
        cache.x0 = x0
        a0 = x0 @ Wx0 + Bh0
    cache.layers = gru_stack_fwd(params, a0, x0, H, masks)
    y = cache.layers[-1].out
    Wy_Y = params["Wy"][Y]
    Z = y @ Wy_Y.T + params["By"][Y]
    if step.col_logq is not None:
        Z = Z - step.col_logq
    cache.Wy_Y, cache.Z = Wy_Y, Z
    return Z, cache


# --------------------------------------------------------------------------------------------- losses
def row_loss(R, neg, loss: str, bpreg: float, row0: int = 0):
    """Per-row loss [B] and dL_i/dR_i [B, O] of every loss, written out by hand (paper eqs. (13), (14)).

    R [B, O] final-activation scores, neg [B, O] negatives mask. Target of row i is column row0 + i (row0 = 0
    but in data parallelism, where these rows are a slice of the global batch).
    """
    B, O = neg.shape
    idx = np.arange(B)
    tcol = row0 + idx
    r_t = R[idx, tcol][:, None]
    dR = np.zeros_like(R)
    if loss == "cross-entropy":
        # -log softmax over {target} + negatives, as logsumexp - r_t
        inc = neg.copy()
        inc[idx, tcol] = True
        m = np.max(np.where(inc, R, -np.inf), axis=1, keepdims=True)
        e = np.where(inc, np.exp(R - m), 0)
        s = e.sum(axis=1, keepdims=True)
        L = (np.log(s) + m - r_t)[:, 0]
        dR = e / s
        dR[idx, tcol] -= 1
        return L, dR
    n_neg = neg.sum(axis=1, keepdims=True)
    if loss in ("bpr-max", "top1-max"):
        m = np.max(np.where(neg, R, -np.inf), axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        e = np.where(neg, np.exp(R - m), 0)
        den = e.sum(axis=1, keepdims=True)
        sw = e / np.where(den > 0, den, 1)  # softmax over the negatives only
        if loss == "bpr-max":
            sig = np.where(neg, sigmoid(r_t - R), 0)
            A = (sw * sig).sum(axis=1, keepdims=True)
            Q = (sw * R * R).sum(axis=1, keepdims=True)
            L = (-np.log(A + BPR_MAX_EPS) + bpreg * Q)[:, 0]
            inv = 1.0 / (A + BPR_MAX_EPS)
            dA = sw * (sig - A - sig * (1 - sig))
            dQ = sw * (R * R - Q + 2 * R)
            dR = np.where(neg, -inv * dA + bpreg * dQ, 0)
            dR[idx, tcol] = (-inv * (sw * sig * (1 - sig)).sum(axis=1, keepdims=True))[:, 0]
            return L, dR
        sd = sigmoid(R - r_t)
        sq = sigmoid(R * R)
        g = np.where(neg, sd + sq, 0)
        L = (sw * g).sum(axis=1, keepdims=True)
        dR = np.where(neg, sw * (g - L) + sw * (sd * (1 - sd) + 2 * R * sq * (1 - sq)), 0)
        dR[idx, tcol] = -(np.where(neg, sw * sd * (1 - sd), 0)).sum(axis=1)
        return L[:, 0], dR
    inv_n = 1.0 / np.maximum(n_neg, 1)
    if loss == "bpr":
        sig = sigmoid(r_t - R)
        # stable log sigmoid: log sig(d) = -softplus(-d)
        d = r_t - R
        logsig = -(np.maximum(-d, 0) + np.log1p(np.exp(-np.abs(d))))
        L = (-(np.where(neg, logsig, 0)).sum(axis=1, keepdims=True) * inv_n)[:, 0]
        dR = np.where(neg, (1 - sig) * inv_n, 0)
        dR[idx, tcol] = -(np.where(neg, 1 - sig, 0)).sum(axis=1) * inv_n[:, 0]
        return L, dR
    if loss == "top1":
        sd = sigmoid(R - r_t)
        sq = sigmoid(R * R)
        L = ((np.where(neg, sd + sq, 0)).sum(axis=1, keepdims=True) * inv_n)[:, 0]
        dR = np.where(neg, (sd * (1 - sd) + 2 * R * sq * (1 - sq)) * inv_n, 0)
        dR[idx, tcol] = -(np.where(neg, sd * (1 - sd), 0)).sum(axis=1) * inv_n[:, 0]
        return L, dR
    raise ValueError(f"unknown loss {loss!r}")


def loss_and_grad(Z, cfg: TrainConfig, step: StepInputs):
    """Step loss (sum over active rows / batch_size) and dLoss/dZ [B, O]."""
    B = step.X.shape[0]
    code, a = cfg.final_act_code
    R = final_act(Z, code, a)
    col_active = step.active if step.col_active is None else step.col_active
    neg = negative_mask(step.Y, col_active, B, cfg.mask_accidental_hits, step.row0)
    L, dR = row_loss(R, neg, cfg.loss, cfg.bpreg, step.row0)
    w = step.active.astype(Z.dtype) / cfg.batch_size
    loss = float((L * w).sum())
    dZ = dR * w[:, None] * final_act_grad(Z, R, code, a)
    return loss, dZ.astype(Z.dtype)


# --------------------------------------------------------------------------------------------- backward
@dataclass
class Grads:
    """Dense gradients (full arrays) and sparse ones as uncoalesced (ids, rows) pairs."""

    dense: dict = field(default_factory=dict)
    sparse: dict = field(default_factory=dict)  # name -> (ids [K], rows [K, ...])


def gru_bwd(dout, lc: LayerCache, Wrz, Wh):
    """Gradients of one layer given dLoss/d(out). Returns da [B, 3H] (w.r.t. x Wx + Bh), dWrz, dWh."""
    H = lc.h.shape[1]
    dhn = dout * lc.mask if lc.mask is not None else dout
    dc = dhn * lc.z * (1 - lc.c * lc.c)
    dz = dhn * (lc.c - lc.h) * lc.z * (1 - lc.z)
    drh = dc @ Wh.T
    dr = drh * lc.h * lc.r * (1 - lc.r)
    da = np.concatenate([dc, dr, dz], axis=1)
    dWrz = lc.h.T @ da[:, H:]
    dWh = (lc.r * lc.h).T @ dc
    return da, dWrz, dWh


def gru_stack_bwd(params, layers: list[LayerCache], dy, dense: dict):
    """Backward through one GRU stack from dy = dLoss/d(top layer's output): the dense gradients of layers
    L-1 .. 0 (Wrz{l}, Wh{l}, Bh{l}, and Wx{l} for l >= 1) go into ``dense`` in that order; returns da0
    [B, 3H_0], the gradient w.r.t. layer 0's input pre-activations (its input weights are the caller's)."""
    for l in reversed(range(len(layers))):
        lc = layers[l]
        da, dWrz, dWh = gru_bwd(dy, lc, params[f"Wrz{l}"], params[f"Wh{l}"])
        dense[f"Wrz{l}"] = dWrz
        dense[f"Wh{l}"] = dWh
        dense[f"Bh{l}"] = da.sum(axis=0)
        if l == 0:
            return da
        dense[f"Wx{l}"] = lc.x.T @ da
        dy = da @ params[f"Wx{l}"].T  # gradient w.r.t. the layer input
    raise ValueError("gru_stack_bwd needs at least one layer")


def backward(params, cfg: TrainConfig, cache: ForwardCache, dZ, step: StepInputs) -> Grads:
    g = Grads()
    top = cache.layers[-1].out
    # scores: Z = h Wy[Y]^T + By[Y]
    dy = dZ @ cache.Wy_Y
    g.sparse["Wy"] = [(step.Y, dZ.T @ top)]
    g.sparse["By"] = [(step.Y, dZ.sum(axis=0))]
    da0 = gru_stack_bwd(params, cache.layers, dy, g.dense)
    if cfg.input_mode == "onehot":
        g.sparse["Wx0"] = [(step.X, da0)]
    else:
        g.dense["Wx0"] = cache.x0.T @ da0
        dy = da0 @ params["Wx0"].T
        dx0 = dy * step.emb_mask if step.emb_mask is not None else dy
        name = "Wy" if cfg.input_mode == "constrained" else "E"
        g.sparse.setdefault(name, []).append((step.X, dx0))
    # one (ids, rows) pair per sparse parameter
    g.sparse = {k: (np.concatenate([i for i, _ in v]), np.concatenate([r for _, r in v])) for k, v in g.sparse.items()}
    return g


def clip_grads(g: Grads, grad_cap: float) -> None:
    """Global-norm clipping over all gradients (uncoalesced sparse rows included), as the Theano grad_cap."""
    if grad_cap <= 0:
        return
    sq = sum(float((v.astype(np.float64) ** 2).sum()) for v in g.dense.values())
    sq += sum(float((r.astype(np.float64) ** 2).sum()) for _, r in g.sparse.values())
    norm = np.sqrt(sq)
    if norm >= grad_cap:
        s = grad_cap / norm
        for k in g.dense:
            g.dense[k] = g.dense[k] * np.asarray(s, g.dense[k].dtype)
        g.sparse = {k: (i, r * np.asarray(s, r.dtype)) for k, (i, r) in g.sparse.items()}


# --------------------------------------------------------------------------------------------- optimizer
def adagrad_dense(p, grad, acc, mom, lr: float, momentum: float):
    """acc += g^2; upd = -lr g / sqrt(acc + eps); mom = mu mom + upd; p += mom (in place)."""
    acc += grad * grad
    upd = -lr * grad / np.sqrt(acc + ADAGRAD_EPS)
    if momentum > 0:
        mom *= momentum
        mom += upd
        p += mom
    else:
        p += upd


def coalesce(ids, rows):
    """Sum the rows of duplicate ids: (unique ids, summed rows)."""
    uniq, inv = np.unique(ids, return_inverse=True)
    out = np.zeros((uniq.shape[0],) + rows.shape[1:], dtype=rows.dtype)
    np.add.at(out, inv, rows)
    return uniq, out


def sparse_adagrad(p, ids, rows, acc, mom, lr: float, momentum: float):
    """Adagrad with momentum on the touched rows only, after summing the gradients of duplicate ids."""
    u, gsum = coalesce(ids, rows)
    a = acc[u] + gsum * gsum
    acc[u] = a
    upd = -lr * gsum / np.sqrt(a + ADAGRAD_EPS)
    if momentum > 0:
        m = momentum * mom[u] + upd
        mom[u] = m
        p[u] += m
    else:
        p[u] += upd


def apply_grads(params, opt, cfg: TrainConfig, g: Grads) -> None:
    """opt: {"acc": {name: array}, "mom": {name: array}} with the parameters' shapes."""
    clip_grads(g, cfg.grad_cap)
    for k, v in g.dense.items():
        adagrad_dense(params[k], v, opt["acc"][k], opt["mom"][k], cfg.learning_rate, cfg.momentum)
    for k, (ids, rows) in g.sparse.items():
        sparse_adagrad(params[k], ids, rows, opt["acc"][k], opt["mom"][k], cfg.learning_rate, cfg.momentum)


def zeros_like_params(params):
    return {k: np.zeros_like(v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------- a whole step
def step_grads(params, cfg: TrainConfig, H: list, step: StepInputs):
    """Forward, loss and backward of one step, no update: (loss, Grads, new hidden state)."""
    H = [np.where(step.reset[:, None], 0, h).astype(h.dtype) for h in H]
    Z, cache = forward(params, cfg, H, step)
    loss, dZ = loss_and_grad(Z, cfg, step)
    return loss, backward(params, cfg, cache, dZ, step), [lc.out for lc in cache.layers]


def train_step(params, opt, cfg: TrainConfig, H: list, step: StepInputs):
    """One training step in place: returns (loss, new hidden state)."""
    loss, g, H = step_grads(params, cfg, H, step)
    apply_grads(params, opt, cfg, g)
    return loss, H


# --------------------------------------------------------------------------------------------- inference
def hidden_step(params, cfg: TrainConfig, H: list, X):
    """Inference GRU step (no dropout): new hidden state per layer."""
    step = StepInputs(X=X, Y=np.zeros(0, dtype=np.int64), active=np.ones(len(X), bool), reset=np.zeros(len(X), bool))
    out = []
    y = None
    for l in range(len(cfg.layers)):
        Wx, Wrz, Wh, Bh = params[f"Wx{l}"], params[f"Wrz{l}"], params[f"Wh{l}"], params[f"Bh{l}"]
        if l == 0:
            if cfg.input_mode == "onehot":
                a = Wx[step.X] + Bh
            else:
                emb = params["Wy"] if cfg.input_mode == "constrained" else params["E"]
                a = emb[step.X] @ Wx + Bh
        else:
            a = y @ Wx + Bh
        _, _, _, y = gru_fwd(a, H[l], Wrz, Wh, None)
        out.append(y)
    return out


def score_all(params, cfg: TrainConfig, h_top):
    """Final-activation scores of every item [B, N] (what evaluation ranks)."""
    code, a = cfg.final_act_code
    return final_act(h_top @ params["Wy"].T + params["By"], code, a)


def rank_counts(scores, targets):
    """(# items scoring strictly above the target, # scoring equal, target included) per row."""
    t = scores[np.arange(scores.shape[0]), targets][:, None]
    return (scores > t).sum(axis=1), (scores == t).sum(axis=1)
