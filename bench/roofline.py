"""MODEL, not a measurement: a per-kernel roofline of the cuda backend's training step and evaluation AS BUILT.

Nothing here runs on a GPU. The step is not described by hand: the cuda backend's own code runs in Numba's CUDA
simulator with kernel execution switched off (``trace``), at the full W1-W3 sizes and the GPU's block sizes and
GEMM tile, and every launch is recorded with its grid, block and arguments. Each recorded launch (= one node of
the captured CUDA graph) is then priced as the slowest of three limits, plus a per-node overhead:

    time = node_overhead + max( bytes / HBM bandwidth,
                                FLOPs / (fp32 peak x min(1, blocks / SMs)),
                                waves x block latency )
    waves         = ceil(blocks / (SMs x resident blocks per SM))        resident: by threads, and by the
                    kernel's registers and shared memory from bench/results/kernels.json (compile_kernels.py)
    block latency = chain x memory latency + block bytes / per-SM bandwidth + block FLOPs / per-SM peak
                    (a GEMM block: K-slabs x slab time)

``chain`` is the number of dependent global-memory round trips on a block's critical path: a serial walk over
slots, a loop whose every iteration waits for its load. Bytes count every operand once at HBM bandwidth (L2
reuse between kernels ignored: pessimistic for the step's ~15-80 MB working set, which fits the 50 MB L2 only
at W1). The ids of the traced step are drawn like real data (``--ids zipf``: targets and inputs from a Zipf
(s = 1) item popularity, samples from popularity^0.5 as the sampler does; ``uniform`` for comparison), because
duplicate ids decide the cost of the sparse update.

Parameters are the H100 SXM datasheet, plus stated ASSUMPTIONS (``Device``): the node overhead, the latencies,
the per-SM bandwidth and the GEMM slab time. The slab time is CALIBRATED from one measurement (H200,
bench/results/gpu_check_NVIDIA_H200.json run: dh = dZ.Wy[Y] at W1, 2 blocks x 130 slabs, ~360 us), everything
else is not fitted. ``--tree PATH`` traces another checkout (e.g. the one the H200 measured) so the model can
be compared with a measurement: for that tree (29 launches) the model gives 731 / 1605 / 1892 us for W1 / W2 / W3
on uniform ids against 897 / 1888 / 2204 us measured, i.e. 14-19% low (bench/results/roofline_3476240.json).

Run:  python bench/roofline.py [--ids zipf|uniform] [--tree PATH] [--out bench/results/roofline.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "roofline.json"
LABEL = "MODEL (per-kernel roofline of the traced step; not a measurement)"
F = 4  # bytes per float32 / int32


# ============================================================================================ device, workloads
@dataclass(frozen=True)
class Device:
    name: str = "NVIDIA H100 SXM5 80GB"
    hbm_bw: float = 3.35e12  # B/s, datasheet
    fp32_peak: float = 67e12  # FLOP/s, fp32 non-tensor, datasheet
    n_sm: int = 132  # datasheet
    node_overhead_s: float = 2.0e-6  # ASSUMPTION: a kernel node of a replayed graph, launch + drain
    dram_latency_s: float = 0.6e-6  # ASSUMPTION: a dependent global load that misses L2 (~1000 cycles)
    l2_latency_s: float = 0.3e-6  # ASSUMPTION: a dependent global load that hits L2
    l1_latency_s: float = 0.025e-6  # ASSUMPTION: a load that hits L1 (a block re-reading a small array: ids)
    sm_bw: float = 100e9  # ASSUMPTION: what one SM's blocks can stream (B/s)
    gemm_slab_s: float = 2.77e-6  # CALIBRATED: one BK=16 slab of a 64x64 tile (H200: 360 us / 130 slabs)
    gemm_efficiency: float = 0.12  # CALIBRATED: kernels/gemm.py's share of fp32 peak with every SM busy (H200:
    #                                the 512 x 700k x 100 score GEMM in ~9 ms = 8 TFLOP/s)

    @property
    def sm_flops(self) -> float:
        return self.fp32_peak / self.n_sm


@dataclass(frozen=True)
class Workload:
    name: str
    B: int
    H: int
    S: int
    loss: str
    final_act: str = "linear"
    bpreg: float = 0.0
    N: int = 37_483  # items (the W1 data set; W2 / W3 use the same catalogue)
    dropout_p_hidden: float = 0.0
    momentum: float = 0.0

    def config(self):
        from gru4rec_kernels.config import TrainConfig

        return TrainConfig(layers=[self.H], batch_size=self.B, n_sample=self.S, loss=self.loss,
                           final_act=self.final_act, bpreg=self.bpreg, constrained_embedding=True, embedding=0,
                           dropout_p_hidden=self.dropout_p_hidden, momentum=self.momentum)


# The shapes bench/gpu_bench.py measures (its configs: no dropout, no momentum, constrained embedding).
WORKLOADS = (
    Workload("W1", B=32, H=100, S=2048, loss="cross-entropy"),
    Workload("W2", B=48, H=480, S=2048, loss="cross-entropy"),
    Workload("W3", B=128, H=512, S=2048, loss="bpr-max", final_act="elu-1", bpreg=0.9),
)
TARGET_W1_S = 50e-6
TARGET_LAUNCHES = 18
MEASURED_H200_US = {"W1": 897.0, "W2": 1888.0, "W3": 2204.0}  # gpu_check_NVIDIA_H200.json (tree 3476240, uniform ids)
MEASURED_H200_EVAL_S = 2.41  # the same run: 100k events x 700k items


# ============================================================================================ the trace
@dataclass
class Launch:
    name: str
    grid: tuple
    block: tuple
    args: list
    consts: dict = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def threads(self) -> int:
        return int(np.prod(self.block))


def _closure(fn) -> dict:
    names = fn.__code__.co_freevars
    cells = fn.__closure__ or ()
    out = {}
    for n, c in zip(names, cells):
        try:
            v = c.cell_contents
        except ValueError:
            continue
        if isinstance(v, (int, float, bool, np.integer, np.floating)):
            out[n] = v
    return out


class Recorder:
    """Records every kernel launch of the simulator instead of running it (device functions are not kernels)."""

    def __init__(self):
        from numba.cuda.simulator import kernel as simk

        self._simk = simk
        self.launches: list[Launch] = []
        self._orig = None

    def __enter__(self):
        simk = self._simk
        self._orig = simk.FakeCUDAKernel.__call__
        orig, launches = self._orig, self.launches

        def record(kern, *args):
            if kern._device or simk._kernel_context:
                return orig(kern, *args)
            launches.append(Launch(kern.fn.__name__, tuple(kern.grid_dim), tuple(kern.block_dim), list(args),
                                   _closure(kern.fn)))
            return None

        simk.FakeCUDAKernel.__call__ = record
        return self

    def __exit__(self, *exc):
        self._simk.FakeCUDAKernel.__call__ = self._orig
        return False


def _ensure_simulator():
    if "numba.cuda" in sys.modules:
        from numba import config

        if not config.ENABLE_CUDASIM:
            raise RuntimeError("roofline traces in the CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 before numba.cuda "
                               "is imported (the script does it when run directly)")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def step_ids(w: Workload, ids: str, seed: int = 0) -> dict:
    """One step's ids: inputs, targets [B] and samples [S], uniform or Zipf-like (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if ids == "uniform":
        return {"X": rng.integers(0, w.N, w.B), "Y": rng.integers(0, w.N, w.B), "samples": rng.integers(0, w.N, w.S)}
    if ids != "zipf":
        raise ValueError(f"ids must be 'zipf' or 'uniform'; got {ids!r}")
    pop = 1.0 / np.arange(1, w.N + 1)
    pop = rng.permutation(pop)
    p1 = pop / pop.sum()
    p05 = np.sqrt(pop) / np.sqrt(pop).sum()
    return {"X": rng.choice(w.N, w.B, p=p1), "Y": rng.choice(w.N, w.B, p=p1), "samples": rng.choice(w.N, w.S, p=p05)}


class DeviceDefaults:
    """While tracing, the launch decisions a GPU would make: its block sizes, GEMM tile, split-K minimum and
    wave size (``target_blocks``) instead of the simulator's tiny ones. (Attributes an older tree lacks are
    skipped, so ``--tree`` works on older checkouts.)"""

    def __init__(self, n_sm: int):
        from gru4rec_kernels.kernels import common as kc
        from gru4rec_kernels.kernels import gemm as kgm

        tile = kgm.TILE
        min_slabs = getattr(kgm, "SPLIT_MIN_SLABS", None)
        self._patches = [(kc, "target_blocks", lambda: n_sm), (kgm, "target_blocks", lambda: n_sm),
                         (kgm, "default_tile", lambda: tile), (kgm, "default_min_slabs", lambda: min_slabs)]
        self._saved = []

    def __enter__(self):
        for mod, name, val in self._patches:
            if hasattr(mod, name):
                self._saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, val)
        return self

    def __exit__(self, *exc):
        for mod, name, val in reversed(self._saved):
            setattr(mod, name, val)
        self._saved.clear()
        return False


def trace_step(w: Workload, ids: str = "zipf", n_sm: int = 132) -> tuple[list[Launch], dict]:
    """The launches of one training step of the cuda backend as a GPU with ``n_sm`` SMs would run it (block sizes,
    tile, splits), and the step's ids."""
    _ensure_simulator()
    from gru4rec_kernels.backends.cuda import CudaBackend
    from gru4rec_kernels.kernels import common as kc
    from gru4rec_kernels.layout import init_params

    cfg = w.config()
    _, params = init_params(cfg, w.N)
    st = step_ids(w, ids)
    X, Y, smp = (st[k].astype(np.int32)[None, :] for k in ("X", "Y", "samples"))
    with DeviceDefaults(n_sm):
        be = CudaBackend(cfg, w.N, params, threads=dict(kc.THREADS))
        with Recorder() as rec:
            be.train_chunk(X, Y, np.ones_like(X, bool), np.zeros_like(X, bool), smp, 0)
        be.close()
    return rec.launches, st


# ============================================================================================ pricing
@dataclass
class Cost:
    flops: float
    bytes: float
    chain: float = 2.0  # dependent global round trips per block (critical path)
    block_bytes: float = 0.0
    block_flops: float = 0.0
    slabs: int = 0  # GEMM: K-slabs walked by one block
    latency: str = "dram"  # which latency the chain pays
    note: str = ""


def _shape(a) -> tuple:
    return tuple(getattr(a, "shape", ()))


def _nbytes(a) -> int:
    return int(np.prod(_shape(a))) * np.dtype(getattr(a, "dtype", np.float32)).itemsize


def _gemm_problem(C, A, ta: bool, acc: bool, splits: int, kc: int, BK: int) -> tuple:
    """(flops, bytes, slabs per block) of C [M, N] = op(A) op(B) with K cut into ``splits`` ranges of kc."""
    M, N = _shape(C)
    K = _shape(A)[0] if ta else _shape(A)[1]
    kc = K if splits <= 1 else min(kc, K)
    part = F * 2 * splits * M * N if splits > 1 else 0  # partial tiles written and read back by the last block
    return 2.0 * M * N * K, F * (M * K + K * N + M * N * (2 if acc else 1)) + part, math.ceil(kc / BK)


def _gemm_cost(L: Launch, ctx) -> Cost:
    """gemm_nn / nt / tn (C, A, B, accumulate[, splits, kc, work, tickets]): grid (N tiles, M tiles, splits)."""
    C, A = L.args[0], L.args[1]
    BK = int(L.consts.get("BK", 16))
    extra = [a for a in L.args[3:] if not hasattr(a, "shape")]
    acc = bool(extra[0]) if extra else False
    splits, kc = (int(extra[1]), int(extra[2])) if len(extra) >= 3 else (1, 0)
    fl, by, slabs = _gemm_problem(C, A, L.name == "gemm_tn", acc, splits, kc, BK)
    M, N = _shape(C)
    K = _shape(A)[0] if L.name == "gemm_tn" else _shape(A)[1]
    return Cost(fl, by, slabs=slabs + (1 if splits > 1 else 0),
                note=f"[{M},{K}]x[{K},{N}]" + (f" split {splits}" if splits > 1 else ""))


def _gemm_grouped_cost(L: Launch, ctx) -> Cost:
    """gemm_grouped (Cs, As, Bs, desc, work, tickets): the products whose block range is not empty; a block's
    critical path is the longest K range of any product (+ one slab-time for a split tile's final sum)."""
    from gru4rec_kernels.kernels import gemm as kgm

    Cs, As_, desc = L.args[0], L.args[1], np.asarray(L.args[3])
    BK = int(L.consts.get("BK", 16))
    fl = by = 0.0
    slabs = 0
    notes = []
    for p in range(len(Cs)):
        d = desc[p * kgm._ND:(p + 1) * kgm._ND]
        if d[kgm._END] <= d[kgm._START]:
            continue
        flags, splits, kc = int(d[kgm._FLAGS]), int(d[kgm._SPLITS]), int(d[kgm._KC])
        ta, acc = bool(flags & kgm._TA), bool(flags & kgm._ACC)
        f_, b_, s_ = _gemm_problem(Cs[p], As_[p], ta, acc, splits, kc, BK)
        fl, by = fl + f_, by + b_
        slabs = max(slabs, s_ + (1 if splits > 1 else 0))
        M, N = _shape(Cs[p])
        notes.append(f"{M}x{N}" + (f"/{splits}" if splits > 1 else ""))
    return Cost(fl, by, slabs=slabs, note="group " + " ".join(notes))


def _sum_bytes(L: Launch, skip=()) -> int:
    return sum(_nbytes(a) for i, a in enumerate(L.args) if hasattr(a, "shape") and i not in skip)


def _elementwise(flops_per: float, skip=()):
    def cost(L: Launch, ctx) -> Cost:
        n = max(int(np.prod(_shape(L.args[0]))), 1)
        return Cost(flops_per * n, _sum_bytes(L, skip))
    return cost


def _gather_rows(L: Launch, ctx) -> Cost:
    out, table, ids = L.args[0], L.args[1], L.args[2]
    return Cost(0.0, 2 * _nbytes(out) + _nbytes(ids), chain=3, latency="dram",
                note=f"{_shape(out)} rows of {_shape(table)}")


def _row_kernel(flops_per: float):
    """One block per row of S [B, O]: passes over the row (max, sums, dZ)."""
    def cost(L: Launch, ctx) -> Cost:
        S = L.args[2]
        B, O = _shape(S)
        row = F * 2 * O
        passes = math.ceil(O / L.threads)
        return Cost(flops_per * B * O, F * (2 * B * O + 2 * O) + F * O, chain=3 * passes, block_bytes=row,
                    latency="l2", note=f"{B} rows x {O} columns, {passes} iterations per pass")
    return cost


def _col_sum(L: Launch, ctx) -> Cost:
    out, a = L.args[0], L.args[1]
    R, Cn = _shape(a)
    return Cost(R * Cn, _nbytes(a) + _nbytes(out), chain=R, latency="l2", note=f"{R} rows walked per column")


def _adagrad_dense(L: Launch, ctx) -> Cost:
    n = _shape(L.args[0])[0]
    return Cost(6.0 * n, F * 5 * n)


def _sparse_mark(L: Launch, ctx) -> Cost:
    K = _shape(L.args[2])[0]
    return Cost(0.0, F * 3 * K, chain=2, latency="l2")


def _sparse_apply_scan(L: Launch, ctx) -> Cost:
    """The scan version (tree 3476240): the block of an id's first slot walks forward over the slots until it
    has seen all copies, one dependent ids[] load per slot, once per pass over the row's columns."""
    p, ids = L.args[0], L.args[5]
    D = _shape(p)[1] if len(_shape(p)) > 1 else 1
    K = _shape(ids)[0]
    ids_h = ctx["slot_ids"].get(K)
    walk = 1
    if ids_h is not None:
        last = {}
        first = {}
        for k, u in enumerate(ids_h):
            first.setdefault(u, k)
            last[u] = k
        walk = max(last[u] - first[u] + 1 for u in first)
    passes = math.ceil(D / L.threads)
    return Cost(6.0 * K * D, F * (K * D + 4 * K * D) + F * 3 * K, chain=walk * passes + 3, latency="l1",
                note=f"longest walk {walk} slots x {passes} column passes")


def _sparse_adagrad_segments(L: Launch, ctx) -> Cost:
    """The host-segment version: block q sums segment q's gradient rows in slot order (one dependent L2 load per
    slot per column pass), then updates the row; the longest segment (the most duplicated id) is the block on
    the critical path."""
    p, perm = L.args[0], L.args[4]
    D = _shape(p)[1] if len(_shape(p)) > 1 else 1
    K = _shape(perm)[1]
    ids_h = ctx["slot_ids"].get(K)
    longest, n_seg = 1, K
    if ids_h is not None:
        counts = np.unique(ids_h, return_counts=True)[1]
        longest, n_seg = int(counts.max()), len(counts)
    passes = math.ceil(D / L.threads)
    # rows + perm read, p / acc (/ mom) read and written per touched row, the bias likewise
    return Cost(6.0 * K * D, F * (K * D + K) + F * 4 * n_seg * D + F * 4 * n_seg,
                chain=passes * longest + 3, latency="l2",
                note=f"{n_seg} segments of {K} slots, longest {longest} x {passes} column passes")


def _step_begin(L: Launch, ctx) -> Cost:
    """ids [O + B] staged from the chunk row; and (since the launch folding) h_in reset/copy, x0 = emb[X] and
    WyY = Wy[Y] gathers: every written element read once, written once."""
    if len(L.args) < 12:  # the older step_begin: ids only
        return Cost(0.0, F * 2 * _shape(L.args[0])[0])
    ids, h_in, x0, WyY = L.args[0], L.args[3], L.args[6], L.args[9]
    gather_x0 = bool(L.args[8])
    n = _nbytes(ids) + _nbytes(h_in) + (_nbytes(x0) if gather_x0 else 0) + _nbytes(WyY)
    return Cost(0.0, 2.0 * n, chain=3, note=f"ids, h_in, {'x0, ' if gather_x0 else ''}Wy[Y] {_shape(WyY)}")


def _row_loss_partial(L: Launch, ctx) -> Cost:
    """Stage 1 (grid chunks x rows): each block two passes (max, sums) over its chunk of one row of S."""
    part, S = L.args[0], L.args[1]
    B, O = _shape(S)
    C = _shape(part)[1]
    it = math.ceil(math.ceil(O / C) / L.threads)
    return Cost(14.0 * B * O, F * 2 * B * O + _nbytes(part), chain=2 * it + 2, latency="l2",
                note=f"{B} rows x {C} chunks, {it} iterations per pass")


def _row_loss_grad(L: Launch, ctx) -> Cost:
    """Stage 2: each block combines its row's C partials in order, then one pass writes dZ of its chunk."""
    part, S = L.args[2], L.args[3]
    B, O = _shape(S)
    C = _shape(part)[1]
    it = math.ceil(math.ceil(O / C) / L.threads)
    return Cost(10.0 * B * O, F * 3 * B * O + _nbytes(part) * 2, chain=it + 3, latency="l2",
                note=f"{B} rows x {C} chunks")


def _one_block_reduce(L: Launch, ctx) -> Cost:
    n = sum(int(np.prod(_shape(a))) for a in L.args if hasattr(a, "shape"))
    return Cost(n, F * n, chain=4, latency="l2")


def _rank_counts(L: Launch, ctx) -> Cost:
    S = L.args[2]
    B, N = _shape(S)
    passes = math.ceil(N / L.threads)
    return Cost(6.0 * B * N, F * (B * N + N), chain=passes, block_bytes=F * N, latency="dram")


def _eval_rank_counts(L: Launch, ctx) -> Cost:
    """Tiled version: block (x, y) counts one span of row y of the score tile against the row's target score."""
    S = L.args[2]
    B, n = _shape(S)
    span = math.ceil(n / L.grid[0])
    it = math.ceil(span / L.threads)
    return Cost(4.0 * B * n, F * (B * n + n + B), chain=it + 3, latency="l2", note=f"[{B}, {n}] tile, span {span}")


def _target_scores(L: Launch, ctx) -> Cost:
    h = L.args[1]
    B, H = _shape(h)
    return Cost(2.0 * B * H, F * 2 * B * H, chain=H + 2, latency="l1", note=f"{B} dots of {H} (serial in k)")


#: kernel function name -> pricing. A kernel the step launches without an entry here is an error (test). Entries
#: of kernels the current tree no longer launches (row_loss, col_sum, the scan sparse update) price older trees
#: (``--tree``), e.g. the one measured on the H200.
COSTS = {
    "gemm_nn": _gemm_cost, "gemm_nt": _gemm_cost, "gemm_tn": _gemm_cost, "gemm_grouped": _gemm_grouped_cost,
    "row_loss_partial": _row_loss_partial, "row_loss_grad": _row_loss_grad,
    "step_begin": _step_begin,
    "step_end": _one_block_reduce,
    "hidden_reset": _elementwise(1),
    "gather_rows": _gather_rows,
    "gru_fwd_rz": _elementwise(20, skip=(3, 7)),
    "gru_fwd_out": _elementwise(15, skip=(2, 6)),
    "gru_bwd_cz": _elementwise(10),
    "gru_bwd_r": _elementwise(8),
    "dropout_inplace": _elementwise(1),
    "row_loss": _row_kernel(12),
    "col_sum": _col_sum,
    "adagrad_dense": _adagrad_dense,
    "sparse_adagrad_mark": _sparse_mark,
    "sparse_adagrad_apply": _sparse_apply_scan,
    "sparse_adagrad": _sparse_adagrad_segments,
    "sumsq_partial": _elementwise(2),
    "clip_scale": _one_block_reduce,
    "rank_counts": _rank_counts,
    "eval_rank_counts": _eval_rank_counts,
    "target_scores": _target_scores,
    "eval_step_begin": _elementwise(0),
    "eval_step_end": _one_block_reduce,
}


def _compiled() -> dict:
    """kernel name -> (registers, static shared bytes) on sm_90 from bench/results/kernels.json (COMPILED facts of
    compile_kernels.py), to bound how many blocks an SM holds; {} when the file is absent."""
    if "table" not in _COMPILED:
        table = {}
        path = REPO / "bench" / "results" / "kernels.json"
        if path.exists():
            for r in json.loads(path.read_text()):
                if r.get("ok") and r.get("arch") == "sm_90":
                    regs, smem = table.get(r["kernel"], (0, 0))
                    table[r["kernel"]] = (max(regs, r["registers"]), max(smem, r["smem"]))
        _COMPILED["table"] = table
    return _COMPILED["table"]


_COMPILED: dict = {}


def resident_blocks(name: str, threads: int) -> int:
    """Blocks one SM holds at once (H100: 2048 threads, 32 blocks, 64K registers, 228 KB shared memory), with the
    kernel's compiled registers and shared memory when known; threads alone otherwise."""
    n = min(32, 2048 // max(threads, 1))
    regs, smem = _compiled().get(name, (0, 0))
    if regs:
        n = min(n, 65536 // (((regs + 7) // 8 * 8) * threads))
    if smem:
        n = min(n, (228 * 1024) // (smem + 1024))
    return max(n, 1)


def price(L: Launch, dev: Device, ctx: dict) -> dict:
    key = L.name
    if key == "rank_counts" and len(L.args) == 10 and len(_shape(L.args[0])) == 2:  # the tiled one (T, B counts)
        key = "eval_rank_counts"
    fn = COSTS.get(key)
    if fn is None:
        raise KeyError(f"roofline: no cost model for kernel {L.name!r}; add one to COSTS")
    c = fn(L, ctx)
    blocks, threads = L.blocks, L.threads
    resident = resident_blocks(L.name, threads)
    waves = math.ceil(blocks / (dev.n_sm * resident))
    lat = {"dram": dev.dram_latency_s, "l2": dev.l2_latency_s, "l1": dev.l1_latency_s}[c.latency]
    if c.slabs:
        block_s = c.slabs * dev.gemm_slab_s
    else:
        block_s = c.chain * lat + c.block_bytes / dev.sm_bw + c.block_flops / dev.sm_flops
    t_mem = c.bytes / dev.hbm_bw
    eff = dev.gemm_efficiency if c.slabs else 1.0
    t_flop = c.flops / (dev.fp32_peak * eff * min(1.0, blocks / dev.n_sm))
    t_lat = waves * block_s
    limits = {"memory": t_mem, "compute": t_flop, "latency": t_lat}
    bound = max(limits, key=limits.get)
    return {"name": L.name, "grid": list(L.grid), "block": list(L.block), "blocks": blocks, "waves": waves,
            "flops": c.flops, "bytes": c.bytes, "t_memory_s": t_mem, "t_compute_s": t_flop, "t_latency_s": t_lat,
            "bound": bound, "time_s": dev.node_overhead_s + limits[bound], "below_one_wave": blocks < dev.n_sm,
            "note": c.note}


@dataclass(frozen=True)
class EvalWorkload:
    events: int = 100_000  # scored test events
    N: int = 700_000  # items ranked per event
    H: int = 100
    batch: int = 512  # session-parallel rows per step
    tile: int = 16_384  # items per score tile (CudaBackend's eval_tile default on a GPU)


def trace_eval(e: EvalWorkload, n_sm: int = 132) -> list[Launch]:
    """The launches of one all-item evaluation step (CudaBackend.eval_chunk, T = 1)."""
    _ensure_simulator()
    from gru4rec_kernels.backends.cuda import CudaBackend
    from gru4rec_kernels.config import TrainConfig
    from gru4rec_kernels.kernels import common as kc
    from gru4rec_kernels.layout import init_params

    cfg = TrainConfig(layers=[e.H], constrained_embedding=True, embedding=0)
    _, params = init_params(cfg, e.N)
    X = np.zeros((1, e.batch), np.int32)
    with DeviceDefaults(n_sm):
        be = CudaBackend(cfg, e.N, params, threads=dict(kc.THREADS), eval_tile=e.tile)
        be.reset_eval(e.batch)
        with Recorder() as rec:
            be.eval_chunk(X, X, np.zeros_like(X, bool), np.ones_like(X, bool))
        be.close()
    return rec.launches


def model_eval(e: EvalWorkload, dev: Device) -> dict:
    ks = [price(L, dev, {"slot_ids": {}}) for L in trace_eval(e)]
    steps = math.ceil(e.events / e.batch)
    per_step = sum(k["time_s"] for k in ks)
    by_name: dict = {}
    for k in ks:
        d = by_name.setdefault(k["name"], {"launches": 0, "time_s": 0.0, "bound": k["bound"]})
        d["launches"] += 1
        d["time_s"] += k["time_s"]
    return {"eval": asdict(e), "steps": steps, "launches_per_step": len(ks), "step_s": per_step,
            "total_s": steps * per_step, "flop_floor_s": 2.0 * e.events * e.H * e.N / dev.fp32_peak,
            "kernels_by_name": by_name,
            "assumes": "every lane busy (steps = ceil(events / batch)); the session-parallel replay leaves lanes "
                       "idle at the end, so real steps are somewhat more"}


def slot_ids(st: dict, w: Workload) -> dict:
    """The host view of the slot arrays the sparse update walks, keyed by their length."""
    Y = np.concatenate([st["Y"], st["samples"]])
    return {len(Y): Y, len(Y) + w.B: np.concatenate([Y, st["X"]])}


def model_step(w: Workload, dev: Device, ids: str) -> dict:
    launches, st = trace_step(w, ids)
    ctx = {"slot_ids": slot_ids(st, w)}
    ks = [price(L, dev, ctx) for L in launches]
    total = sum(k["time_s"] for k in ks)
    return {"workload": asdict(w), "ids": ids, "launches": len(ks), "step_s": total, "steps_per_s": 1 / total,
            "overhead_s": len(ks) * dev.node_overhead_s, "kernels": ks,
            "below_one_wave": sorted({k["name"] for k in ks if k["below_one_wave"]})}


# ============================================================================================ report
def table(m: dict) -> str:
    lines = [f"  {'kernel':<24} {'grid':>12} {'blk':>4} {'waves':>5} {'MFLOP':>8} {'KB':>8} "
             f"{'mem us':>7} {'flop us':>7} {'lat us':>7} {'bound':<8} {'us':>7}  note"]
    for k in m["kernels"]:
        g = "x".join(str(v) for v in k["grid"] if v > 1) or "1"
        lines.append(f"  {k['name']:<24} {g:>12} {k['block'][0]:>4} {k['waves']:>5} {k['flops'] / 1e6:8.2f} "
                     f"{k['bytes'] / 1e3:8.1f} {k['t_memory_s'] * 1e6:7.2f} {k['t_compute_s'] * 1e6:7.2f} "
                     f"{k['t_latency_s'] * 1e6:7.2f} {k['bound']:<8} {k['time_s'] * 1e6:7.2f}  {k['note']}")
    return "\n".join(lines)


def run(dev: Device, ids: str, workloads=WORKLOADS, eval_w: EvalWorkload | None = None) -> dict:
    res = {"label": LABEL, "device": asdict(dev), "ids": ids, "workloads": {}}
    for w in workloads:
        res["workloads"][w.name] = model_step(w, dev, ids)
    if eval_w is not None:
        res["eval"] = model_eval(eval_w, dev)
    w1 = res["workloads"].get("W1")
    if w1:
        res["verdict_W1"] = {"launches": w1["launches"], "step_us": w1["step_s"] * 1e6,
                             "meets_launches": w1["launches"] <= TARGET_LAUNCHES,
                             "meets_time": w1["step_s"] <= TARGET_W1_S,
                             "grids_below_one_wave": w1["below_one_wave"]}
    return res


def report(res: dict) -> str:
    d = res["device"]
    out = [f"=== {LABEL} ===",
           f"device {d['name']}: HBM {d['hbm_bw'] / 1e12:.2f} TB/s, fp32 {d['fp32_peak'] / 1e12:.0f} TFLOP/s, "
           f"{d['n_sm']} SMs; node {d['node_overhead_s'] * 1e6:.1f} us, DRAM/L2/L1 latency "
           f"{d['dram_latency_s'] * 1e6:.2f}/{d['l2_latency_s'] * 1e6:.2f}/{d['l1_latency_s'] * 1e6:.3f} us, "
           f"per-SM {d['sm_bw'] / 1e9:.0f} GB/s, "
           f"GEMM slab {d['gemm_slab_s'] * 1e6:.2f} us and {d['gemm_efficiency']:.0%} of peak (calibrated); "
           f"ids: {res['ids']}"]
    for name, m in res["workloads"].items():
        w = m["workload"]
        meas = MEASURED_H200_US.get(name)
        out.append(f"--- {name}: B={w['B']} H={w['H']} S={w['S']} N={w['N']} {w['loss']} {w['final_act']}: "
                   f"{m['launches']} launches, {m['step_s'] * 1e6:.1f} us/step ({m['steps_per_s']:,.0f} steps/s)"
                   + (f"; [H200 measurement of tree 3476240, uniform ids: {meas:.0f} us]" if meas else ""))
        out.append(table(m))
        if m["below_one_wave"]:
            out.append("  grids below one wave (< SMs blocks): " + ", ".join(m["below_one_wave"]))
    if "verdict_W1" in res:
        v = res["verdict_W1"]
        out.append(f"--- W1 target (<= {TARGET_LAUNCHES} launches, <= {TARGET_W1_S * 1e6:.0f} us): "
                   f"{v['launches']} launches ({'meets' if v['meets_launches'] else 'MISSES'}), {v['step_us']:.1f} us "
                   f"({'meets' if v['meets_time'] else 'MISSES'})")
    if "eval" in res:
        ev, e = res["eval"], res["eval"]["eval"]
        out.append(f"--- all-item evaluation: {e['events']:,} events x {e['N']:,} items, H={e['H']}, "
                   f"batch {e['batch']}, tile {e['tile']:,}: {ev['launches_per_step']} launches/step, "
                   f"{ev['step_s'] * 1e3:.3f} ms/step, "
                   f"{ev['total_s']:.3f} s in all ({ev['steps']} steps; FLOP floor {ev['flop_floor_s']:.3f} s); "
                   f"[H200 measurement of tree 3476240: {MEASURED_H200_EVAL_S:.2f} s]")
        for name, d in ev["kernels_by_name"].items():
            out.append(f"  {name:<24} {d['launches']:>4} launches {d['time_s'] * 1e6:10.1f} us/step  ({d['bound']})")
    out.append(f"=== {LABEL} ===")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Per-kernel roofline MODEL of the traced cuda step (H100).")
    ap.add_argument("--ids", choices=("zipf", "uniform"), default="zipf")
    ap.add_argument("--tree", type=Path, help="trace the gru4rec_kernels of another checkout (e.g. an older commit)")
    ap.add_argument("--node-us", type=float, default=Device.node_overhead_s * 1e6)
    ap.add_argument("--workloads", nargs="+", default=[w.name for w in WORKLOADS])
    ap.add_argument("--no-eval", action="store_true", help="skip the all-item evaluation model (700k items)")
    ap.add_argument("--eval-items", type=int, default=EvalWorkload.N)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    _ensure_simulator()
    sys.path.insert(0, str((args.tree or REPO).resolve()))
    dev = Device(node_overhead_s=args.node_us * 1e-6)
    res = run(dev, args.ids, [w for w in WORKLOADS if w.name in args.workloads],
              None if args.no_eval else EvalWorkload(N=args.eval_items))
    res["tree"] = str(args.tree or REPO)
    print(report(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
