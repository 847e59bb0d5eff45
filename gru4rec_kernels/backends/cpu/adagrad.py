"""The optimizer on the CPU: global-norm clipping (``sumsq`` partials, ``clip_scale``, ``scale``), dense Adagrad
over the flat buffer (``adagrad_dense``) and row-sparse Adagrad with duplicate ids summed (``link_ids`` +
``sparse_adagrad``): the twins of ``reference.clip_grads`` / ``adagrad_dense`` / ``sparse_adagrad`` and of
``kernels/adagrad.py``.

Determinism: the norm is summed in fixed chunks (CHUNK) added in a fixed order. Duplicate ids are coalesced by
a serial linking pass (each slot in order is appended to the chain of its id, through a per-item head array of
size N restored to -1 afterwards) and a ``prange`` over the distinct ids in which each id adds its chain
serially, in slot order (the order of ``np.add.at`` in the reference), into the chain's first slot row, then
updates its row: no sort, no atomics, no copy. ``fastmath`` is limited to reassociation / contraction in the
plain sums, and to ``arcp``/``afn`` in the updates (g / sqrt(acc) may use the hardware reciprocal square root
plus a Newton step: 1-2 ulp).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ...reference import ADAGRAD_EPS
from .buffers import CHUNK
from .gemm import FM_SUM, prefetch_row

FM_OPT = {"contract", "arcp", "afn"}  # Adagrad: g / sqrt(a) may use the rsqrt estimate + a Newton step (1-2 ulp)


@njit(parallel=True, fastmath=FM_SUM, cache=True, error_model="numpy")
def sumsq(a, partial, p0):
    """partial[p0 + c] = sum of squares (float64) of the fixed chunk c of the 1-D array a; returns #chunks."""
    n = a.shape[0]
    nch = (n + CHUNK - 1) // CHUNK
    for c in prange(nch):
        v = a[c * CHUNK:min(n, (c + 1) * CHUNK)]
        s = 0.0
        for k in range(v.shape[0]):
            x = np.float64(v[k])
            s += x * x
        partial[p0 + c] = s
    return nch


@njit(parallel=True, cache=True, error_model="numpy")
def scale(a, s):
    n = a.shape[0]
    nch = (n + CHUNK - 1) // CHUNK
    for c in prange(nch):
        v = a[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for k in range(v.shape[0]):
            v[k] = v[k] * s


@njit(cache=True, error_model="numpy")
def clip_scale(partial, n, cap):
    """The clipping factor from the n chunk sums of squares (added in order): cap / norm as float32 when the
    global norm reaches cap, else 1 (no clipping; a nan norm never clips, as the reference)."""
    sq = 0.0
    for k in range(n):
        sq += partial[k]
    norm = math.sqrt(sq)
    if norm >= cap:
        return np.float32(cap / norm)
    return np.float32(1.0)


@njit(fastmath=FM_OPT, cache=True, error_model="numpy", inline="always")
def _adagrad_span(p, g, acc, mom, nlr, mu):
    """Adagrad with momentum on 1-D p (float32, as the reference in float32): acc += g^2;
    upd = -lr g / sqrt(acc + eps); mom = mu mom + upd; p += mom (mom untouched when mu = 0)."""
    eps = np.float32(ADAGRAD_EPS)
    if mu > 0.0:
        for k in range(p.shape[0]):
            gk = g[k]
            a = acc[k] + gk * gk
            acc[k] = a
            m = mu * mom[k] + nlr * gk / np.sqrt(a + eps)
            mom[k] = m
            p[k] += m
    else:
        for k in range(p.shape[0]):
            gk = g[k]
            a = acc[k] + gk * gk
            acc[k] = a
            p[k] += nlr * gk / np.sqrt(a + eps)


@njit(parallel=True, fastmath=FM_OPT, cache=True, error_model="numpy")
def adagrad_dense(p, g, acc, mom, lr, mu):
    """Dense Adagrad over the flat buffer in fixed chunks (reference.adagrad_dense)."""
    n = p.shape[0]
    nch = (n + CHUNK - 1) // CHUNK
    nlr = np.float32(-lr)
    mu32 = np.float32(mu)
    for c in prange(nch):
        k0 = c * CHUNK
        k1 = min(n, k0 + CHUNK)
        _adagrad_span(p[k0:k1], g[k0:k1], acc[k0:k1], mom[k0:k1], nlr, mu32)  # views: 0-based loops vectorise


@njit(cache=True, error_model="numpy")
def link_ids(ids, n, head, nxt, first):
    """Chains of equal ids in slot order: first[q] is the first slot of the q-th distinct id of ids[:n] and
    nxt[k] the next slot with the same id as slot k (-1 at the end). head [N] must be all -1; it is restored.
    Returns the number of distinct ids."""
    nu = 0
    for k in range(n):
        u = ids[k]
        last = head[u]
        if last < 0:
            first[nu] = k
            nu += 1
        else:
            nxt[last] = k
        head[u] = k
        nxt[k] = -1
    for k in range(n):
        head[ids[k]] = -1
    return nu


@njit(fastmath=FM_OPT, cache=True, error_model="numpy", inline="always")
def _adagrad_row(P, acc, mom, u, G, q, nlr, mu, eps):
    """Adagrad with momentum on row u of P with the gradient row G[q] (float32 as the reference)."""
    if mu > 0.0:
        for c in range(P.shape[1]):
            g = G[q, c]
            a = acc[u, c] + g * g
            acc[u, c] = a
            m = mu * mom[u, c] + nlr * g / np.sqrt(a + eps)
            mom[u, c] = m
            P[u, c] += m
    else:
        for c in range(P.shape[1]):
            g = G[q, c]
            a = acc[u, c] + g * g
            acc[u, c] = a
            P[u, c] += nlr * g / np.sqrt(a + eps)


@njit(parallel=True, fastmath=FM_OPT, cache=True, error_model="numpy")
def sparse_adagrad(P, acc, mom, slots, ids, first, nxt, nu, lr, mu, Pb, accb, momb, bslots, n_bslots):
    """Sparse Adagrad (reference.sparse_adagrad) on the rows of 2-D P, and on the 1-D bias Pb for the slots
    k < n_bslots: the q-th distinct id u = ids[first[q]] gets the sum of its chain of slot rows (added serially
    in slot order, as np.add.at, into the chain's first slot row: the slots are this step's scratch) and, if one
    of them is a bias slot, the sum of those bias slots; then the acc / mom / P (Pb) updates. The rows are random:
    the id 4 iterations ahead is prefetched, and within a chain the next slot row. (2-D indexing only: a row view
    inside the prange would take an atomic reference on P.) P, acc, mom and slots may be blocks of columns of
    wider matrices (a p-RNN subnet's block of Wy): only the block's columns are read and written."""
    W = P.shape[1]
    nlr = np.float32(-lr)
    mu32 = np.float32(mu)
    eps = np.float32(ADAGRAD_EPS)
    row_bytes = 4 * W
    pP = P.ctypes.data
    pA = acc.ctypes.data
    pM = mom.ctypes.data
    pS = slots.ctypes.data
    for q in prange(nu):
        if q + 4 < nu:
            v = ids[first[q + 4]]
            prefetch_row(pP, v, row_bytes, P.strides[0])
            prefetch_row(pA, v, row_bytes, acc.strides[0])
            if mu > 0.0:
                prefetch_row(pM, v, row_bytes, mom.strides[0])
        k0 = first[q]
        u = ids[k0]
        gb = np.float32(0.0)
        has_b = False
        if k0 < n_bslots:
            gb = bslots[k0]
            has_b = True
        k = nxt[k0]
        while k >= 0:  # duplicates: added into the first slot's row, in slot order
            kn = nxt[k]
            if kn >= 0:
                prefetch_row(pS, kn, row_bytes, slots.strides[0])
            for c in range(W):
                slots[k0, c] += slots[k, c]
            if k < n_bslots:
                gb = bslots[k] if not has_b else gb + bslots[k]
                has_b = True
            k = kn
        _adagrad_row(P, acc, mom, u, slots, k0, nlr, mu32, eps)
        if has_b:
            a = accb[u] + gb * gb
            accb[u] = a
            upd = nlr * gb / np.sqrt(a + eps)
            if mu > 0.0:
                m = mu32 * momb[u] + upd
                momb[u] = m
                Pb[u] += m
            else:
                Pb[u] += upd
