"""The chunk driver: T whole training steps (reference.train_step) per call, the CPU twin of kernels/step.py.

The Python side is entered once per chunk of the schedule; ``CpuBackend.train_step`` is a chunk of one step.
Every kernel it calls writes each output element from one loop iteration whose arithmetic does not depend on
the thread that runs it, and every sum across iterations is split into fixed chunks added in a fixed order:
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
def train_chunk_steps(params, grads, opt, work, hyper, hid, chunk, losses):
    """The steps of ``chunk`` (buffers.Chunk), in place; losses[t] = the loss of step t.

    params / grads / opt / work / hyper: buffers.Params, Grads, OptState, Workspace, Hyper; hid: the hidden
    state, one [B, H_l] array per layer."""
    inputs = chunk.inputs
    T = inputs.shape[0]
    B = inputs.shape[1]
    S = chunk.samples.shape[1]
    O = B + S
    mode = hyper.mode
    L = len(params.layers)
    lr = hyper.lr
    mu = hyper.mu
    w = 1.0 / hyper.batch
    dropout = hyper.p_emb > 0.0 or hyper.p_hid > 0.0
    n_wy = O + B if mode == MODE_CONSTRAINED else O  # Wy slots: [Y | X] (constrained) or Y
    ids = work.ids
    Y = ids[:O]
    jobs = np.zeros((4, 11), dtype=np.int64)  # gemm_batch descriptors (once per chunk)
    top = work.layers[L - 1].out
    dtop = work.layers[L - 1].dout
    HL = top.shape[1]
    hT = work.hT
    gWy = grads.Wy
    gSx = grads.Sx
    for t in range(T):
        step = chunk.step0 + t
        X = inputs[t]
        for b in range(B):
            ids[b] = chunk.targets[t, b]
        for s in range(S):
            ids[B + s] = chunk.samples[t, s]
        if mode == MODE_CONSTRAINED:
            for b in range(B):
                ids[O + b] = X[b]
        # ---- forward: reset rows, GRU layers, scores, loss and dZ
        for l in range(L):
            h = hid[l]
            for b in range(B):
                if chunk.reset[t, b]:
                    h[b, :] = 0.0
        gru_fwd(params, hyper, work, hid, X, B, step, dropout, jobs)
        for b in range(B):
            for k in range(HL):
                hT[k, b] = top[b, k]
        scores(params.Wy, params.By, Y, B, hyper.use_logq, hyper.logq_t, hyper.logq_s, hT, work.WyY, work.byY,
               work.lqY, work.Z)
        row_loss(work.Z, work.R, work.dZ, O, Y, work.byY, work.lqY, hyper.use_logq, chunk.active[t], hyper.loss,
                 hyper.act, hyper.act_a, hyper.bpreg, hyper.mask_hits, w, work.rowloss)
        loss = 0.0
        for b in range(B):
            loss += work.rowloss[b]
        # rounded to float32 like the float32 reference's loss: float64 sums of such values are exact, so an
        # epoch's total does not depend on how its steps were chunked (checkpoint / resume stays bit-exact)
        losses[t] = np.float32(loss)
        # ---- backward: dh = dZ Wy[Y]; Wy slots [0:O] = dZ^T h; By slots = colsum(dZ); the layers; the inputs
        score_grads(work.dZ, work.WyY, top, gWy, grads.By, work.dh_part, dtop, O)
        gru_bwd(params, grads, hyper, work, hid, B, dropout, jobs)
        if mode == MODE_ONEHOT:
            gSx[:, :] = work.layers[0].da
        else:
            dst = gWy[O:O + B] if mode == MODE_CONSTRAINED else gSx
            if dropout and hyper.p_emb > 0.0:
                mask_rows(work.dx0, work.mask0, dst)
            else:
                dst[:, :] = work.dx0
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
        # ---- the new hidden state: the layers' outputs
        for l in range(L):
            hid[l][:, :] = work.layers[l].out
