"""The training step on the CPU in two halves, and the chunk driver: the CPU twin of kernels/step.py.

    step_grads          the gradient half (reference.step_grads): forward, loss and dZ, backward into the gradient
                        slots, the new hidden state
    apply_grads         the update half (reference.apply_grads): clipping, dense and sparse Adagrad from the slots
    train_chunk_steps   T whole steps per call (= step_grads + apply_grads per step), from CpuBackend.train_chunk

The one-process step is the two halves back to back inside one Numba call per chunk (no Python per step). Data
parallelism (dataparallel.py) calls them one at a time around the all-reduce: ``CpuBackend.grad_step`` runs
step_grads on a rank's rows of the global batch (row0, the global col_active) and packs the slots into the
GradLayout buffer; ``apply_grad_buffer`` unpacks the summed buffer into the slots of the global step and runs
apply_grads.

Every kernel called here writes each output element from one loop iteration whose arithmetic does not depend
on the thread that runs it, and every sum across iterations is split into fixed chunks added in a fixed order:
results are bit-identical from run to run and for any thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...codes import MODE_CONSTRAINED, MODE_ONEHOT
from .adagrad import adagrad_dense, clip_scale, link_ids, scale, sparse_adagrad, sumsq
from .gru import gru_bwd, gru_fwd, mask_rows
from .scores_loss import row_loss, score_grads, scores


@njit(cache=True, error_model="numpy")
def step_grads(params, grads, work, hyper, hid, X, O, active, reset, col_active, row0, step, jobs):
    """Forward, loss and backward of one step on B = len(X) rows; returns the step loss (the rows' weighted
    losses summed in float64).

    The rows are rows row0 .. row0 + B - 1 of a batch of Bc = len(col_active) rows (one process: row0 = 0,
    col_active = active) scored against the O columns Y = work.ids[:O] (the caller's: [targets (Bc) | samples]);
    row i's target is column row0 + i, its dropout masks are the batch's rows row0 + i. Writes the gradients into
    the slots: grads.flat (dense), grads.Wy[:O] and grads.By (the output columns), and the input rows into
    grads.Wy[O:O + B] (constrained) or grads.Sx[:B]. hid: the hidden state [B, H_l] per layer (reset rows zeroed
    here), replaced by the new one. params / grads / work / hyper: buffers.Params, Grads, Workspace, Hyper."""
    B = X.shape[0]
    Bc = col_active.shape[0]
    mode = hyper.mode
    L = len(params.layers)
    w = 1.0 / hyper.batch
    dropout = hyper.p_emb > 0.0 or hyper.p_hid > 0.0
    Y = work.ids[:O]
    top = work.layers[L - 1].out
    dtop = work.layers[L - 1].dout
    HL = top.shape[1]
    hT = work.hT
    gWy = grads.Wy
    # ---- forward: reset rows, GRU layers, scores, loss and dZ
    for l in range(L):
        h = hid[l]
        for b in range(B):
            if reset[b]:
                h[b, :] = 0.0
    gru_fwd(params, hyper, work, hid, X, B, step, dropout, jobs, 0, -1, row0)
    for b in range(B):
        for k in range(HL):
            hT[k, b] = top[b, k]
    scores(params.Wy, params.By, Y, Bc, hyper.use_logq, hyper.logq_t, hyper.logq_s, hT, work.WyY, work.byY,
           work.lqY, work.Z)
    row_loss(work.Z, work.R, work.dZ, O, Y, work.byY, work.lqY, hyper.use_logq, active, col_active, row0,
             hyper.loss, hyper.act, hyper.act_a, hyper.bpreg, hyper.mask_hits, w, work.rowloss)
    loss = 0.0
    for b in range(B):
        loss += work.rowloss[b]
    # ---- backward: dh = dZ Wy[Y]; Wy slots [0:O] = dZ^T h; By slots = colsum(dZ); the layers; the inputs
    score_grads(work.dZ, work.WyY, top, gWy, grads.By, work.dh_part, dtop, O)
    gru_bwd(params, grads, hyper, work, hid, B, dropout, jobs)
    if mode == MODE_ONEHOT:
        grads.Sx[:B, :] = work.layers[0].da
    else:
        dst = gWy[O:O + B] if mode == MODE_CONSTRAINED else grads.Sx[:B]
        if dropout and hyper.p_emb > 0.0:
            mask_rows(work.dx0, work.mask0, dst)
        else:
            dst[:, :] = work.dx0
    # ---- the new hidden state: the layers' outputs
    for l in range(L):
        hid[l][:, :] = work.layers[l].out
    return loss


@njit(cache=True, error_model="numpy")
def apply_grads(params, grads, opt, work, hyper, X, O):
    """Global-norm clipping and Adagrad of one step from its gradient slots (as step_grads leaves them, or as
    CpuBackend.apply_grad_buffer unpacks them): the flat dense gradients, then the touched rows.

    Wy slots: grads.Wy[:O] for the ids work.ids[:O] = Y, plus in constrained mode grads.Wy[O:O + B] for
    work.ids[O:O + B] = X (the caller writes both; B = len(X)); By slots grads.By; otherwise the input rows
    grads.Sx[:B] for the ids X. The slots are scratch: clipping scales them and duplicate ids are summed into the
    first slot of their chain."""
    B = X.shape[0]
    mode = hyper.mode
    lr = hyper.lr
    mu = hyper.mu
    n_wy = O + B if mode == MODE_CONSTRAINED else O  # Wy slots: [Y | X] (constrained) or Y
    ids = work.ids
    gWy = grads.Wy
    gSx = grads.Sx[:B]
    # ---- global-norm clipping (reference.clip_grads): every gradient, sparse rows uncoalesced
    cap = hyper.cap
    if cap > 0.0:
        partial = work.partial
        n = sumsq(grads.flat, partial, 0)
        n += sumsq(gWy[:n_wy].reshape(-1), partial, n)
        n += sumsq(grads.By, partial, n)
        if mode != MODE_CONSTRAINED:
            n += sumsq(gSx.reshape(-1), partial, n)
        s = clip_scale(partial, n, cap)
        if s != np.float32(1.0):  # scaling by 1 would change nothing
            scale(grads.flat, s)
            scale(gWy[:n_wy].reshape(-1), s)
            scale(grads.By, s)
            if mode != MODE_CONSTRAINED:
                scale(gSx.reshape(-1), s)
    # ---- Adagrad: the flat dense buffer, then the touched rows
    adagrad_dense(params.flat, grads.flat, opt.acc_flat, opt.mom_flat, lr, mu)
    nu = link_ids(ids, n_wy, work.head, work.nxt, work.first)  # Wy slots [Y | X]; By slots: the first O
    sparse_adagrad(params.Wy, opt.acc_Wy, opt.mom_Wy, gWy, ids, work.first, work.nxt, nu, lr, mu,
                   params.By, opt.acc_By, opt.mom_By, grads.By, O)
    if mode != MODE_CONSTRAINED:
        nu = link_ids(X, B, work.head, work.nxt, work.first)
        sparse_adagrad(params.Sx, opt.acc_Sx, opt.mom_Sx, gSx, X, work.first, work.nxt, nu, lr, mu,
                       params.By, opt.acc_By, opt.mom_By, grads.By, 0)


@njit(cache=True, error_model="numpy")
def train_chunk_steps(params, grads, opt, work, hyper, hid, chunk, losses):
    """The steps of ``chunk`` (buffers.Chunk), in place; losses[t] = the loss of step t.

    params / grads / opt / work / hyper: buffers.Params, Grads, OptState, Workspace, Hyper; hid: the hidden
    state, one [B, H_l] array per layer."""
    inputs = chunk.inputs
    T = inputs.shape[0]
    B = inputs.shape[1]
    S = chunk.samples.shape[1]
    O = B + S
    ids = work.ids
    jobs = np.zeros((4, 11), dtype=np.int64)  # gemm_batch descriptors (once per chunk)
    for t in range(T):
        X = inputs[t]
        for b in range(B):
            ids[b] = chunk.targets[t, b]
        for s in range(S):
            ids[B + s] = chunk.samples[t, s]
        if hyper.mode == MODE_CONSTRAINED:
            for b in range(B):
                ids[O + b] = X[b]
        active = chunk.active[t]
        loss = step_grads(params, grads, work, hyper, hid, X, O, active, chunk.reset[t], active, 0, chunk.step0 + t,
                          jobs)
        # rounded to float32 like the float32 reference's loss: float64 sums of such values are exact, so an
        # epoch's total does not depend on how its steps were chunked (checkpoint / resume stays bit-exact)
        losses[t] = np.float32(loss)
        apply_grads(params, grads, opt, work, hyper, X, O)
