"""PEER BASELINE: one GRU4Rec v2 training step in plain, eager PyTorch (the comparison for bench/gpu_bench.py).

Written the way a PyTorch user writes it, after the official GRU4Rec PyTorch release: parameters are leaf
tensors, autograd does the backward, ``F.embedding(..., sparse=True)`` gives Wy / By sparse row gradients, and
an Adagrad-with-momentum optimizer (``IndexedAdagradM``) coalesces each sparse gradient and updates only its rows
with ``index_add_``. No CUDA graphs, no torch.compile, no custom kernels.

Math: docs/design.md section 2, as ``gru4rec_kernels.reference``: one GRU layer with gate blocks [h | r | z]
(Wx = [W_h | W_r | W_z], Wrz = [U_r | U_z], Wh = U_h, bias Bh, no hidden-side biases), constrained embedding
(x = Wy[X]), scores R = f(h' Wy[Y]^T + By[Y]) over O = B + S columns (column i of row i is row i's target),
sampled cross-entropy or bpr-max, a linear / tanh / relu / elu-a / leaky-a final activation, the step loss =
sum over active rows / batch_size, and Adagrad (eps 1e-6) with heavy-ball momentum:
``acc += g^2; upd = -lr g / sqrt(acc + eps); mom = mu mom + upd; p += mom`` (``p += upd`` when mu = 0).

    from bench.peers.torch_step import TorchGRU4Rec
    m = TorchGRU4Rec(params, cfg, device="cuda")        # params: name -> numpy array (layout.init_params)
    losses = m.train_chunk(inputs, targets, active, reset, samples)   # [T] losses, a device tensor (no sync)

Importing this module imports torch; bench/gpu_bench.py imports it only when torch is installed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ADAGRAD_EPS = 1e-6
BPR_MAX_EPS = 1e-24


class IndexedAdagradM(torch.optim.Optimizer):
    """Adagrad with momentum; a sparse gradient updates only its (coalesced) rows."""

    def __init__(self, params, lr=0.05, momentum=0.0, eps=ADAGRAD_EPS):
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["acc"] = torch.zeros_like(p)
                if momentum > 0:
                    self.state[p]["mom"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu, eps = group["lr"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                g = p.grad
                if g.is_sparse:
                    g = g.coalesce()  # sums the rows of duplicate ids
                    idx, val = g.indices()[0], g.values()
                    st["acc"].index_add_(0, idx, val * val)
                    upd = -lr * val / torch.sqrt(st["acc"][idx] + eps)
                    if mu > 0:
                        mom = mu * st["mom"][idx] + upd
                        st["mom"].index_copy_(0, idx, mom)
                        p.index_add_(0, idx, mom)
                    else:
                        p.index_add_(0, idx, upd)
                else:
                    st["acc"].addcmul_(g, g)
                    upd = -lr * g / torch.sqrt(st["acc"] + eps)
                    if mu > 0:
                        st["mom"].mul_(mu).add_(upd)
                        p.add_(st["mom"])
                    else:
                        p.add_(upd)


def final_activation(z, final_act: str):
    if final_act == "linear":
        return z
    if final_act == "tanh":
        return torch.tanh(z)
    if final_act == "relu":
        return torch.relu(z)
    if final_act.startswith("elu-"):
        return F.elu(z, alpha=float(final_act[4:]))
    if final_act.startswith("leaky-"):
        return F.leaky_relu(z, negative_slope=float(final_act[6:]))
    raise ValueError(f"final_act {final_act!r} is not supported by the torch peer")


class TorchGRU4Rec:
    """GRU4Rec v2 (one GRU layer, constrained embedding) trained step by step in eager PyTorch.

    cfg: a ``gru4rec_kernels.TrainConfig`` (layers=[H], constrained_embedding=True, dropout 0, loss
    cross-entropy or bpr-max). params: name -> numpy array as ``gru4rec_kernels.layout.init_params`` returns.
    """

    def __init__(self, params: dict, cfg, device="cuda", dtype=torch.float32):
        if len(cfg.layers) != 1 or not cfg.constrained_embedding:
            raise ValueError("the torch peer implements one GRU layer with the constrained embedding")
        if cfg.loss not in ("cross-entropy", "bpr-max"):
            raise ValueError(f"the torch peer implements cross-entropy and bpr-max; got {cfg.loss!r}")
        if cfg.dropout_p_embed or cfg.dropout_p_hidden or cfg.logq or cfg.grad_cap:
            raise ValueError("the torch peer implements no dropout, logq or grad_cap")
        self.cfg = cfg
        self.device = torch.device(device)
        leaf = lambda a: torch.tensor(np.asarray(a), dtype=dtype, device=self.device).requires_grad_()
        self.Wy = leaf(params["Wy"])
        self.By = leaf(np.asarray(params["By"]).reshape(-1, 1))  # [N, 1] so that F.embedding can gather it
        self.Wx, self.Wrz, self.Wh, self.Bh = (leaf(params[k]) for k in ("Wx0", "Wrz0", "Wh0", "Bh0"))
        self.H = cfg.layers[0]
        self.h = torch.zeros(cfg.batch_size, self.H, dtype=dtype, device=self.device)
        self.opt = IndexedAdagradM([self.Wy, self.By, self.Wx, self.Wrz, self.Wh, self.Bh],
                                   lr=cfg.learning_rate, momentum=cfg.momentum)

    # ----------------------------------------------------------------------------------------- model
    def gru(self, x, h):
        H = self.H
        a = x @ self.Wx + self.Bh
        rz = torch.sigmoid(a[:, H:] + h @ self.Wrz)
        r, z = rz[:, :H], rz[:, H:]
        c = torch.tanh(a[:, :H] + (r * h) @ self.Wh)
        return (1 - z) * h + z * c

    def row_loss(self, R, Y, active):
        """Per-row loss [B] (the target of row i is column i; negatives are the other valid columns)."""
        cfg = self.cfg
        B, O = R.shape
        eye = torch.eye(B, O, dtype=torch.bool, device=R.device)
        valid = torch.ones(O, dtype=torch.bool, device=R.device)
        valid[:B] = active
        neg = valid[None, :] & ~eye
        if cfg.mask_accidental_hits:
            neg = neg & (Y[None, :] != Y[:B, None])
        target = R.diagonal()
        if cfg.loss == "cross-entropy":
            return torch.logsumexp(R.masked_fill(~(neg | eye), float("-inf")), dim=1) - target
        sw = torch.softmax(R.masked_fill(~neg, float("-inf")), dim=1)  # softmax over the negatives only
        sig = torch.sigmoid(target[:, None] - R)
        return -torch.log((sw * sig).sum(1) + BPR_MAX_EPS) + cfg.bpreg * (sw * R * R).sum(1)

    def step(self, X, Y, active, reset):
        """One training step; X [B], Y [O] int64, active / reset [B] bool (device tensors). Returns the loss as a
        0-d device tensor (no host synchronisation)."""
        cfg = self.cfg
        h = torch.where(reset[:, None], torch.zeros((), dtype=self.h.dtype, device=self.device), self.h)
        x = F.embedding(X, self.Wy, sparse=True)
        hn = self.gru(x, h)
        Z = hn @ F.embedding(Y, self.Wy, sparse=True).T + F.embedding(Y, self.By, sparse=True).T
        R = final_activation(Z, cfg.final_act)
        loss = (self.row_loss(R, Y, active) * active).sum() / cfg.batch_size
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.h = hn.detach()
        return loss.detach()

    def upload_chunk(self, inputs, targets, active, reset, samples):
        """Host schedule arrays [T, B] / [T, S] -> device tensors (once per chunk, as the cuda backend does)."""
        d = self.device
        Y = np.concatenate([targets, samples], axis=1)
        return (torch.as_tensor(np.asarray(inputs), dtype=torch.int64, device=d),
                torch.as_tensor(Y, dtype=torch.int64, device=d),
                torch.as_tensor(np.asarray(active), dtype=torch.bool, device=d),
                torch.as_tensor(np.asarray(reset), dtype=torch.bool, device=d))

    def train_chunk(self, inputs, targets, active, reset, samples, uploaded=None):
        """Steps over a schedule chunk; returns the [T] losses as a device tensor (synchronise to read them)."""
        X, Y, A, R = uploaded if uploaded is not None else self.upload_chunk(inputs, targets, active, reset, samples)
        return torch.stack([self.step(X[t], Y[t], A[t], R[t]) for t in range(X.shape[0])])

    def get_params(self) -> dict:
        out = {k: getattr(self, k).detach().cpu().numpy() for k in ("Wy", "Wx", "Wrz", "Wh", "Bh")}
        return {"Wy": out["Wy"], "By": self.By.detach().cpu().numpy().reshape(-1), "Wx0": out["Wx"],
                "Wrz0": out["Wrz"], "Wh0": out["Wh"], "Bh0": out["Bh"]}

    # ----------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def eval_counts(self, h, X, targets, reset):
        """One evaluation step over all items: (new h, #items scoring above the target, #equal incl. target)."""
        h = torch.where(reset[:, None], torch.zeros((), dtype=h.dtype, device=h.device), h)
        h = self.gru(F.embedding(X, self.Wy), h)
        R = final_activation(h @ self.Wy.T + self.By.T, self.cfg.final_act)
        t = R.gather(1, targets[:, None])
        return h, (R > t).sum(1), (R == t).sum(1)
