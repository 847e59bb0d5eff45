"""The p-RNN on the Numba CPU backend: ``PRNNCpuBackend`` (state, buffers, argument checks) and its drivers,
``prnn_chunk_steps`` (T whole training steps per call, the twin of ``reference_prnn.train_step``) and
``prnn_eval_chunk_steps`` (T evaluation steps, ``reference_prnn.hidden_step`` + ``score_all`` + rank counts).
The model is docs/prnn.md; the step is built from the cpu backend's kernel families, once per subnet:

    sources (prnn_fwd)   a_0 = sum of the sources' products in source order, + Bh0: ID one-hot W_x0[X] and sparse
                         features (features.sparse_input_product) directly; ID constrained (the subnet's own
                         block of Wy, gathered with a column offset) / embedding (E) rows with their dropout mask,
                         and dense feature rows F[X] (gru.embed_input), times their weights: the GEMMs of every
                         running subnet in one gemm_batch
    gru_fwd / gru_bwd    each subnet's GRU stack (its layers l0 .. l1 of one flat tuple, its own dropout keys;
                         hyper.mode = MODE_SOURCES: layer l0's input is the sources')
    concat_hidden        h_cat = [a_1 h_1 | ... | a_K h_K] (zero blocks for subnets that do not score), then
                         GRU4Rec's scores / row_loss / score_grads at width sum H_k: one product for all subnets
    subnet_bwd           dh_k = a_k (dZ Wy[Y])[:, block k]; gru_bwd; the sources' gradients: dW = x^T da_0
                         (GEMMs), dx = da_0 W^T masked (gemm_nt) into the Wy-block / E slots, one-hot and sparse
                         feature (features.sparse_input_grad) gradient rows
    optimizer            adagrad.sumsq / clip_scale / scale over the trainable gradients only; adagrad_dense over
                         each trainable subnet's span of the flat buffer; sparse_adagrad over each trainable
                         subnet's block of Wy (a column view: the frozen blocks of a shared row are never touched;
                         By with the first of them when the phase trains it), and its sparse input tables

A step's Phase (set_phases, as the numpy p-RNN backend) enters as flags per step: subnets outside ``scoring``
do not run (their hidden state is kept, zeroed on reset rows); subnets outside ``trainable`` run forward but
get no backward and no update: their parameters, accumulators and momenta are not written. Dropout masks are
rng.dropout_key streams k * SUBNET_STREAM_STRIDE + l (layer l of subnet k; l = -1 the ID embedding), drawn
in place: reference_prnn.dropout_masks. Float32; deterministic for any thread count (the kernels' guarantee;
the driver itself is serial).
"""
from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np
from numba import njit
from numba.typed import List

from ...codes import MODE_CONSTRAINED, MODE_EMBEDDING, MODE_ONEHOT, MODE_SOURCES
from ...layout import allocate
from ...parallel import parallel_region
from ...prnn_layout import PRNNLayout
from ...reference_prnn import SUBNET_STREAM_STRIDE
from ...rng import dropout_key
from ..base import Backend, DictStateMixin, FlatHiddenMixin
from .adagrad import adagrad_dense, clip_scale, link_ids, scale, sparse_adagrad, sumsq
from .buffers import CHUNK, Chunk, Grads, LayerParams, OptState, Params, make_hyper, placeholder, workspace
from .evaluate import rank_active
from .features import sparse_input_grad, sparse_input_product
from .gemm import MR, VW, gemm_batch, gemm_nt, job
from .gru import add_bias, embed_input, gru_bwd, gru_fwd, mask_rows
from .scores_loss import row_loss, score_grads, scores

# Source kinds: an ID source carries its input mode's code (codes.MODE_*), features these two.
SRC_DENSE = 3
SRC_SPARSE = 4
# Columns of the subnet table ``subs`` [K, 9] (int64): its layers l0 .. l1 - 1 in the flat layer tuples, its
# block c0 .. c1 of Wy's columns, its sources s0 .. s1, its span o0 .. o1 of the flat dense buffer, and whether
# its ID input is the constrained one (its Wy block then also gets the input rows X).
L0, L1, C0, C1, S0, S1, O0, O1, CONSTR = range(9)
ID_GATHERED = (MODE_CONSTRAINED, MODE_EMBEDDING)  # ID inputs whose rows are gathered and multiplied by W_x0

# One input source of a subnet's first layer (docs/prnn.md 3.1). Every kind has every field (a (1, 1) or (1,)
# placeholder where unused), so all sources are one Numba type and the driver indexes them at run time:
#   kind, sub          the kind (above) and the subnet
#   W, gW              its input weights W_x0 / W_f [rows, 3 H_0] and their dense gradient (a view into the flat
#                      gradient buffer; a placeholder when W is sparse: one-hot ID, sparse feature)
#   acc, mom           W's Adagrad state when W is sparse (a dense W is updated with the flat buffer)
#   table, c0          the gathered table and its first column: Wy and the subnet's block (constrained), E, or
#                      the dense feature matrix F [N, D]
#   acc_t, mom_t       E's Adagrad state (embedding)
#   indptr, indices, data   the sparse feature matrix (CSR)
#   x, mask, dx        [B, width] the gathered rows (after dropout), their mask, their gradient
#   P                  [B, 3 H_0] the product when the source is not its subnet's first (the first writes a_0)
#   slots, ids         the sparse gradient rows of W (one-hot: B rows at X; sparse: one per non-zero, ids = j)
#                      or of E (B rows at X)
#   key, p             the ID embedding's dropout stream and probability (0: none)
Source = namedtuple("Source", "kind sub W gW acc mom table c0 acc_t mom_t indptr indices data x mask dx P slots ids "
                              "key p")
# p-RNN scratch of one batch size: hcat / dh [B, sum H] (h_cat and dLoss/dh_cat), the duplicate-id chains of the
# sparse updates (nxt, first) and head [max(N, D)] (all -1 between calls), the source GEMM descriptors (jobs) and
# the slot count of every source's sparse gradient in the current step (nslots).
PRNNWork = namedtuple("PRNNWork", "hcat dh nxt first head jobs nslots")
# The Phase of each step of a chunk: trainable / scoring [T, K] bool, bias [T] bool.
Phases = namedtuple("Phases", "trainable scoring bias")


# ============================================================================================== forward
@njit(cache=True, error_model="numpy")
def typed_list(items):
    """A numba.typed.List of the items of a homogeneous tuple. The drivers take every per-layer, per-subnet and
    per-source collection as such a list: a list's Numba type does not depend on its length (a tuple's does), so
    they compile once for every architecture instead of once per count of layers, subnets and sources (minutes
    each); this converter is what compiles per length (cached on disk, milliseconds)."""
    out = List()
    for i in range(len(items)):
        out.append(items[i])
    return out


@njit(cache=True, error_model="numpy")
def add_rows(a, P):
    """a += P (the next source's product, in source order)."""
    for b in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[b, j] += P[b, j]


@njit(cache=True, error_model="numpy")
def source_fwd(src, X, B, dst, step, dropout, jobs, nj):
    """Source ``src``'s product on the rows X into dst [B, 3 H_0]: gathered (one-hot), summed over the non-zeros
    (sparse), or rows gathered into src.x (ID with its dropout mask when ``dropout``, dense feature) and their
    GEMM with W described as product nj of ``jobs``. Returns the next free product slot."""
    kind = src.kind
    if kind == MODE_ONEHOT:
        embed_input(src.W, X, dst, dst, 0.0, 0, 0, np.float32(1.0))  # dst = W_x0[X], a row gather
    elif kind == SRC_SPARSE:
        sparse_input_product(src.W, src.indptr, src.indices, src.data, X, dst)
    else:
        x = src.x[:B]
        W = x.shape[1]
        p = src.p if dropout else 0.0
        embed_input(src.table[:, src.c0:src.c0 + W], X, x, src.mask[:B], p, src.key, step,
                    np.float32(1.0 / (1.0 - src.p)))
        G = dst.shape[1]
        job(jobs, nj, x, W, 1, src.W, G, dst, G, B, G, W)  # dst = x W
        return nj + 1
    return nj


@njit(cache=True, error_model="numpy")
def prnn_fwd(params, hypers, subs, srcs, work, hid, X, B, step, dropout, run, jobs, jobs_src):
    """reference_prnn.subnet_forward of every subnet k with run[k]: the sources' products (the GEMMs of all of
    them in one parallel region), a_0 = (P_s0 + P_s1 + ...) + Bh0, then the subnet's GRU stack (gru_fwd over its
    layers, with its own dropout keys; ``dropout``: training). hid (zeroed on reset rows) is not updated."""
    K = subs.shape[0]
    nj = 0
    for k in range(K):
        if run[k]:
            a = work.layers[subs[k, L0]].a[:B]
            for s in range(subs[k, S0], subs[k, S1]):
                dst = a if s == subs[k, S0] else srcs[s].P[:B]
                nj = source_fwd(srcs[s], X, B, dst, step, dropout, jobs_src, nj)
    if nj > 0:
        gemm_batch(jobs_src, nj)
    for k in range(K):
        if run[k]:
            l0 = subs[k, L0]
            a = work.layers[l0].a[:B]
            for s in range(subs[k, S0] + 1, subs[k, S1]):
                add_rows(a, srcs[s].P[:B])
            add_bias(a, params.layers[l0].Bh)
            gru_fwd(params, hypers[k], work, hid, X, B, step, dropout, jobs, l0, subs[k, L1])


@njit(cache=True, error_model="numpy")
def concat_hidden(work, subs, scales, run, hcat, B):
    """hcat [B, sum H] = [a_1 h_1 | ... | a_K h_K] from the top layers' outputs of the subnets with run[k], zero
    blocks for the others (reference_prnn.concat_hidden: a_k h_k rounded once, in float32)."""
    for k in range(subs.shape[0]):
        c0 = subs[k, C0]
        H = subs[k, C1] - c0
        if run[k]:
            top = work.layers[subs[k, L1] - 1].out
            a = scales[k]
            for b in range(B):
                for j in range(H):
                    hcat[b, c0 + j] = a * top[b, j]
        else:
            for b in range(B):
                for j in range(H):
                    hcat[b, c0 + j] = 0.0


@njit(cache=True, error_model="numpy")
def zero_reset_rows(hid, reset):
    for l in range(len(hid)):
        h = hid[l]
        for b in range(reset.shape[0]):
            if reset[b]:
                h[b, :] = 0.0


@njit(cache=True, error_model="numpy")
def new_hidden(hid, work, subs, run):
    """The hidden state of the subnets that ran: their layers' outputs (the others keep theirs)."""
    for k in range(subs.shape[0]):
        if run[k]:
            for l in range(subs[k, L0], subs[k, L1]):
                hid[l][:, :] = work.layers[l].out[:hid[l].shape[0]]


# ============================================================================================== backward
@njit(cache=True, error_model="numpy")
def subnet_bwd(params, grads, work, pw, hyper, subs, scales, srcs, hid, k, X, B, O, jobs):
    """Subnet k's gradients (reference_prnn.backward's loop body) given pw.dh = dZ Wy[Y] [B, sum H]: its top
    layer's dout = a_k dh[:, block k]; gru_bwd over its layers (dense gradients into grads.layers); then every
    source's gradient from da_0: dW = x^T da_0 (the GEMMs in one region); ID constrained / embedding:
    dx = (da_0 W^T) * mask into the Wy slots X of the subnet's block (rows O .. O + B) / E's slots; one-hot:
    da_0 into W's slots; sparse feature: the pairs (features.sparse_input_grad), their count in pw.nslots."""
    l0 = subs[k, L0]
    l1 = subs[k, L1]
    c0 = subs[k, C0]
    c1 = subs[k, C1]
    dtop = work.layers[l1 - 1].dout
    a = scales[k]
    for b in range(B):
        for j in range(c1 - c0):
            dtop[b, j] = a * pw.dh[b, c0 + j]
    gru_bwd(params, grads, hyper, work, hid, B, True, jobs, l0, l1)
    da0 = work.layers[l0].da[:B]
    G = da0.shape[1]
    nj = 0
    for s in range(subs[k, S0], subs[k, S1]):
        src = srcs[s]
        if src.kind != MODE_ONEHOT and src.kind != SRC_SPARSE:
            x = src.x[:B]
            W = x.shape[1]
            job(pw.jobs, nj, x, 1, W, da0, G, src.gW, G, W, G, B)  # dW = x^T da_0
            nj += 1
    if nj > 0:
        gemm_batch(pw.jobs, nj)
    for s in range(subs[k, S0], subs[k, S1]):
        src = srcs[s]
        kind = src.kind
        if kind == MODE_ONEHOT:
            src.slots[:B, :] = da0
            pw.nslots[s] = B
        elif kind == SRC_SPARSE:
            pw.nslots[s] = sparse_input_grad(da0, src.indptr, src.indices, src.data, X, src.ids, src.slots)
        elif kind == MODE_CONSTRAINED or kind == MODE_EMBEDDING:
            dx = src.dx[:B]
            gemm_nt(da0, src.W, dx, work.aT[:G * B].reshape(G, B))  # dx = da_0 W^T
            if kind == MODE_CONSTRAINED:
                dst = grads.Wy[O:O + B, c0:c1]
                if src.p > 0.0:
                    mask_rows(dx, src.mask[:B], dst)
                else:
                    dst[:, :] = dx
            else:
                pw.nslots[s] = B
                if src.p > 0.0:
                    mask_rows(dx, src.mask[:B], src.slots[:B])
                else:
                    src.slots[:B, :] = dx


@njit(cache=True, error_model="numpy")
def _has_slots(kind):
    """Whether a source's sparse gradient rows are its own slots (one-hot W, E, sparse W_f)."""
    return kind == MODE_ONEHOT or kind == MODE_EMBEDDING or kind == SRC_SPARSE


@njit(cache=True, error_model="numpy")
def clip_trainable(grads, work, pw, subs, srcs, trainable, bias, n_wy, cap):
    """reference.clip_grads over the phase's gradients only: the trainable subnets' spans of the flat dense
    buffer, their blocks of the Wy slots (the frozen blocks' columns are zeroed first: they hold no gradient),
    the By slots when By trains, the trainable sources' sparse rows (uncoalesced)."""
    partial = work.partial
    gW = grads.Wy
    K = subs.shape[0]
    n = 0
    for k in range(K):
        if trainable[k]:
            n += sumsq(grads.flat[subs[k, O0]:subs[k, O1]], partial, n)
        else:
            gW[:n_wy, subs[k, C0]:subs[k, C1]] = 0.0
    n += sumsq(gW[:n_wy].reshape(-1), partial, n)
    if bias:
        n += sumsq(grads.By, partial, n)
    for s in range(len(srcs)):
        src = srcs[s]
        if trainable[src.sub] and _has_slots(src.kind):
            n += sumsq(src.slots[:pw.nslots[s]].reshape(-1), partial, n)
    f = clip_scale(partial, n, cap)
    if f != np.float32(1.0):  # scaling by 1 would change nothing
        for k in range(K):
            if trainable[k]:
                scale(grads.flat[subs[k, O0]:subs[k, O1]], f)
        scale(gW[:n_wy].reshape(-1), f)
        if bias:
            scale(grads.By, f)
        for s in range(len(srcs)):
            src = srcs[s]
            if trainable[src.sub] and _has_slots(src.kind):
                scale(src.slots[:pw.nslots[s]].reshape(-1), f)


@njit(cache=True, error_model="numpy")
def update_trainable(params, grads, opt, pw, subs, srcs, trainable, bias, ids, X, O, lr, mu):
    """Adagrad with momentum over the phase's trainable parameters only (reference_prnn.apply_grads): each
    trainable subnet's span of the flat dense buffer; its block of Wy at the rows Y (and X when its ID input is
    constrained), a column view, so that a frozen subnet's columns of a shared row, and their accumulators and
    momenta, are never touched (By, when it trains, with the first trainable block); its sparse input tables."""
    K = subs.shape[0]
    for k in range(K):
        if trainable[k]:
            o0 = subs[k, O0]
            o1 = subs[k, O1]
            adagrad_dense(params.flat[o0:o1], grads.flat[o0:o1], opt.acc_flat[o0:o1], opt.mom_flat[o0:o1], lr, mu)
    n_b = O if bias else 0
    B = X.shape[0]
    for k in range(K):
        if trainable[k]:
            c0 = subs[k, C0]
            c1 = subs[k, C1]
            nu = link_ids(ids, O + B if subs[k, CONSTR] else O, pw.head, pw.nxt, pw.first)
            sparse_adagrad(params.Wy[:, c0:c1], opt.acc_Wy[:, c0:c1], opt.mom_Wy[:, c0:c1], grads.Wy[:, c0:c1], ids,
                           pw.first, pw.nxt, nu, lr, mu, params.By, opt.acc_By, opt.mom_By, grads.By, n_b)
            n_b = 0
    for s in range(len(srcs)):
        src = srcs[s]
        if not trainable[src.sub]:
            continue
        if src.kind == MODE_ONEHOT or src.kind == MODE_EMBEDDING:
            nu = link_ids(X, B, pw.head, pw.nxt, pw.first)
            if src.kind == MODE_ONEHOT:
                sparse_adagrad(src.W, src.acc, src.mom, src.slots, X, pw.first, pw.nxt, nu, lr, mu, params.By,
                               opt.acc_By, opt.mom_By, grads.By, 0)
            else:
                sparse_adagrad(src.table, src.acc_t, src.mom_t, src.slots, X, pw.first, pw.nxt, nu, lr, mu,
                               params.By, opt.acc_By, opt.mom_By, grads.By, 0)
        elif src.kind == SRC_SPARSE:
            m = pw.nslots[s]
            nu = link_ids(src.ids, m, pw.head, pw.nxt, pw.first)
            sparse_adagrad(src.W, src.acc, src.mom, src.slots, src.ids, pw.first, pw.nxt, nu, lr, mu, params.By,
                           opt.acc_By, opt.mom_By, grads.By, 0)


# ============================================================================================== drivers
@njit(cache=True, error_model="numpy")
def prnn_chunk_steps(params, grads, opt, work, pw, hypers, subs, scales, srcs, hid, chunk, phases, losses):
    """The steps of ``chunk`` (buffers.Chunk) in place, step t in the phase of row t of ``phases``; losses[t] =
    the loss of step t. params / grads / opt / work: buffers.Params, Grads, OptState, Workspace over the flat
    tuple of every subnet's layers (grads.Wy: the Wy slots [>= O + B, sum H] for [Y | X]); pw: PRNNWork; hypers:
    buffers.Hyper per subnet (its dropout keys and probabilities); subs [K, 9] and scales [K] (float32 a_k): the
    subnets; srcs: Source per source; hid: the hidden state, one [B, H_l] array per flat layer (every collection
    a typed_list)."""
    inputs = chunk.inputs
    T = inputs.shape[0]
    B = inputs.shape[1]
    S = chunk.samples.shape[1]
    O = B + S
    K = subs.shape[0]
    hy = hypers[0]  # the shared hyperparameters (loss, learning rate, ...)
    w = 1.0 / hy.batch
    ids = work.ids
    Y = ids[:O]
    jobs = np.zeros((4, 11), dtype=np.int64)
    hT = work.hT
    hcat = pw.hcat
    HT = hcat.shape[1]
    for t in range(T):
        step = chunk.step0 + t
        X = inputs[t]
        trainable = phases.trainable[t]
        scoring = phases.scoring[t]
        bias = phases.bias[t]
        for b in range(B):
            ids[b] = chunk.targets[t, b]
            ids[O + b] = X[b]
        for s in range(S):
            ids[B + s] = chunk.samples[t, s]
        # ---- forward: reset rows, the scoring subnets, h_cat, scores, loss and dZ
        zero_reset_rows(hid, chunk.reset[t])
        prnn_fwd(params, hypers, subs, srcs, work, hid, X, B, step, True, scoring, jobs, pw.jobs)
        concat_hidden(work, subs, scales, scoring, hcat, B)
        for b in range(B):
            for j in range(HT):
                hT[j, b] = hcat[b, j]
        scores(params.Wy, params.By, Y, B, hy.use_logq, hy.logq_t, hy.logq_s, hT, work.WyY, work.byY, work.lqY,
               work.Z)
        row_loss(work.Z, work.R, work.dZ, O, Y, work.byY, work.lqY, hy.use_logq, chunk.active[t], chunk.active[t], 0,
                 hy.loss, hy.act, hy.act_a, hy.bpreg, hy.mask_hits, w, work.rowloss)
        loss = 0.0
        for b in range(B):
            loss += work.rowloss[b]
        losses[t] = np.float32(loss)  # as the GRU4Rec step: float32 like the float32 reference's loss
        # ---- backward: Wy / By slots = dZ^T h_cat, colsum dZ; dh = dZ Wy[Y]; the trainable subnets
        score_grads(work.dZ, work.WyY, hcat, grads.Wy, grads.By, work.dh_part, pw.dh, O)
        n_wy = O
        for k in range(K):
            if trainable[k]:
                subnet_bwd(params, grads, work, pw, hypers[k], subs, scales, srcs, hid, k, X, B, O, jobs)
                if subs[k, CONSTR]:
                    n_wy = O + B
        if hy.cap > 0.0:
            clip_trainable(grads, work, pw, subs, srcs, trainable, bias, n_wy, hy.cap)
        update_trainable(params, grads, opt, pw, subs, srcs, trainable, bias, ids, X, O, hy.lr, hy.mu)
        new_hidden(hid, work, subs, scoring)


@njit(cache=True, error_model="numpy")
def prnn_eval_chunk_steps(params, hypers, subs, scales, srcs, work, pw, hid, inputs, targets, reset, active, run,
                          items, act, act_a, hT_flat, tscore, n_gt, n_eq):
    """T evaluation steps in one call: per step the reset rows zeroed, the subnets with run[k] forward without
    dropout (inactive rows advance too), their h_cat, and ``evaluate.rank_active`` over the active rows, with
    Wy / By of width sum H (reference_prnn.hidden_step + score_all + rank_counts). n_gt / n_eq [T, B] (zeroed
    by the caller) get the active lanes' counts."""
    T, B = inputs.shape
    jobs = np.zeros((4, 11), dtype=np.int64)
    for t in range(T):
        zero_reset_rows(hid, reset[t])
        prnn_fwd(params, hypers, subs, srcs, work, hid, inputs[t], B, 0, False, run, jobs, pw.jobs)
        new_hidden(hid, work, subs, run)
        concat_hidden(work, subs, scales, run, pw.hcat, B)
        rank_active(pw.hcat, targets[t], active[t], params.Wy, params.By, items, act, act_a, hT_flat, tscore,
                    n_gt[t], n_eq[t])


@njit(cache=True, error_model="numpy")
def prnn_replay_prefix(params, hypers, subs, srcs, work, pw, hid, Xt, m_t, run):
    """Many sessions at once, without dropout (the p-RNN twin of gru.gru_fwd_prefix, for inference): at step t
    the first m_t[t] rows advance by the items Xt[t, :m_t[t]] (sessions sorted longest first and right-aligned,
    so the running ones are a prefix); the subnets with run[k] run (reference_prnn.hidden_step), the others
    keep their state. hid: one [n, H_l] array per layer of the flat layer tuple, updated in place."""
    jobs = np.zeros((4, 11), dtype=np.int64)
    for t in range(Xt.shape[0]):
        m = m_t[t]
        if m == 0:
            continue
        prnn_fwd(params, hypers, subs, srcs, work, hid, Xt[t, :m], m, 0, False, run, jobs, pw.jobs)
        for k in range(subs.shape[0]):
            if run[k]:
                for l in range(subs[k, L0], subs[k, L1]):
                    hid[l][:m, :] = work.layers[l].out[:m]


# ============================================================================================== the backend
class PRNNCpuBackend(DictStateMixin, FlatHiddenMixin, Backend):
    """Numba parallel CPU backend of a p-RNN (float32). Same constructor as PRNNNumpyBackend minus ``dtype``;
    the same protocol: ``set_phases`` before each train_chunk, the hidden state exchanged as one flat list
    (subnet 0's layers, then subnet 1's, ...), ``eval_subnets`` (None: all) the subnets that score in
    evaluation."""

    name = "cpu"

    def __init__(self, layout: PRNNLayout, params: dict, logq_target=None, logq_sample=None, *,
                 inference: bool = False):
        """inference: run on the given parameter arrays themselves (writable float32 C arrays, a Model's), not
        on copies, so that a serving engine neither doubles the model's memory nor misses in-place edits; such a
        backend replays sessions (``replay``) and evaluates, and refuses to train (its optimizer state and
        gradient buffers are zeros the OS never commits)."""
        if not isinstance(layout, PRNNLayout):
            raise ValueError(f"layout must be a PRNNLayout; got {type(layout).__name__}")
        # Launch Numba's thread pool now: a driver loaded from the on-disk cache calls its prange kernels through
        # the pool's entry points, which exist only once the pool is up; a cache entry compiled while those
        # kernels came from the cache themselves does not start the pool on load (measured: a fresh process that
        # only evaluated called a null pointer).
        numba.get_num_threads()
        self.layout = layout
        super().__init__(layout.cfg, layout.n_items, params, logq_target, logq_sample, specs=layout.param_specs())
        cfg, N, specs = self.cfg, self.n_items, self.specs
        # parameters, gradients, Adagrad accumulators and momenta: dense ones are views into one flat buffer each
        self.flat, self.params = allocate(specs, np.float32)
        self.acc_flat, self.acc = allocate(specs, np.float32)
        self.mom_flat, self.mom = allocate(specs, np.float32)
        self.gflat, gdense = allocate(specs, np.float32)
        self.inference = bool(inference)
        for s in specs:
            given = np.asarray(params[s.name])
            if given.shape != tuple(s.shape):
                raise ValueError(f"params[{s.name!r}] has shape {given.shape}; expected {tuple(s.shape)}")
            if not self.inference:
                self.params[s.name][...] = given
            elif given.dtype != np.float32 or not given.flags.c_contiguous or not given.flags.writeable:
                raise ValueError(f"inference on params[{s.name!r}] needs a writable float32 C-contiguous array; got "
                                 f"{given.dtype}, contiguous={given.flags.c_contiguous}, "
                                 f"writable={given.flags.writeable}")
            else:
                self.params[s.name] = given
        subnets = layout.subnets
        self.K = K = len(subnets)
        self.layer_widths = tuple(h for sub in subnets for h in sub.layers)  # the flat layer tuple
        self.hidden_total = layout.hidden_total
        # subnet k's span of the flat dense buffer: its dense parameters are consecutive in spec order
        spans, off = {}, 0
        for s in specs:
            if s.sparse:
                continue
            n = int(np.prod(s.shape))
            k = int(s.name[1:s.name.index(".")]) if s.name.startswith("s") and "." in s.name else -1
            o0, o1 = spans.get(k, (off, off))
            if o1 != off:
                raise RuntimeError(f"subnet {k}'s dense parameters are not consecutive in the flat buffer")
            spans[k] = (o0, off + n)
            off += n
        ph = placeholder()
        ph1f, ph1i, ph1l = np.zeros(1, np.float32), np.zeros(1, np.int32), np.zeros(1, np.int64)
        layers, glayers, hypers, subs, static = [], [], [], [], []
        l0 = 0
        for k, (sub, srcs) in enumerate(zip(subnets, layout.sources)):
            P = sub.prefix
            for l in range(len(sub.layers)):
                layers.append(LayerParams(ph if l == 0 else self.params[f"{P}Wx{l}"], self.params[f"{P}Wrz{l}"],
                                          self.params[f"{P}Wh{l}"], self.params[f"{P}Bh{l}"]))
                glayers.append(LayerParams(ph if l == 0 else gdense[f"{P}Wx{l}"], gdense[f"{P}Wrz{l}"],
                                           gdense[f"{P}Wh{l}"], gdense[f"{P}Bh{l}"]))
            base = k * SUBNET_STREAM_STRIDE
            keys = np.array([dropout_key(cfg.seed, base + l) for l in range(-1, len(sub.layers))], np.int64)
            hypers.append(make_hyper(cfg, keys, logq_target, logq_sample)._replace(
                mode=MODE_SOURCES, p_emb=float(sub.dropout_p_embed), p_hid=float(sub.dropout_p_hidden)))
            c0, c1 = layout.cols[k]
            s0 = len(static)
            for src in srcs:
                d = dict(kind=0, sub=k, W=self.params[src.param], gW=ph, acc=ph, mom=ph, table=ph, c0=0, acc_t=ph,
                         mom_t=ph, indptr=ph1l, indices=ph1i, data=ph1f, width=0, slot_rows=0, key=0, p=0.0)
                if src.kind == "id":
                    d["kind"] = {"constrained": MODE_CONSTRAINED, "embedding": MODE_EMBEDDING,
                                 "onehot": MODE_ONEHOT}[sub.id_input]
                    if sub.id_input == "onehot":
                        d.update(acc=self.acc[src.param], mom=self.mom[src.param], slot_rows=1)
                    else:
                        d.update(gW=gdense[src.param], key=dropout_key(cfg.seed, base - 1),
                                 p=float(sub.dropout_p_embed), width=src.width)
                        if sub.id_input == "constrained":
                            d.update(table=self.params["Wy"], c0=c0)
                        else:
                            d.update(table=self.params[f"{P}E"], acc_t=self.acc[f"{P}E"], mom_t=self.mom[f"{P}E"],
                                     slot_rows=1)
                else:
                    m = layout.features[src.name].matrix
                    if src.kind == "dense":
                        # copies: a read-only or non-float32 matrix would be another Numba type
                        d.update(kind=SRC_DENSE, gW=gdense[src.param], width=src.width,
                                 table=np.array(m, dtype=np.float32, order="C", copy=True))
                    else:
                        indptr = np.array(m.indptr, dtype=np.int64)
                        d.update(kind=SRC_SPARSE, acc=self.acc[src.param], mom=self.mom[src.param],
                                 indptr=indptr, indices=np.array(m.indices, dtype=np.int32),
                                 data=np.array(m.data, dtype=np.float32),
                                 slot_rows=max(1, int(np.diff(indptr).max(initial=0))))
                static.append(d)
            o0, o1 = spans.get(k, (0, 0))
            subs.append((l0, l0 + len(sub.layers), c0, c1, s0, len(static), o0, o1,
                         int(sub.id_input == "constrained")))
            l0 += len(sub.layers)
        self._static = static
        self._subs = np.array(subs, dtype=np.int64).reshape(K, 9)
        self._scales = np.array([sub.scale for sub in subnets], dtype=np.float32)
        self._hypers = typed_list(tuple(hypers))
        self._p = Params(self.flat, self.params["Wy"], self.params["By"], ph, typed_list(tuple(layers)))
        self._grad_layers = typed_list(tuple(glayers))
        self._opt = OptState(self.acc_flat, self.mom_flat, self.acc["Wy"], self.mom["Wy"], self.acc["By"],
                             self.mom["By"], ph, ph)
        self._act = cfg.final_act_code
        self._n_dense = off
        self._head = np.full(max([N] + [m.dim for m in layout.features.values()]), -1, dtype=np.int32)
        self.phases = None
        self.eval_subnets = None  # the subnets that score in evaluation (None: all)
        self._train = None  # buffers of training for one (B, S)
        self._hid = None  # flat hidden state of training, or None (= zeros at the next step)
        self._eval = None  # evaluation buffers for one batch size

    # ------------------------------------------------------------------ buffers
    def _sources(self, B: int) -> tuple:
        """Source per source, with the batch-size-dependent buffers for B rows."""
        f32 = np.float32
        out = []
        for d in self._static:
            G = d["W"].shape[1]
            width = d["width"]
            row = lambda cols: np.zeros((B, cols), f32) if cols else placeholder()  # noqa: E731
            slots = np.zeros((B * d["slot_rows"], d["table"].shape[1] if d["kind"] == MODE_EMBEDDING else G), f32) \
                if d["slot_rows"] else placeholder()
            ids = np.zeros(B * d["slot_rows"], np.int32) if d["kind"] == SRC_SPARSE else np.zeros(1, np.int32)
            out.append(Source(d["kind"], d["sub"], d["W"], d["gW"], d["acc"], d["mom"], d["table"], d["c0"],
                              d["acc_t"], d["mom_t"], d["indptr"], d["indices"], d["data"], row(width),
                              row(width if d["p"] > 0 else 0), row(width if d["kind"] in ID_GATHERED else 0),
                              row(G), slots, ids, d["key"], d["p"]))
        return tuple(out)

    def _work(self, B: int, S: int, with_scores: bool = True):
        """(Workspace, PRNNWork, sources) for B rows and S samples."""
        HT = self.hidden_total
        srcs = self._sources(B)
        n_slots = B + S + B
        slot_rows = max([n_slots] + [s.slots.shape[0] for s in srcs])
        work = workspace(self.layer_widths, 0, HT, B, S, 0, self._n_dense, self._head, with_scores)
        # the clipping norm's partial sums: one per CHUNK of every gradient buffer, + 1 per buffer
        n_grad = self._n_dense + n_slots * HT + (B + S) + sum(s.slots.size for s in srcs)
        n_src = len(srcs)
        work = work._replace(layers=typed_list(work.layers),
                             partial=np.zeros(2 * self.K + n_src + 4 + n_grad // CHUNK, np.float64))
        srcs = typed_list(srcs)
        pw = PRNNWork(np.zeros((B, HT), np.float32), np.zeros((B, HT), np.float32),
                      np.zeros(slot_rows, np.int32), np.zeros(slot_rows, np.int32), self._head,
                      np.zeros((n_src, 11), np.int64), np.zeros(n_src, np.int64))
        return work, pw, srcs

    def _buffers(self, B: int, S: int) -> dict:
        if self._train is not None and self._train["B"] == B and self._train["S"] == S:
            return self._train
        work, pw, srcs = self._work(B, S)
        O = B + S
        Op = (O + MR - 1) // MR * MR
        grads = Grads(self.gflat, np.zeros((max(Op, O + B), self.hidden_total), np.float32),
                      np.zeros(O, np.float32), placeholder(), self._grad_layers)
        self._train = dict(B=B, S=S, work=work, pw=pw, srcs=srcs, grads=grads, n_hid=B * sum(self.layer_widths))
        return self._train

    # ------------------------------------------------------------------ training
    def set_phases(self, phases: list) -> None:
        """The Phase of each step of the next train_chunk (or of the next train_step, one entry)."""
        self.phases = list(phases)

    def _phase_arrays(self, phases) -> Phases:
        T, K = len(phases), self.K
        trainable = np.zeros((T, K), np.bool_)
        scoring = np.zeros((T, K), np.bool_)
        for t, ph in enumerate(phases):
            for name, idx in (("trainable", ph.trainable), ("scoring", ph.scoring)):
                if any(not 0 <= k < K for k in idx):
                    raise ValueError(f"phase {ph} names a subnet outside 0 .. {K - 1} in {name}")
            if not set(ph.trainable) <= set(ph.scoring):
                raise ValueError(f"phase {ph}: a trainable subnet must score")
            trainable[t, list(ph.trainable)] = True
            scoring[t, list(ph.scoring)] = True
        return Phases(trainable, scoring, np.array([bool(ph.train_bias) for ph in phases], np.bool_).reshape(T))

    def warmup(self, batch_size: int, n_sample: int) -> None:
        """A chunk of zero steps: Numba types and compiles the whole call graph of the step (or loads it from
        its cache) and no step runs, so parameters, optimizer state and the hidden state are untouched."""
        B, S = int(batch_size), int(n_sample)
        z = np.zeros((0, B), dtype=np.int32)
        self._run(z, z, z.astype(np.bool_), z.astype(np.bool_), np.zeros((0, S), dtype=np.int32), 0,
                  self._phase_arrays([]))

    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        T, B, S = self.check_chunk_shapes(inputs, targets, active, reset, samples)
        if self.phases is None or len(self.phases) != T:
            raise ValueError(f"train_chunk of {T} steps needs {T} phases (set_phases); got "
                             f"{None if self.phases is None else len(self.phases)}")
        phases, self.phases = self.phases, None  # one use: a stale plan must never train the next chunk
        return self._run(inputs, targets, active, reset, samples, step0, self._phase_arrays(phases))

    def _run(self, inputs, targets, active, reset, samples, step0, phases: Phases) -> np.ndarray:
        if self.inference:
            raise RuntimeError("this PRNNCpuBackend was built with inference=True (on a model's own arrays): it "
                               "replays and evaluates, it does not train")
        T, B, S = self.check_chunk_shapes(inputs, targets, active, reset, samples)
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        samples = np.ascontiguousarray(samples, dtype=np.int32).reshape(T, S)
        self.check_ids(inputs, "inputs")
        self.check_ids(targets, "targets")
        self.check_ids(samples, "samples")
        buf = self._buffers(B, S)
        if self._hid is not None and self._hid.shape[0] != buf["n_hid"]:
            self._hid = None
        if self._hid is None:
            self._hid = np.zeros(buf["n_hid"], dtype=np.float32)
        losses = np.empty(T, dtype=np.float64)
        chunk = Chunk(inputs, targets, np.ascontiguousarray(active, dtype=np.bool_),
                      np.ascontiguousarray(reset, dtype=np.bool_), samples, np.int64(step0))
        with parallel_region():
            prnn_chunk_steps(self._p, buf["grads"], self._opt, buf["work"], buf["pw"], self._hypers, self._subs,
                             self._scales, buf["srcs"], typed_list(tuple(self._split_hidden(self._hid, B))), chunk,
                             phases, losses)
        return losses

    def train_step(self, X, Y, active, reset, step: int, phase=None) -> float:
        if phase is None:
            if not self.phases or len(self.phases) != 1:
                raise ValueError("a p-RNN step needs its phase: call set_phases([phase]) or pass phase=")
            phase = self.phases[0]
        self.phases = [phase]
        X = np.asarray(X)
        B = X.shape[0]
        Y = np.asarray(Y)
        self.check_step_y(X, Y)
        return float(self.train_chunk(X[None], Y[None, :B], np.asarray(active)[None], np.asarray(reset)[None],
                                      Y[None, B:], step)[0])

    # ------------------------------------------------------------------ state exchange
    @property
    def opt(self) -> dict:
        """The Adagrad accumulators and momenta as DictStateMixin reads them (views into the flat buffers)."""
        return {"acc": self.acc, "mom": self.mom}

    # ------------------------------------------------------------------ inference
    def replay(self, hid: list, Xt, m_t, run) -> None:
        """Advance n sessions' hidden states (``hid``: one float32 [n, H_l] array per layer, in place) by the
        items Xt [T, n] (int32 item indices), the first m_t[t] rows at step t (``prnn_replay_prefix``); run [K]:
        the subnets that run."""
        n = hid[0].shape[0]
        work, pw, srcs = self._work(n, 0, with_scores=False)
        with parallel_region():
            prnn_replay_prefix(self._p, self._hypers, self._subs, srcs, work, pw, typed_list(tuple(hid)),
                               np.ascontiguousarray(Xt, dtype=np.int32), np.ascontiguousarray(m_t, dtype=np.int64),
                               np.ascontiguousarray(run, dtype=np.bool_))

    # ------------------------------------------------------------------ evaluation
    def reset_eval(self, batch_size: int) -> None:
        B = int(batch_size)
        Bp = (B + VW - 1) // VW * VW
        work, pw, srcs = self._work(B, 0, with_scores=False)
        self._eval = dict(B=B, work=work, pw=pw, srcs=srcs, hid=np.zeros(B * sum(self.layer_widths), np.float32),
                          tscore=np.zeros(B, np.float32), hT=np.zeros(self.hidden_total * Bp, np.float32))

    def eval_step(self, X, targets, reset, active, candidates=None):
        """Backend.eval_step: ``eval_chunk`` of one step (counts 0 on inactive rows)."""
        gt, eq = self.eval_chunk(np.asarray(X)[None], np.asarray(targets)[None], np.asarray(reset)[None],
                                 np.asarray(active)[None], candidates=candidates)
        return gt[0], eq[0]

    def eval_chunk(self, inputs, targets, reset, active, candidates=None):
        """T evaluation steps in one Numba call (``prnn_eval_chunk_steps``): inputs / targets / reset / active
        [T, B]; returns (n_greater [T, B], n_equal [T, B]) int64, 0 on inactive lanes."""
        if self._eval is None:
            raise RuntimeError("call reset_eval(batch_size) before eval_chunk")
        ev = self._eval
        T, B, inputs, targets, reset, active, items = self.eval_chunk_inputs(ev, inputs, targets, reset, active,
                                                                             candidates)
        run = np.zeros(self.K, np.bool_)
        run[list(range(self.K)) if self.eval_subnets is None else list(self.eval_subnets)] = True
        n_gt = np.zeros((T, B), np.int64)
        n_eq = np.zeros((T, B), np.int64)
        with parallel_region():
            prnn_eval_chunk_steps(self._p, self._hypers, self._subs, self._scales, ev["srcs"], ev["work"], ev["pw"],
                                  typed_list(tuple(self._split_hidden(ev["hid"], B))), inputs, targets, reset,
                                  active, run, items, self._act[0], self._act[1], ev["hT"], ev["tscore"], n_gt, n_eq)
        self.count_target_once(n_eq, active, candidates)
        return n_gt, n_eq
