"""The device step counter: how a captured CUDA graph finds each step's inputs and draws fresh dropout masks.

A graph's pointers are frozen, so the K captured steps cannot be handed new arrays. Instead the backend
uploads a whole chunk of the schedule (T steps) into fixed device buffers and keeps a counter on the device:

    ctr[0] = t      the step's row in the uploaded chunk      ctr[1] = the global step (dropout counter word)

``step_begin`` (first kernel of a step) copies row t of the chunk into the step's buffers and does every gather
the step starts with (shape letters: B rows, S samples, O = Bc + S, H_l units of layer l, D input width; Bc
target columns, = B in one process, the global batch B_g on a data-parallel rank, whose rows are rows row0..
of the global batch: targets_s holds the global targets, x0's dropout mask is of rows row0..):

    ids[:Bc] = targets[t],  ids[Bc:O] = samples[t],  ids[O:] = inputs[t]  ids [O + B] = [Y | X]
    active = active_s[t],  reset = reset_s[t]                             [B] uint8
    h_in_l = 0 on reset rows, else hid_l, for every layer                 (kernels/gru.py: hidden_reset)
    x0 = emb[X, c0:c0+D] * embedding dropout mask (emb = Wy or E; not one-hot; c0 a p-RNN subnet's block of
                                                     Wy, else 0)        [B, D]  (embedding.gather_rows)
    WyY = Wy[Y]                                                           [O, H_L]

Each thread reads the ids it needs straight from the chunk row t, never from the ids the kernel writes, so no
thread waits for another. ``step_end`` (last kernel) writes the step loss ``losses[t] = sum(row_loss)``
(reference.loss_and_grad's loss: row_loss already holds active_i L_i / batch_size) and advances
``ctr[0] += 1, ctr[1] += 1``. Every other kernel reads only the step buffers (and ctr[1] for dropout), so one
graph of K steps replays over the chunk.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import F0, MAX_THREADS, THREADS, block_sum4, ceil_div, check, check_threads, get_kernel
from .embedding import check_column_offset, gather_element
from .gru import _drop_args, _row0, check_hidden, hidden_row


def step_begin(ids, active, reset, h_in, hid, widths, x0, emb, gather_x0, WyY, Wy, inputs, targets, samples,
               active_s, reset_s, ctr, key, p, scale, row0, emb_c0):
    """A thread per element of [ids (O + B) | h_in (sum_l B H_l) | x0 (B D, when gather_x0) | WyY (O H_L)].

    Stages row t = ctr[0] of the chunk (inputs / active_s / reset_s [T, B], targets [T, Bc], samples [T, S]) into
    ids = [targets | samples | inputs], active, reset [B]; h_in = hid or 0 (flat states of every layer, widths
    [L]); x0 [B, D] = emb[inputs[t], emb_c0 : emb_c0 + D] times the embedding dropout (key, p, scale; counter
    word ctr[1]; mask rows row0..); WyY [O, H] = Wy[targets[t] | samples[t]]."""
    i = cuda.grid(1)
    B = inputs.shape[1]
    Bc = targets.shape[1]
    O = Bc + samples.shape[1]
    t = ctr[0]
    if i < O + B:
        if i < Bc:
            ids[i] = targets[t, i]
        elif i < O:
            ids[i] = samples[t, i - Bc]
        else:
            b = i - O
            ids[i] = inputs[t, b]
            active[b] = active_s[t, b]
            reset[b] = reset_s[t, b]
        return
    i -= O + B
    if i < h_in.shape[0]:
        if reset_s[t, hidden_row(widths, B, i)] != 0:
            h_in[i] = F0
        else:
            h_in[i] = hid[i]
        return
    i -= h_in.shape[0]
    if gather_x0 != 0:
        D = x0.shape[1]
        if i < B * D:
            k = i // D
            gather_element(x0, emb, inputs[t, k], k, i - k * D, emb_c0, ctr[1], key, p, scale, row0)
            return
        i -= B * D
    H = WyY.shape[1]
    if i < O * H:
        k = i // H
        y = targets[t, k] if k < Bc else samples[t, k - Bc]
        gather_element(WyY, Wy, y, k, i - k * H, 0, ctr[1], key, 0.0, scale, 0)


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
_M = "float32[:, ::1]"
_V = "float32[::1]"
KERNELS = {
    "step_begin": (step_begin, [f"void(int32[::1], uint8[::1], uint8[::1], {_V}, {_V}, int32[::1], {_M}, {_M}, "
                                f"int32, {_M}, {_M}, {_I2}, {_I2}, {_I2}, {_U2}, {_U2}, int64[::1], uint32, float64, "
                                "float32, int32, int32)"]),
    "step_end": (step_end, ["void(float32[::1], float32[::1], int64[::1])"]),
}


def launch_step_begin(ids, active, reset, chunk, ctr, hidden, WyY, Wy, x0=None, emb=None, key=0, p=0.0,
                      emb_c0=None, threads=None, stream=0, row0=0):
    """Stage row ctr[0] of ``chunk`` = (inputs, targets, samples, active_s, reset_s) ([T, B] int32, [T, Bc] int32,
    [T, S] int32, [T, B] uint8, [T, B] uint8) into ids [O + B] int32 (O = Bc + S), active, reset [B] uint8; reset
    the flat ``hidden`` = (h_in, hid, widths) states; gather WyY [O, H] = Wy[Y]; and, unless ``x0`` is None (the
    one-hot input), x0 [B, D] = emb[X] with the embedding dropout (key, p) of the batch rows row0.. . Bc = B and
    row0 = 0 in one process; a data-parallel rank stages its B rows of a global batch of Bc. ``emb_c0``: x0 is
    the column block emb_c0 .. emb_c0 + D of emb's rows (a p-RNN's constrained ID subnet; None: emb is D wide)."""
    inputs, targets, samples, active_s, reset_s = chunk
    T, B = check("inputs", inputs, np.int32, 2)
    _, Bc = check("targets", targets, np.int32, 2, (T, None))
    _, S = check("samples", samples, np.int32, 2, (T, None))
    check("active_s", active_s, np.uint8, 2, (T, B))
    check("reset_s", reset_s, np.uint8, 2, (T, B))
    r0 = _row0(row0)
    if r0 + B > Bc:
        raise ValueError(f"the B = {B} rows must be rows row0 .. row0 + B - 1 of the targets' Bc = {Bc} columns; "
                         f"got row0 = {row0}")
    O = Bc + S
    check("ids", ids, np.int32, 1, (O + B,))
    check("active", active, np.uint8, 1, (B,))
    check("reset", reset, np.uint8, 1, (B,))
    h_in, hid, widths = hidden
    check_hidden(h_in, hid, widths, B)
    _, H = check("WyY", WyY, np.float32, 2, (O, None))
    check("Wy", Wy, np.float32, 2, (None, H))
    key, p, scale = _drop_args(ctr, key, p)
    n = O + B + h_in.shape[0] + O * H
    if x0 is None:
        x0, emb, gather, c0 = WyY, Wy, np.int32(0), np.int32(0)  # never read (gather_x0 = 0): any matrices do
    else:
        _, D = check("x0", x0, np.float32, 2, (B, None))
        c0 = check_column_offset(emb_c0, D, check("emb", emb, np.float32, 2)[1], "emb")
        gather = np.int32(1)
        n += B * D
    t = check_threads(THREADS["elementwise"] if threads is None else threads)
    get_kernel(KERNELS, "step_begin")[ceil_div(n, t), t, stream](ids, active, reset, h_in, hid, widths, x0, emb, gather,
                                                                 WyY, Wy, inputs, targets, samples, active_s, reset_s,
                                                                 ctr, key, p, scale, r0, c0)


def launch_step_end(losses, row_loss, ctr, threads=None, stream=0):
    check("losses", losses, np.float32, 1)
    check("row_loss", row_loss, np.float32, 1)
    check("ctr", ctr, np.int64, 1, (2,))
    t = check_threads(THREADS["reduce"] if threads is None else threads, pow2=True)
    get_kernel(KERNELS, "step_end")[1, t, stream](losses, row_loss, ctr)
