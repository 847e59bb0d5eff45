"""Keep Numba's on-disk cache consistent with the sources.

Numba invalidates a cached function only when its own file changes, not when a function it calls (or a
namedtuple it takes) changes in another module; the cpu backend spans several modules, so after an edit or an
in-place upgrade a stale cache entry can run code compiled against old layouts (seen here as a segfault). At
import, a hash of the package's sources is compared with the one stored beside the caches; when it differs, the
package's cache files are removed (Numba then recompiles, once). Any error (a read-only install) is ignored.

Numba's cache is also not safe across processes: ``IndexDataCacheFile.save`` reads the index, picks the first
free data-file number, rewrites the index and only then writes the data file. Two processes compiling two
signatures of one function at once (pytest-xdist workers, ``tune --n-jobs``, MPI ranks on a cold cache) both
pick ``f.1.nbc``; the index of one then names the other's machine code, and the next process to load that
signature runs code compiled for other argument types (seen as a SIGSEGV in the serving soak). A loader can
also read a freshly written index entry before its data file exists, or while an older file of that name
still holds another source version's code. ``lock_numba_cache`` serialises both per cache directory with an
advisory file lock: save holds it exclusively over the whole read-modify-write, load holds it shared.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent
_STAMP = _PKG / "__pycache__" / "numba_sources.sha1"


def _sources_hash() -> str:
    h = hashlib.sha1()
    for p in sorted(_PKG.rglob("*.py")):
        h.update(str(p.relative_to(_PKG)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def refresh_numba_cache() -> None:
    try:
        digest = _sources_hash()
        if _STAMP.exists() and _STAMP.read_text().strip() == digest:
            return
        for d in {p.parent for p in _PKG.rglob("__pycache__/*.nb[ic]")}:
            with _dir_lock(str(d), exclusive=True):  # never under a loader that has read an index
                for p in d.glob("*.nb[ic]"):
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass
        _STAMP.parent.mkdir(exist_ok=True)
        tmp = _STAMP.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest)
        os.replace(tmp, _STAMP)
    except OSError:
        pass


@contextlib.contextmanager
def _dir_lock(directory: str, exclusive: bool):
    """An advisory flock on ``directory``/numba_cache.lock (shared or exclusive); a no-op where flock is missing
    (Windows) or the directory is not writable."""
    try:
        import fcntl
        fd = os.open(os.path.join(directory, "numba_cache.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def lock_numba_cache() -> None:
    """Wrap Numba's cache-file save (exclusive) and load (shared) in the per-directory lock, once per process.
    Skipped, leaving Numba as it is, if its caching internals have another shape (another Numba version)."""
    try:
        from numba.core.caching import IndexDataCacheFile
    except ImportError:
        return
    save, load = getattr(IndexDataCacheFile, "save", None), getattr(IndexDataCacheFile, "load", None)
    if save is None or load is None or getattr(save, "_gru4rec_locked", False):
        return

    def locked_save(self, key, data):
        with _dir_lock(self._cache_path, exclusive=True):
            return save(self, key, data)

    def locked_load(self, key):
        with _dir_lock(self._cache_path, exclusive=False):
            return load(self, key)

    locked_save._gru4rec_locked = True
    IndexDataCacheFile.save, IndexDataCacheFile.load = locked_save, locked_load
