"""Communicators for synchronous data parallelism (dataparallel.py, docs/distributed.md).

One interface, three implementations:

- ``LocalComm``: one process; every collective returns its input.
- ``MPIComm``: mpi4py over host (numpy) buffers, for the numpy and cpu backends and the tests. Every collective
  is nonblocking (``Iallreduce``, ``Ibarrier``) and polled against a deadline, so a rank that died or hangs
  turns into a ``CollectiveTimeout`` naming the collective (and the global step) instead of a silent hang; the
  polling sleeps after a short spin, because MPI's blocking calls spin a core that a rank on the same node needs.
- ``NCCLComm``: the per-step all-reduce on the GPU with NCCL (``cupy.cuda.nccl``) on the backend's stream, so it
  can be captured inside the backend's CUDA graph; the unique id is broadcast over MPI, every other collective
  goes over MPI, and each rank uses one GPU chosen by its node-local rank.

mpi4py and cupy are imported only by the communicator that needs them: ``import gru4rec_kernels.comm`` imports
neither.

Errors: a collective failure must end the job, never leave the other ranks waiting. ``agree(comm, what, fn)``
runs ``fn`` on every rank and makes every rank raise when any rank failed (the setup phase: reading data,
checkpoints, checking arguments). An error that only some ranks see during training cannot be agreed on (the
others are inside a collective), so the trainer and the CLI call ``comm.abort``, which ends every rank
(``MPI_Abort``). Errors raised on every rank alike carry ``every_rank = True`` (``raised_everywhere``): they are
raised normally, not aborted.
"""
from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod

import numpy as np

# A collective that does not complete within this many seconds is a CollectiveTimeout. Generous by default: the
# first one after start-up waits for every rank's Numba compilation (tens of seconds on a loaded machine), and
# a validation evaluation's shards may finish minutes apart on a slow node.
DEFAULT_TIMEOUT = 1800.0

# the world size as MPICH / Intel MPI (and srun --mpi=pmi2), Open MPI and MVAPICH launchers announce it
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

# polling: this many Test() calls back to back, then sleeps doubling from POLL_MIN_S to POLL_MAX_S
_SPIN = 64
_POLL_MIN_S = 2e-5
_POLL_MAX_S = 2e-3


class CollectiveTimeout(RuntimeError):
    """A collective did not complete in time: a rank died, hangs, or is far behind. The message names it."""


class RankFailedError(RuntimeError):
    """Another rank failed a step that every rank runs (``agree``); the message names the rank and its error."""


def raised_everywhere(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised on every rank alike (so it is raised, not turned into an abort)."""
    exc.every_rank = True
    return exc


def is_everywhere(exc: BaseException) -> bool:
    return bool(getattr(exc, "every_rank", False))


def launched_ranks() -> tuple[str | None, int]:
    """(variable, size) of the MPI world the launcher announced in the environment; (None, 1) outside one."""
    return next(((v, int(os.environ[v])) for v in _MPI_SIZE_VARS if os.environ.get(v, "").isdigit()), (None, 1))


def mpi_world():
    """``MPI.COMM_WORLD`` when this process is one of several MPI ranks (``mpiexec -n P`` / ``srun``), else None.
    mpi4py is imported only when the launcher's environment says there are several ranks, so a plain run never
    initialises MPI. Several ranks without mpi4py is an error (each would run the whole job on its own)."""
    var, size = launched_ranks()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(f"started as one of {size} MPI ranks ({var}={size}) but mpi4py is not installed: "
                           f"pip install 'gru4rec-kernels[mpi]', or run without mpiexec") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size:
        raise RuntimeError(f"the launcher started {size} ranks ({var}) but mpi4py's MPI sees "
                           f"{comm.Get_size()}: mpiexec and mpi4py come from different MPI libraries")
    return comm


class Communicator(ABC):
    """rank / size of this process in the job, the node-local rank / size (one GPU per node-local rank), and the
    collectives data parallelism needs. ``what`` names the collective in a timeout's message."""

    name = "base"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    timeout: float = DEFAULT_TIMEOUT

    @abstractmethod
    def allreduce_sum(self, buf, what: str = "the gradient all-reduce") -> None:
        """Sum ``buf`` (a 1-D float buffer from ``new_buffer``) over the ranks, in place."""

    @abstractmethod
    def allreduce(self, values, op: str = "sum", what: str = "an all-reduce") -> np.ndarray:
        """A small host array reduced over the ranks with ``op`` ("sum", "max", "min"); returns a new array."""

    @abstractmethod
    def bcast(self, obj, root: int = 0, what: str = "a broadcast"):
        """``obj`` of rank ``root`` on every rank (any picklable object)."""

    @abstractmethod
    def gather(self, obj, root: int = 0, what: str = "a gather") -> list | None:
        """[obj of rank 0, obj of rank 1, ...] on ``root``, None elsewhere."""

    @abstractmethod
    def allgather(self, obj, what: str = "an all-gather") -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""

    @abstractmethod
    def barrier(self, what: str = "a barrier") -> None: ...

    @abstractmethod
    def abort(self, code: int = 1, message: str = "") -> None:
        """End every rank of the job now (after printing ``message`` on this rank's stderr)."""

    def new_buffer(self, n: int, dtype) -> np.ndarray:
        """A zeroed 1-D buffer of ``n`` elements where this communicator's ``allreduce_sum`` reads it (host)."""
        return np.zeros(int(n), dtype=dtype)

    def attach(self, backend) -> None:
        """Called with the training backend before the first step (NCCLComm takes its stream)."""

    def synchronize(self, what: str = "the gradient all-reduce") -> None:
        """Wait for the collectives enqueued on a device stream (host collectives are complete on return)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class LocalComm(Communicator):
    """One process: the sum over one rank is the buffer itself."""

    name = "local"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = float(timeout)

    def allreduce_sum(self, buf, what="the gradient all-reduce"):
        pass

    def allreduce(self, values, op="sum", what="an all-reduce"):
        _check_op(op)
        return np.array(values, copy=True)

    def bcast(self, obj, root=0, what="a broadcast"):
        return obj

    def gather(self, obj, root=0, what="a gather"):
        return [obj]

    def allgather(self, obj, what="an all-gather"):
        return [obj]

    def barrier(self, what="a barrier"):
        pass

    def abort(self, code=1, message=""):
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)


def _check_op(op: str) -> None:
    if op not in ("sum", "max", "min"):
        raise ValueError(f"op must be 'sum', 'max' or 'min'; got {op!r}")


class MPIComm(Communicator):
    """mpi4py over host buffers, every collective polled against ``timeout`` seconds.

    comm: an mpi4py communicator (default ``MPI.COMM_WORLD``)."""

    name = "mpi"

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT):
        try:
            from mpi4py import MPI
        except ImportError:
            raise RuntimeError("distributed training over MPI needs mpi4py: pip install 'gru4rec-kernels[mpi]' "
                               "(mpi4py and the mpich wheel, which brings mpiexec)") from None
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.timeout = float(timeout)
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    def _wait(self, req, what: str) -> None:
        """Poll ``req`` until it completes: a short spin (a step's all-reduce usually completes within it), then
        sleeps that double up to _POLL_MAX_S, so a rank waiting for a slower one leaves its core to it."""
        for _ in range(_SPIN):
            if req.Test():
                return
        deadline = time.monotonic() + self.timeout
        pause = _POLL_MIN_S
        while not req.Test():
            if time.monotonic() > deadline:
                raise CollectiveTimeout(
                    f"{what}: not every rank joined within {self.timeout:g} s (rank {self.rank} of {self.size} "
                    f"waited): a rank died, hangs or is far behind")
            time.sleep(pause)
            pause = min(2 * pause, _POLL_MAX_S)

    def allreduce_sum(self, buf, what="the gradient all-reduce"):
        if not (isinstance(buf, np.ndarray) and buf.ndim == 1 and buf.flags.c_contiguous):
            raise ValueError("allreduce_sum needs a contiguous 1-D numpy buffer (MPIComm.new_buffer)")
        self._wait(self.comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM), what)

    def allreduce(self, values, op="sum", what="an all-reduce"):
        _check_op(op)
        out = np.ascontiguousarray(np.array(values, copy=True))
        self._wait(self.comm.Iallreduce(self._MPI.IN_PLACE, out, op=self._ops[op]), what)
        return out

    def barrier(self, what="a barrier"):
        self._wait(self.comm.Ibarrier(), what)

    # Object collectives: mpi4py has no nonblocking pickled bcast / gather, so every rank first meets at a polled
    # barrier (the timeout lives there); the blocking call that follows finds every rank present.
    def bcast(self, obj, root=0, what="a broadcast"):
        self.barrier(what)
        return self.comm.bcast(obj, root=root)

    def gather(self, obj, root=0, what="a gather"):
        self.barrier(what)
        return self.comm.gather(obj, root=root)

    def allgather(self, obj, what="an all-gather"):
        self.barrier(what)
        return self.comm.allgather(obj)

    def abort(self, code=1, message=""):
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        self.comm.Abort(code)


def use_local_gpu(comm: Communicator) -> int:
    """Make GPU ``local_rank`` this process's device (cupy's and numba.cuda's) and return its index. A launcher
    that binds one GPU per task (``srun --gpus-per-task=1``) leaves each rank one visible device: device 0."""
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    if n < 1:
        raise RuntimeError(f"rank {comm.rank} sees no CUDA device")
    if 1 < n < comm.local_size:
        raise ValueError(f"{comm.local_size} ranks on this node but {n} GPUs visible: data parallelism runs one GPU "
                         f"per rank; start at most {n} ranks per node")
    dev = comm.local_rank % n
    cupy.cuda.Device(dev).use()
    from numba import cuda
    cuda.select_device(dev)  # before the backend makes numba's context: the same device as cupy's
    return dev


class NCCLComm(Communicator):
    """The gradient all-reduce on the GPU by NCCL; every other collective over ``host`` (an MPIComm).

    ``allreduce_sum`` only enqueues ``ncclAllReduce`` on the attached backend's stream (no host wait), so it can
    be captured inside the backend's CUDA graph between ``grad_step`` and ``apply_grad_buffer``; ``synchronize``
    waits for it against the timeout and aborts the NCCL communicator when it expires (NCCL itself never times
    out)."""

    name = "nccl"

    def __init__(self, host: Communicator | None = None, timeout: float | None = None):
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as e:
            raise RuntimeError(f"NCCLComm needs cupy with NCCL (pip install 'gru4rec-kernels[gpu]'): {e}") from None
        host = MPIComm(timeout=timeout or DEFAULT_TIMEOUT) if host is None else host
        self.host, self._cupy, self._nccl_mod = host, cupy, nccl
        self.rank, self.size = host.rank, host.size
        self.local_rank, self.local_size = host.local_rank, host.local_size
        self.timeout = host.timeout if timeout is None else float(timeout)
        self.device = use_local_gpu(host)
        uid = nccl.get_unique_id() if host.rank == 0 else None
        uid = host.bcast(uid, what="the NCCL unique id")
        self._comm = nccl.NcclCommunicator(host.size, uid, host.rank)
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self.stream = None

    def attach(self, backend):
        # the cuda backend's own CuPy stream: the all-reduce is ordered between its grad_step and apply kernels
        self.stream = getattr(backend, "_stream", None)

    def new_buffer(self, n, dtype):
        return self._cupy.zeros(int(n), dtype=dtype)

    def _stream_ptr(self) -> int:
        return (self.stream or self._cupy.cuda.get_current_stream()).ptr

    def allreduce_sum(self, buf, what="the gradient all-reduce"):
        dt = self._dtypes.get(np.dtype(buf.dtype))
        if dt is None or buf.ndim != 1:
            raise ValueError(f"allreduce_sum needs a 1-D float32 / float64 CuPy buffer; got {buf.dtype} {buf.shape}")
        self._comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dt, self._nccl_mod.NCCL_SUM, self._stream_ptr())

    def synchronize(self, what="the gradient all-reduce"):
        stream = self.stream or self._cupy.cuda.get_current_stream()
        deadline = time.monotonic() + self.timeout
        pause = _POLL_MIN_S
        while not stream.done:
            if time.monotonic() > deadline:
                self._comm.abort()
                raise CollectiveTimeout(f"{what} (NCCL): not complete within {self.timeout:g} s on rank {self.rank} "
                                        f"of {self.size}: a rank died, hangs or is far behind")
            time.sleep(pause)
            pause = min(2 * pause, _POLL_MAX_S)

    def allreduce(self, values, op="sum", what="an all-reduce"):
        return self.host.allreduce(values, op, what)

    def bcast(self, obj, root=0, what="a broadcast"):
        return self.host.bcast(obj, root, what)

    def gather(self, obj, root=0, what="a gather"):
        return self.host.gather(obj, root, what)

    def allgather(self, obj, what="an all-gather"):
        return self.host.allgather(obj, what)

    def barrier(self, what="a barrier"):
        self.host.barrier(what)

    def abort(self, code=1, message=""):
        self.host.abort(code, message)


def agree(comm: Communicator, what: str, fn):
    """Run ``fn()`` on every rank; if it raised on any rank, raise on every rank: the failing ranks their own
    error, the others a RankFailedError naming the first failing rank and its message (all marked
    ``raised_everywhere``). Returns ``fn()``'s value. For the steps every rank runs before training (checking
    arguments, reading data and checkpoints), so that no rank waits in a collective for one that gave up."""
    out, err = None, None
    try:
        out = fn()
    except Exception as e:
        err = e
    if comm.size > 1:
        failed = comm.allgather(None if err is None else f"{type(err).__name__}: {err}", what)
        bad = [(r, m) for r, m in enumerate(failed) if m is not None]
        if bad and err is None:
            r, m = bad[0]
            err = RankFailedError(f"rank {r} failed {what}: {m}")
    if err is not None:
        raise raised_everywhere(err)
    return out
