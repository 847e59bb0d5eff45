"""Numba's cache files under concurrent writers (gru4rec_kernels._cache.lock_numba_cache)."""
import threading
import time

import pytest

import gru4rec_kernels  # noqa: F401  (installs the lock)
from gru4rec_kernels._cache import _dir_lock

caching = pytest.importorskip("numba.core.caching")


def test_two_writers_of_one_function_keep_each_signature_its_own_code(tmp_path):
    """Two cache writers (two processes compiling two signatures of one function) interleaved as the race needs
    it: both read the empty index, the second writes its index entry first, the first overwrites the index and
    writes its data, then the second writes its data. Unlocked, both chose ``f.1.nbc`` and the index gives the
    first signature the second's machine code; locked, the second writer waits and each signature loads its
    own code."""
    first, second = (caching.IndexDataCacheFile(str(tmp_path), "f-1.py311", "stamp") for _ in range(2))

    def delayed(method, seconds):
        def run(*args):
            time.sleep(seconds)
            return method(*args)
        return run

    first._save_index = delayed(first._save_index, 0.3)
    second._save_data = delayed(second._save_data, 0.6)
    t = threading.Thread(target=first.save, args=("sig-float32", b"code for float32"))
    t.start()
    time.sleep(0.1)
    second.save("sig-float64", b"code for float64")
    t.join()
    reader = caching.IndexDataCacheFile(str(tmp_path), "f-1.py311", "stamp")
    assert reader.load("sig-float32") == b"code for float32"
    assert reader.load("sig-float64") == b"code for float64"


def test_loader_waits_for_a_writer(tmp_path):
    """A load never runs while a save holds the directory's lock (it would see the index before the data)."""
    order = []
    with _dir_lock(str(tmp_path), exclusive=True):
        f = caching.IndexDataCacheFile(str(tmp_path), "g-1.py311", "stamp")
        t = threading.Thread(target=lambda: order.append(("load", f.load("k"))))
        t.start()
        time.sleep(0.2)
        order.append("writer done")
    t.join()
    assert order == ["writer done", ("load", None)]
