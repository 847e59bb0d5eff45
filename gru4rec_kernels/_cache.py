"""Keep Numba's on-disk cache consistent with the sources.

Numba invalidates a cached function only when its own file changes, not when a function it calls (or a
namedtuple it takes) changes in another module; the cpu backend spans several modules, so after an edit or an
in-place upgrade a stale cache entry can run code compiled against old layouts (seen here as a segfault). At
import, a hash of the package's sources is compared with the one stored beside the caches; when it differs, the
package's cache files are removed (Numba then recompiles, once). Any error (a read-only install) is ignored.
"""
from __future__ import annotations

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
        for p in _PKG.rglob("__pycache__/*"):
            if p.suffix in (".nbi", ".nbc"):
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
