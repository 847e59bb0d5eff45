"""Test-session setup: the CUDA simulator where no GPU is usable, and the ``gpu`` marker's skip.

``NUMBA_ENABLE_CUDASIM`` is read once, when ``numba.cuda`` is first imported, so it is decided here, before any
test module imports it. A real GPU is probed with cupy only (importing numba.cuda here would fix the mode);
where cupy is missing or finds no device, the kernels and the cuda backend run in Numba's CUDA simulator.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# The public session datasets are optional: GRU4REC_DATA names their folder (default: ../shared/data beside the
# repository, where the project's machines keep them). Tests that need one skip when it is absent.
DATA_DIR = Path(os.environ.get("GRU4REC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def dataset(*parts: str) -> Path:
    """A path under the datasets folder (it may not exist: callers skip then)."""
    return DATA_DIR.joinpath(*parts)


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _real_gpu()
if not GPU and "numba.cuda" not in sys.modules:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator runs every CUDA thread as a Python thread and a barrier waits on the GIL's switch interval
    # (5 ms by default): a shorter one makes the kernel tests ~4x faster.
    sys.setswitchinterval(2e-4)


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    import pytest
    skip = pytest.mark.skip(reason="needs a usable CUDA GPU (cupy + a device); none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
