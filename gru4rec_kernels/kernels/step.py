"""The device step counter: how a captured CUDA graph finds each step's inputs and draws fresh dropout masks.

A graph's pointers are frozen, so the K captured steps cannot be handed new arrays. Instead the backend
uploads a whole chunk of the schedule (T steps) into fixed device buffers and keeps a counter on the device:

    ctr[0] = t      the step's row in the uploaded chunk      ctr[1] = the global step (dropout counter word)

``step_begin`` (first kernel of a step) copies row t of the chunk into the step's buffers (shape letters: B rows,
S samples, O = B + S):

    ids[:B] = targets[t],  ids[B:O] = samples[t],  ids[O:] = inputs[t]    ids [O + B] = [Y | X]
    active = active_s[t],  reset = reset_s[t]                             [B] uint8

and ``step_end`` (last kernel) writes the step loss ``losses[t] = sum(row_loss)`` (reference.loss_and_grad's
loss: row_loss already holds active_i L_i / batch_size) and advances ``ctr[0] += 1, ctr[1] += 1``. Every other
kernel reads only the step buffers (and ctr[1] for dropout), so one graph of K steps replays over the chunk.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import F0, MAX_THREADS, THREADS, block_sum4, ceil_div, check, check_threads, get_kernel


def step_begin(ids, active, reset, inputs, targets, samples, active_s, reset_s, ctr):
    """A thread per slot of ids [O + B]: stage row ctr[0] of the chunk (inputs/targets/active_s/reset_s
    [T, B], samples [T, S]) into ids = [targets | samples | inputs], active, reset [B]."""
    i = cuda.grid(1)
    B = targets.shape[1]
    O = B + samples.shape[1]
    t = ctr[0]
    if i < B:
        ids[i] = targets[t, i]
    elif i < O:
        ids[i] = samples[t, i - B]
    elif i < O + B:
        b = i - O
        ids[i] = inputs[t, b]
        active[b] = active_s[t, b]
        reset[b] = reset_s[t, b]


def step_end(losses, row_loss, ctr):
    """One block: losses[ctr[0]] = sum(row_loss [B]) (fixed tree), then ctr[0] += 1, ctr[1] += 1."""
    shs = cuda.shared.array((4, MAX_THREADS), float32)
    tid = cuda.threadIdx.x
    acc = F0
    for b in range(tid, row_loss.shape[0], cuda.blockDim.x):
        acc += row_loss[b]
    tot, _, _, _ = block_sum4(shs, tid, cuda.blockDim.x, acc, F0, F0, F0)
    if tid == 0:
        losses[ctr[0]] = tot
        ctr[0] += 1
        ctr[1] += 1


_I2 = "int32[:, ::1]"
_U2 = "uint8[:, ::1]"
KERNELS = {
    "step_begin": (step_begin, [f"void(int32[::1], uint8[::1], uint8[::1], {_I2}, {_I2}, {_I2}, {_U2}, {_U2}, "
                                "int64[::1])"]),
    "step_end": (step_end, ["void(float32[::1], float32[::1], int64[::1])"]),
}


def launch_step_begin(ids, active, reset, inputs, targets, samples, active_s, reset_s, ctr, threads=None, stream=0):
    T, B = check("inputs", inputs, np.int32, 2)
    check("targets", targets, np.int32, 2, (T, B))
    _, S = check("samples", samples, np.int32, 2, (T, None))
    check("active_s", active_s, np.uint8, 2, (T, B))
    check("reset_s", reset_s, np.uint8, 2, (T, B))
    check("ids", ids, np.int32, 1, (2 * B + S,))
    check("active", active, np.uint8, 1, (B,))
    check("reset", reset, np.uint8, 1, (B,))
    check("ctr", ctr, np.int64, 1, (2,))
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "step_begin")[ceil_div(2 * B + S, t), t, stream](ids, active, reset, inputs, targets, samples,
                                                                         active_s, reset_s, ctr)


def launch_step_end(losses, row_loss, ctr, threads=None, stream=0):
    check("losses", losses, np.float32, 1)
    check("row_loss", row_loss, np.float32, 1)
    check("ctr", ctr, np.int64, 1, (2,))
    t = check_threads(THREADS["reduce"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "step_end")[1, t, stream](losses, row_loss, ctr)
