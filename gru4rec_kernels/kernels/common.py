"""Shared pieces of the kernel families: device functions, block defaults, lazy compilation, launcher checks.

Device functions (``cuda.jit(device=True)``, inlined into the kernels that call them):
    philox2x32, uniform24        the library's counter-based generator, compiled from the SAME Python functions
                                 as ``gru4rec_kernels.rng._philox2x32`` / ``_uniform24`` (no second copy)
    dropout_scale(c0, step, key, p, scale)
                                 0 or ``scale`` = float32(1/(1-p)): element counter c0 = b*cols + j, counter word
                                 1 = the global step; equals ``rng.dropout_mask_np`` element for element
    sigmoid, final_act, final_act_grad
                                 as ``reference.sigmoid`` / ``final_act`` / ``final_act_grad`` (float32)
    block_max, block_sum4, block_isum2
                                 block reductions through shared memory (the CUDA simulator has no warp
                                 shuffles); the block size must be a power of two <= MAX_THREADS

Compilation: each family module exposes ``KERNELS = {name: (pyfunc, [signature, ...])}``; ``get_kernel``
compiles a kernel on first use with its explicit signatures (eagerly, every signature at once, cached on disk),
so that importing a module never touches a device, and ``numba.cuda.compile_ptx(pyfunc, sig, cc=...)`` works on a
machine without one. Block sizes are launcher arguments; their defaults live in ``THREADS`` below, and
``target_blocks()`` (one wave: the SM count) is what the split-K GEMMs and the chunked row loss size grids for.
Every launcher calls ``get_kernel`` once per launch, so ``record_launches()`` lists the launches of a block of
code (tests/test_step_launches.py counts a training step's: its CUDA graph nodes).
"""
from __future__ import annotations

import contextlib
import math
import sys

import numpy as np
from numba import cuda

from gru4rec_kernels.config import ACT_ELU, ACT_LEAKY, ACT_RELU, ACT_TANH
from gru4rec_kernels.rng import _philox2x32, _uniform24

# ------------------------------------------------------------------------------------------- block sizes
#: Largest block of the kernels that reduce in shared memory (the size of their shared arrays).
MAX_THREADS = 256
#: Default threads per block, per kind of kernel (one place; every launcher takes ``threads=``).
THREADS = {
    "elementwise": 256,  # one thread per element (GRU gates, dropout, gathers, Adagrad)
    "row": 128,  # one block per row of a [B, O] / [B, N] matrix (loss, ranking); power of two
    "column": 128,  # one thread per column (bias gradients)
    "sparse": 128,  # one block per id (sparse Adagrad), threads over the row's columns
    "reduce": 256,  # norm reductions (gradient clipping); power of two
}
#: Blocks for the CUDA simulator, where every thread is a Python thread: tiny, but several threads per block so
#: that barriers and the shared-memory trees still run (the cuda backend picks these under the simulator).
SIM_THREADS = {"elementwise": 8, "row": 4, "column": 8, "sparse": 4, "reduce": 4}
#: Fixed grid of the partial-norm kernel: a fixed grid keeps the reduction order (and the result) fixed.
NORM_BLOCKS = 64
#: Blocks that fill the GPU once (one wave): the split-K GEMMs and the row-loss kernels size their grids to at
#: least this many. The SM count of an H100 / H200; on a GPU ``target_blocks()`` reads the device's own. The
#: simulator's is tiny, so that the tests run split grids without running hundreds of Python-thread blocks.
TARGET_BLOCKS = 132
SIM_TARGET_BLOCKS = 6

try:  # numba.cuda.core.config is what numba.cuda itself reads (numba-cuda); older releases use numba's
    from numba.cuda.core import config as _cfg
except ImportError:  # pragma: no cover
    from numba.core import config as _cfg
#: True when the kernels run in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 before numba.cuda was imported).
SIM = bool(_cfg.ENABLE_CUDASIM)


def _sim_shared_array(self, shape, dtype, alignment=None):
    """Race-free twin of the simulator's ``FakeCUDAShared.array`` (same semantics: one array per launch and
    calling source line; shape 0 is the dynamic buffer).

    Why: numba-cuda's version does ``res = allocations.get(line)``; ``if res is None: res = np.empty(...)``;
    ``allocations[line] = res`` with no lock. A thread preempted between the lookup and the store (the GIL is
    handed over after each C call; likely under CPU load) keeps its own array while the others get another, so
    in block 0 of that launch the threads no longer share memory: a GEMM tile or a tree reduction reads
    uninitialised values and the training step goes wrong at random. ``dict.setdefault`` publishes the first
    array atomically under the GIL, so every thread gets the same one."""
    if alignment is not None or shape == 0:
        return _SIM_SHARED_ORIG(self, shape, dtype, alignment)  # an error / the one dynamic buffer: no race
    if isinstance(dtype, _simapi.types.Type):
        dtype = _simapi.numpy_support.as_dtype(dtype)
    f = sys._getframe(1)  # the kernel line (the original's extract_stack()[-2], without reading the source)
    key = (f.f_code.co_filename, f.f_lineno)
    res = self._allocations.get(key)
    if res is None:
        res = self._allocations.setdefault(key, np.empty(shape, dtype))
    return res


_SIM_SHARED_ORIG = None
if SIM:
    from numba.cuda.simulator import kernelapi as _simapi

    # only over the internals it was written against (a later numba-cuda may have fixed or changed them)
    if (hasattr(_simapi, "types") and hasattr(_simapi, "numpy_support")
            and "_allocations" in vars(_simapi.FakeCUDAShared(0))
            and _simapi.FakeCUDAShared.array is not _sim_shared_array):
        _SIM_SHARED_ORIG = _simapi.FakeCUDAShared.array
        _simapi.FakeCUDAShared.array = _sim_shared_array

INT32_MAX = np.int32(2**31 - 1)

# float32 constants: a bare Python float literal would promote float32 arithmetic to float64 on the device
F0 = np.float32(0.0)
F1 = np.float32(1.0)
F2 = np.float32(2.0)
NEG_INF = np.float32(-np.inf)

# ------------------------------------------------------------------------------------------- device functions
philox2x32 = cuda.jit(device=True, inline="always")(_philox2x32)
uniform24 = cuda.jit(device=True, inline="always")(_uniform24)


@cuda.jit(device=True, inline="always")
def dropout_scale(c0, step, key, p, scale):
    """Inverted-dropout factor of one element: 0 or ``scale``; 1 when p <= 0 (no draw)."""
    if p <= 0.0:
        return F1
    x0, _ = philox2x32(np.uint64(c0), np.uint64(step), np.uint64(key))
    if uniform24(x0) >= p:
        return scale
    return F0


@cuda.jit(device=True, inline="always")
def sigmoid(x):
    """Two-sided logistic (no overflow), as reference.sigmoid."""
    if x >= F0:
        return F1 / (F1 + math.exp(-x))
    e = math.exp(x)
    return e / (F1 + e)


@cuda.jit(device=True, inline="always")
def final_act(z, act, a):
    """R = f(Z): act/a as config.parse_final_act (linear, tanh, relu, elu-a, leaky-a)."""
    if act == ACT_TANH:
        return np.float32(math.tanh(z))
    if act == ACT_RELU:
        return z if z > F0 else F0
    if act == ACT_ELU:
        if z > F0:
            return z
        return np.float32(a * math.expm1(z))
    if act == ACT_LEAKY:
        if z > F0:
            return z
        return np.float32(a * z)
    return z


@cuda.jit(device=True, inline="always")
def final_act_grad(z, r, act, a):
    """dR/dZ given Z and R = f(Z), as reference.final_act_grad."""
    if act == ACT_TANH:
        return F1 - r * r
    if act == ACT_RELU:
        return F1 if z > F0 else F0
    if act == ACT_ELU:
        return F1 if z > F0 else np.float32(r + a)
    if act == ACT_LEAKY:
        return F1 if z > F0 else a
    return F1


@cuda.jit(device=True, inline="always")
def block_max(sh, tid, nt, v):
    """Max of ``v`` over the block through ``sh`` [MAX_THREADS] (nt a power of two). Everyone gets the result;
    ``sh`` may be reused after the next barrier."""
    sh[tid] = v
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            if sh[tid + s] > sh[tid]:
                sh[tid] = sh[tid + s]
        cuda.syncthreads()
        s //= 2
    out = sh[0]
    cuda.syncthreads()
    return out


@cuda.jit(device=True, inline="always")
def _tree_sum_rows(sh, tid, nt, rows):
    """sh[q, 0] <- sum of sh[q, :nt] for q < rows, as a fixed pairwise tree (deterministic): the one tree behind
    block_sum4 / block_isum2. Starts with the barrier that publishes every thread's entries."""
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            for q in range(rows):
                sh[q, tid] += sh[q, tid + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True, inline="always")
def block_sum4(sh, tid, nt, v0, v1, v2, v3):
    """Four sums over the block through ``sh`` [4, MAX_THREADS], as a fixed tree (deterministic)."""
    sh[0, tid] = v0
    sh[1, tid] = v1
    sh[2, tid] = v2
    sh[3, tid] = v3
    _tree_sum_rows(sh, tid, nt, 4)
    r0 = sh[0, 0]
    r1 = sh[1, 0]
    r2 = sh[2, 0]
    r3 = sh[3, 0]
    cuda.syncthreads()
    return r0, r1, r2, r3


@cuda.jit(device=True, inline="always")
def block_isum2(sh, tid, nt, v0, v1):
    """Two integer sums over the block through the int32 ``sh`` [2, MAX_THREADS]."""
    sh[0, tid] = v0
    sh[1, tid] = v1
    _tree_sum_rows(sh, tid, nt, 2)
    r0 = sh[0, 0]
    r1 = sh[1, 0]
    cuda.syncthreads()
    return r0, r1


# ------------------------------------------------------------------------------------------- compilation
_compiled: dict = {}
_launch_log: list | None = None


def get_kernel(kernels: dict, name: str):
    """The compiled dispatcher of ``kernels[name]`` (compiled once, with all its signatures, on first use).

    Every launcher fetches its kernel here once per launch, so this is where ``record_launches`` counts them."""
    if _launch_log is not None:
        _launch_log.append(name)
    key = (id(kernels), name)
    k = _compiled.get(key)
    if k is None:
        fn, sigs = kernels[name]
        if SIM:
            k = cuda.jit(sigs)(fn)
        else:  # pragma: no cover - needs a GPU
            k = cuda.jit(sigs, cache=True)(fn)
        _compiled[key] = k
    return k


@contextlib.contextmanager
def record_launches():
    """``with record_launches() as names:`` collects the name of every kernel launched inside the block, in order
    (one entry per launch = one node of a captured CUDA graph). Not thread-safe; for tests and benchmarks."""
    global _launch_log
    outer, _launch_log = _launch_log, []
    try:
        yield _launch_log
    finally:
        _launch_log = outer


def target_blocks() -> int:
    """Blocks of one wave on this device: its SM count on a GPU, SIM_TARGET_BLOCKS under the simulator."""
    if SIM:
        return SIM_TARGET_BLOCKS
    n = _device_sms.get("n")  # pragma: no cover - needs a GPU
    if n is None:  # pragma: no cover - needs a GPU
        n = _device_sms["n"] = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return n  # pragma: no cover - needs a GPU


_device_sms: dict = {}


# ------------------------------------------------------------------------------------------- launcher checks
def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _c_contiguous(a) -> bool:
    flags = getattr(a, "flags", None)
    if flags is not None:
        try:
            return bool(flags["C_CONTIGUOUS"])
        except (KeyError, TypeError):
            return bool(getattr(flags, "c_contiguous"))
    f = getattr(a, "is_c_contiguous", None)  # numba device arrays
    if f is not None:
        return bool(f())
    return False


def check(name: str, a, dtype, ndim: int, shape=None):
    """Raise ValueError naming ``name`` unless ``a`` is a C-contiguous array of ``dtype``, ``ndim`` dims and
    ``shape`` (a tuple, None entries free). Returns its shape."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ValueError(f"{name} must be an array (numpy, cupy or numba device array); got {type(a).__name__}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}; got {np.dtype(a.dtype)}")
    if len(a.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {tuple(a.shape)}")
    if shape is not None:
        for want, got in zip(shape, a.shape):
            if want is not None and int(want) != int(got):
                raise ValueError(f"{name} must have shape {tuple('*' if s is None else s for s in shape)}; "
                                 f"got {tuple(a.shape)}")
    if not _c_contiguous(a):
        raise ValueError(f"{name} must be C-contiguous")
    return tuple(int(s) for s in a.shape)


def check_threads(threads: int, pow2: bool = False) -> int:
    if not isinstance(threads, (int, np.integer)) or threads < 1 or threads > 1024:
        raise ValueError(f"threads must be an int in [1, 1024]; got {threads!r}")
    if pow2 and (threads > MAX_THREADS or threads & (threads - 1)):
        raise ValueError(f"threads must be a power of two <= {MAX_THREADS} for this kernel; got {threads}")
    return int(threads)


def check_choice(name: str, v, allowed) -> int:
    if int(v) not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}; got {v!r}")
    return int(v)
