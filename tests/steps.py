"""Random but awkward training-step problems shared by the reference, cpu and cuda backend tests."""
from __future__ import annotations

import numpy as np

from gru4rec_kernels.config import TrainConfig
from gru4rec_kernels.layout import embed_width, init_params
from gru4rec_kernels.reference import StepInputs, zeros_like_params


def make_cfg(loss="cross-entropy", mode="constrained", layers=(5,), final_act="linear", **kw) -> TrainConfig:
    emb = {"constrained": dict(constrained_embedding=True, embedding=0),
           "embedding": dict(constrained_embedding=False, embedding=4),
           "onehot": dict(constrained_embedding=False, embedding=0)}[mode]
    if loss == "bpr-max":
        kw.setdefault("bpreg", 0.5)
    return TrainConfig(layers=list(layers), loss=loss, final_act=final_act, **emb, **kw)


def make_problem(cfg: TrainConfig, n_items=13, B=3, S=4, dtype=np.float64, seed=0, inactive=(1,),
                 dropout=0.0, logq=False, hidden_scale=0.5):
    """params, opt, H, step with duplicate ids among inputs, targets and samples, inactive rows and masks."""
    rng = np.random.default_rng(seed)
    _, params = init_params(cfg, n_items, dtype=dtype, seed=seed)
    # non-zero biases so that their gradients are exercised
    for k in params:
        if k.startswith("Bh") or k == "By":
            params[k][...] = rng.normal(0, 0.1, params[k].shape)
    X = rng.integers(0, n_items, B)
    targets = rng.integers(0, n_items, B)
    if B > 1:
        targets[-1] = targets[0]  # duplicate target
    samples = rng.integers(0, n_items, S)
    if S > 0:
        samples[0] = targets[0]  # a sample equal to a target (accidental hit)
        samples[-1] = X[0]  # a sample equal to an input (constrained: Wy row touched twice)
    Y = np.concatenate([targets, samples]).astype(np.int64)
    active = np.ones(B, dtype=bool)
    for i in inactive:
        if i < B:
            active[i] = False
    reset = rng.random(B) < 0.3
    H = [rng.uniform(-hidden_scale, hidden_scale, (B, h)).astype(dtype) for h in cfg.layers]
    in0 = embed_width(cfg)
    emb_mask = hidden_masks = None
    if dropout > 0:
        keep = lambda shape: ((rng.random(shape) >= dropout) / (1 - dropout)).astype(dtype)
        emb_mask = keep((B, in0)) if in0 else None
        hidden_masks = [keep((B, h)) for h in cfg.layers]
    col_logq = None
    if logq:
        col_logq = (0.7 * np.log(rng.uniform(0.01, 1.0, Y.shape[0]))).astype(dtype)
    step = StepInputs(X=X.astype(np.int64), Y=Y, active=active, reset=reset, emb_mask=emb_mask,
                      hidden_masks=hidden_masks, col_logq=col_logq)
    opt = {"acc": zeros_like_params(params), "mom": zeros_like_params(params)}
    return params, opt, H, step


def make_schedule(T, B, S, n_items, seed):
    """inputs, targets, active, reset [T, B], samples [T, S] of a train_chunk: inactive rows (input and target 0),
    resets, an accidental hit, a duplicate sample, a duplicate target."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, n_items, (T, B)).astype(np.int32)
    targets = rng.integers(0, n_items, (T, B)).astype(np.int32)
    active = rng.random((T, B)) < 0.85
    active[:, 0] = True
    inputs[~active] = 0
    targets[~active] = 0
    reset = rng.random((T, B)) < 0.25
    samples = rng.integers(0, n_items, (T, S)).astype(np.int32)
    if S > 2:
        samples[:, 0] = targets[:, 0]  # accidental hit
        samples[:, 1] = samples[:, 2]  # duplicate sample
    targets[:, -1] = targets[:, 0]  # duplicate target
    return inputs, targets, active, reset, samples


def logq_arrays(cfg, n_items, seed=0):
    """(logq_target, logq_sample) as the trainer builds them from item supports, or None when cfg.logq == 0."""
    if cfg.logq <= 0:
        return None
    rng = np.random.default_rng(seed)
    supp = rng.integers(1, 50, n_items).astype(np.float64)
    p0 = supp / supp.sum()
    ps = supp ** 0.5 / (supp ** 0.5).sum()
    return cfg.logq * np.log(p0), cfg.logq * np.log(ps)


# Whole-run cases: each loss, each input mode and both depths; dropout, momentum, logq, accidental-hit masking,
# gradient clipping and every final activation appear somewhere.
RUN_CASES = {
    "ce-constrained-1": dict(loss="cross-entropy", mode="constrained", layers=(5,), final_act="linear",
                             dropout_p_embed=0.2, dropout_p_hidden=0.3, momentum=0.5, logq=0.5),
    "bprmax-onehot-2": dict(loss="bpr-max", mode="onehot", layers=(4, 5), final_act="tanh", dropout_p_hidden=0.2),
    "top1max-embedding-1": dict(loss="top1-max", mode="embedding", layers=(5,), final_act="elu-0.5",
                                dropout_p_embed=0.25, momentum=0.3),
    "bpr-constrained-2": dict(loss="bpr", mode="constrained", layers=(4, 5), final_act="relu",
                              mask_accidental_hits=True, momentum=0.9),
    "top1-onehot-1-clip": dict(loss="top1", mode="onehot", layers=(5,), final_act="leaky-0.1", grad_cap=0.05),
    "ce-embedding-2": dict(loss="cross-entropy", mode="embedding", layers=(4, 5), final_act="linear",
                           dropout_p_hidden=0.1, mask_accidental_hits=True),
}
