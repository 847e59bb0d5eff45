"""Duplicate ids grouped on the host, a whole chunk at once: the segments the CUDA sparse Adagrad works over.

A step's sparse gradient is a list of K row slots with one id each (``reference.coalesce``'s ``ids``: for Wy
the O = B + S output columns Y = [targets | samples], plus the B inputs X in the constrained mode; for E and Wx0
the inputs X). The cuda backend knows every id of a chunk of T steps before it uploads the chunk, so it groups
them here, once per chunk, and each sparse update becomes one kernel with a block per distinct id
(``kernels/adagrad.py::sparse_adagrad``). Per step t, with n_seg distinct ids:

    perm[t, :]        [K]      the slots grouped by id: a stable permutation (inside a group, increasing slots)
    seg_start[t, :]   [K + 1]  segment q is perm[t, seg_start[t, q] : seg_start[t, q + 1]], q < n_seg;
                               seg_start[t, q] = K for q >= n_seg (so n_seg is where K first appears)
    seg_id[t, :]      [K]      the id of segment q (q < n_seg; the rest is left as it was)

Segments come in the order of their ids' first slots. The grouping is O(K) per step, no sort: ``link_ids`` (the
cpu backend's, reused) chains the slots of each id through a per-item array ``head`` [N] that holds -1 on entry
and again on exit, and the chains are then read out one after the other. ``segment_chunk`` runs the steps in
parallel, in P contiguous parts, each with its own row of ``head`` [P, N]. Equal inputs give equal outputs (no
dependence on the thread count).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..parallel import parallel_region
from .cpu.adagrad import link_ids


@njit(cache=True, error_model="numpy")
def segment_step(perm, seg_start, seg_id, ids, head, nxt, first):
    """Group the slots of one step's ids [K] (int32 in [0, N)): perm [K], seg_start [K + 1], seg_id [K] as in
    the module docstring. Scratch: head [N] all -1 (restored), nxt and first [K]. Returns n_seg."""
    K = ids.shape[0]
    n_seg = link_ids(ids, K, head, nxt, first)
    pos = 0
    for q in range(n_seg):
        seg_start[q] = pos
        k = first[q]
        seg_id[q] = ids[k]
        while k >= 0:  # the chain of this id: its slots in increasing order
            perm[pos] = k
            pos += 1
            k = nxt[k]
    for q in range(n_seg, K + 1):
        seg_start[q] = K
    return n_seg


@njit(parallel=True, cache=True, error_model="numpy")
def _segment_chunk(perm, seg_start, seg_id, ids, head):
    T, K = ids.shape
    P = min(head.shape[0], T)
    for p in prange(P):
        nxt = np.empty(K, np.int32)
        first = np.empty(K, np.int32)
        for t in range(p * T // P, (p + 1) * T // P):
            segment_step(perm[t], seg_start[t], seg_id[t], ids[t], head[p], nxt, first)


def segment_chunk(perm, seg_start, seg_id, ids, head):
    """``segment_step`` for every step of a chunk: ids [T, K] int32 -> perm [T, K], seg_start [T, K + 1],
    seg_id [T, K] (int32, C-contiguous; only their first T rows are written). head [P, N] int32, all -1 (restored
    on exit): one row per parallel part, N the number of items (every id must be in [0, N))."""
    ids = np.ascontiguousarray(ids)
    if ids.ndim != 2 or ids.dtype != np.int32:
        raise ValueError(f"ids must be a [T, K] int32 array; got {ids.dtype} of shape {ids.shape}")
    T, K = ids.shape
    if head.ndim != 2 or head.dtype != np.int32 or head.shape[0] < 1 or not head.flags.c_contiguous:
        raise ValueError(f"head must be a C-contiguous [P, N] int32 array with P >= 1; got {head.dtype} of shape "
                         f"{head.shape}")
    for name, a, w in (("perm", perm, K), ("seg_start", seg_start, K + 1), ("seg_id", seg_id, K)):
        if a.ndim != 2 or a.dtype != np.int32 or a.shape[0] < T or a.shape[1] != w or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous int32 array of shape (>= {T}, {w}); got {a.dtype} of "
                             f"shape {a.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= head.shape[1]):
        raise ValueError(f"ids must be item ids in [0, {head.shape[1]}); got [{ids.min()}, {ids.max()}]")
    if T == 0:
        return
    with parallel_region():
        _segment_chunk(perm, seg_start, seg_id, ids, head)
