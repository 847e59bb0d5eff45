"""What is specific to the cuda backend; the backend contract (training steps and evaluation against the numpy
backend, state exchange, bad input) is tests/test_backends.py, shared with the cpu backend.

Here the backend runs in Numba's CUDA simulator (tests/conftest.py); on a machine with a GPU the ``gpu`` tests
run too (CUDA-graph replay equals eager steps).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from steps import RUN_CASES, logq_arrays, make_cfg, make_schedule

from gru4rec_kernels.layout import init_params

N_ITEMS = 17


def cuda_backend(cfg, params, logq=None, **kw):
    from gru4rec_kernels.backends.cuda import CudaBackend
    return CudaBackend(cfg, N_ITEMS, params, *(logq or (None, None)), **kw)


def test_cuda_backend_without_gpu_or_simulator_raises():
    """Outside the simulator, on a machine without a usable GPU, backend='cuda' raises at once, actionably."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("a real GPU is usable here")
    code = textwrap.dedent("""
        import numpy as np
        from gru4rec_kernels.backends import resolve
        from gru4rec_kernels.config import TrainConfig
        from gru4rec_kernels.layout import init_params
        try:
            resolve("cuda")
        except RuntimeError as e:
            print("RESOLVE:", e)
        from gru4rec_kernels.backends.cuda import CudaBackend
        cfg = TrainConfig(layers=[4])
        _, params = init_params(cfg, 5)
        try:
            CudaBackend(cfg, 5, params)
        except RuntimeError as e:
            print("CONSTRUCT:", e)
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "RESOLVE:" in out and "CONSTRUCT:" in out, out
    assert "backend='cpu'" in out and "NUMBA_ENABLE_CUDASIM" in out, out


# ============================================================================================ GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("case", ["ce-constrained-1", "bprmax-onehot-2", "top1-onehot-1-clip"])
def test_graph_replay_equals_eager_steps(case):
    cfg = make_cfg(batch_size=3, learning_rate=0.1, **RUN_CASES[case])
    _, params = init_params(cfg, N_ITEMS, seed=5)
    lq = logq_arrays(cfg, N_ITEMS)
    sched = make_schedule(29, 3, 5, N_ITEMS, seed=6)
    eager = cuda_backend(cfg, params, lq, graph_steps=0)
    graph = cuda_backend(cfg, params, lq, graph_steps=8)
    le = np.concatenate([eager.train_chunk(*[a[:13] for a in sched], 7), eager.train_chunk(*[a[13:] for a in sched],
                                                                                            20)])
    lg = np.concatenate([graph.train_chunk(*[a[:13] for a in sched], 7), graph.train_chunk(*[a[13:] for a in sched],
                                                                                            20)])
    assert graph._graphs, "no CUDA graph was captured"
    np.testing.assert_allclose(lg, le, rtol=1e-6, atol=1e-7)
    pe, pg = eager.get_params(), graph.get_params()
    for k in pe:
        np.testing.assert_allclose(pg[k], pe[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_graph_capture_is_cached_per_key_and_always_ended(monkeypatch):
    """CudaBackend._captured, behind every CUDA graph of the cuda backends (training steps, evaluation steps,
    p-RNN phases): one capture per key, under an allocator of its own pool, replayed from the cache after; the
    capture ends even when recording raises, and nothing is cached then. With a stand-in cupy and stream: the
    capture itself needs a GPU."""
    import contextlib
    import types

    from gru4rec_kernels.backends.cuda import CudaBackend

    calls = []

    class Stream:
        def begin_capture(self, mode=None):
            calls.append(("begin", mode))

        def end_capture(self):
            calls.append("end")
            return object()

    class Pool:
        def malloc(self, nbytes):
            raise AssertionError("not called here")

    @contextlib.contextmanager
    def using_allocator(malloc):
        calls.append(("allocator", type(malloc.__self__).__name__))
        yield

    cuda = types.SimpleNamespace(MemoryPool=Pool, runtime=types.SimpleNamespace(streamCaptureModeRelaxed=1),
                                 using_allocator=using_allocator)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    be = types.SimpleNamespace(_stream=Stream())
    cache = {}
    graph = CudaBackend._captured(be, cache, 4, lambda: calls.append("record"))
    assert calls == [("allocator", "Pool"), ("begin", 1), "record", "end"]
    assert CudaBackend._captured(be, cache, 4, lambda: calls.append("record")) is graph
    assert len(calls) == 4 and cache[4][0] is graph and isinstance(cache[4][1], Pool)

    def boom():
        raise RuntimeError("a launch failed while capturing")

    with pytest.raises(RuntimeError, match="while capturing"):
        CudaBackend._captured(be, cache, 8, boom)
    assert calls[-1] == "end" and 8 not in cache
