"""The GRU layer on the CPU: input gathers with dropout, ``gru_fwd`` and ``gru_bwd`` (the twins of
``reference.gru_fwd`` / ``gru_bwd`` and of ``kernels/gru.py``), and the serial one-row step used for inference.

    embed_input / onehot_input     x0 = emb[X] * keep mask (Philox, drawn in place); a = Wx0[X] + Bh0
    gru_fwd_rz / gru_fwd_out       r, z, r h ; c, h' = ((1-z) h + z c) * keep mask
    gru_bwd_cz / gru_bwd_r         dc, dz ; dr
    gru_fwd / gru_bwd              the layer stack of one training or evaluation step (GEMMs in gemm.py)
    gru_fwd_prefix                 many sessions at once, right-aligned (inference, recommend_batch)
    gru_fwd_row                    one hidden state, serially, click by click (inference, recommend_one,
                                   SessionRecommender)

The gate elements (``gate``, ``candidate``, ``blend``) are shared by all of them, so a GRU step has one
formula on the CPU. No kernel here uses fast-math.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...codes import MODE_CONSTRAINED, MODE_ONEHOT, MODE_SOURCES
from ...rng import philox2x32, uniform24
from .gemm import gemm_batch, gemm_nt, job, mm
from .mathf import sigmoid, tanh


@njit(cache=True, error_model="numpy", inline="always")
def gate(pre):
    """A sigmoid gate (r or z) from its float32 pre-activation, evaluated in float64 and rounded once."""
    return np.float32(sigmoid(np.float64(pre)))


@njit(cache=True, error_model="numpy", inline="always")
def candidate(pre):
    """The candidate state c = tanh(pre), evaluated in float64 and rounded once."""
    return np.float32(tanh(np.float64(pre)))


@njit(cache=True, error_model="numpy", inline="always")
def blend(h, z, c):
    """The new hidden state (1 - z) h + z c (float32)."""
    return (np.float32(1.0) - z) * h + z * c


@njit(cache=True, error_model="numpy", inline="always")
def keep(key, step, element, p, scale):
    """Scaled keep-mask value of one dropout element, as rng.dropout_mask_np: counter (element, step)."""
    x0, _ = philox2x32(element, step, key)
    if uniform24(x0) >= p:
        return scale
    return np.float32(0.0)


@njit(cache=True, error_model="numpy")
def embed_input(src, X, x, mask, p, key, step, scale, row0=0):
    """x[b] = src[X[b]] * keep mask; the mask is stored for backward. p = 0: no dropout. The rows are rows row0..
    of the step's batch: the mask of batch row row0 + b (data parallelism: a rank's rows of the global masks)."""
    B, W = x.shape
    for b in range(B):
        row = X[b]
        if p > 0.0:
            for j in range(W):
                m = keep(key, step, (row0 + b) * W + j, p, scale)
                mask[b, j] = m
                x[b, j] = src[row, j] * m
        else:
            for j in range(W):
                x[b, j] = src[row, j]


@njit(cache=True, error_model="numpy")
def onehot_input(Wx0, X, bias, a):
    """a[b] = Wx0[X[b]] + Bh0 (one-hot input: the input projection is a row gather)."""
    B, W = a.shape
    for b in range(B):
        row = X[b]
        for j in range(W):
            a[b, j] = Wx0[row, j] + bias[j]


@njit(parallel=True, cache=True, error_model="numpy")
def gru_fwd_rz(a, t2, h, r, z, rh):
    """r = sigmoid(a_r + h U_r), z = sigmoid(a_z + h U_z), rh = r * h."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            rr = gate(a[b, H + j] + t2[b, j])
            r[b, j] = rr
            z[b, j] = gate(a[b, 2 * H + j] + t2[b, H + j])
            rh[b, j] = rr * h[b, j]


@njit(parallel=True, cache=True, error_model="numpy")
def gru_fwd_out(a, t1, h, z, c, out, mask, p, key, step, scale, row0=0):
    """c = tanh(a_h + (r h) U_h); out = ((1 - z) h + z c) * keep mask (mask stored; p = 0: no dropout); the mask
    of batch rows row0.. as embed_input."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            cc = candidate(a[b, j] + t1[b, j])
            c[b, j] = cc
            out[b, j] = blend(h[b, j], z[b, j], cc)
        if p > 0.0:
            for j in range(H):
                m = keep(key, step, (row0 + b) * H + j, p, scale)
                mask[b, j] = m
                out[b, j] = out[b, j] * m


@njit(parallel=True, cache=True, error_model="numpy")
def gru_bwd_cz(dout, mask, use_mask, h, z, c, da, dc, drz):
    """dhn = dout * mask; dc = dhn z (1 - c^2); dz = dhn (c - h) z (1 - z). da = [dc | dr | dz] gets dc and dz;
    dc and drz = [dr | dz] are also kept as contiguous copies (operands of the weight-gradient GEMMs)."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            d = dout[b, j]
            if use_mask:
                d = d * mask[b, j]
            zz = z[b, j]
            cc = c[b, j]
            vc = d * zz * (np.float32(1.0) - cc * cc)
            vz = d * (cc - h[b, j]) * zz * (np.float32(1.0) - zz)
            da[b, j] = vc
            dc[b, j] = vc
            da[b, 2 * H + j] = vz
            drz[b, H + j] = vz


@njit(parallel=True, cache=True, error_model="numpy")
def gru_bwd_r(drh, h, r, da, drz):
    """dr = (dc U_h^T) h r (1 - r) into da[:, H:2H] and drz[:, :H]."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            rr = r[b, j]
            v = drh[b, j] * h[b, j] * rr * (np.float32(1.0) - rr)
            da[b, H + j] = v
            drz[b, j] = v


@njit(cache=True, error_model="numpy")
def colsum(A, out):
    """out[j] = sum_i A[i, j] for j < len(out), in row order."""
    M = A.shape[0]
    N = out.shape[0]
    for j in range(N):
        out[j] = 0.0
    for i in range(M):
        for j in range(N):
            out[j] += A[i, j]


@njit(cache=True, error_model="numpy")
def mask_rows(dx, mask, out):
    """out = dx * mask (the input-dropout backward, written into a gradient slot block)."""
    B, W = dx.shape
    for b in range(B):
        for j in range(W):
            out[b, j] = dx[b, j] * mask[b, j]


@njit(cache=True, error_model="numpy")
def add_bias(a, bias):
    for b in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[b, j] += bias[j]


@njit(cache=True, error_model="numpy")
def gru_fwd(params, hyper, work, hid, X, B, step, dropout, jobs, l0=0, l1=-1, row0=0):
    """The GRU layers of one step (reference.forward up to the top hidden state) on the first B rows: hid[l]
    [>= B, H_l] holds the incoming hidden state (reset rows already zeroed); work.layers[l] receives a, r, z, c,
    rh, out and the masks. params: buffers.Params, hyper: buffers.Hyper, work: buffers.Workspace.
    l0, l1: the stack is layers l0 .. l1 - 1 of these tuples (default all; a p-RNN keeps every subnet's layers in
    one tuple), its dropout keys hyper.keys[1 + l - l0]. hyper.mode == MODE_SOURCES: layer l0's a is the
    caller's (a p-RNN subnet's source products and bias, already in work.layers[l0].a). row0: the rows' first
    row in the step's batch, for the dropout masks (0 but in data parallelism)."""
    mode = hyper.mode
    if l1 < 0:
        l1 = len(params.layers)
    for l in range(l0, l1):
        lp = params.layers[l]
        lw = work.layers[l]
        H = lp.Wh.shape[0]
        h = hid[l][:B]
        a = lw.a[:B]
        t2 = lw.t2[:B]
        job(jobs, 0, h, H, 1, lp.Wrz, 2 * H, t2, 2 * H, B, 2 * H, H)  # t2 = h U_rz
        if l == l0 and mode == MODE_ONEHOT:
            onehot_input(params.Sx, X, lp.Bh, a)
            gemm_batch(jobs, 1)
        elif l == l0 and mode == MODE_SOURCES:
            gemm_batch(jobs, 1)
        else:
            if l == l0:
                x = work.x0[:B]
                p = hyper.p_emb if dropout else 0.0
                embed_input(params.Wy if mode == MODE_CONSTRAINED else params.Sx, X, x, work.mask0[:B], p,
                            hyper.keys[0], step, np.float32(1.0 / (1.0 - hyper.p_emb)), row0)
            else:
                x = work.layers[l - 1].out[:B]
            IN = x.shape[1]
            job(jobs, 1, x, IN, 1, lp.Wx, 3 * H, a, 3 * H, B, 3 * H, IN)  # x Wx
            gemm_batch(jobs, 2)
            add_bias(a, lp.Bh)  # a = x Wx + Bh
        t1 = lw.t1[:B]
        z = lw.z[:B]
        rh = lw.rh[:B]
        gru_fwd_rz(a, t2, h, lw.r[:B], z, rh)
        mm(rh, lp.Wh, t1)
        p = hyper.p_hid if dropout else 0.0
        gru_fwd_out(a, t1, h, z, lw.c[:B], lw.out[:B], lw.mask[:B], p, hyper.keys[1 + l - l0], step,
                    np.float32(1.0 / (1.0 - hyper.p_hid)), row0)


@njit(cache=True, error_model="numpy")
def gru_bwd(params, grads, hyper, work, hid, B, dropout, jobs, l0=0, l1=-1):
    """Gradients of the GRU layers, top to bottom (reference.gru_bwd), given the top layer's dout. Dense
    gradients go to grads.layers; the input gradient is left in work.dx0 (or, for one-hot input and for
    MODE_SOURCES, where the caller takes it from there, in the layer-l0 da buffer). l0, l1: as gru_fwd."""
    mode = hyper.mode
    if l1 < 0:
        l1 = len(params.layers)
    for l in range(l1 - 1, l0 - 1, -1):
        lp = params.layers[l]
        lg = grads.layers[l]
        lw = work.layers[l]
        H = lp.Wh.shape[0]
        h = hid[l][:B]
        da = lw.da[:B]
        dc = lw.dc[:B]
        drz = lw.drz[:B]
        drh = lw.drh[:B]
        gru_bwd_cz(lw.dout[:B], lw.mask[:B], dropout and hyper.p_hid > 0.0, h, lw.z[:B], lw.c[:B], da, dc, drz)
        gemm_nt(dc, lp.Wh, drh, work.aT[:H * B].reshape(H, B))
        gru_bwd_r(drh, h, lw.r[:B], da, drz)
        colsum(da, lg.Bh)
        # weight gradients, one parallel region: dWrz = h^T [dr | dz], dWh = (r h)^T dc, dWx = x^T da
        job(jobs, 0, h, 1, H, drz, 2 * H, lg.Wrz, 2 * H, H, 2 * H, B)
        job(jobs, 1, lw.rh[:B], 1, H, dc, H, lg.Wh, H, H, H, B)
        if l == l0 and (mode == MODE_ONEHOT or mode == MODE_SOURCES):
            gemm_batch(jobs, 2)
            continue
        if l == l0:
            x = work.x0[:B]
            dy = work.dx0[:B]
        else:
            x = work.layers[l - 1].out[:B]
            dy = work.layers[l - 1].dout[:B]
        IN = x.shape[1]
        job(jobs, 2, x, 1, IN, da, 3 * H, lg.Wx, 3 * H, IN, 3 * H, B)
        gemm_batch(jobs, 3)
        gemm_nt(da, lp.Wx, dy, work.aT[:3 * H * B].reshape(3 * H, B))  # dy = da Wx^T


@njit(cache=True, error_model="numpy")
def gru_fwd_prefix(params, hyper, work, hid, Xt, m_t):
    """Replay many sessions together (no dropout): at step t the first m_t[t] rows advance by the items
    Xt[t, :m_t[t]] (sessions sorted longest first and right-aligned, so the running ones are a prefix)."""
    jobs = np.zeros((4, 11), dtype=np.int64)
    for t in range(Xt.shape[0]):
        m = m_t[t]
        if m == 0:
            continue
        gru_fwd(params, hyper, work, hid, Xt[t, :m], m, 0, False, jobs)
        for l in range(len(hid)):
            hid[l][:m, :] = work.layers[l].out[:m]


@njit(cache=True, error_model="numpy", nogil=True)  # nogil: concurrent serving requests run side by side
def gru_fwd_row(items, state, mode, emb, layers, work):
    """Advance one hidden state (all layers concatenated, float32) by the item indices ``items``, serially.

    Per layer the three products are mat-vecs in axpy form (no fast-math, no threads: the state is the same
    bit for bit whether a session is replayed at once or click by click), then the gate elements of
    gru_fwd_rz / gru_fwd_out: a = x Wx + Bh (one-hot: Wx0[item] + Bh), t2 = h U_rz, r / z = gate(a + t2),
    t1 = (r h) U_h, h' = blend(h, z, candidate(a_h + t1)). mode: codes.MODE_*; emb: the layer-0 input table
    (Wy, E or Wx0); layers: buffers.LayerParams per layer; work: float32 scratch of >= 7 max(H)."""
    for t in range(items.shape[0]):
        it = items[t]
        so = 0
        prev = 0
        for l in range(len(layers)):
            lp = layers[l]
            H = lp.Wh.shape[0]
            a = work[0:3 * H]
            t2 = work[3 * H:5 * H]
            rh = work[5 * H:6 * H]
            t1 = work[6 * H:7 * H]
            bh = lp.Bh
            if l == 0 and mode == MODE_ONEHOT:
                for c in range(3 * H):
                    a[c] = emb[it, c] + bh[c]
            else:
                W = lp.Wx
                for c in range(3 * H):
                    a[c] = np.float32(0.0)
                for j in range(W.shape[0]):
                    xj = emb[it, j] if l == 0 else state[prev + j]
                    for c in range(3 * H):
                        a[c] += xj * W[j, c]
                for c in range(3 * H):
                    a[c] += bh[c]
            h = state[so:so + H]
            U = lp.Wrz
            for c in range(2 * H):
                t2[c] = np.float32(0.0)
            for j in range(H):
                hj = h[j]
                for c in range(2 * H):
                    t2[c] += hj * U[j, c]
            for j in range(H):
                r = gate(a[H + j] + t2[j])
                t2[H + j] = gate(a[2 * H + j] + t2[H + j])  # z, in place of its pre-activation term
                rh[j] = r * h[j]
            for c in range(H):
                t1[c] = np.float32(0.0)
            for j in range(H):
                v = rh[j]
                for c in range(H):
                    t1[c] += v * lp.Wh[j, c]
            for c in range(H):
                h[c] = blend(h[c], t2[H + c], candidate(a[c] + t1[c]))
            prev = so
            so += H
