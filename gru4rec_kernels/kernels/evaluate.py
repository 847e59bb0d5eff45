"""All-item ranking for evaluation, tiled over items: no [B, N] score matrix, one chunk of steps per call.

Shape letters: T steps of a schedule chunk, B rows (test sessions in parallel), H units of the last layer, N items
(or C candidates: then Wy, By below are the candidates' rows Wy[cand], By[cand]), n <= tile items of one tile.
Per step t (row ctr[0] of the uploaded chunk), with h the last layer's new hidden state, t_i = targets[i] and
f the final activation (config.parse_final_act):

    eval_step_begin   X, targets, reset, active [B] = row t of inputs_s, targets_s, reset_s, active_s [T, B]
    (the forward: hidden_reset, gather_rows, gru_fwd_rz / gru_fwd_out with p = 0, GEMMs; backends/cuda.py)
    target_scores     ts_i = f(h_i . Wy[t_i] + By[t_i])                      one thread per row (all of Wy, By)
    per item tile     S = h Wy[j0:j0+n]^T  [B, n]                             (kernels/gemm.py, gemm_nt)
      rank_counts     n_greater[t, i] += #{ j : f(S_ij + By[j0+j]) >  ts_i }  grid (column blocks, rows):
                      n_equal[t, i]   += #{ j : f(S_ij + By[j0+j]) == ts_i }  a block sums its span of one row in
                                                                              shared memory, then one int32
                                                                              atomic add per count
    eval_step_end     with candidates n_equal[t, i] = max(n_equal[t, i], 1); then ctr[0] += 1

which must match ``reference.score_all`` + ``reference.rank_counts`` (and NumpyBackend.eval_step's candidate
rule: with candidates only they are counted, and n_equal >= 1). Inactive rows are skipped (their counts stay 0).
Ranks follow as standard = 1 + n_greater, conservative = n_greater + n_equal, median = standard +
(n_equal - 1) / 2 (gru4rec_kernels.evaluate).

Ties, exactly: the target's score is a dot product in increasing k from 0, the same chain of multiply-adds as
the GEMM's element (i, t_i) (kernels/gemm.py: one thread's k-ordered sum; the zero padding of its last slab
adds 0 * 0, which can only turn -0 into +0), so ts_i has the bits that the target's own column gets in its tile
and every item whose row equals the target's ties with it. Scores are float32, so the counts are those of the
float32 score matrix. Deterministic: integer atomics commute, so the counts do not depend on the block order.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, int32

from .common import (
    F0,
    MAX_THREADS,
    THREADS,
    block_isum2,
    ceil_div,
    check,
    check_choice,
    check_threads,
    final_act,
    get_kernel,
)

#: Items per tile: the score tile is [B, tile] float32. 16384 at B = 512 is 32 MiB, which stays in an H100 /
#: H200's 50 MB L2 between the GEMM that writes it and rank_counts that reads it (a MODEL, not measured).
EVAL_TILE = 16384
#: The simulator's tile: tiny, so that the tests cover several tiles and a partial last one.
SIM_EVAL_TILE = 8
#: Columns of one row per rank_counts block, per thread: a block of ``threads`` covers threads * SPAN_PER_THREAD.
SPAN_PER_THREAD = 8


def eval_step_begin(X, targets, reset, active, inputs_s, targets_s, reset_s, active_s, ctr):
    """A thread per row b of [B]: stage row t = ctr[0] of the chunk ([T, B] each) into X, targets, reset, active."""
    b = cuda.grid(1)
    if b < X.shape[0]:
        t = ctr[0]
        X[b] = inputs_s[t, b]
        targets[b] = targets_s[t, b]
        reset[b] = reset_s[t, b]
        active[b] = active_s[t, b]


def target_scores(tscore, h, Wy, By, targets, active, act, act_a):
    """A thread per active row i: tscore[i] = f(h[i] . Wy[targets[i]] + By[targets[i]]), the dot in increasing k
    from 0 (the GEMM's order, so the bits equal the target column's score in its tile)."""
    i = cuda.grid(1)
    if i < h.shape[0] and active[i] != 0:
        tg = targets[i]
        acc = F0
        for k in range(h.shape[1]):
            acc += h[i, k] * Wy[tg, k]
        tscore[i] = final_act(acc + By[tg], act, act_a)


def rank_counts(n_greater, n_equal, S, By, tscore, active, ctr, act, act_a, span):
    """Block (x, y) = (columns [x * span, (x + 1) * span) of the tile, row y) of the score tile S [B, n] with its
    items' biases By [n]: counts of scores above / equal to tscore[y], added to n_greater / n_equal [T, B] int32
    at row t = ctr[0]. Inactive rows return at once (the whole block: no barrier is skipped by part of it)."""
    sh = cuda.shared.array((2, MAX_THREADS), int32)
    i = cuda.blockIdx.y
    if active[i] == 0:
        return
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    c0 = cuda.blockIdx.x * span
    c1 = min(c0 + span, S.shape[1])
    ts = tscore[i]
    gt = 0
    eq = 0
    for c in range(c0 + tid, c1, nt):
        v = final_act(S[i, c] + By[c], act, act_a)
        if v > ts:
            gt += 1
        elif v == ts:
            eq += 1
    gt, eq = block_isum2(sh, tid, nt, gt, eq)
    if tid == 0:
        t = ctr[0]
        if gt != 0:
            cuda.atomic.add(n_greater, (t, i), int32(gt))
        if eq != 0:
            cuda.atomic.add(n_equal, (t, i), int32(eq))


def eval_step_end(n_equal, active, use_cand, ctr):
    """One block: with candidates (use_cand != 0) n_equal[t, i] = max(n_equal[t, i], 1) on the active rows of step
    t = ctr[0] (a target outside the candidates still counts as tied with itself, as NumpyBackend.eval_step);
    then, after every thread has read t, ctr[0] += 1."""
    tid = cuda.threadIdx.x
    t = ctr[0]
    if use_cand != 0:
        for i in range(tid, n_equal.shape[1], cuda.blockDim.x):
            if active[i] != 0 and n_equal[t, i] < 1:
                n_equal[t, i] = 1
    cuda.syncthreads()
    if tid == 0:
        ctr[0] += 1


_I2 = "int32[:, ::1]"
_U2 = "uint8[:, ::1]"
KERNELS = {
    "eval_step_begin": (eval_step_begin, [f"void(int32[::1], int32[::1], uint8[::1], uint8[::1], {_I2}, {_I2}, "
                                          f"{_U2}, {_U2}, int64[::1])"]),
    "target_scores": (target_scores, ["void(float32[::1], float32[:, ::1], float32[:, ::1], float32[::1], "
                                      "int32[::1], uint8[::1], int32, float32)"]),
    "rank_counts": (rank_counts, [f"void({_I2}, {_I2}, float32[:, ::1], float32[::1], float32[::1], uint8[::1], "
                                  "int64[::1], int32, float32, int32)"]),
    "eval_step_end": (eval_step_end, [f"void({_I2}, uint8[::1], int32, int64[::1])"]),
}


def _check_ctr(ctr):
    check("ctr", ctr, np.int64, 1, (2,))


def launch_eval_step_begin(X, targets, reset, active, inputs_s, targets_s, reset_s, active_s, ctr, threads=None,
                           stream=0):
    T, B = check("inputs_s", inputs_s, np.int32, 2)
    check("targets_s", targets_s, np.int32, 2, (T, B))
    check("reset_s", reset_s, np.uint8, 2, (T, B))
    check("active_s", active_s, np.uint8, 2, (T, B))
    check("X", X, np.int32, 1, (B,))
    check("targets", targets, np.int32, 1, (B,))
    check("reset", reset, np.uint8, 1, (B,))
    check("active", active, np.uint8, 1, (B,))
    _check_ctr(ctr)
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "eval_step_begin")[ceil_div(B, t), t, stream](X, targets, reset, active, inputs_s, targets_s,
                                                                      reset_s, active_s, ctr)


def launch_target_scores(tscore, h, Wy, By, targets, active, act=0, act_a=0.0, threads=None, stream=0):
    """tscore [B] float32 from h [B, H], Wy [N, H], By [N] (all items: a target need not be a candidate),
    targets [B] int32, active [B] uint8."""
    B, H = check("h", h, np.float32, 2)
    N, _ = check("Wy", Wy, np.float32, 2, (None, H))
    check("By", By, np.float32, 1, (N,))
    check("tscore", tscore, np.float32, 1, (B,))
    check("targets", targets, np.int32, 1, (B,))
    check("active", active, np.uint8, 1, (B,))
    check_choice("act", act, {0, 1, 2, 3, 4})
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "target_scores")[ceil_div(B, t), t, stream](tscore, h, Wy, By, targets, active, np.int32(act),
                                                                    np.float32(act_a))


def launch_rank_counts(n_greater, n_equal, S, By, tscore, active, ctr, act=0, act_a=0.0, span=None, threads=None,
                       stream=0):
    """Add the counts of one item tile, S [B, n] float32 with its biases By [n], to row ctr[0] of n_greater,
    n_equal [T, B] int32. ``span``: columns of a row per block (default threads * SPAN_PER_THREAD)."""
    B, n = check("S", S, np.float32, 2)
    check("By", By, np.float32, 1, (n,))
    check("n_greater", n_greater, np.int32, 2, (None, B))
    check("n_equal", n_equal, np.int32, 2, n_greater.shape)
    check("tscore", tscore, np.float32, 1, (B,))
    check("active", active, np.uint8, 1, (B,))
    _check_ctr(ctr)
    check_choice("act", act, {0, 1, 2, 3, 4})
    t = check_threads(THREADS["row"] if threads is None else threads, pow2=True)
    span = t * SPAN_PER_THREAD if span is None else span
    if not isinstance(span, (int, np.integer)) or span < 1:
        raise ValueError(f"span must be a positive int (columns per block); got {span!r}")
    if B > 65535:
        raise ValueError(f"rank_counts: B = {B} rows exceed the grid's 65535 blocks along y")
    if B == 0 or n == 0:
        return
    get_kernel(KERNELS, "rank_counts")[(ceil_div(n, span), B), t, stream](
        n_greater, n_equal, S, By, tscore, active, ctr, np.int32(act), np.float32(act_a), np.int32(span))


def launch_eval_step_end(n_equal, active, use_cand, ctr, threads=None, stream=0):
    _, B = check("n_equal", n_equal, np.int32, 2)
    check("active", active, np.uint8, 1, (B,))
    _check_ctr(ctr)
    t = check_threads(THREADS["row"] if threads is None else threads)
    get_kernel(KERNELS, "eval_step_end")[1, t, stream](n_equal, active, np.int32(bool(use_cand)), ctr)
