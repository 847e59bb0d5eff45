"""Backends behind one interface (``base.Backend``), imported lazily: numpy (reference), cpu (Numba), cuda.

``import gru4rec_kernels`` never imports cupy or numba.cuda; only ``backend="cuda"`` (or "auto" on a machine
with a usable GPU) does.
"""
from __future__ import annotations

import os
import warnings

BACKENDS = ("auto", "numpy", "cpu", "cuda")


def cuda_usable() -> tuple[bool, str]:
    """(usable, reason). Usable = a real GPU with cupy + numba.cuda, or the CUDA simulator is enabled."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        try:
            from numba import cuda  # noqa: F401
        except Exception as e:  # pragma: no cover - numba-cuda missing
            return False, f"NUMBA_ENABLE_CUDASIM=1 but numba.cuda cannot be imported ({e})"
        return True, "CUDA simulator"
    try:
        import cupy
    except Exception:
        return False, "cupy is not installed (pip install 'gru4rec-kernels[gpu]')"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        warnings.warn(f"cupy is installed but no CUDA device is usable: {e}")
        return False, f"no usable CUDA device ({e})"
    if n < 1:
        return False, "no CUDA device found"
    try:
        from numba import cuda
        if not cuda.is_available():
            return False, "numba.cuda reports no usable device (install numba-cuda[cu13])"
    except Exception as e:
        return False, f"numba.cuda cannot be imported ({e}); pip install 'gru4rec-kernels[gpu]'"
    return True, "GPU"


def resolve(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")
    if name == "auto":
        ok, _ = cuda_usable()
        return "cuda" if ok and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" else "cpu"
    if name == "cuda":
        ok, why = cuda_usable()
        if not ok:
            raise RuntimeError(f"backend='cuda' needs a usable CUDA GPU: {why}. Use backend='cpu' (or 'auto'), "
                               "or set NUMBA_ENABLE_CUDASIM=1 before importing numba to run the kernels in the "
                               "CUDA simulator (slow; for tests).")
    return name


def backend_class(name: str):
    name = resolve(name)
    if name == "numpy":
        from .numpy import NumpyBackend
        return NumpyBackend
    if name == "cpu":
        from .cpu import CpuBackend
        return CpuBackend
    from .cuda import CudaBackend
    return CudaBackend
