"""One rule for entering Numba parallel regions from several threads at once.

Numba's ``workqueue`` threading layer (what a user gets without OpenMP or TBB) is not thread-safe: two threads
inside parallel regions at the same time abort the process, whatever ``numba.set_num_threads`` says. The
``omp`` and ``tbb`` layers are safe. Every parallel entry of the library (a training or evaluation chunk of the
cpu backend, a chunk's negative samples, batched recommendation) runs inside ``parallel_region()``: under a
thread-safe layer it costs nothing, under any other (or before the first parallel region has fixed the layer)
the entries are serialised by one process-wide lock. Single-session serving never enters a parallel region
(it scores one session on one thread), so it never waits here.
"""
from __future__ import annotations

import contextlib
import threading

import numba

THREADSAFE_LAYERS = ("tbb", "omp")
_LOCK = threading.RLock()


def layer_is_threadsafe() -> bool:
    try:
        return numba.threading_layer() in THREADSAFE_LAYERS
    except ValueError:  # no parallel region has run yet: the layer is not chosen, so assume the worst
        return False


@contextlib.contextmanager
def parallel_region():
    """Run the body's Numba parallel kernels safely however many threads call in.

    It starts Numba's thread pool first (``get_num_threads`` launches it once; then a no-op): a cached function
    whose prange kernels were themselves loaded from the cache does not start the pool, and calling into a pool
    that was never started jumps through a null pointer (seen with the p-RNN cpu driver in a fresh process)."""
    numba.get_num_threads()
    if layer_is_threadsafe():
        yield
        return
    with _LOCK:
        yield
