"""ItemMap: original item ids <-> item indices 0..N-1, with one policy for ids the model has never seen.

The one id map of the library: ``Model``, the baselines, ``recommend`` and serving all go through it, so an id
is validated, looked up and reported the same way everywhere. Ids are kept sorted (the index of an id is its
rank), so the map is an array, not a dict: 8 bytes an item, and a vectorised ``searchsorted`` lookup.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

ON_UNKNOWN = ("warn", "ignore", "raise")


class UnknownItemError(KeyError):
    """An item id that the model has never seen (raised only when asked to: on_unknown='raise')."""


def check_on_unknown(on_unknown: str) -> str:
    if on_unknown not in ON_UNKNOWN:
        raise ValueError(f"on_unknown must be 'warn', 'ignore' or 'raise'; got {on_unknown!r}")
    return on_unknown


def as_item_array(x, what: str = "session_items") -> np.ndarray:
    """A flat sequence of integer item ids -> int64 array; anything else is a ValueError that says what."""
    if isinstance(x, (str, bytes, dict, set, frozenset)):
        raise ValueError(f"{what} must be a sequence of integer item ids (list / tuple / 1-D array); "
                         f"got {type(x).__name__}")
    if np.isscalar(x) or x is None:
        raise ValueError(f"{what} must be a sequence of integer item ids (list / tuple / 1-D array); got {x!r}")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        raise ValueError(f"{what} must be a flat sequence of integer item ids; got a nested sequence of uneven "
                         f"shape") from None
    if a.ndim != 1:
        raise ValueError(f"{what} must be a flat (1-D) sequence of integer item ids; got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    kind = a.dtype.kind
    if kind in "iu":
        if kind == "u" and a.dtype.itemsize == 8 and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{what}: item ids must fit in int64")
        return a.astype(np.int64, copy=False)
    if kind == "b":
        raise ValueError(f"{what} must hold integer item ids; got booleans")
    if kind == "f":
        bad = ~np.isfinite(a) | (a != np.floor(a))
        if bad.any():
            raise ValueError(f"{what} must hold integer item ids; got non-integer value {a[bad][0]!r}")
        return a.astype(np.int64)
    if kind == "O":
        out = np.empty(a.size, dtype=np.int64)
        for j, v in enumerate(a):
            if isinstance(v, numbers.Integral) and not isinstance(v, bool):
                out[j] = int(v)
            elif isinstance(v, float) and math.isfinite(v) and v == int(v):
                out[j] = int(v)
            else:
                raise ValueError(f"{what} must be a flat sequence of integer item ids; element {j} is {v!r}")
        return out
    raise ValueError(f"{what} must hold integer item ids; got {a.dtype} values such as {a[:3].tolist()}")


class ItemMap:
    """Sorted unique item ids; ``index`` maps ids to their positions under an unknown-id policy."""

    def __init__(self, ids, owner: str = "the model"):
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("item_ids must be a non-empty 1-D array")
        self.ids = ids.astype(np.int64, copy=False)
        if self.ids.size > 1 and not np.all(self.ids[1:] > self.ids[:-1]):
            raise ValueError("item_ids must be sorted and unique")
        self.owner = owner

    def __len__(self) -> int:
        return int(self.ids.size)

    def lookup(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int64 ids -> (positions clipped to [0, N), known mask)."""
        pos = np.minimum(np.searchsorted(self.ids, a), self.ids.size - 1)
        return pos, self.ids[pos] == a

    def index(self, ids, on_unknown: str = "warn", what: str = "session_items", stacklevel: int = 3
              ) -> tuple[np.ndarray, np.ndarray]:
        """Ids -> (indices of the known ones, int64; known mask). Unknown ids are skipped with a warning
        ('warn'), silently ('ignore') or raise UnknownItemError ('raise')."""
        check_on_unknown(on_unknown)
        a = as_item_array(ids, what)
        if a.size == 0:
            return a, np.zeros(0, dtype=bool)
        pos, known = self.lookup(a)
        if not known.all():
            unknown = a[~known]
            if on_unknown == "raise":
                raise UnknownItemError(f"item id(s) unknown to {self.owner}: {unknown[:10].tolist()}")
            if on_unknown == "warn":
                warnings.warn(f"skipping {unknown.size} item id(s) unknown to {self.owner}: "
                              f"{unknown[:10].tolist()}", stacklevel=stacklevel)
        return pos[known], known

    def index_set(self, ids, what: str) -> np.ndarray | None:
        """exclude / candidates -> sorted unique item indices (None stays None); unknown ids are ignored."""
        if ids is None:
            return None
        a = as_item_array(ids, what)
        if a.size == 0:
            return np.zeros(0, dtype=np.int64)
        pos, known = self.lookup(a)
        return np.unique(pos[known])

    def scalar_index(self, item) -> int:
        """One original id -> its index, or -1 if unknown. ValueError if it is not an integer."""
        if isinstance(item, bool) or not isinstance(item, (numbers.Integral, np.integer)):
            if isinstance(item, (float, np.floating)) and math.isfinite(item) and item == int(item):
                item = int(item)
            else:
                raise ValueError(f"item id must be an integer; got {item!r}")
        item = int(item)
        if not -(2 ** 63) <= item < 2 ** 63:
            return -1
        p = int(np.searchsorted(self.ids, item))
        return p if p < self.ids.size and self.ids[p] == item else -1
