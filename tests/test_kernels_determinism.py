"""Kernels that reduce or tile in shared memory give the same bits on every run under the CUDA simulator.

The cause of the cuda backend's random tolerance failures under CPU load: numba-cuda's simulator created a
``cuda.shared.array`` with an unlocked lookup-then-store, so a thread preempted in between kept its own array
and block 0 of that launch read uninitialised shared memory. kernels/common.py replaces it with a race-free
twin under the simulator (``_sim_shared_array``). These tests are simulator-only: on a GPU shared memory is
hardware and ``tests/test_kernels_sim.py`` covers the kernels.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

import numpy as np
import pytest

from gru4rec_kernels.kernels import common as kc
from gru4rec_kernels.kernels import gemm as kgm
from gru4rec_kernels.kernels import step as kstep

pytestmark = pytest.mark.skipif(not kc.SIM, reason="the CUDA simulator's shared memory only")


def test_shared_array_is_one_array_when_a_thread_is_preempted_mid_allocation():
    """Force the losing interleaving: thread A looks the line up (nothing yet) and is held there until thread B
    has allocated from the same line. Both must get the same array (numba-cuda's own version hands A a second
    one: this fails without the fix, every time)."""
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    shared = FakeCUDAShared(0)
    a_looked, b_done = threading.Event(), threading.Event()

    class HoldA(dict):  # A's lookup returns, then A waits for B: a deterministic preemption in the window
        def get(self, key, default=None):
            v = super().get(key, default)
            if threading.current_thread().name == "A":
                a_looked.set()
                b_done.wait(10)
            return v

    shared._allocations = HoldA()
    got = {}

    def alloc():
        return shared.array(4, np.float32)  # one source line: the same allocation for both threads

    def run_a():
        got["A"] = alloc()

    def run_b():
        a_looked.wait(10)
        got["B"] = alloc()
        b_done.set()

    ts = [threading.Thread(target=run_a, name="A"), threading.Thread(target=run_b, name="B")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert got["A"] is got["B"], "threads of one block were handed different shared arrays"


@contextmanager
def _contention(spinners=2, interval=1e-6):
    """A tiny GIL switch interval plus busy Python threads: simulator threads are preempted often and wait long
    for the GIL, as under CPU load (where the race showed)."""
    old = sys.getswitchinterval()
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    ts = [threading.Thread(target=spin, daemon=True) for _ in range(spinners)]
    sys.setswitchinterval(interval)
    for t in ts:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in ts:
            t.join()
        sys.setswitchinterval(old)


def test_shared_memory_kernels_repeat_bit_identical():
    """GEMM (shared slabs) and step_end (block_sum4 tree) repeated under contention, alternating two inputs (so a
    stray np.empty cannot hand back the previous launch's identical values): every repeat equals the first."""
    rng = np.random.default_rng(0)
    tile = kgm.SIM_TILE  # one block of 4 threads for a 4 x 4 C
    As = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(2)]
    Bm = rng.standard_normal((5, 4)).astype(np.float32)
    rows = [rng.standard_normal(8).astype(np.float32) for _ in range(2)]
    first_c, first_l = [None, None], [None, None]
    with _contention():
        for rep in range(40):
            v = rep % 2
            C = np.zeros((4, 4), np.float32)
            kgm.launch_gemm(C, As[v], Bm, tile=tile)
            losses = np.zeros(1, np.float32)
            kstep.launch_step_end(losses, rows[v], np.zeros(2, np.int64), threads=8)
            if first_c[v] is None:
                first_c[v], first_l[v] = C, losses
                np.testing.assert_allclose(C, As[v] @ Bm, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(losses[0], rows[v].sum(dtype=np.float64), rtol=1e-5, atol=1e-6)
            assert C.tobytes() == first_c[v].tobytes(), f"gemm repeat {rep} differs"
            assert losses.tobytes() == first_l[v].tobytes(), f"step_end repeat {rep} differs"
