"""ItemMap: original item ids <-> item indices 0..N-1, with one policy for ids the model has never seen.

The one id map of the library: ``Model``, the baselines, ``recommend`` and serving all go through it, so an id
is validated, looked up and reported the same way everywhere. Ids are kept sorted (the index of an id is its
rank), so the map is an array, not a dict.

Ids are of one of two kinds: integers (an int64 array: 8 bytes an item, a vectorised ``searchsorted`` lookup)
or strings (an object array of Python ``str``, looked up through a hash index). A lookup takes ids of the
map's kind only: ``"7"`` is never item ``7``, nor ``7`` item ``"7"`` (that silent conversion is how distinct
ids used to merge).
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import pandas as pd

ON_UNKNOWN = ("warn", "ignore", "raise")
_NEED = "a sequence of item ids (list / tuple / 1-D array of ints, or of strs)"


class UnknownItemError(KeyError):
    """An item id that the model has never seen (raised only when asked to: on_unknown='raise')."""


def check_on_unknown(on_unknown: str) -> str:
    if on_unknown not in ON_UNKNOWN:
        raise ValueError(f"on_unknown must be 'warn', 'ignore' or 'raise'; got {on_unknown!r}")
    return on_unknown


def id_kind(ids: np.ndarray) -> str:
    """'str' for an object array (of str, as every id array of this library), 'int' otherwise."""
    return "str" if ids.dtype == object else "int"


def _str_array(a: np.ndarray, what: str) -> np.ndarray:
    """An object array that holds only str -> the same as an object array of plain Python str."""
    if pd.api.types.infer_dtype(a, skipna=False) != "string":
        vals = a.tolist()
        bad = next(v for v in vals if not isinstance(v, str))
        if isinstance(bad, numbers.Number) and not isinstance(bad, bool) and any(isinstance(v, str) for v in vals):
            raise ValueError(f"{what} mixes string and integer item ids (e.g. {bad!r}); ids are either all ints "
                             f"or all strs")
        raise ValueError(f"{what} must be {_NEED}; got {bad!r}")
    if any(type(v) is not str for v in a.tolist()):  # np.str_ and other str subclasses -> plain str
        a = np.array([str.__str__(v) for v in a.tolist()], dtype=object)
    return a


_KIND_WORDS = {"int": "integers", "str": "strings"}


def as_item_array(x, what: str = "session_items", kind: str | None = "int") -> np.ndarray:
    """A flat sequence of item ids -> int64 array (integers; floats that are exactly integer) or object array
    of Python str (strings, exactly as given); anything else, or a mix of ints and strs, is a ValueError.

    ``kind``: the ids' required type, 'int' (the default: integer ids only, as this function always took),
    'str', or None (either)."""
    a = _parse_ids(x, what)
    if kind is not None and a.size and id_kind(a) != kind:
        raise ValueError(f"{what}: expected {_KIND_WORDS[kind]} as item ids, got {a[:1].tolist()[0]!r}")
    return a


def _parse_ids(x, what: str) -> np.ndarray:
    if isinstance(x, (str, bytes, dict, set, frozenset)):
        raise ValueError(f"{what} must be {_NEED}; got {type(x).__name__}")
    if np.isscalar(x) or x is None:
        raise ValueError(f"{what} must be {_NEED}; got {x!r}")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        raise ValueError(f"{what} must be a flat sequence of item ids; got a nested sequence of uneven "
                         f"shape") from None
    if a.ndim != 1:
        raise ValueError(f"{what} must be a flat (1-D) sequence of item ids; got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    kind = a.dtype.kind
    if kind in "iu":
        if kind == "u" and a.dtype.itemsize == 8 and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{what}: item ids must fit in int64")
        return a.astype(np.int64, copy=False)
    if kind == "b":
        raise ValueError(f"{what} must hold item ids (ints or strs); got booleans")
    if kind == "f":
        bad = ~np.isfinite(a) | (a != np.floor(a))
        if bad.any():
            raise ValueError(f"{what} must hold integer item ids; got non-integer value {a[bad][0]!r}")
        return a.astype(np.int64)
    if kind == "U":
        if not isinstance(x, np.ndarray):  # numpy turns [7, "007"] into strings: check what was given
            a = np.empty(len(x), dtype=object)
            a[:] = list(x)
            return _str_array(a, what)
        return a.astype(object)
    if kind == "O":
        if any(isinstance(v, str) for v in a.tolist()):
            return _str_array(a, what)
        out = np.empty(a.size, dtype=np.int64)
        for j, v in enumerate(a.tolist()):
            if isinstance(v, numbers.Integral) and not isinstance(v, bool) and -(2 ** 63) <= v < 2 ** 63:
                out[j] = int(v)
            elif isinstance(v, float) and math.isfinite(v) and v == int(v):
                out[j] = int(v)
            else:
                raise ValueError(f"{what} must be a flat sequence of item ids (ints or strs); element {j} is {v!r}")
        return out
    raise ValueError(f"{what} must hold item ids (ints or strs); got {a.dtype} values such as {a[:3].tolist()}")


def sorted_ids(ids, what: str = "item_ids") -> np.ndarray:
    """A non-empty 1-D array of sorted unique ids -> int64 or object-str array (ValueError if not)."""
    a = np.asarray(ids)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array")
    if a.dtype.kind == "U" and not isinstance(ids, np.ndarray):  # numpy made [7, "8"] all strings: check
        a = np.empty(len(ids), dtype=object)
        a[:] = list(ids)
    if a.dtype.kind in "OU":
        a = _str_array(a.astype(object, copy=False), what)
    else:
        a = a.astype(np.int64, copy=False)
    if a.size > 1 and not np.all(a[1:] > a[:-1]):
        raise ValueError(f"{what} must be sorted and unique")
    return a


class ItemMap:
    """Sorted unique item ids (int64, or object-dtype str); ``index`` maps ids to their positions under an
    unknown-id policy."""

    def __init__(self, ids, owner: str = "the model"):
        self.ids = sorted_ids(ids)
        self.kind = id_kind(self.ids)
        self.owner = owner
        self._hash = None  # str maps: a pandas Index over ids, built on the first lookup

    def __len__(self) -> int:
        return int(self.ids.size)

    def full(self, shape) -> np.ndarray:
        """An id array of this map's dtype filled with the padding id: -1 (int maps) or None (str maps)."""
        return np.full(shape, None if self.kind == "str" else -1, dtype=self.ids.dtype)

    def as_ids(self, ids, what: str) -> np.ndarray:
        """A flat sequence of ids of this map's kind -> int64 or object-str array (ValueError naming ``what``)."""
        a = _parse_ids(ids, what)
        if a.size and id_kind(a) != self.kind:
            have, got = _KIND_WORDS[self.kind], _KIND_WORDS[id_kind(a)]
            raise ValueError(f"{what}: the item ids of {self.owner} are {have}, these are {got} (e.g. "
                             f"{a[:1].tolist()[0]!r}); pass ids of the same type as at training")
        return a

    def lookup(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the map's kind -> (positions clipped to [0, N), known mask)."""
        if self.kind == "str":
            if self._hash is None:
                self._hash = pd.Index(self.ids, dtype=object)
            pos = self._hash.get_indexer(a)
            known = pos >= 0
            return np.where(known, pos, 0).astype(np.int64), known
        pos = np.minimum(np.searchsorted(self.ids, a), self.ids.size - 1)
        return pos, self.ids[pos] == a

    def index(self, ids, on_unknown: str = "warn", what: str = "session_items", stacklevel: int = 3
              ) -> tuple[np.ndarray, np.ndarray]:
        """Ids -> (indices of the known ones, int64; known mask). Unknown ids are skipped with a warning
        ('warn'), silently ('ignore') or raise UnknownItemError ('raise')."""
        check_on_unknown(on_unknown)
        a = self.as_ids(ids, what)
        if a.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
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
        a = self.as_ids(ids, what)
        if a.size == 0:
            return np.zeros(0, dtype=np.int64)
        pos, known = self.lookup(a)
        return np.unique(pos[known])

    def scalar_index(self, item) -> int:
        """One original id -> its index, or -1 if unknown. ValueError if it is not of the map's kind."""
        if self.kind == "str":
            if not isinstance(item, str):
                raise ValueError(f"item id must be a str (the item ids of {self.owner} are strings); got {item!r}")
            if self._hash is None:
                self._hash = pd.Index(self.ids, dtype=object)
            return int(self._hash.get_indexer([str.__str__(item)])[0])
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
