"""The p-RNN cuda backend: GRU4Rec's kernels composed per subnet, plus the sparse feature input and the subnet
blocks of the shared output layer (docs/prnn.md; the oracle is reference_prnn.train_step, behind
backends/prnn_numpy.py).

It is the GRU4Rec cuda backend (backends/cuda.py: device, stream, buffers, parameters in ``layout.allocate``'s
layout, evaluation's item tiles, state exchange) with the p-RNN's layout and step. Shape letters: B rows, S
samples, O = B + S, K subnets, H_k subnet k's top width, Hc = sum_k H_k, m_f the most non-zeros of a row of
sparse feature f. One training step of a phase (trainable T, scoring set S, bias flag):

    step_begin            row ctr[0] of the chunk -> ids [Y | X], active, reset; h_in = 0 / hid for every layer of
                          every subnet (one flat state); x0 of the ID subnet (Wy[X, c_k:c_k+H_k] or E[X], with its
                          embedding dropout); WyY = Wy[Y] [O, Hc]
    hidden_reset          hid = h_in for each subnet outside S (it does not run, but its state is reset, as
                          reference_prnn.train_step zeroes every subnet's state on reset rows)
    per subnet k in S     layer 0's input pre-activations xw = the sum of its sources' products: Wx0[X]
                          (one-hot; alone it is read inside the gate kernels, as GRU4Rec), x Wx0 / F_f[X] W_f
                          (gather_rows for a dense feature, GEMMs: the first one grouped with h_in U_rz, the others
                          accumulated), sparse_input_product (kernels/features.py: a CSR row's non-zeros);
                          then GRU4Rec's layers (gru_fwd_rz, (r h) U_h, gru_fwd_out with the subnet's own dropout
                          streams, reference_prnn.SUBNET_STREAM_STRIDE)
    concat_hidden         h_cat = [a_k h_k | 0 outside S] [B, Hc] and the scaled tops hs_k (kernels/subnets.py)
    scores + loss         S = h_cat WyY^T, row_loss_partial, row_loss_grad (GRU4Rec's, with H = Hc)
    backward              [dh_cat = dZ WyY, dW_k[Y] = dZ^T hs_k for k in T, dBy = 1^T dZ if the bias trains]
                          (grouped GEMMs); split_hidden_grad -> each trainable subnet's top gradient a_k dh_k;
                          per k in T GRU4Rec's layer backward, layer 0's weight gradients per source (x^T da0,
                          dx0 = da0 Wx0^T, sparse_input_grad's slot rows), the embedding dropout on dx0
    clipping              (grad_cap > 0) the global norm over the trainable gradients only
    optimizer             adagrad_dense over the trainable subnets' ranges of the flat buffer (a subnet's dense
                          parameters are one contiguous range); sparse_adagrad per trainable subnet over its
                          column block of Wy (By riding along in the first), E / Wx0 over X, and W_f over the
                          feature slots; frozen subnets' parameters, accumulators and momenta are never touched
    step_end              losses[t] = sum(row_loss); ctr += 1

Sparse updates use host segments (backends/segments.py) as GRU4Rec: "y" the O output slots (a subnet's block of
Wy, By), "yx" the O output and B input slots (the constrained ID subnet's block: its input rows are Wy rows),
"x" the B inputs (E, one-hot Wx0), "f.<name>" feature f's B m_f slots (kernels/features.py.slot_columns; padding
id D_f, skipped by sparse_adagrad).

CUDA graphs (a GPU only; the simulator runs every step eagerly): a step's launches depend on its phase, and an
interleaving run changes phase every step, so a graph is captured per phase *sequence* (the phases of the 2^j
steps it replays; at most log2(graph_steps) + 1 graphs per phase offset of the cycle), and the first step of a
phase not seen before runs eagerly so that every kernel it launches is loaded before any capture. Why not a
non-graph path for chunks that span a phase change: an interleaving chunk always spans them, so its whole
training would run without graphs, launch by launch. The per-phase plans and scale tables are built before a
chunk's first launch (a bigger GEMM workspace drops the graphs that point at the old one).
"""
from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np

from ..kernels import adagrad as ka
from ..kernels import common as kc
from ..kernels import embedding as ke
from ..kernels import evaluate as kev
from ..kernels import features as kf
from ..kernels import gemm as kgm
from ..kernels import gru as kg
from ..kernels import scores_loss as ks
from ..kernels import step as kst
from ..kernels import subnets as ksn
from ..prnn_config import Phase
from ..reference_prnn import SUBNET_STREAM_STRIDE
from ..rng import dropout_key
from .base import Backend
from .cuda import CudaBackend, _Bufs
from .segments import segment_chunk


class _Subnet:
    """Subnet k as the step sees it: names, widths, its block of Wy, dropout streams, how layer 0 reads its
    sources."""

    def __init__(self, layout, k: int):
        sub = layout.subnets[k]
        srcs = layout.sources[k]
        self.k = k
        self.P = sub.prefix
        self.layers = tuple(int(h) for h in sub.layers)
        self.top = len(self.layers) - 1
        self.H = self.layers[-1]
        self.c0, self.c1 = layout.cols[k]
        self.scale = np.float32(sub.scale)
        self.id_input = sub.id_input if any(s.kind == "id" for s in srcs) else None
        seed, base = layout.cfg.seed, k * SUBNET_STREAM_STRIDE
        self.keys = [dropout_key(seed, base + l) for l in range(len(self.layers))]
        self.key_emb = dropout_key(seed, base - 1)
        self.p_hidden = float(sub.dropout_p_hidden)
        self.x0_width = {"constrained": sub.hidden, "embedding": sub.embedding}.get(self.id_input, 0)
        self.p_embed = float(sub.dropout_p_embed) if self.x0_width else 0.0
        self.onehot = self.id_input == "onehot"
        self.onehot_gather = self.onehot and len(srcs) == 1  # GRU4Rec's one-hot layer: Wx0[X] read by the gates
        # layer 0's dense inputs in source order: (input buffer, weight name)
        self.dense = [(f"{self.P}x0" if s.kind == "id" else f"{self.P}xf.{s.name}", s.param)
                      for s in srcs if s.kind == "dense" or (s.kind == "id" and self.x0_width)]
        self.dense_feats = [s.name for s in srcs if s.kind == "dense"]
        self.sparse = [(s.name, s.param) for s in srcs if s.kind == "sparse"]
        # the sparse-update row buffers of the subnet's inputs (besides its block of Wy): (param, rows, group)
        self.input_rows = []
        if self.id_input == "embedding":
            self.input_rows.append((f"{self.P}E", f"{self.P}dx0", "x"))
        elif self.onehot:
            self.input_rows.append((f"{self.P}Wx0", f"{self.P}da0", "x"))
        self.input_rows += [(param, f"{self.P}g.{name}", f"f.{name}") for name, param in self.sparse]
        self.wy_group = "yx" if self.id_input == "constrained" else "y"


class PRNNCudaBackend(CudaBackend):
    """A p-RNN's training and evaluation steps on numba.cuda kernels (or the CUDA simulator); the constructor and
    the protocol of backends/prnn_numpy.PRNNNumpyBackend (``set_phases`` before each chunk, ``eval_subnets``,
    the hidden state as one flat list of subnet 0's layers, then subnet 1's, ...), the keywords of CudaBackend."""

    name = "cuda"

    def __init__(self, layout, params: dict, logq_target=None, logq_sample=None, dtype=np.float32, *,
                 graph_steps: int = 64, threads: dict | None = None, eval_tile: int | None = None):
        self.layout = layout
        # Backend's constructor (not CudaBackend's, which builds GRU4Rec's buffers) with the layout's parameters
        Backend.__init__(self, layout.cfg, layout.n_items, params, logq_target, logq_sample,
                         specs=layout.param_specs())
        self._init_device(dtype, graph_steps, threads, eval_tile)
        self.subs = [_Subnet(layout, k) for k in range(len(layout.subnets))]
        self.id_dense = next((s for s in self.subs if s.x0_width), None)  # the subnet whose x0 step_begin gathers
        self.phases: list | None = None
        self.eval_subnets = None  # the subnets that score in evaluation (None: all)
        self._scale_tables: dict = {}
        with self._on_stream():
            self._init_params(params)
            self._init_model()

    def _init_model(self) -> None:
        """Device constants: the feature matrices (dense [N, D] tables; CSR indptr / indices / data), the blocks of
        Wy; and on the host each subnet's range of the flat dense buffers and the sparse features' slot layout."""
        xp, lay = self.xp, self.layout
        self.const = _Bufs(self)
        self.csr: dict = {}  # sparse feature -> (indptr int64, indices int32, D, m) on the host
        for name, f in lay.features.items():
            if not f.sparse:
                self.const.add(f"F.{name}", xp.asarray(np.ascontiguousarray(f.matrix, dtype=np.float32)))
                continue
            F = f.matrix
            if F.nnz >= 2**31:
                raise ValueError(f"features {name!r}: {F.nnz} non-zeros exceed the cuda kernels' int32 indices")
            indptr, indices = np.asarray(F.indptr, np.int64), np.asarray(F.indices, np.int32)
            self.const.add(f"indptr.{name}", xp.asarray(indptr.astype(np.int32)))
            self.const.add(f"indices.{name}", xp.asarray(indices.copy()))
            self.const.add(f"data.{name}", xp.asarray(np.asarray(F.data, np.float32).copy()))
            self.csr[name] = (indptr, indices, int(F.shape[1]), kf.max_row_nnz(indptr))
        self.const.add("cols", xp.asarray(np.array([c0 for c0, _ in lay.cols] + [lay.hidden_total], np.int32)))
        off, ranges = 0, {}
        for s in self.specs:
            if s.sparse:
                continue
            n = int(np.prod(s.shape))
            k = int(s.name[1:s.name.index(".")])  # every dense parameter is a subnet's: s{k}.*
            r = ranges.setdefault(k, [off, off])
            if r[1] != off:
                raise AssertionError(f"subnet {k}'s dense parameters are not contiguous in the flat buffer")
            r[1] = off + n
            off += n
        self.dense_range = {k: tuple(r) for k, r in ranges.items()}

    def _scales(self, ks_) -> object:
        """The device table [K] of a_k for the subnets in ``ks_``, 0 elsewhere (kept: graphs point at it)."""
        v = tuple(float(s.scale) if s.k in ks_ else 0.0 for s in self.subs)
        arr = self._scale_tables.get(v)
        if arr is None:
            arr = self._scale_tables[v] = _Bufs(self)
            arr.add("s", self.xp.asarray(np.array(v, np.float32)))
        return arr.d["s"]

    # ================================================================================================ phases
    def set_phases(self, phases: list) -> None:
        """The Phase of each step of the next train_chunk (or of the next train_step, one entry)."""
        K = len(self.subs)
        for ph in phases:
            if not isinstance(ph, Phase):
                raise ValueError(f"phases must be Phase objects (PRNNConfig.phase); got {type(ph).__name__}")
            if (not ph.trainable or not set(ph.trainable) <= set(ph.scoring)
                    or not set(ph.scoring) <= set(range(K))):
                raise ValueError(f"a phase must train at least one of the {K} subnets, and only subnets that score; "
                                 f"got {ph}")
        self.phases = list(phases)

    def _take_phases(self, T: int) -> list:
        if self.phases is None or len(self.phases) != T:
            raise ValueError(f"train_chunk of {T} steps needs {T} phases (set_phases); got "
                             f"{None if self.phases is None else len(self.phases)}")
        phases, self.phases = self.phases, None  # one use: a stale plan must never train the next chunk
        return phases

    # ================================================================================================ buffers
    def _gemm(self, bb: _Bufs, name):
        """The products of a plan, or of a list of plans (a group larger than gemm.MAX_PROBLEMS), in order."""
        plans = bb.plans[name]
        for plan in plans if isinstance(plans, list) else [plans]:
            kgm.launch_plan(plan, bb.d.get("gemm_work"), bb.d.get("gemm_tickets"), stream=self._nb_stream)

    def _plans(self, problems, split: bool) -> list:
        return [self._plan(problems[i:i + kgm.MAX_PROBLEMS], split) for i in range(0, len(problems),
                                                                                  kgm.MAX_PROBLEMS)]

    def _layer_bufs(self, bb: _Bufs, B: int, backward: bool):
        """Every subnet's layer buffers (and gradients when ``backward``), its inputs, the flat hidden states of
        all layers of all subnets (subnet by subnet), h_cat and the scaled tops, and the forward GEMM plans."""
        f32, xp = np.float32, self.xp
        Hc = self.layout.hidden_total
        widths = [h for s in self.subs for h in s.layers]
        bb.new("h_in", (B * sum(widths),), f32)
        bb.new("hid", (B * sum(widths),), f32)
        bb.add("widths", xp.asarray(np.array(widths, np.int32)))
        bb.new("h_cat", (B, Hc), f32)
        bb.new("hs", (B * Hc,), f32)
        if backward:
            bb.new("dtop", (B * Hc,), f32)
            bb.new("dh_cat", (B, Hc), f32)
        off, tops = 0, []
        for s in self.subs:
            P, start = s.P, off
            for l, H in enumerate(s.layers):
                for n in ("h_in", "hid"):
                    bb.add(f"{P}{n}{l}", bb.a[n][off:off + B * H].reshape(B, H))
                if l == s.top:
                    tops.append(off)
                off += B * H
                for n, w in (("hU", 2 * H), ("r", H), ("z", H), ("rh", H), ("rhU", H), ("c", H)):
                    bb.new(f"{P}{n}{l}", (B, w), f32)
                if not (l == 0 and s.onehot_gather):
                    bb.new(f"{P}xw{l}", (B, 3 * H), f32)
                if backward:
                    for n, w in (("da", 3 * H), ("dc", H), ("drz", 2 * H), ("drh", H)):
                        bb.new(f"{P}{n}{l}", (B, w), f32)
                    if l < s.top:
                        bb.new(f"{P}dout{l}", (B, H), f32)
                    else:  # written by split_hidden_grad
                        bb.add(f"{P}dout{l}", bb.a["dtop"][B * s.c0:B * s.c1].reshape(B, H))
            bb.add(f"{P}hid", bb.a["hid"][start:off])
            bb.add(f"{P}h_in", bb.a["h_in"][start:off])
            bb.add(f"{P}widths", xp.asarray(np.array(s.layers, np.int32)))
            bb.add(f"{P}hs", bb.a["hs"][B * s.c0:B * s.c1].reshape(B, s.H))
            if s.x0_width:
                bb.new(f"{P}x0", (B, s.x0_width), f32)
            for name in s.dense_feats:
                bb.new(f"{P}xf.{name}", (B, self.layout.features[name].dim), f32)
        bb.add("tops", xp.asarray(np.array(tops, np.int32)))
        bb.new("ctr", (2,), np.int64)
        D, Pd, gp = bb.d, self.P.d, kgm.GemmProblem
        bb.plans = {}
        for s in self.subs:  # forward GEMMs; K split only in training (evaluation buffers have no workspace)
            P = s.P
            for l in range(len(s.layers)):
                probs = [gp(D[f"{P}hU{l}"], D[f"{P}h_in{l}"], Pd[f"{P}Wrz{l}"])]
                if l > 0:
                    probs.insert(0, gp(D[f"{P}xw{l}"], D[f"{P}hid{l - 1}"], Pd[f"{P}Wx{l}"]))
                elif s.dense:  # the first dense source beside h_in U_rz; the others add to xw after it
                    (x, w), rest = s.dense[0], s.dense[1:]
                    probs.insert(0, gp(D[f"{P}xw0"], D[x], Pd[w], accumulate=s.onehot))
                    for i, (x, w) in enumerate(rest):
                        bb.plans[f"{P}fwd0+{i}"] = self._plans([gp(D[f"{P}xw0"], D[x], Pd[w], accumulate=True)],
                                                               backward)
                bb.plans[f"{P}fwd{l}"] = self._plans(probs, backward)
                bb.plans[f"{P}rhU{l}"] = self._plans([gp(D[f"{P}rhU{l}"], D[f"{P}rh{l}"], Pd[f"{P}Wh{l}"])],
                                                     backward)

    def _step_plans(self, tb: _Bufs):
        """The phase-independent GEMMs of training: the scores and every subnet's layer backward (its weight
        gradients into the flat gradient buffer; layer 0's per source)."""
        D, Pd, G = tb.d, self.P.d, self.G
        row = lambda bufs, name: self._view(bufs.a[name].reshape(1, -1))  # a vector as a [1, n] matrix
        gp = kgm.GemmProblem
        tb.plans["scores"] = self._plans([gp(D["S"], D["h_cat"], D["WyY"], tb=True)], True)
        for s in self.subs:
            P = s.P
            for l in range(len(s.layers)):
                tb.plans[f"{P}drh{l}"] = self._plans([gp(D[f"{P}drh{l}"], D[f"{P}dc{l}"], Pd[f"{P}Wh{l}"], tb=True)],
                                                     True)
                probs = [gp(G.d[f"{P}Wrz{l}"], D[f"{P}h_in{l}"], D[f"{P}drz{l}"], ta=True),
                         gp(G.d[f"{P}Wh{l}"], D[f"{P}rh{l}"], D[f"{P}dc{l}"], ta=True),
                         gp(row(G, f"{P}Bh{l}"), D["ones"], D[f"{P}da{l}"], ta=True)]
                if l > 0:
                    probs.append(gp(G.d[f"{P}Wx{l}"], D[f"{P}hid{l - 1}"], D[f"{P}da{l}"], ta=True))
                    probs.append(gp(D[f"{P}dout{l - 1}"], D[f"{P}da{l}"], Pd[f"{P}Wx{l}"], tb=True))
                else:  # one-hot Wx0 and sparse features: their gradients are row slots, not GEMMs
                    probs += [gp(G.d[w], D[x], D[f"{P}da0"], ta=True) for x, w in s.dense]
                    if s.x0_width:
                        probs.append(gp(D[f"{P}dx0"], D[f"{P}da0"], Pd[f"{P}Wx0"], tb=True))
                tb.plans[f"{P}wgrad{l}"] = self._plans(probs, True)

    def _grow_workspace(self, tb: _Bufs) -> None:
        """The split-K workspace and tickets every plan of the buffers shares; growing them drops the graphs."""
        plans = [p for v in tb.plans.values() for p in (v if isinstance(v, list) else [v])]
        for name, size, dt in (("gemm_work", max([1] + [p.work_size for p in plans]), np.float32),
                               ("gemm_tickets", max([1] + [p.tickets_size for p in plans]), np.int32)):
            if name not in tb.a or tb.a[name].shape[0] < size:
                tb.new(name, (size,), dt)
                self._graphs.clear()

    def _train_bufs(self, B: int, S: int, T: int):
        tb = self._tb
        if tb is None or tb.B != B or tb.S != S:
            self._graphs.clear()
            tb = self._tb = _Bufs(self)
            tb.B, tb.S, tb.Bg, tb.T = B, S, B, 0
            tb.phase, tb.warm = {}, set()
            O = B + S
            f32 = np.float32
            with self._on_stream():
                tb.new("ids", (O + B,), np.int32)
                tb.add("Y", tb.a["ids"][:O])
                tb.add("X", tb.a["ids"][O:])
                tb.new("active", (B,), np.uint8)
                tb.new("reset", (B,), np.uint8)
                tb.add("col_active", tb.a["active"])  # one process: the batch columns are the rows
                self._layer_bufs(tb, B, backward=True)
                tb.new("WyY", (O, self.layout.hidden_total), f32)
                tb.new("S", (B, O), f32)
                tb.new("dZ", (B, O), f32)
                tb.new("row_loss", (B,), f32)
                tb.new("gBy", (O,), f32)
                n_clip = 1  # the bias
                for s in self.subs:
                    P = s.P
                    tb.new(f"{P}gWy", (O + B if s.id_input == "constrained" else O, s.H), f32)
                    tb.add(f"{P}gWy_out", tb.a[f"{P}gWy"][:O])
                    if s.id_input == "constrained":  # the input rows of the subnet's block: Wy slots after Y's
                        tb.add(f"{P}dx0", tb.a[f"{P}gWy"][O:])
                    elif s.id_input == "embedding":
                        tb.new(f"{P}dx0", (B, s.x0_width), f32)
                    for name, _ in s.sparse:
                        tb.new(f"{P}g.{name}", (B * self.csr[name][3], 3 * s.layers[0]), f32)
                    n_clip += 2 + len(s.input_rows)  # dense range, block of Wy, input rows
                tb.new("partials", (kc.NORM_BLOCKS * n_clip,), f32)
                tb.new("ones", (B, 1), f32, fill=1.0)
                tb.new("loss_part", (B, ks.row_chunks(B, O, self._t("row"), kc.target_blocks()), ks.N_STATS), f32)
                self._step_plans(tb)
                self._grow_workspace(tb)
                if self._pending_hidden is not None and self._pending_hidden[0].shape[0] == B:
                    for (s, l), h in zip(self._layer_names(), self._pending_hidden):
                        self._put(tb.a[f"{s.P}hid{l}"], h)
            self._pending_hidden = None
        if T > tb.T:  # the schedule of a chunk: graphs hold its pointers, so a bigger chunk re-captures
            self._graphs.clear()
            tb.T = T
            sched = [("inputs_s", B, np.int32), ("targets_s", B, np.int32), ("samples_s", S, np.int32),
                     ("active_s", B, np.uint8), ("reset_s", B, np.uint8)]
            tb.seg_host = {}  # the sparse-update segments (backends/segments.py): computed here, uploaded
            for g, K in self._seg_groups(B, S):
                sched += [(f"perm_{g}", K, np.int32), (f"seg_start_{g}", K + 1, np.int32), (f"seg_id_{g}", K, np.int32)]
                tb.seg_host[g] = tuple(np.empty((T, w), np.int32) for w in (K, K + 1, K))
            with self._on_stream():
                for n, w, dt in sched:
                    tb.new(n, (T, w), dt)
                tb.new("losses", (T,), np.float32)
        return tb

    def _phase_setup(self, tb: _Bufs, phase: Phase) -> SimpleNamespace:
        """What a phase's steps launch beyond the phase-independent plans (built once per phase and buffers, before
        any launch of a chunk): the top backward GEMMs (dW_k[Y] of the trainable subnets, dBy with the bias), the
        scale tables, the trainable ranges of the flat buffers, the gradients the clipping sees."""
        pc = tb.phase.get(phase)
        if pc is not None:
            return pc
        D, G = tb.d, self.G
        gp = kgm.GemmProblem
        train = sorted(phase.trainable)
        probs = [gp(D["dh_cat"], D["dZ"], D["WyY"])]
        probs += [gp(D[f"{self.subs[k].P}gWy_out"], D["dZ"], D[f"{self.subs[k].P}hs"], ta=True) for k in train]
        if phase.train_bias:
            probs.append(gp(self._view(tb.a["gBy"].reshape(1, -1)), D["ones"], D["dZ"], ta=True))
        pc = SimpleNamespace(bwd_top=("bwd_top", phase), idle=[s for s in self.subs if s.k not in phase.scoring],
                             score_scales=self._scales(phase.scoring), train_scales=self._scales(phase.trainable))
        tb.plans[pc.bwd_top] = self._plans(probs, True)
        spans = []  # the trainable subnets' ranges of the flat buffers, adjacent ones merged
        for k in train:
            a, b = self.dense_range[k]
            if spans and spans[-1][1] == a:
                spans[-1][1] = b
            else:
                spans.append([a, b])
        pc.dense = [tuple(self._view(bufs.a["flat"][a:b]) for bufs in (self.P, G, self.OA, self.OM)) for a, b in spans]
        clip = [g for _, g, _, _ in pc.dense]  # reference.clip_grads over the trainable gradients only
        for k in train:
            s = self.subs[k]
            clip.append(self._view(tb.a[f"{s.P}gWy"].reshape(-1)))
            clip += [self._view(tb.a[rows].reshape(-1)) for _, rows, _ in s.input_rows]
        if phase.train_bias:
            clip.append(D["gBy"])
        pc.clip = clip
        pc.partials = self._view(tb.a["partials"][:kc.NORM_BLOCKS * len(clip)])
        tb.phase[phase] = pc
        self._grow_workspace(tb)
        return pc

    def _seg_groups(self, B: int, S: int):
        """The slot lists grouped by id for the sparse updates (module docstring): (name, K)."""
        O = B + S
        groups = []
        if any(s.wy_group == "y" for s in self.subs):
            groups.append(("y", O))
        if any(s.wy_group == "yx" for s in self.subs):
            groups.append(("yx", O + B))
        if any(g == "x" for s in self.subs for _, _, g in s.input_rows):
            groups.append(("x", B))
        for name, (_, _, _, m) in self.csr.items():
            groups.append((f"f.{name}", B * m))
        return groups

    def _segment(self, tb: _Bufs, inputs, targets, samples):
        """Group the chunk's ids of every sparse update on the host (segments.segment_chunk) and upload them."""
        T = inputs.shape[0]
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        Y = np.concatenate([targets, samples], axis=1, dtype=np.int32)
        if self._seg_head is None:  # a row per parallel part, -1 between calls; ids < N, feature ids <= D_f
            width = max([self.n_items] + [D + 1 for _, _, D, _ in self.csr.values()])
            self._seg_head = np.full((min(numba.get_num_threads(), 8), width), -1, np.int32)
        for g, (perm, seg_start, seg_id) in tb.seg_host.items():
            if g == "y":
                ids = Y
            elif g == "yx":
                ids = np.concatenate([Y, inputs], axis=1)
            elif g == "x":
                ids = inputs
            else:
                indptr, indices, D, m = self.csr[g[2:]]
                ids = kf.slot_columns(indptr, indices, inputs, m, D)
            segment_chunk(perm, seg_start, seg_id, np.ascontiguousarray(ids, dtype=np.int32), self._seg_head)
            for name, h in (("perm", perm), ("seg_start", seg_start), ("seg_id", seg_id)):
                self._put(tb.a[f"{name}_{g}"][:T], h[:T])

    # ================================================================================================ the step
    def _layer_forward(self, bb: _Bufs, s: _Subnet, l: int, train: bool):
        D, Pd, C = bb.d, self.P.d, self.const.d
        st, te, P = self._nb_stream, self._t("elementwise"), s.P
        if l == 0 and s.onehot_gather:
            xw, gather = Pd[f"{P}Wx0"], True
        else:
            xw, gather = D[f"{P}xw{l}"], False
        if l == 0:
            if s.onehot and not s.onehot_gather:  # Wx0[X] first, the other sources add to it
                ke.launch_gather_rows(xw, Pd[f"{P}Wx0"], D["X"], D["ctr"], threads=te, stream=st)
            self._gemm(bb, f"{P}fwd0")  # the first dense source's x W (if any) and h_in U_rz
            for i in range(len(s.dense) - 1):
                self._gemm(bb, f"{P}fwd0+{i}")
            for j, (name, w) in enumerate(s.sparse):
                kf.launch_sparse_input_product(xw, Pd[w], C[f"indptr.{name}"], C[f"indices.{name}"], C[f"data.{name}"],
                                               D["X"], accumulate=bool(s.onehot or s.dense or j), threads=te,
                                               stream=st)
        else:
            self._gemm(bb, f"{P}fwd{l}")  # xw = x Wx, hU = h_in U_rz
        kg.launch_gru_fwd_rz(D[f"{P}r{l}"], D[f"{P}z{l}"], D[f"{P}rh{l}"], xw, D["X"], gather, Pd[f"{P}Bh{l}"],
                             D[f"{P}hU{l}"], D[f"{P}h_in{l}"], threads=te, stream=st)
        self._gemm(bb, f"{P}rhU{l}")
        kg.launch_gru_fwd_out(D[f"{P}c{l}"], D[f"{P}hid{l}"], xw, D["X"], gather, Pd[f"{P}Bh{l}"], D[f"{P}rhU{l}"],
                              D[f"{P}h_in{l}"], D[f"{P}z{l}"], D["ctr"], s.keys[l], s.p_hidden if train else 0.0,
                              threads=te, stream=st)

    def _forward(self, bb: _Bufs, run, train: bool):
        """The subnets in ``run``. Training: step_begin has reset the hidden states and gathered x0 already;
        evaluation (``train=False``) resets and gathers here (without dropout)."""
        D, st, te = bb.d, self._nb_stream, self._t("elementwise")
        if not train:
            kg.launch_hidden_reset(D["h_in"], D["hid"], D["widths"], D["reset"], threads=te, stream=st)
            for s in self.subs:
                if s.k not in run:
                    self._keep_state(bb, s)
            s = self.id_dense
            if s is not None and s.k in run:
                emb, c0 = self._x0_table(s)
                ke.launch_gather_rows(D[f"{s.P}x0"], emb, D["X"], D["ctr"], c0=c0, threads=te, stream=st)
        for k in run:
            s = self.subs[k]
            for name in s.dense_feats:
                ke.launch_gather_rows(D[f"{s.P}xf.{name}"], self.const.d[f"F.{name}"], D["X"], D["ctr"], threads=te,
                                      stream=st)
            for l in range(len(s.layers)):
                self._layer_forward(bb, s, l, train)

    def _keep_state(self, bb: _Bufs, s: _Subnet):
        """A subnet that does not run keeps its state, zeroed on reset rows: hid = h_in, which the step's reset
        has just made (hidden_reset with the roles swapped: hid = reset ? 0 : h_in; never one buffer as both
        arguments, which the simulator copies in and out one after the other)."""
        D = bb.d
        kg.launch_hidden_reset(D[f"{s.P}hid"], D[f"{s.P}h_in"], D[f"{s.P}widths"], D["reset"],
                               threads=self._t("elementwise"), stream=self._nb_stream)

    def _x0_table(self, s: _Subnet):
        """(table, column offset) of the ID subnet's input rows: its block of Wy, or E."""
        if s.id_input == "constrained":
            return self.P.d["Wy"], s.c0
        return self.P.d[f"{s.P}E"], None

    def _backward(self, tb: _Bufs, phase: Phase, pc):
        D, C = tb.d, self.const.d
        st, te = self._nb_stream, self._t("elementwise")
        self._gemm(tb, pc.bwd_top)  # dh_cat = dZ WyY, dW_k[Y] = dZ^T hs_k, dBy = 1^T dZ
        ksn.launch_split_hidden_grad(D["dtop"], D["dh_cat"], C["cols"], pc.train_scales, threads=te, stream=st)
        for k in sorted(phase.trainable):
            s = self.subs[k]
            P = s.P
            for l in reversed(range(len(s.layers))):
                kg.launch_gru_bwd_cz(D[f"{P}da{l}"], D[f"{P}dc{l}"], D[f"{P}drz{l}"], D[f"{P}dout{l}"],
                                     D[f"{P}h_in{l}"], D[f"{P}z{l}"], D[f"{P}c{l}"], D["ctr"], s.keys[l], s.p_hidden,
                                     threads=te, stream=st)
                self._gemm(tb, f"{P}drh{l}")
                kg.launch_gru_bwd_r(D[f"{P}da{l}"], D[f"{P}drz{l}"], D[f"{P}drh{l}"], D[f"{P}h_in{l}"], D[f"{P}r{l}"],
                                    threads=te, stream=st)
                self._gemm(tb, f"{P}wgrad{l}")
            for name, _ in s.sparse:
                kf.launch_sparse_input_grad(D[f"{P}g.{name}"], D[f"{P}da0"], C[f"indptr.{name}"], C[f"data.{name}"],
                                            D["X"], threads=te, stream=st)
            if s.p_embed > 0:
                kg.launch_dropout_inplace(D[f"{P}dx0"], D["ctr"], s.key_emb, s.p_embed, threads=te, stream=st)

    def _update(self, tb: _Bufs, phase: Phase, pc):
        D, P, OA, OM, cfg = tb.d, self.P.d, self.OA.d, self.OM.d, self.cfg
        st = self._nb_stream
        gs = self.scratch.d["gscale"]
        if cfg.grad_cap > 0:
            ka.launch_grad_clip(gs, pc.partials, pc.clip, cfg.grad_cap, threads=self._t("reduce"), stream=st)
        lr, mu = cfg.learning_rate, cfg.momentum
        for p, g, acc, mom in pc.dense:
            ka.launch_adagrad_dense(p, g, acc, mom, gs, lr, mu, threads=self._t("elementwise"), stream=st)
        n_bslots = tb.B + tb.S if phase.train_bias else 0  # By rides with the first trainable block of Wy
        for k in sorted(phase.trainable):
            s = self.subs[k]
            updates = [("Wy", f"{s.P}gWy", s.wy_group, (s.c0, s.c1))] + [(p, r, g, None) for p, r, g in s.input_rows]
            for name, rows, g, cols in updates:
                ka.launch_sparse_adagrad(P[name], OA[name], OM[name], D[rows], D[f"perm_{g}"], D[f"seg_start_{g}"],
                                         D[f"seg_id_{g}"], D["ctr"], gs, lr, mu, P["By"], OA["By"], OM["By"], D["gBy"],
                                         n_bslots if name == "Wy" else 0, cols=cols, threads=self._t("sparse"),
                                         stream=st)
                if name == "Wy":
                    n_bslots = 0

    def _step(self, tb: _Bufs, phase: Phase):
        """One whole training step of ``phase``, every input from device buffers and the device step counter."""
        D, st = tb.d, self._nb_stream
        te = self._t("elementwise")
        pc = tb.phase[phase]
        x0 = emb = c0 = None
        key, p = 0, 0.0
        if self.id_dense is not None:
            s = self.id_dense
            x0, (emb, c0), key, p = D[f"{s.P}x0"], self._x0_table(s), s.key_emb, s.p_embed
        kst.launch_step_begin(D["ids"], D["active"], D["reset"],
                              (D["inputs_s"], D["targets_s"], D["samples_s"], D["active_s"], D["reset_s"]), D["ctr"],
                              (D["h_in"], D["hid"], D["widths"]), D["WyY"], self.P.d["Wy"], x0=x0, emb=emb, key=key,
                              p=p, emb_c0=c0, threads=te, stream=st)
        for s in pc.idle:
            self._keep_state(tb, s)
        self._forward(tb, phase.scoring, train=True)
        ksn.launch_concat_hidden(D["h_cat"], D["hs"], D["hid"], self.const.d["cols"], D["tops"], pc.score_scales,
                                 threads=te, stream=st)
        self._loss(tb)
        self._backward(tb, phase, pc)
        self._update(tb, phase, pc)
        kst.launch_step_end(D["losses"], D["row_loss"], D["ctr"], threads=self._t("reduce"), stream=st)

    # ================================================================================================ training
    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        """Steps over a schedule chunk (inputs/targets/active/reset [T, B], samples [T, S]) with the phases given by
        ``set_phases``. Losses [T] (float64). The chunk is uploaded once; on a GPU its steps replay as CUDA graphs
        (one per phase sequence), under the simulator eagerly."""
        T, B, S = self.check_chunk_shapes(inputs, targets, active, reset, samples)
        if T < 1 or B < 1:
            raise ValueError(f"inputs must be [T, B] with T, B >= 1; got shape {np.shape(inputs)}")
        phases = self._take_phases(T)
        for name, a in (("inputs", inputs), ("targets", targets), ("samples", samples)):
            self.check_ids(a, name)
        tb = self._train_bufs(B, S, T)
        A = tb.a
        with self._on_stream():
            for ph in dict.fromkeys(phases):
                self._phase_setup(tb, ph)
            self._put(A["inputs_s"][:T], inputs)
            self._put(A["targets_s"][:T], targets)
            self._put(A["samples_s"][:T], samples)
            self._put(A["active_s"][:T], np.asarray(active, bool).view(np.uint8))
            self._put(A["reset_s"][:T], np.asarray(reset, bool).view(np.uint8))
            self._segment(tb, np.asarray(inputs), np.asarray(targets), np.asarray(samples))
            self._put(A["ctr"], np.array([0, step0], np.int64))
            if self.sim or self.graph_steps == 0:
                for ph in phases:
                    self._step(tb, ph)
            else:  # pragma: no cover - needs a GPU
                self._run_graphs(tb, phases)
            losses = self._get(A["losses"][:T])
        return losses.astype(np.float64)

    def _run_graphs(self, tb: _Bufs, phases: list):  # pragma: no cover - needs a GPU
        """The steps as replays of graphs of 2^k captured steps (largest first), one graph per phase sequence; the
        first step of a phase not run before runs eagerly, so that its kernels are loaded before any capture."""
        T, t = len(phases), 0
        top = 1 << (max(self.graph_steps, 1).bit_length() - 1)
        while t < T:
            if phases[t] not in tb.warm:
                self._step(tb, phases[t])
                tb.warm.add(phases[t])
                t += 1
                continue
            size = top
            while size > T - t or not tb.warm.issuperset(phases[t:t + size]):
                size //= 2
            self._graph(tb, tuple(phases[t:t + size])).launch(stream=self._stream)
            t += size

    def _graph(self, tb: _Bufs, key: tuple):  # pragma: no cover - needs a GPU
        """The CUDA graph of the steps of the phases ``key`` (``CudaBackend._captured``: once, then replayed)."""
        def record():
            for ph in key:
                self._step(tb, ph)

        return self._captured(self._graphs, key, record)

    def train_step(self, X, Y, active, reset, step: int, phase: Phase | None = None) -> float:
        if phase is None:
            if not self.phases or len(self.phases) != 1:
                raise ValueError("a p-RNN step needs its phase: call set_phases([phase]) or pass phase=")
            phase = self.phases[0]
        self.set_phases([phase])
        X, Y = np.asarray(X), np.asarray(Y)
        self.check_step_y(X, Y)
        B = X.shape[0]
        losses = self.train_chunk(X[None], Y[None, :B], np.asarray(active)[None], np.asarray(reset)[None],
                                  Y[None, B:], step)
        return float(losses[0])

    # ================================================================================================ hidden state
    def _layer_names(self):
        return [(s, l) for s in self.subs for l in range(len(s.layers))]

    def reset_hidden(self) -> None:
        self._pending_hidden = None
        if self._tb is not None:
            with self._on_stream():
                self._tb.a["hid"].fill(0)

    def get_hidden(self) -> list:
        if self._tb is None:
            return [np.array(h, copy=True) for h in (self._pending_hidden or [])]
        with self._on_stream():
            return [self._get(self._tb.a[f"{s.P}hid{l}"]) for s, l in self._layer_names()]

    def set_hidden(self, H: list) -> None:
        names = self._layer_names()
        if len(H) != len(names):
            raise ValueError(f"a p-RNN hidden state has {len(names)} layer arrays; got {len(H)}")
        H = [np.asarray(h, np.float32) for h in H]
        for (s, l), h in zip(names, H):
            if h.ndim != 2 or h.shape != (H[0].shape[0], s.layers[l]):
                raise ValueError(f"set_hidden: subnet {s.k}'s layer {l} must be [B, {s.layers[l]}] (B rows for every "
                                 f"layer); got shape {h.shape}")
        if self._tb is not None and self._tb.B == H[0].shape[0]:
            with self._on_stream():
                for (s, l), h in zip(names, H):
                    self._put(self._tb.a[f"{s.P}hid{l}"], h)
        else:
            self._pending_hidden = H

    # ================================================================================================ evaluation
    def reset_eval(self, batch_size: int) -> None:
        eb = self._eb
        if (eb is not None and isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
                and eb.B == batch_size):
            with self._on_stream():
                eb.a["hid"].fill(0)
            return
        super().reset_eval(batch_size)

    def _eval_run(self) -> tuple:
        if self.eval_subnets is None:
            return tuple(range(len(self.subs)))
        run = tuple(sorted(int(k) for k in self.eval_subnets))
        if not run or not set(run) <= set(range(len(self.subs))):
            raise ValueError(f"eval_subnets must be None or subnets of {list(range(len(self.subs)))}; got "
                             f"{self.eval_subnets!r}")
        return run

    def eval_chunk(self, inputs, targets, reset, active, candidates=None):
        eb = self._eb
        if eb is not None:
            run = self._eval_run()
            if getattr(eb, "run", None) != run:  # the captured steps run other subnets
                self._eval_graphs.clear()
                eb.run = run
                with self._on_stream():
                    self._scales(run)  # its scale table made now, never while a graph is being captured
        return super().eval_chunk(inputs, targets, reset, active, candidates=candidates)

    def _eval_step(self, eb: _Bufs) -> None:
        """One evaluation step of the subnets ``eb.run``: GRU4Rec's (eval_step_begin, forward, target scores, item
        tiles, rank counts) over h_cat = [a_k h_k] and Wy."""
        D, P, st = eb.d, self.P.d, self._nb_stream
        te, tr = self._t("elementwise"), self._t("row")
        kev.launch_eval_step_begin(D["X"], D["targets"], D["reset"], D["active"], D["inputs_s"], D["targets_s"],
                                   D["reset_s"], D["active_s"], D["ctr"], threads=te, stream=st)
        self._forward(eb, eb.run, train=False)
        ksn.launch_concat_hidden(D["h_cat"], D["hs"], D["hid"], self.const.d["cols"], D["tops"], self._scales(eb.run),
                                 threads=te, stream=st)
        h = D["h_cat"]
        kev.launch_target_scores(D["tscore"], h, P["Wy"], P["By"], D["targets"], D["active"], self.act, self.act_a,
                                 threads=te, stream=st)
        for S, W, b in eb.tiles:
            self._mm(S, h, W, tb=True)
            kev.launch_rank_counts(D["n_gt"], D["n_eq"], S, b, D["tscore"], D["active"], D["ctr"], self.act,
                                   self.act_a, threads=tr, stream=st)
        kev.launch_eval_step_end(D["n_eq"], D["active"], eb.items is not None, D["ctr"], threads=tr, stream=st)
