"""All-item ranking for evaluation, fused after the score GEMM: the score matrix never leaves the device.

Shape letters: B rows (test sessions in parallel), H units of the last layer, N items, C candidates.
The backend computes ``S = h @ Wy^T`` [B, N] with one GEMM; then, one block per row i, with t_i = targets[i],

    score(i, j)  = f(S[i, j] + By[j])                        f the final activation (config.parse_final_act)
    n_greater[i] = #{ j : score(i, j) >  score(i, t_i) }     j over all N items, or over cand [C]
    n_equal[i]   = #{ j : score(i, j) == score(i, t_i) }     (the target included when it is a candidate;
                                                              with candidates, at least 1)

which must match ``reference.score_all`` + ``reference.rank_counts`` (and NumpyBackend.eval_step's candidate
rule). Ranks follow as standard = 1 + n_greater, conservative = n_greater + n_equal,
median = standard + (n_equal - 1) / 2 (gru4rec_kernels.evaluate). Scores are rounded to float32 before
comparing, so the counts are those of the float32 score matrix. The counts are reduced per block in shared
memory (int32), then written as int64.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, int32

from .common import MAX_THREADS, THREADS, block_isum2, check, check_choice, check_threads, final_act, get_kernel


def rank_counts(n_greater, n_equal, S, By, targets, act, act_a, cand, use_cand):
    """One block per row of S = h Wy^T [B, N]: counts of items scoring above / equal to the target.

    n_greater, n_equal [B] int64 outputs; By [N]; targets [B] int32; act, act_a the final activation; cand [C]
    int32 item ids read when use_cand != 0. Block size: a power of two <= MAX_THREADS.
    """
    sh = cuda.shared.array((2, MAX_THREADS), int32)
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    tg = targets[i]
    ts = final_act(S[i, tg] + By[tg], act, act_a)
    n = cand.shape[0] if use_cand != 0 else S.shape[1]
    gt = 0
    eq = 0
    for c in range(tid, n, nt):
        j = cand[c] if use_cand != 0 else c
        v = final_act(S[i, j] + By[j], act, act_a)
        if v > ts:
            gt += 1
        elif v == ts:
            eq += 1
    gt, eq = block_isum2(sh, tid, nt, gt, eq)
    if tid == 0:
        n_greater[i] = gt
        if use_cand != 0 and eq < 1:
            eq = 1
        n_equal[i] = eq


KERNELS = {
    "rank_counts": (rank_counts, ["void(int64[::1], int64[::1], float32[:, ::1], float32[::1], int32[::1], int32, "
                                  "float32, int32[::1], int32)"]),
}


def launch_rank_counts(n_greater, n_equal, S, By, targets, act=0, act_a=0.0, cand=None, threads=None, stream=0):
    """n_greater, n_equal [B] int64 from S = h Wy^T [B, N] (float32), By [N], targets [B] int32, optional
    candidate item ids cand [C] int32."""
    B, N = check("S", S, np.float32, 2)
    check("n_greater", n_greater, np.int64, 1, (B,))
    check("n_equal", n_equal, np.int64, 1, (B,))
    check("By", By, np.float32, 1, (N,))
    check("targets", targets, np.int32, 1, (B,))
    check_choice("act", act, {0, 1, 2, 3, 4})
    if cand is None:
        cand_arr, use = targets, 0  # never read; any int32 vector on the device will do
    else:
        check("cand", cand, np.int32, 1)
        if cand.shape[0] < 1:
            raise ValueError("cand must hold at least one item id")
        cand_arr, use = cand, 1
    t = check_threads(THREADS["row"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "rank_counts")[B, t, stream](n_greater, n_equal, S, By, targets, np.int32(act),
                                                      np.float32(act_a), cand_arr, np.int32(use))
