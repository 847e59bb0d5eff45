"""The named structures that the CPU kernels take, and the Python code that builds them.

Every structure is a namedtuple of arrays and scalars (Numba passes namedtuples to ``@njit`` code by value,
each field typed on its own), so the chunk driver takes eight named arguments instead of a list of arrays and
integer slot tables. Per-layer structures come as tuples over the layers (all layers have the same field
types, so ``layers[l]`` works with a runtime ``l``). Shape letters: B rows, H_l units of layer l (H = H_L),
O = B + S output columns, IN0 = layout.embed_width(cfg) (the gathered input width of layer 0).

Dense parameters, their gradients, Adagrad accumulators and momenta are views into one flat buffer each
(``layout`` order, which is also dataparallel.GradLayout's dense order): the dense optimizer is one loop over
flat arrays. Sparse gradients are fixed-size row slots aligned with the step's ids, never coalesced in place:
Grads.Wy [O (+ B in constrained mode), H] for the ids [Y | X], Grads.By [O] for Y, Grads.Sx [B, cols] for X (E
or one-hot Wx0).

Data parallelism (dataparallel.py): a rank computes B = B_l rows of a global batch of B_g rows against all
O = B_g + S columns, and applies the all-reduced gradients of the whole global step; its buffers are built with
``global_batch`` = B_g: row buffers of B rows, column buffers of O, and the sparse-update slots and ids for the
global step's [Y | X_global] (O + B_g). One process: B_g = B.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ...layout import embed_width
from .gemm import MR, VW
from .scores_loss import SG_GROUPS

CHUNK = 4096  # fixed chunk of the flat reductions / dense optimizer (never depends on the thread count)

# One GRU layer's weights [Wx | Wrz | Wh | Bh] (parameters, or their gradients in the same shapes). Wx is a
# (1, 1) placeholder where it is sparse (layer 0 of one-hot input: its rows are Params.Sx).
LayerParams = namedtuple("LayerParams", "Wx Wrz Wh Bh")
# Wy, By: output items; Sx: the sparse input table (E, one-hot Wx0, or a (1, 1) placeholder when constrained).
Params = namedtuple("Params", "flat Wy By Sx layers")
# Grads.Wy / By / Sx are the sparse row slots described above; flat and layers are the dense gradients.
Grads = namedtuple("Grads", "flat Wy By Sx layers")
OptState = namedtuple("OptState", "acc_flat mom_flat acc_Wy mom_Wy acc_By mom_By acc_Sx mom_Sx")
# Activations [B, *] of one layer kept for the backward, and its gradient buffers.
LayerWork = namedtuple("LayerWork", "a t2 r z c rh t1 out mask da dc drz drh dout")
# x0 / mask0 / dx0 [B, IN0]: layer-0 input, its dropout mask and gradient. Score side (padded: Op = O rounded
# up to MR, Bp = B rounded up to a vector): WyY [Op, H] = Wy[Y], hT [H, Bp] = h^T, Z / dZ [Bp, Op], R [B, Op];
# byY / lqY [O] = By[Y] / col_logq; dh_part [SG_GROUPS, B, H]. Sparse update: ids [O + B_g] (= [Y | X]), nxt /
# first (duplicate chains), head [N] (all -1 between calls). aT: flat scratch of
# max_l 3 H_l * B floats for the transposed operand of gemm_nt (da^T, dc^T).
Workspace = namedtuple("Workspace", "layers x0 mask0 dx0 WyY hT dh_part byY lqY Z R dZ rowloss partial ids nxt "
                                    "first head aT")
# Constants of a run: codes (codes.py), hyperparameters, the dropout keys [1 + L] and the logQ tables.
Hyper = namedtuple("Hyper", "mode loss act act_a bpreg mask_hits use_logq lr mu cap p_emb p_hid batch keys "
                            "logq_t logq_s")
# T steps of the schedule: inputs / targets / active / reset [T, B], samples [T, S], the first step's index.
Chunk = namedtuple("Chunk", "inputs targets active reset samples step0")

_PLACEHOLDER_SHAPE = (1, 1)


def placeholder() -> np.ndarray:
    """A (1, 1) float32 array standing in for an absent matrix (keeps every field's type fixed)."""
    return np.zeros(_PLACEHOLDER_SHAPE, dtype=np.float32)


def layer_params(arrays: dict, n_layers: int, sparse_wx0: bool) -> tuple:
    """LayerParams per layer from a name -> array dict (Wx{l}, Wrz{l}, Wh{l}, Bh{l})."""
    return tuple(LayerParams(placeholder() if (l == 0 and sparse_wx0) else arrays[f"Wx{l}"], arrays[f"Wrz{l}"],
                             arrays[f"Wh{l}"], arrays[f"Bh{l}"]) for l in range(n_layers))


def sx_name(cfg) -> str | None:
    """The sparse input table of the input mode: E, Wx0 (one-hot), or None (constrained: Wy is the input)."""
    return {"embedding": "E", "onehot": "Wx0"}.get(cfg.input_mode)


def make_hyper(cfg, keys: np.ndarray, logq_t=None, logq_s=None) -> Hyper:
    code, a = cfg.final_act_code
    use_logq = logq_t is not None
    if not use_logq:
        logq_t = logq_s = np.zeros(1, dtype=np.float32)
    return Hyper(int(cfg.input_mode_code), int(cfg.loss_code), int(code), float(a), float(cfg.bpreg),
                 bool(cfg.mask_accidental_hits), use_logq, float(cfg.learning_rate), float(cfg.momentum),
                 float(cfg.grad_cap), float(cfg.dropout_p_embed), float(cfg.dropout_p_hidden),
                 float(cfg.batch_size), np.ascontiguousarray(keys, dtype=np.int64),
                 np.ascontiguousarray(logq_t, dtype=np.float32), np.ascontiguousarray(logq_s, dtype=np.float32))


def make_workspace(cfg, B: int, S: int, sx_cols: int, n_dense: int, head: np.ndarray,
                   with_scores: bool = True, global_batch: int | None = None) -> Workspace:
    """Zeroed buffers of a step with B rows and S samples (S = 0 for evaluation / inference). sx_cols: columns
    of the sparse input table (0 when constrained); n_dense: size of the flat dense buffer (bounds the clipping
    norm's partial sums); head: the shared per-item array of -1 of the sparse update. with_scores=False: the
    forward only (evaluation, inference): the score-side and sparse-update buffers are left 1 element wide.
    global_batch: B_g of a data-parallel rank (module docstring; default B)."""
    return workspace(tuple(cfg.layers), embed_width(cfg), cfg.layers[-1], B, S, sx_cols, n_dense, head, with_scores,
                     global_batch)


def workspace(layers: tuple, in0: int, width: int, B: int, S: int, sx_cols: int, n_dense: int, head: np.ndarray,
              with_scores: bool = True, global_batch: int | None = None) -> Workspace:
    """make_workspace for any stack of layer widths ``layers`` (a p-RNN: every subnet's layers, one after the
    other), a layer-0 input of in0 columns and a scored hidden state of ``width`` columns (a p-RNN: sum H_k)."""
    f32 = np.float32
    widths = ("a", 3), ("t2", 2), ("r", 1), ("z", 1), ("c", 1), ("rh", 1), ("t1", 1), ("out", 1), ("mask", 1), \
        ("da", 3), ("dc", 1), ("drz", 2), ("drh", 1), ("dout", 1)
    # every layer buffer is a view into one allocation (layer by layer, in the order above)
    ws = np.zeros(B * sum(n * H for H in layers for _, n in widths) + 3 * B * in0, f32)
    off = 0

    def take(cols):
        nonlocal off
        v = ws[off:off + B * cols].reshape(B, cols)
        off += B * cols
        return v

    layer_work = tuple(LayerWork(**{name: take(n * H) for name, n in widths}) for H in layers)
    x0, mask0, dx0 = take(in0), take(in0), take(in0)
    Bg = B if global_batch is None else global_batch
    O = Bg + S
    HL = width
    if not with_scores:
        B = Bg = O = HL = 1
    aT = np.zeros(3 * max(layers) * B, f32)
    n_slots = O + Bg
    n_partial = 16 + (n_dense + (n_slots + MR) * (HL + VW) + O + Bg * max(sx_cols, 1)) // CHUNK
    Op = (O + MR - 1) // MR * MR
    Bp = (B + VW - 1) // VW * VW
    return Workspace(layer_work, x0, mask0, dx0, WyY=np.zeros((Op, HL), f32), hT=np.zeros((HL, Bp), f32),
                     dh_part=np.zeros((SG_GROUPS, B, HL), f32), byY=np.zeros(O, f32), lqY=np.zeros(O, f32),
                     Z=np.zeros((Bp, Op), f32), R=np.zeros((B, Op), f32), dZ=np.zeros((Bp, Op), f32),
                     rowloss=np.zeros(B, np.float64), partial=np.zeros(n_partial, np.float64),
                     ids=np.zeros(n_slots, np.int32), nxt=np.zeros(n_slots, np.int32),
                     first=np.zeros(n_slots, np.int32), head=head, aT=aT)


def grad_slots(cfg, B: int, S: int, sx_cols: int, global_batch: int | None = None) -> tuple:
    """(Wy slots, By slots, Sx slots) of a step: see the module docstring (global_batch: as make_workspace)."""
    f32 = np.float32
    Bg = B if global_batch is None else global_batch
    O = Bg + S
    Op = (O + MR - 1) // MR * MR
    return (np.zeros((max(Op, O + Bg), cfg.layers[-1]), f32), np.zeros(O, f32),
            np.zeros((Bg, max(sx_cols, 1)), f32))
