"""Random but awkward p-RNN training-step problems: the reference's gradient checks use them, and the cpu and
cuda p-RNN backends will be compared with the reference on them."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from steps import make_cfg

from gru4rec_kernels.features import ItemFeatures
from gru4rec_kernels.prnn_config import PRNNConfig, SubnetConfig
from gru4rec_kernels.prnn_layout import PRNNLayout, init_prnn_params
from gru4rec_kernels.reference import StepInputs, zeros_like_params
from gru4rec_kernels.reference_prnn import SubnetMasks

N_ITEMS = 13
EMPTY_ROW = 7  # the sparse feature's empty row and the dense feature's zero row (an item without features)


def make_features(n_items: int = N_ITEMS, seed: int = 0) -> dict[str, ItemFeatures]:
    """'img': dense [N, 4]; 'cat': CSR [N, 6] with 0-3 weighted non-zeros a row. Row EMPTY_ROW is zero in both."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1000, 1000 + n_items)
    dense = rng.normal(0, 0.7, (n_items, 4))
    dense[EMPTY_ROW] = 0
    nnz = rng.integers(1, 4, n_items)
    nnz[EMPTY_ROW] = 0
    rows = np.repeat(np.arange(n_items), nnz)
    cols = np.concatenate([rng.choice(6, k, replace=False) for k in nnz])
    vals = rng.uniform(0.5, 2.0, rows.size)
    csr = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, 6))
    return {"img": ItemFeatures.from_matrix(dense, ids, ids, name="img"),
            "cat": ItemFeatures.from_matrix(csr, ids, ids, name="cat")}


FEATURE_OF_KIND = {"dense": ["img"], "sparse": ["cat"], "both": ["img", "cat"]}


def make_prnn(arch: str, id_mode: str | None, feats: str | None, strategy: str = "simultaneous", loss="cross-entropy",
              final_act="linear", layers=(5,), feature_layers=(3,), scale=0.7, n_epochs=None, **kw):
    """(cfg, PRNNConfig, features) for an architecture over the features of kind ``feats`` (dense / sparse /
    both); the ID subnet has ``layers`` and id_mode, a feature subnet ``feature_layers`` and scale ``scale``.
    ``kw``: TrainConfig fields, or PRNNConfig's (order, epochs_per_phase, train_bias)."""
    pkw = {k: kw.pop(k) for k in ("order", "epochs_per_phase", "train_bias") if k in kw}
    cfg = make_cfg(loss, id_mode or "constrained", layers, final_act, **kw)
    names = FEATURE_OF_KIND[feats] if feats else []
    if arch == "id":
        subs = [SubnetConfig(("id",))]
    elif arch == "feature":
        subs = [SubnetConfig(tuple(names), layers=feature_layers)]
    elif arch == "concat":
        subs = [SubnetConfig(("id", *names))]
    else:
        subs = [SubnetConfig(("id",))] + [SubnetConfig((f,), layers=feature_layers, scale=scale) for f in names]
    prnn = PRNNConfig(tuple(subs), strategy=strategy, **pkw)
    if n_epochs is not None:
        cfg = cfg.replace(n_epochs=n_epochs)
    all_f = make_features()
    return cfg, prnn, [all_f[n] for n in names]


def phases(prnn: PRNNConfig, n_epochs: int):
    """Every distinct phase of the strategy, in training order."""
    K = len(prnn.subnets)
    if prnn.strategy == "interleaving":
        return [prnn.phase(0, s, n_epochs) for s in range(K)]
    out = []
    for e in range(n_epochs):
        p = prnn.phase(e, 0, n_epochs)
        if p not in out:
            out.append(p)
    return out


def make_prnn_problem(layout: PRNNLayout, B=3, S=4, dtype=np.float64, seed=0, inactive=(1,), dropout=0.0,
                      logq=False, hidden_scale=0.5):
    """params, opt, H, step, masks: duplicate inputs (so sparse feature rows repeat), an input without features,
    duplicate targets, an accidental hit, a sample equal to an input, inactive rows, random masks."""
    rng = np.random.default_rng(seed)
    _, params = init_prnn_params(layout, dtype=dtype, seed=seed)
    for k in params:  # non-zero biases so that their gradients are exercised
        if ".Bh" in k or k == "By":
            params[k][...] = rng.normal(0, 0.1, params[k].shape)
    n = layout.n_items
    X = rng.integers(0, n, B)
    if B > 2:
        X[2] = X[0]
        X[1] = EMPTY_ROW
    targets = rng.integers(0, n, B)
    if B > 1:
        targets[-1] = targets[0]
    samples = rng.integers(0, n, S)
    if S > 1:
        samples[0] = targets[0]
        samples[-1] = X[0]
    Y = np.concatenate([targets, samples]).astype(np.int64)
    active = np.ones(B, dtype=bool)
    for i in inactive:
        if i < B:
            active[i] = False
    reset = rng.random(B) < 0.3
    H = [[rng.uniform(-hidden_scale, hidden_scale, (B, h)).astype(dtype) for h in sub.layers]
         for sub in layout.subnets]
    masks = []
    for sub in layout.subnets:
        m = SubnetMasks()
        if dropout > 0:
            keep = lambda shape: ((rng.random(shape) >= dropout) / (1 - dropout)).astype(dtype)  # noqa: E731
            if sub.id_input in ("constrained", "embedding"):
                m.emb = keep((B, sub.hidden if sub.id_input == "constrained" else sub.embedding))
            m.hidden = [keep((B, h)) for h in sub.layers]
        masks.append(m)
    col_logq = (0.7 * np.log(rng.uniform(0.01, 1.0, Y.shape[0]))).astype(dtype) if logq else None
    step = StepInputs(X=X.astype(np.int64), Y=Y, active=active, reset=reset, col_logq=col_logq)
    opt = {"acc": zeros_like_params(params), "mom": zeros_like_params(params)}
    return params, opt, H, step, masks


# --------------------------------------------------------------------------------------------- tiny training runs
def fit_reference(layout: PRNNLayout, data, seed: int = 0, dtype=np.float32):
    """Train with the reference for cfg.n_epochs epochs of the session-parallel schedule (extra samples drawn
    by supp^alpha with numpy, dropout masks as the backends draw them, the strategy's phase at every step)."""
    from gru4rec_kernels.batching import EpochSchedule
    from gru4rec_kernels.reference_prnn import dropout_masks, train_step
    cfg, prnn = layout.cfg, layout.prnn
    _, params = init_prnn_params(layout, dtype)
    opt = {"acc": zeros_like_params(params), "mom": zeros_like_params(params)}
    p = data.item_support() ** cfg.sample_alpha
    p /= p.sum()
    rng = np.random.default_rng(seed)
    B, step = cfg.batch_size, 0
    for epoch in range(cfg.n_epochs):
        H = [[np.zeros((B, h), dtype) for h in sub.layers] for sub in layout.subnets]
        for ch in EpochSchedule(data.offsets, data.items, B).chunks(1024):
            for t in range(ch.n_steps):
                Y = np.concatenate([ch.targets[t], rng.choice(p.size, cfg.n_sample, p=p)]).astype(np.int64)
                st = StepInputs(X=ch.inputs[t].astype(np.int64), Y=Y, active=ch.active[t], reset=ch.reset[t])
                _, H = train_step(params, opt, layout, H, st, dropout_masks(layout, step, B, dtype),
                                  prnn.phase(epoch, step, cfg.n_epochs))
                step += 1
    return params


def rank_reference(params, layout: PRNNLayout, data, batch_size: int = 64):
    """The official protocol's standard rank (1 + items scoring above the target, all items ranked) of every
    test event, and the event's input item: (ranks, inputs)."""
    from gru4rec_kernels.batching import EpochSchedule
    from gru4rec_kernels.reference_prnn import hidden_step, score_all
    dtype = params["Wy"].dtype
    H = [[np.zeros((batch_size, h), dtype) for h in sub.layers] for sub in layout.subnets]
    ranks, inputs = [], []
    for ch in EpochSchedule(data.offsets, data.items, batch_size).chunks(1024):
        for t in range(ch.n_steps):
            H = [[np.where(ch.reset[t][:, None], 0, h) for h in Hk] for Hk in H]
            H = hidden_step(params, layout, H, ch.inputs[t].astype(np.int64))
            a = ch.active[t]
            s, tg = score_all(params, layout, H)[a], ch.targets[t][a]
            ranks.append(1 + (s > s[np.arange(tg.size), tg][:, None]).sum(axis=1))
            inputs.append(ch.inputs[t][a])
    return np.concatenate(ranks), np.concatenate(inputs)
