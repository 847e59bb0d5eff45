"""The cuda backend: numba.cuda kernels (kernels/), GEMMs included, written once over an array module ``xp``.

On a GPU ``xp`` is CuPy: every buffer is a CuPy array allocated once (fixed shapes), the GEMMs are our own
kernel (kernels/gemm.py: CuPy refuses cuBLAS calls while a stream is captured into a graph), and every kernel
launches on the backend's own CuPy stream through ``numba.cuda.external_stream`` on numba views of the buffers
made once (``cuda.as_cuda_array``, no sync). Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) ``xp`` is
numpy and the very same step code and kernels run on the CPU; that is how the tests check whole training steps
against the numpy backend without a GPU.

One training step (``_step``; shape letters B rows, S samples, O = B + S, N items, H_l units; docs/kernels.md
lists its launches, 15 besides the sparse Adagrad for one layer; the GEMMs are plans built with the buffers,
several independent products per launch, K split where few tiles meet a long K):

    step_begin          row ctr[0] of the uploaded chunk -> ids = [Y (O) | X (B)], active, reset; h_in_l = 0 on
                        reset rows, else the state hid_l (every layer); x0 = Wy[X] / E[X] times the embedding
                        dropout (one-hot: gathered inside the gate kernels); WyY = Wy[Y]
    per layer           [xw = x Wx, hU = h_in Wrz] (one GEMM launch), gru_fwd_rz, rhU = rh Wh (GEMM),
                        gru_fwd_out -> hid_l (the output after dropout = the next hidden state)
    scores + loss       S = h WyY^T (GEMM), row_loss (row_loss_partial, row_loss_grad: each row over several
                        blocks) -> dZ [B, O], row_loss [B]
    backward            [dh = dZ WyY, dWy rows = dZ^T h, dBy = 1^T dZ] (one GEMM launch); per layer gru_bwd_cz,
                        drh = dc Wh^T (GEMM), gru_bwd_r, [dWrz, dWh, dBh = 1^T da, dWx, dx = da Wx^T] (one GEMM
                        launch, into the flat gradient buffer); the input gradient times the embedding mask
                        (dropout_inplace, only when dropout_p_embed > 0)
    clipping            (grad_cap > 0) sumsq_partial + clip_scale -> gscale
    optimizer           adagrad_dense over the flat buffer; sparse_adagrad over the id segments grouped on the
                        host for the chunk (backends/segments.py): Wy with By in one launch, then E or Wx0
    step_end            losses[ctr[0]] = sum(row_loss); ctr += 1

Everything a step reads comes from device buffers and the device step counter ``ctr = [t, global step]``, so on
a GPU ``train_chunk`` uploads the chunk's schedule once, captures K steps as one CUDA graph
(``Stream.begin_capture``) and replays it over the chunk; graphs are kept for K = 1, 2, 4, ... up to
``graph_steps`` so that any chunk length is a few replays. Under the simulator there is no graph: the same
``_step`` runs eagerly. Results equal the numpy backend's up to float32 rounding (tests/test_cuda_backend.py).
"""
from __future__ import annotations

import contextlib

import numba
import numpy as np

from ..codes import MODE_CODES, MODE_CONSTRAINED, MODE_EMBEDDING, MODE_ONEHOT
from ..kernels import adagrad as ka
from ..kernels import common as kc
from ..kernels import embedding as ke
from ..kernels import evaluate as kev
from ..kernels import gemm as kgm
from ..kernels import gru as kg
from ..kernels import scores_loss as ks
from ..kernels import step as kst
from ..layout import allocate, embed_width
from ..rng import dropout_key
from .base import Backend
from .segments import segment_chunk


class _Bufs:
    """Named device buffers: ``a[name]`` the xp array (for copies), ``d[name]`` its kernel view."""

    def __init__(self, be: "CudaBackend"):
        self._be = be
        self.a: dict = {}
        self.d: dict = {}
        self.row0 = 0  # the rows' first row in the batch (the dropout masks, the targets): 0 but on a rank

    def new(self, name, shape, dtype, fill=0):
        return self.add(name, self._be.xp.full(shape, fill, dtype=dtype))

    def add(self, name, arr):
        self.a[name] = arr
        self.d[name] = self._be._view(arr)
        return arr


class CudaBackend(Backend):
    """GRU4Rec v2 training / evaluation steps on numba.cuda kernels (or the CUDA simulator).

    Parameters beyond ``Backend``'s: ``graph_steps`` the largest number of steps captured in one CUDA graph (0: no
    graphs, every step launched eagerly); ``threads`` overrides of the block sizes per kernel kind
    (kernels.common.THREADS; under the simulator SIM_THREADS are the defaults); ``eval_tile`` the items scored per
    tile in evaluation (the score tile is [B, eval_tile]; default kernels/evaluate.py EVAL_TILE, SIM_EVAL_TILE under
    the simulator).
    """

    name = "cuda"

    def __init__(self, cfg, n_items, params, logq_target=None, logq_sample=None, dtype=np.float32, *,
                 graph_steps: int = 64, threads: dict | None = None, eval_tile: int | None = None):
        super().__init__(cfg, n_items, params, logq_target, logq_sample)
        self._init_device(dtype, graph_steps, threads, eval_tile)
        L = cfg.layers
        self.mode = MODE_CODES[cfg.input_mode]
        self.keys = [dropout_key(cfg.seed, l) for l in range(len(L))]
        self.key_emb = dropout_key(cfg.seed, -1)
        with self._on_stream():
            self._init_params(params)

    def _init_device(self, dtype, graph_steps, threads, eval_tile) -> None:
        """The device (or the simulator), the stream, block sizes, the GEMM tile and the empty training and
        evaluation state: everything but the model's own layout (shared with backends/cuda_prnn.py)."""
        import os

        from . import cuda_usable

        if kc.SIM:  # numba.cuda is the simulator (whatever the environment says now)
            ok, why = True, "CUDA simulator"
        elif os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            ok, why = False, ("NUMBA_ENABLE_CUDASIM=1 was set after numba.cuda had been imported, so numba.cuda is "
                              "not the simulator; set it before the first import")
        else:
            ok, why = cuda_usable()
        if not ok:
            raise RuntimeError(f"the cuda backend needs a usable CUDA GPU: {why}. Use backend='cpu' (or 'auto'), or "
                               "set NUMBA_ENABLE_CUDASIM=1 before numba.cuda is imported to run the kernels in "
                               "the CUDA simulator (slow; for tests).")
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"the cuda backend computes in float32; got dtype={np.dtype(dtype)}")
        from numba import cuda

        self.sim = kc.SIM
        if not isinstance(graph_steps, int) or graph_steps < 0:
            raise ValueError(f"graph_steps must be an int >= 0; got {graph_steps!r}")
        self.graph_steps = graph_steps
        self.eval_tile = (kev.SIM_EVAL_TILE if self.sim else kev.EVAL_TILE) if eval_tile is None else eval_tile
        if not isinstance(self.eval_tile, (int, np.integer)) or self.eval_tile < 1:
            raise ValueError(f"eval_tile must be a positive int (items per score tile); got {eval_tile!r}")
        self.threads = dict(kc.SIM_THREADS if self.sim else kc.THREADS)
        for k, v in (threads or {}).items():
            if k not in self.threads:
                raise ValueError(f"threads: unknown kernel kind {k!r}; known: {sorted(self.threads)}")
            self.threads[k] = int(v)
        if self.sim:
            self.xp = np
            self._stream = None
            self._nb_stream = 0
        else:  # pragma: no cover - needs a GPU
            import cupy

            self.xp = cupy
            self._stream = cupy.cuda.Stream(non_blocking=True)
            self._nb_stream = cuda.external_stream(self._stream.ptr)
        self._cuda = cuda
        self.gemm_tile = kgm.default_tile()
        self.dtype = np.float32
        self.act, self.act_a = self.cfg.final_act_code
        self._tb = None  # training buffers (per batch shape)
        self._eb = None  # evaluation buffers
        self._graphs: dict = {}
        self._warm = False
        self._pending_hidden = None
        self._seg_head = None  # segments.segment_chunk's scratch [P <= 8 parts, N]
        self._ab = None  # apply_grad_buffer's slots (data parallelism)
        self._eval_graphs: dict = {}

    # ================================================================================================ memory
    def _view(self, arr):
        """The kernels' view of a buffer: the numpy array itself under the simulator, a numba device array (made
        once, no stream sync) on a GPU."""
        if self.sim:
            return arr
        return self._cuda.as_cuda_array(arr, sync=False)  # pragma: no cover - needs a GPU

    def _on_stream(self):
        return self._stream if self._stream is not None else contextlib.nullcontext()

    def _put(self, dst, src):
        """Host -> device copy into an existing buffer (ordered on the backend's stream)."""
        src = np.ascontiguousarray(src, dtype=dst.dtype).reshape(dst.shape)
        if self.sim:
            dst[...] = src
        else:  # pragma: no cover - needs a GPU
            dst.set(src, stream=self._stream)

    def _get(self, arr) -> np.ndarray:
        """Device -> host copy (waits for the stream)."""
        if self.sim:
            return np.array(arr, copy=True)
        return arr.get(stream=self._stream)  # pragma: no cover - needs a GPU (blocking)

    def _mm(self, C, A, B, ta=False, tb=False):
        """C = op(A) op(B) on kernel views (kernels/gemm.py; no cuBLAS, so it can be captured in a graph)."""
        kgm.launch_gemm(C, A, B, ta=ta, tb=tb, tile=self.gemm_tile, stream=self._nb_stream)

    def _t(self, kind):
        return self.threads[kind]

    def _init_params(self, params):
        """Device buffers of the parameters, gradients, Adagrad accumulators and momenta in ``layout``'s one
        layout (dense parameters as views of one flat buffer). The caller's arrays are copied into fresh host
        arrays first: under the simulator ``xp.asarray`` of a float32 array would be that very array."""
        xp = self.xp
        host_flat, host = allocate(self.specs, np.float32)
        for s in self.specs:
            v = np.asarray(params[s.name])
            if v.shape != s.shape:
                raise ValueError(f"params[{s.name!r}] must have shape {s.shape}; got {v.shape}")
            host[s.name][...] = v
        P = self.P = _Bufs(self)
        G = self.G = _Bufs(self)  # gradients of the dense parameters, same layout
        OA = self.OA = _Bufs(self)  # Adagrad accumulators
        OM = self.OM = _Bufs(self)  # momenta
        for B_ in (P, G, OA, OM):
            B_.new("flat", host_flat.shape, np.float32)
        self._put(P.a["flat"], host_flat)
        for s in self.specs:
            if s.sparse:
                P.add(s.name, xp.asarray(host[s.name]))  # host[...] is our own copy
                OA.new(s.name, s.shape, np.float32)
                OM.new(s.name, s.shape, np.float32)
                continue
            # the view's place in allocate's flat buffer: the same place in each device flat buffer
            off = (host[s.name].ctypes.data - host_flat.ctypes.data) // host_flat.itemsize
            n = host[s.name].size
            for B_ in (P, G, OA, OM):
                B_.add(s.name, B_.a["flat"][off:off + n].reshape(s.shape))
        self.scratch = _Bufs(self)
        self.scratch.new("gscale", (1,), np.float32, fill=1.0)
        self.logq = None
        if self.logq_target is not None:  # logq * log q of target / sample columns, [N] each (own copies)
            self.scratch.add("logq_t", xp.asarray(np.array(self.logq_target, np.float32)))
            self.scratch.add("logq_s", xp.asarray(np.array(self.logq_sample, np.float32)))
            self.logq = (self.scratch.d["logq_t"], self.scratch.d["logq_s"])

    def _host_state(self, bufs: _Bufs) -> dict:
        """Host copies of one set of parameter-shaped buffers, in ``layout.allocate``'s layout."""
        flat, out = allocate(self.specs, np.float32)
        flat[...] = self._get(bufs.a["flat"])
        for s in self.specs:
            if s.sparse:
                out[s.name][...] = self._get(bufs.a[s.name])
        return out

    def _layer_bufs(self, bb: _Bufs, B: int, backward: bool):
        """Activation buffers of every layer (and their gradients when ``backward``: the training buffers) and the
        forward GEMM plans. The hidden states h_in / hid of all layers are one flat buffer each ([B, H_l] views
        one after another, ``widths`` = H_l), so that one kernel resets every layer."""
        f32 = np.float32
        L = self.cfg.layers
        bb.new("h_in", (B * sum(L),), f32)
        bb.new("hid", (B * sum(L),), f32)
        bb.add("widths", self.xp.asarray(np.array(L, np.int32)))
        off = 0
        for l, H in enumerate(L):
            for n in ("h_in", "hid"):
                bb.add(f"{n}{l}", bb.a[n][off:off + B * H].reshape(B, H))
            off += B * H
            for n, w in (("hU", 2 * H), ("r", H), ("z", H), ("rh", H), ("rhU", H), ("c", H)):
                bb.new(f"{n}{l}", (B, w), f32)
            if not (l == 0 and self.mode == MODE_ONEHOT):
                bb.new(f"xw{l}", (B, 3 * H), f32)
            if backward:
                for n, w in (("dout", H), ("da", 3 * H), ("dc", H), ("drz", 2 * H), ("drh", H)):
                    bb.new(f"{n}{l}", (B, w), f32)
        if self.mode != MODE_ONEHOT:
            bb.new("x0", (B, embed_width(self.cfg)), f32)
        bb.new("ctr", (2,), np.int64)
        # forward GEMMs: x Wx and h U_rz of a layer in one launch, then (r h) U_h; K split only in training
        # (evaluation buffers have no workspace)
        D, P = bb.d, self.P.d
        bb.plans = {}
        for l in range(len(L)):
            probs = [kgm.GemmProblem(D[f"hU{l}"], D[f"h_in{l}"], P[f"Wrz{l}"])]
            if not (l == 0 and self.mode == MODE_ONEHOT):
                probs.insert(0, kgm.GemmProblem(D[f"xw{l}"], D["x0"] if l == 0 else D[f"hid{l - 1}"], P[f"Wx{l}"]))
            bb.plans[f"fwd{l}"] = self._plan(probs, backward)
            bb.plans[f"rhU{l}"] = self._plan([kgm.GemmProblem(D[f"rhU{l}"], D[f"rh{l}"], P[f"Wh{l}"])], backward)

    def _plan(self, problems, split: bool):
        return kgm.plan_gemm(problems, self.gemm_tile, kc.target_blocks(), splits=None if split else 1)

    def _step_plans(self, tb: _Bufs):
        """The loss and backward GEMM plans of the training step (independent products grouped per launch; a
        column sum is the product 1^T a with the ``ones`` column) and the workspace that every split plan shares
        (the launches run one after another on one stream)."""
        D, P, G = tb.d, self.P.d, self.G
        top = len(self.cfg.layers) - 1
        row = lambda bufs, name: self._view(bufs.a[name].reshape(1, -1))  # a vector as a [1, n] matrix
        gp = kgm.GemmProblem
        plans = tb.plans
        plans["scores"] = self._plan([gp(D["S"], D[f"hid{top}"], D["WyY"], tb=True)], True)
        plans["bwd_top"] = self._plan([gp(D[f"dout{top}"], D["dZ"], D["WyY"]),
                                       gp(D["gWy_out"], D["dZ"], D[f"hid{top}"], ta=True),
                                       gp(row(tb, "gBy"), D["ones"], D["dZ"], ta=True)], True)
        for l in range(top + 1):
            plans[f"drh{l}"] = self._plan([gp(D[f"drh{l}"], D[f"dc{l}"], P[f"Wh{l}"], tb=True)], True)
            probs = [gp(G.d[f"Wrz{l}"], D[f"h_in{l}"], D[f"drz{l}"], ta=True),
                     gp(G.d[f"Wh{l}"], D[f"rh{l}"], D[f"dc{l}"], ta=True),
                     gp(row(G, f"Bh{l}"), D["ones"], D[f"da{l}"], ta=True)]
            if not (l == 0 and self.mode == MODE_ONEHOT):  # one-hot: the rows da0 are the sparse gradient of Wx0
                probs.append(gp(G.d[f"Wx{l}"], D["x0"] if l == 0 else D[f"hid{l - 1}"], D[f"da{l}"], ta=True))
                probs.append(gp(D["dx0"] if l == 0 else D[f"dout{l - 1}"], D[f"da{l}"], P[f"Wx{l}"], tb=True))
            plans[f"wgrad{l}"] = self._plan(probs, True)
        tb.new("gemm_work", (max([1] + [p.work_size for p in plans.values()]),), np.float32)
        tb.new("gemm_tickets", (max([1] + [p.tickets_size for p in plans.values()]),), np.int32)

    def _train_bufs(self, B: int, S: int, T: int, Bg: int | None = None):
        """The training buffers of B rows and S samples, with schedule buffers for chunks of up to T steps. Bg: the
        global batch of a data-parallel rank (``grad_step``; default B): its B rows are scored against all
        O = Bg + S columns, and it updates nothing (``apply_grad_buffer`` has its own slots)."""
        Bg = B if Bg is None else Bg
        tb = self._tb
        if tb is None or (tb.B, tb.S, tb.Bg) != (B, S, Bg):
            self._graphs.clear()
            self._warm = False
            tb = self._tb = _Bufs(self)
            tb.B, tb.S, tb.Bg, tb.T = B, S, Bg, 0
            O = Bg + S
            HL = self.cfg.layers[-1]
            with self._on_stream():
                tb.new("ids", (O + B,), np.int32)
                tb.add("Y", tb.a["ids"][:O])
                tb.add("X", tb.a["ids"][O:])
                tb.new("active", (B,), np.uint8)
                tb.new("reset", (B,), np.uint8)
                if Bg == B:  # one process: the batch columns are the rows
                    tb.add("col_active", tb.a["active"])
                else:
                    tb.new("col_active", (Bg,), np.uint8)
                self._layer_bufs(tb, B, backward=True)
                tb.new("WyY", (O, HL), np.float32)
                tb.new("S", (B, O), np.float32)
                tb.new("dZ", (B, O), np.float32)
                tb.new("row_loss", (B,), np.float32)
                self._slot_bufs(tb, B, O, rows_in="da0" if self.mode == MODE_ONEHOT else None)
                if self.mode == MODE_CONSTRAINED:
                    tb.add("dx0", tb.a["gWy"][O:])
                elif self.mode == MODE_EMBEDDING:
                    tb.add("dx0", tb.a["gx"])
                # the step's column sums as GEMMs (1^T a), the row-loss chunk statistics, the GEMM plans
                tb.new("ones", (B, 1), np.float32, fill=1.0)
                tb.new("loss_part", (B, ks.row_chunks(B, O, self._t("row"), kc.target_blocks()), ks.N_STATS),
                       np.float32)
                self._step_plans(tb)
            if self._pending_hidden is not None and self._pending_hidden[0].shape[0] == B:
                for l, h in enumerate(self._pending_hidden):
                    self._put(tb.a[f"hid{l}"], h)
            self._pending_hidden = None
        if T > tb.T:  # the schedule of a chunk: graphs hold its pointers, so a bigger chunk re-captures
            self._graphs.clear()
            tb.T = T
            sched = [("inputs_s", B, np.int32), ("targets_s", Bg, np.int32), ("samples_s", S, np.int32),
                     ("active_s", B, np.uint8), ("reset_s", B, np.uint8)]
            with self._on_stream():
                for n, w, dt in sched:
                    tb.new(n, (T, w), dt)
                tb.new("losses", (T,), np.float32)
                if Bg == B:
                    self._seg_bufs(tb, T, B, B + S)
        return tb

    def _slot_bufs(self, bb: _Bufs, B: int, O: int, rows_in: str | None = None):
        """The gradient row slots of a step's sparse update, on ``bb``, for O output columns and B input rows: gWy
        [O (+ B in constrained mode), H_L] (gWy_out: its first O rows), gBy [O], and the rows of E / Wx0 (the
        buffer ``rows_in`` of bb, which the backward writes, or a new "gx" [B, width]); ``bb.clip_bufs``, every
        gradient the global-norm clipping sees (reference.clip_grads: dense, then the row slots), with their
        ``partials``; and ``bb.sparse``, the updates: (parameter, segment group, slot rows, bias slots)."""
        n_wy = O + B if self.mode == MODE_CONSTRAINED else O
        bb.new("gWy", (n_wy, self.cfg.layers[-1]), np.float32)
        bb.add("gWy_out", bb.a["gWy"][:O])
        bb.new("gBy", (O,), np.float32)
        bb.clip_bufs = [self.G.d["flat"], self._view(bb.a["gWy"].reshape(-1)), bb.d["gBy"]]
        bb.sparse = [("Wy", "wy", bb.d["gWy"], O)]  # Wy with By on the output slots (the first O)
        if self.mode != MODE_CONSTRAINED:  # constrained: the input rows are in gWy already
            if rows_in is None:
                width = self.cfg.embedding if self.mode == MODE_EMBEDDING else 3 * self.cfg.layers[0]
                rows_in = "gx"
                bb.new(rows_in, (B, width), np.float32)
            bb.clip_bufs.append(self._view(bb.a[rows_in].reshape(-1)))
            bb.sparse.append(("E" if self.mode == MODE_EMBEDDING else "Wx0", "x", bb.d[rows_in], 0))
        bb.new("partials", (kc.NORM_BLOCKS * len(bb.clip_bufs),), np.float32)

    def _seg_bufs(self, bb: _Bufs, T: int, B: int, O: int):
        """The sparse-update segments (backends/segments.py) of T steps with B input rows and O output columns:
        host arrays ``bb.seg_host`` (computed by ``_segment``) and their device buffers."""
        bb.seg_host = {}
        for g, K in self._seg_groups(B, O):
            for name, w in (("perm", K), ("seg_start", K + 1), ("seg_id", K)):
                bb.new(f"{name}_{g}", (T, w), np.int32)
            bb.seg_host[g] = tuple(np.empty((T, w), np.int32) for w in (K, K + 1, K))

    def _seg_groups(self, B: int, O: int):
        """The slot lists grouped by id for the sparse updates: (name, K). "wy": Wy (and By, its first O slots)
        over Y = [targets | samples], plus X in the constrained mode; "x": E or Wx0 over X."""
        if self.mode == MODE_CONSTRAINED:
            return [("wy", O + B)]
        return [("wy", O), ("x", B)]

    def _segment(self, tb: _Bufs, inputs, targets, samples):
        """Group the chunk's ids of every sparse update on the host (segments.segment_chunk) and upload them."""
        T = inputs.shape[0]
        ids = {"wy": np.concatenate([targets, samples] + ([inputs] if self.mode == MODE_CONSTRAINED else []),
                                    axis=1, dtype=np.int32),
               "x": np.ascontiguousarray(inputs, dtype=np.int32)}
        if self._seg_head is None:  # a row per parallel part, -1 between calls; at most 8 parts: P x N int32
            self._seg_head = np.full((min(numba.get_num_threads(), 8), self.n_items), -1, np.int32)
        for g, (perm, seg_start, seg_id) in tb.seg_host.items():
            segment_chunk(perm, seg_start, seg_id, ids[g], self._seg_head)
            for name, h in (("perm", perm), ("seg_start", seg_start), ("seg_id", seg_id)):
                self._put(tb.a[f"{name}_{g}"][:T], h[:T])

    # ================================================================================================ the step
    def _gemm(self, bb: _Bufs, name: str):
        kgm.launch_plan(bb.plans[name], bb.d.get("gemm_work"), bb.d.get("gemm_tickets"), stream=self._nb_stream)

    def _layer_forward(self, bb: _Bufs, l: int, train: bool):
        D, P = bb.d, self.P
        st = self._nb_stream
        te = self._t("elementwise")
        if l == 0 and self.mode == MODE_ONEHOT:
            xw, gather = P.d["Wx0"], True
        else:
            xw, gather = D[f"xw{l}"], False
        self._gemm(bb, f"fwd{l}")  # xw = x Wx (not one-hot layer 0), hU = h_in U_rz
        kg.launch_gru_fwd_rz(D[f"r{l}"], D[f"z{l}"], D[f"rh{l}"], xw, D["X"], gather, P.d[f"Bh{l}"], D[f"hU{l}"],
                             D[f"h_in{l}"], threads=te, stream=st)
        self._gemm(bb, f"rhU{l}")
        p = self.cfg.dropout_p_hidden if train else 0.0
        kg.launch_gru_fwd_out(D[f"c{l}"], D[f"hid{l}"], xw, D["X"], gather, P.d[f"Bh{l}"], D[f"rhU{l}"],
                              D[f"h_in{l}"], D[f"z{l}"], D["ctr"], self.keys[l], p, threads=te, stream=st,
                              row0=bb.row0)

    def _forward(self, bb: _Bufs, train: bool):
        """The layers. Training: step_begin has reset the hidden states and gathered x0 already; evaluation
        (``train=False``) resets and gathers here."""
        D, st, te = bb.d, self._nb_stream, self._t("elementwise")
        if not train:
            kg.launch_hidden_reset(D["h_in"], D["hid"], D["widths"], D["reset"], threads=te, stream=st)
            if self.mode != MODE_ONEHOT:
                emb = self.P.d["Wy" if self.mode == MODE_CONSTRAINED else "E"]
                ke.launch_gather_rows(D["x0"], emb, D["X"], D["ctr"], threads=te, stream=st)
        for l in range(len(self.cfg.layers)):
            self._layer_forward(bb, l, train)

    def _loss(self, tb: _Bufs):

        D, cfg = tb.d, self.cfg
        self._gemm(tb, "scores")  # S = h WyY^T
        ks.launch_row_loss(D["dZ"], D["row_loss"], D["loss_part"], D["S"], self.P.d["By"], D["Y"], D["active"],
                           self.logq, loss=cfg.loss_code, act=self.act, act_a=self.act_a, bpreg=cfg.bpreg,
                           mah=cfg.mask_accidental_hits, inv_batch=1.0 / cfg.batch_size, col_active=D["col_active"],
                           row0=tb.row0, threads=self._t("row"), stream=self._nb_stream)

    def _backward(self, tb: _Bufs):

        D, cfg = tb.d, self.cfg
        st, te = self._nb_stream, self._t("elementwise")
        self._gemm(tb, "bwd_top")  # dh = dZ WyY, dWy rows = dZ^T h, dBy = 1^T dZ
        for l in reversed(range(len(cfg.layers))):
            kg.launch_gru_bwd_cz(D[f"da{l}"], D[f"dc{l}"], D[f"drz{l}"], D[f"dout{l}"], D[f"h_in{l}"], D[f"z{l}"],
                                 D[f"c{l}"], D["ctr"], self.keys[l], cfg.dropout_p_hidden, threads=te, stream=st,
                                 row0=tb.row0)
            self._gemm(tb, f"drh{l}")  # drh = dc Wh^T
            kg.launch_gru_bwd_r(D[f"da{l}"], D[f"drz{l}"], D[f"drh{l}"], D[f"h_in{l}"], D[f"r{l}"], threads=te,
                                stream=st)
            self._gemm(tb, f"wgrad{l}")  # dWrz, dWh, dBh, dWx and dx = da Wx^T (the layer below's dout, or dx0)
        if self.mode != MODE_ONEHOT and cfg.dropout_p_embed > 0:
            kg.launch_dropout_inplace(D["dx0"], D["ctr"], self.key_emb, cfg.dropout_p_embed, threads=te, stream=st,
                                      row0=tb.row0)

    def _update(self, bb: _Bufs):
        """Clipping and Adagrad from the dense gradients G and bb's slots (``_slot_bufs``), the sparse updates over
        the segments of step ctr[0] of bb's uploaded chunk."""
        D, P, G, OA, OM, cfg = bb.d, self.P, self.G, self.OA, self.OM, self.cfg
        st = self._nb_stream
        sc = self.scratch.d
        if cfg.grad_cap > 0:
            ka.launch_grad_clip(sc["gscale"], D["partials"], bb.clip_bufs, cfg.grad_cap,
                                 threads=self._t("reduce"), stream=st)
        lr, mu = cfg.learning_rate, cfg.momentum
        ka.launch_adagrad_dense(P.d["flat"], G.d["flat"], OA.d["flat"], OM.d["flat"], sc["gscale"], lr, mu,
                                threads=self._t("elementwise"), stream=st)
        # one launch per group of slots: Wy with By on the output slots (the first O), then E / Wx0 over X
        for name, g, rows, n_bslots in bb.sparse:
            ka.launch_sparse_adagrad(P.d[name], OA.d[name], OM.d[name], rows, D[f"perm_{g}"], D[f"seg_start_{g}"],
                                     D[f"seg_id_{g}"], D["ctr"], sc["gscale"], lr, mu, P.d["By"], OA.d["By"],
                                     OM.d["By"], D["gBy"], n_bslots, threads=self._t("sparse"), stream=st)

    def _grad_half(self, tb: _Bufs):
        """The step up to the optimizer (reference.step_grads): step_begin, the layers, the loss, the backward into
        G and the slots. Every input from device buffers and the device step counter."""
        D, st = tb.d, self._nb_stream
        x0 = emb = None
        if self.mode != MODE_ONEHOT:
            x0, emb = D["x0"], self.P.d["Wy" if self.mode == MODE_CONSTRAINED else "E"]
        kst.launch_step_begin(D["ids"], D["active"], D["reset"],
                              (D["inputs_s"], D["targets_s"], D["samples_s"], D["active_s"], D["reset_s"]), D["ctr"],
                              (D["h_in"], D["hid"], D["widths"]), D["WyY"], self.P.d["Wy"], x0=x0, emb=emb,
                              key=self.key_emb, p=self.cfg.dropout_p_embed, threads=self._t("elementwise"), stream=st,
                              row0=tb.row0)
        self._forward(tb, train=True)
        self._loss(tb)
        self._backward(tb)

    def _step(self, tb: _Bufs):
        """One whole training step: the gradient half, the update, the step loss; every input from device
        buffers and the device step counter."""
        D, st = tb.d, self._nb_stream
        self._grad_half(tb)
        self._update(tb)
        kst.launch_step_end(D["losses"], D["row_loss"], D["ctr"], threads=self._t("reduce"), stream=st)

    # ================================================================================================ training
    def train_chunk(self, inputs, targets, active, reset, samples, step0: int) -> np.ndarray:
        """Steps over a schedule chunk: inputs/targets/active/reset [T, B], samples [T, S]. Losses [T] (float64).

        The chunk is uploaded once; on a GPU the steps run as replays of captured CUDA graphs (the steps find
        their row of the chunk through the device step counter), under the simulator eagerly.
        """
        inputs = np.asarray(inputs)
        if inputs.ndim != 2 or inputs.shape[0] < 1 or inputs.shape[1] < 1:
            raise ValueError(f"inputs must be [T, B] with T, B >= 1; got shape {inputs.shape}")
        T, B = inputs.shape
        for name, a in (("targets", targets), ("active", active), ("reset", reset)):
            if np.shape(a) != (T, B):
                raise ValueError(f"{name} must have shape {(T, B)} like inputs; got {np.shape(a)}")
        samples = np.asarray(samples)
        if samples.ndim != 2 or samples.shape[0] != T:
            raise ValueError(f"samples must be [T, S] with T = {T}; got shape {samples.shape}")
        S = samples.shape[1]
        for name, a in (("inputs", inputs), ("targets", targets), ("samples", samples)):
            a = np.asarray(a)
            if a.size and (a.min() < 0 or a.max() >= self.n_items):
                raise ValueError(f"{name} holds item ids outside [0, {self.n_items})")
        tb = self._train_bufs(B, S, T)
        A = tb.a
        with self._on_stream():
            self._put(A["inputs_s"][:T], inputs)
            self._put(A["targets_s"][:T], targets)
            self._put(A["samples_s"][:T], samples)
            self._put(A["active_s"][:T], np.asarray(active, bool).view(np.uint8))
            self._put(A["reset_s"][:T], np.asarray(reset, bool).view(np.uint8))
            self._segment(tb, inputs, np.asarray(targets), samples)
            self._put(A["ctr"], np.array([0, step0], np.int64))
            if self.sim or self.graph_steps == 0:
                for _ in range(T):
                    self._step(tb)
            else:  # pragma: no cover - needs a GPU
                self._run_graphs(tb, T)
            losses = self._get(A["losses"][:T])
        return losses.astype(np.float64)

    def _run_graphs(self, tb, T):  # pragma: no cover - needs a GPU
        """T steps as replays of graphs of 2^k captured steps (largest first); the very first step runs eagerly so
        that every kernel is compiled and loaded before anything is captured."""
        t = 0
        if not self._warm:
            self._step(tb)
            self._warm = True
            t = 1
        size = 1 << (max(self.graph_steps, 1).bit_length() - 1)
        while t < T:
            while size > T - t:
                size //= 2
            self._graph(tb, size).launch(stream=self._stream)
            t += size

    def _graph(self, tb, size):  # pragma: no cover - needs a GPU
        """The CUDA graph of ``size`` consecutive steps (``_captured`` once per size, then replayed)."""
        def record():
            for _ in range(size):
                self._step(tb)

        return self._captured(self._graphs, size, record)

    def _captured(self, cache: dict, key, record):
        """The CUDA graph of what ``record()`` launches on the backend's stream: captured once per ``key`` of
        ``cache``, then returned from it for replay. Kept with the memory pool of whatever cupy allocated while
        capturing, which the graph's nodes point into (a pool of its own: nothing else may reuse that memory).
        The capture ends even when ``record`` raises, so the stream is never left capturing."""
        entry = cache.get(key)
        if entry is None:
            import cupy

            pool = cupy.cuda.MemoryPool()
            mode = getattr(cupy.cuda.runtime, "streamCaptureModeRelaxed", None)  # allows allocations
            with cupy.cuda.using_allocator(pool.malloc):
                self._stream.begin_capture(mode=mode)
                try:
                    record()
                finally:
                    graph = self._stream.end_capture()
            entry = cache[key] = (graph, pool)
        return entry[0]

    def train_step(self, X, Y, active, reset, step: int) -> float:
        X = np.asarray(X)
        Y = np.asarray(Y)
        B = X.shape[0]
        if Y.ndim != 1 or Y.shape[0] < B:
            raise ValueError(f"Y must be [O] with O >= B = {B}; got shape {Y.shape}")
        losses = self.train_chunk(X[None], Y[None, :B], np.asarray(active)[None], np.asarray(reset)[None],
                                  Y[None, B:], step)
        return float(losses[0])

    # ================================================================================================ data parallelism
    # dataparallel.py: grad_step runs the launches of _step up to the optimizer (_grad_half) on a rank's rows of the
    # global batch, eagerly, then copies the gradients into the caller's device buffer in GradLayout order;
    # apply_grad_buffer copies the all-reduced buffer into slots of the global step and runs _update. The buffer
    # stays on the device (NCCL all-reduces it there, on ``stream``); only the step's loss is read back.
    @property
    def stream(self):
        """The CuPy stream every launch and copy of this backend is ordered on (None under the simulator)."""
        return self._stream

    def grad_buffer(self):
        """Backend.grad_buffer: a zeroed float32 buffer of ``grad_layout()`` in device memory (CuPy on a GPU)."""
        with self._on_stream():
            return self.xp.zeros(self.grad_layout().size, dtype=np.float32)

    def grad_step(self, X, Y, active, reset, step, row0, col_active, buf) -> None:
        """Backend.grad_step: ``buf`` is a device array (``grad_buffer()``), written on ``stream``."""
        lay = self.grad_layout()
        self.check_grad_buffer(buf, lay, self.xp.ndarray)
        B, Bg, O = self.check_grad_step(X, Y, active, reset, row0, col_active, lay)
        self.check_ids(X, "X")
        self.check_ids(Y, "Y")
        row0 = int(row0)
        Y = np.asarray(Y, np.int32)
        tb = self._train_bufs(B, O - Bg, 1, Bg)
        tb.row0 = row0
        A = tb.a
        with self._on_stream():
            self._put(A["inputs_s"][:1], X)
            self._put(A["targets_s"][:1], Y[:Bg])
            self._put(A["samples_s"][:1], Y[Bg:])
            self._put(A["active_s"][:1], np.asarray(active, bool).view(np.uint8))
            self._put(A["reset_s"][:1], np.asarray(reset, bool).view(np.uint8))
            if Bg != B:  # else col_active is active, which step_begin stages
                self._put(A["col_active"], np.asarray(col_active, bool).view(np.uint8))
            self._put(A["ctr"], np.array([0, step], np.int64))
            self._grad_half(tb)
            buf[:lay.wy] = self.G.a["flat"]
            buf[lay.wy:lay.by] = A["gWy_out"].reshape(-1)
            buf[lay.by:lay.inp] = A["gBy"]
            inp = buf[lay.inp:lay.loss].reshape(Bg, lay.in_width)
            inp.fill(0)
            inp[row0:row0 + B] = A["da0" if self.mode == MODE_ONEHOT else "dx0"]
            kst.launch_step_end(self._view(buf[lay.loss:lay.loss + 1]), tb.d["row_loss"], tb.d["ctr"],
                                threads=self._t("reduce"), stream=self._nb_stream)

    def apply_grad_buffer(self, buf, X_global, Y) -> float:
        """Backend.apply_grad_buffer: ``buf`` (device) copied into the slots of the global step, then the update of
        a one-process step (``_update``), eagerly; the loss is the one element read back (a stream sync)."""
        lay = self.grad_layout()
        self.check_grad_buffer(buf, lay, self.xp.ndarray)
        Bg, O = self.check_apply_ids(X_global, Y, lay)
        self.check_ids(X_global, "X_global")
        self.check_ids(Y, "Y")
        X = np.asarray(X_global, np.int32)
        Y = np.asarray(Y, np.int32)
        ab = self._apply_bufs(Bg, O)
        A = ab.a
        with self._on_stream():
            self.G.a["flat"][...] = buf[:lay.wy]
            A["gWy_out"][...] = buf[lay.wy:lay.by].reshape(O, lay.top_width)
            A["gBy"][...] = buf[lay.by:lay.inp]
            rows_in = A["gWy"][O:] if self.mode == MODE_CONSTRAINED else A["gx"]
            rows_in[...] = buf[lay.inp:lay.loss].reshape(Bg, lay.in_width)
            self._segment(ab, X[None], Y[None, :Bg], Y[None, Bg:])
            self._update(ab)
            return float(self._get(buf[lay.loss:lay.loss + 1])[0])

    def _apply_bufs(self, Bg: int, O: int) -> _Bufs:
        """The slots and segments of a global step of Bg input rows and O output columns (apply_grad_buffer)."""
        ab = self._ab
        if ab is None or (ab.B, ab.O) != (Bg, O):
            ab = self._ab = _Bufs(self)
            ab.B, ab.O = Bg, O
            with self._on_stream():
                self._slot_bufs(ab, Bg, O)
                self._seg_bufs(ab, 1, Bg, O)
                ab.new("ctr", (2,), np.int64)  # [0, 0]: the segments of the one uploaded step
        return ab

    def reset_hidden(self) -> None:
        self._pending_hidden = None
        if self._tb is not None:
            with self._on_stream():
                for l in range(len(self.cfg.layers)):
                    self._tb.a[f"hid{l}"].fill(0)

    # ================================================================================================ state exchange
    def get_params(self) -> dict:
        with self._on_stream():
            return self._host_state(self.P)

    def get_opt_state(self) -> dict:
        with self._on_stream():
            return {"acc": self._host_state(self.OA), "mom": self._host_state(self.OM)}

    def set_opt_state(self, state: dict) -> None:
        with self._on_stream():
            for key, bufs in (("acc", self.OA), ("mom", self.OM)):
                for name, v in state[key].items():
                    if name not in bufs.a:
                        raise ValueError(f"opt state {key!r} has unknown parameter {name!r}")
                    self._put(bufs.a[name], v)

    def get_hidden(self) -> list:
        if self._tb is None:
            return [np.array(h, copy=True) for h in (self._pending_hidden or [])]
        with self._on_stream():
            return [self._get(self._tb.a[f"hid{l}"]) for l in range(len(self.cfg.layers))]

    def set_hidden(self, H: list) -> None:
        H = [np.asarray(h, np.float32) for h in H]
        if len(H) != len(self.cfg.layers):
            raise ValueError(f"set_hidden needs one array per layer ({len(self.cfg.layers)}); got {len(H)}")
        for l, (h, units) in enumerate(zip(H, self.cfg.layers)):
            if h.ndim != 2 or h.shape != (H[0].shape[0], units):
                raise ValueError(f"set_hidden: the hidden state of layer {l} must be [B, {units}] (B rows for "
                                 f"every layer); got shape {h.shape}")
        if self._tb is not None and self._tb.B == H[0].shape[0]:
            with self._on_stream():
                for l, h in enumerate(H):
                    self._put(self._tb.a[f"hid{l}"], h)
        else:
            self._pending_hidden = H

    # ================================================================================================ evaluation
    # Per step (kernels/evaluate.py): eval_step_begin, the forward without dropout (_forward), target_scores, then
    # per item tile a GEMM S = h Wy[tile]^T into the [B, tile] score buffer and rank_counts (integer atomics into
    # the chunk's [T, B] counts), and eval_step_end (candidate rule, ctr += 1). No [B, N] matrix exists; a chunk
    # is uploaded once and its counts read back once; on a GPU its steps replay as CUDA graphs.
    def reset_eval(self, batch_size: int) -> None:
        """Zero the evaluation hidden state of ``batch_size`` rows (allocating the evaluation buffers when the
        batch size changes)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        B = int(batch_size)
        eb = self._eb
        if eb is not None and eb.B == B:
            with self._on_stream():
                for l in range(len(self.cfg.layers)):
                    eb.a[f"hid{l}"].fill(0)
            return
        self._eval_graphs.clear()
        eb = self._eb = _Bufs(self)
        eb.B, eb.T, eb.cols, eb.warm = B, 0, 0, False
        eb.items = None  # host copy of the candidate ids the tiles cover (None: all items)
        eb.tiles = []  # (S tile, Wy rows, By entries) kernel views, one per item tile
        with self._on_stream():
            eb.new("X", (B,), np.int32)
            eb.new("targets", (B,), np.int32)
            eb.new("reset", (B,), np.uint8)
            eb.new("active", (B,), np.uint8)
            self._layer_bufs(eb, B, backward=False)
            eb.new("tscore", (B,), np.float32)
            self._eval_items(eb, None)

    def eval_bytes(self) -> int:
        """Device bytes the evaluation buffers hold now (0 before ``reset_eval``). Per row: the layer buffers
        (12 H_l floats per layer, 9 H_0 for a one-hot first layer, plus the embedding width), the score tile
        (min(eval_tile, max(N, C)) floats), and 18 bytes per step of the largest chunk so far (its schedule and
        counts); with C candidates also 4 C (H + 2) bytes (their ids and Wy, By rows). Never O(B N)
        (tests/test_cuda_eval.py::test_memory_does_not_grow_with_the_items counts them)."""
        if self._eb is None:
            return 0
        return int(sum(a.nbytes for a in self._eb.a.values() if a.base is None))

    def _eval_items(self, eb: _Bufs, candidates) -> None:
        """Point the item tiles at all items (``candidates`` None) or at the candidates' rows: Wy[cand] and
        By[cand] gathered now, at every chunk, so they are the current parameters. The tiles (and the graphs that
        captured them) are rebuilt only when the item set changes."""
        xp, B = self.xp, eb.B
        if candidates is None:
            if eb.items is None and eb.tiles:
                return
            for name in ("cand", "WyC", "ByC"):
                eb.a.pop(name, None)
                eb.d.pop(name, None)
            eb.items = None
            W, b = self.P.a["Wy"], self.P.a["By"]
        else:
            cand = np.ascontiguousarray(candidates, dtype=np.int32)
            same = eb.items is not None and np.array_equal(eb.items, cand)
            if not same:
                eb.items = cand.copy()
                eb.add("cand", xp.asarray(eb.items))
                eb.new("WyC", (cand.size, self.P.a["Wy"].shape[1]), np.float32)
                eb.new("ByC", (cand.size,), np.float32)
            xp.take(self.P.a["Wy"], eb.a["cand"], axis=0, out=eb.a["WyC"])
            xp.take(self.P.a["By"], eb.a["cand"], axis=0, out=eb.a["ByC"])
            if same:
                return
            W, b = eb.a["WyC"], eb.a["ByC"]
        self._eval_graphs.clear()
        n_items = W.shape[0]
        cols = min(self.eval_tile, n_items)
        if cols > eb.cols:  # one flat buffer: each tile's [B, n] view of it is C-contiguous
            eb.cols = cols
            eb.new("S", (B * cols,), np.float32)
        S = eb.a["S"]
        eb.tiles = []
        for j0 in range(0, n_items, cols):
            n = min(cols, n_items - j0)
            eb.tiles.append((self._view(S[:B * n].reshape(B, n)), self._view(W[j0:j0 + n]), self._view(b[j0:j0 + n])))

    def _eval_sched(self, eb: _Bufs, T: int) -> None:
        """The chunk's schedule [T, B] and counts [2, T, B] (n_greater, n_equal) buffers, grown to T steps."""
        if T <= eb.T:
            return
        self._eval_graphs.clear()  # graphs hold the old buffers' pointers
        eb.T = T
        for name, dt in (("inputs_s", np.int32), ("targets_s", np.int32), ("reset_s", np.uint8),
                         ("active_s", np.uint8)):
            eb.new(name, (T, eb.B), dt)
        counts = eb.new("counts", (2, T, eb.B), np.int32)  # one buffer: one read per chunk
        eb.add("n_gt", counts[0])
        eb.add("n_eq", counts[1])

    def _eval_step(self, eb: _Bufs) -> None:
        """One evaluation step, every input from device buffers and the device step counter."""
        D, P, st = eb.d, self.P.d, self._nb_stream
        te, tr = self._t("elementwise"), self._t("row")
        kev.launch_eval_step_begin(D["X"], D["targets"], D["reset"], D["active"], D["inputs_s"], D["targets_s"],
                                   D["reset_s"], D["active_s"], D["ctr"], threads=te, stream=st)
        self._forward(eb, train=False)
        h = D[f"hid{len(self.cfg.layers) - 1}"]
        kev.launch_target_scores(D["tscore"], h, P["Wy"], P["By"], D["targets"], D["active"], self.act, self.act_a,
                                 threads=te, stream=st)
        for S, W, b in eb.tiles:
            self._mm(S, h, W, tb=True)
            kev.launch_rank_counts(D["n_gt"], D["n_eq"], S, b, D["tscore"], D["active"], D["ctr"], self.act,
                                   self.act_a, threads=tr, stream=st)
        kev.launch_eval_step_end(D["n_eq"], D["active"], eb.items is not None, D["ctr"], threads=tr, stream=st)

    def eval_chunk(self, inputs, targets, reset, active, candidates=None):
        """Evaluation steps over a schedule chunk: inputs/targets/reset/active [T, B] (B the reset_eval batch
        size). Returns (n_greater [T, B], n_equal [T, B]) int64, 0 on inactive lanes.

        The chunk is uploaded once and its counts read back once, at the end; on a GPU the steps run as replays
        of captured CUDA graphs (kept per (B, steps)), under the simulator eagerly."""
        eb = self._eb
        if eb is None:
            raise RuntimeError("call reset_eval(batch_size) before eval_chunk")
        T, B = self.check_eval_chunk_shapes(inputs, targets, reset, active)
        if B != eb.B:
            raise ValueError(f"inputs must be [T, {eb.B}] (the reset_eval batch size); got shape {np.shape(inputs)}")
        self.check_ids(inputs, "inputs")
        self.check_ids(targets, "targets")
        if candidates is not None:
            if np.ndim(candidates) != 1 or np.size(candidates) < 1:
                raise ValueError(f"candidates must be a non-empty 1-D array of item ids; got shape "
                                 f"{np.shape(candidates)}")
            self.check_ids(candidates, "candidates")
        if T == 0:
            return np.zeros((0, B), np.int64), np.zeros((0, B), np.int64)
        A = eb.a
        with self._on_stream():
            self._eval_sched(eb, T)
            self._eval_items(eb, candidates)
            self._put(A["inputs_s"][:T], inputs)
            self._put(A["targets_s"][:T], targets)
            self._put(A["reset_s"][:T], np.asarray(reset, bool).view(np.uint8))
            self._put(A["active_s"][:T], np.asarray(active, bool).view(np.uint8))
            A["counts"].fill(0)
            self._put(A["ctr"], np.zeros(2, np.int64))
            if self.sim or self.graph_steps == 0:
                for _ in range(T):
                    self._eval_step(eb)
            else:  # pragma: no cover - needs a GPU
                self._eval_run_graphs(eb, T)
            counts = self._get(A["counts"])  # the chunk's one blocking read
        return counts[0, :T].astype(np.int64), counts[1, :T].astype(np.int64)

    def _eval_run_graphs(self, eb: _Bufs, T: int) -> None:  # pragma: no cover - needs a GPU
        """T evaluation steps as replays of graphs of 2^k captured steps (largest first), as ``_run_graphs``; the
        first step after (re)allocation runs eagerly so that every kernel is loaded before anything is captured."""
        t = 0
        if not eb.warm:
            self._eval_step(eb)
            eb.warm = True
            t = 1
        size = 1 << (max(self.graph_steps, 1).bit_length() - 1)
        while t < T:
            while size > T - t:
                size //= 2
            self._eval_graph(eb, size).launch(stream=self._stream)
            t += size

    def _eval_graph(self, eb: _Bufs, size: int):  # pragma: no cover - needs a GPU
        """The CUDA graph of ``size`` evaluation steps over the current buffers and item tiles, kept per
        (B, size) until the buffers or the item set change (``_captured``)."""
        def record():
            for _ in range(size):
                self._eval_step(eb)

        return self._captured(self._eval_graphs, (eb.B, size), record)

    def eval_step(self, X, targets, reset, active, candidates=None):
        """One evaluation step: ``eval_chunk`` of one row (counts 0 on inactive rows)."""
        eb = self._eb
        if eb is None:
            raise RuntimeError("call reset_eval(batch_size) before eval_step")
        if np.shape(X) != (eb.B,):
            raise ValueError(f"X must have shape ({eb.B},) (the reset_eval batch size); got {np.shape(X)}")
        self.check_ids(X, "X")
        self.check_ids(targets, "targets")
        gt, eq = self.eval_chunk(np.asarray(X)[None], np.asarray(targets)[None], np.asarray(reset)[None],
                                 np.asarray(active)[None], candidates=candidates)
        return gt[0], eq[0]

    def close(self) -> None:
        self._graphs.clear()
        self._eval_graphs.clear()
        if self._stream is not None:  # pragma: no cover - needs a GPU
            self._stream.synchronize()
        self._tb = self._eb = self._ab = None
