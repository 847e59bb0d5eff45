"""The integer codes that kernels take for the loss, the final activation and the input mode.

One table, used by the reference, the cpu and cuda backends and serving, so a code never means two things.
Kernels take plain ints (a code and, for activations, one float parameter) because neither ``@njit`` nor
``numba.cuda`` code can branch on Python strings cheaply.
"""
from __future__ import annotations

import math

# Losses (config.TrainConfig.loss).
LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
LOSS_CE, LOSS_BPR_MAX, LOSS_TOP1_MAX, LOSS_BPR, LOSS_TOP1 = range(5)
LOSS_CODES = {name: i for i, name in enumerate(LOSSES)}

# Final activations (TrainConfig.final_act): a code and one parameter ``a`` (ELU's alpha, leaky ReLU's slope).
FINAL_ACTS = ("linear", "tanh", "relu", "elu-<a>", "leaky-<a>")
ACT_LINEAR, ACT_TANH, ACT_RELU, ACT_ELU, ACT_LEAKY = range(5)

# Input modes of the first GRU layer: the output weights reused as input embedding (constrained), a separate
# embedding table, or one-hot (the first layer's input weights indexed by item).
INPUT_MODES = ("constrained", "embedding", "onehot")
MODE_CONSTRAINED, MODE_EMBEDDING, MODE_ONEHOT = range(3)
MODE_CODES = {name: i for i, name in enumerate(INPUT_MODES)}
# Kernels only, never a config value: the first layer's input pre-activations a = sum of the sources' products + b
# are computed by the caller (a p-RNN subnet's sources, docs/prnn.md 3.1), and its input gradient is the caller's.
MODE_SOURCES = -1


def parse_final_act(value: str) -> tuple[int, float]:
    """'linear' | 'tanh' | 'relu' | 'elu-<a>' | 'leaky-<a>'  ->  (code, a)."""
    if not isinstance(value, str):
        raise ValueError(f"final_act must be a string, one of {FINAL_ACTS}; got {value!r}")
    v = value.strip().lower()
    fixed = {"linear": ACT_LINEAR, "tanh": ACT_TANH, "relu": ACT_RELU}
    if v in fixed:
        return fixed[v], 0.0
    for prefix, code in (("elu-", ACT_ELU), ("leaky-", ACT_LEAKY)):
        if v.startswith(prefix):
            try:
                a = float(v[len(prefix):])
            except ValueError:
                break
            if not math.isfinite(a) or a < 0:
                break
            return code, a
    raise ValueError(f"final_act must be one of {FINAL_ACTS} with a >= 0 (e.g. 'elu-0.5'); got {value!r}")
