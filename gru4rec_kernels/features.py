"""Item features for the p-RNN: one matrix per feature source, its rows aligned with an ItemMap's item index.

An ``ItemFeatures`` is a name and a matrix of N rows (N = the items of the click log's ItemMap, row i = item
index i) and D columns: dense (float32 [N, D], e.g. image vectors) or sparse (scipy CSR float32 [N, D], e.g.
one-hot categories or TF-IDF terms; the model reads it row by row and never makes it dense). Items of the map
without a feature row get a zero row; they are counted (``n_missing``) and a warning names the count, or
``on_missing='raise'`` refuses them. Feature rows of ids the map does not hold are dropped and counted
(``n_unknown``): a catalogue larger than the click log is normal.

Built from a DataFrame (``from_frame``: numeric columns -> dense values, categorical or string columns ->
one-hot), from a file through the same path (``read_item_features``), or from a matrix and an id array
(``from_matrix``). Ids go through the ItemMap of the clicks, so they must be of its kind (ints or strs): a
string "7" is never the item 7.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .columns import to_int_ids
from .data import _infer_sep, missing_columns_error, read_csv_checked
from .itemmap import ItemMap

__all__ = ["ItemFeatures", "read_item_features", "ON_MISSING"]

ON_MISSING = ("warn", "raise")
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(eq=False)
class ItemFeatures:
    """A feature source: ``matrix`` [N, D] (np.ndarray float32, C order, or scipy CSR float32 with sorted,
    unique column indices per row) aligned with ``item_ids`` (the ItemMap's sorted ids: row i = item index i).
    ``columns``: the D column names; ``n_missing``: items with no feature row (zero rows); ``n_unknown``:
    feature rows dropped because their id is not an item of the map."""

    name: str
    matrix: Any
    item_ids: np.ndarray
    columns: tuple[str, ...] = field(default=())
    n_missing: int = 0
    n_unknown: int = 0

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.matrix)

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __repr__(self) -> str:
        kind = f"CSR, {self.matrix.nnz} non-zeros" if self.sparse else "dense"
        return (f"ItemFeatures({self.name!r}, {self.n_items} x {self.dim} {kind}, n_missing={self.n_missing}, "
                f"n_unknown={self.n_unknown})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_matrix(cls, matrix, ids, item_map, *, name: str = "features", columns=None,
                    on_missing: str = "warn") -> "ItemFeatures":
        """Feature rows ``matrix`` [R, D] (a 2-D numeric array, or any scipy sparse matrix: stored as CSR) for
        the item ids ``ids`` [R] (unique, of the map's kind), aligned to ``item_map`` (an ItemMap, or the sorted
        item ids of a SessionData / Model)."""
        imap = _as_item_map(item_map)
        _check_name(name)
        _check_on_missing(on_missing)
        m = _as_feature_matrix(matrix, name)
        a = imap.as_ids(ids, f"ids of features {name!r}")
        if a.size != m.shape[0]:
            raise ValueError(f"features {name!r}: {m.shape[0]} matrix rows but {a.size} ids; give one id per row")
        cols = _column_names(columns, m.shape[1], name)
        return cls._aligned(name, m, a, imap, cols, on_missing)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, item_map, *, item_key: str = "ItemId", columns=None, categorical=None,
                   name: str | None = None, sparse: bool | None = None, on_missing: str = "warn"
                   ) -> "ItemFeatures":
        """One row per item: ``item_key`` holds the id, ``columns`` (default: every other column) the features.

        Numeric (and boolean) columns become one value each; columns of strings / categories, and the numeric
        columns named in ``categorical``, become one-hot blocks (one column per distinct value, named
        ``col=value``). The matrix is CSR when a one-hot block is present, else dense; ``sparse`` forces
        either. ``name`` defaults to the columns joined by '+'."""
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"from_frame expects a pandas DataFrame; got {type(df).__name__}")
        imap = _as_item_map(item_map)
        _check_on_missing(on_missing)
        if item_key not in df.columns:
            raise missing_columns_error([item_key], list(df.columns), "item features")
        if columns is None:
            columns = [c for c in df.columns if c != item_key]
        elif isinstance(columns, str):
            columns = [columns]
        columns = list(columns)
        categorical = [categorical] if isinstance(categorical, str) else list(categorical or [])
        if not columns:
            raise ValueError(f"item features: no feature column (the frame has only {list(df.columns)})")
        if len(set(columns)) != len(columns):
            raise ValueError(f"item features: a column is listed twice in columns={columns}")
        unknown = [c for c in columns + categorical if c not in df.columns]
        if unknown:
            raise ValueError(f"item features: unknown column(s) {unknown}; the columns are {list(df.columns)}")
        if item_key in columns:
            raise ValueError(f"item features: the id column {item_key!r} cannot also be a feature column")
        stray = [c for c in categorical if c not in columns]
        if stray:
            raise ValueError(f"item features: categorical column(s) {stray} are not among columns={columns}")
        if sparse is not None and not isinstance(sparse, bool):
            raise ValueError(f"sparse must be None (CSR iff a one-hot block is present), True or False; got {sparse!r}")
        name = "+".join(str(c) for c in columns) if name is None else name
        _check_name(name)
        if len(df) == 0:
            raise ValueError(f"item features {name!r}: the frame has no rows")
        ids = df[item_key]
        na = pd.isna(ids).to_numpy(dtype=bool)
        if na.any():
            raise ValueError(f"item features: column {item_key!r} has {int(na.sum())} missing id(s), first at row "
                             f"{int(np.argmax(na))}")
        a = imap.as_ids(ids.to_numpy(), f"column {item_key!r}")
        blocks, names, any_onehot = [], [], False
        for c in columns:
            s = df[c]
            na = pd.isna(s).to_numpy(dtype=bool)
            if na.any():
                raise ValueError(f"item features: column {c!r} has {int(na.sum())} missing (NaN/None) value(s), "
                                 f"first at row {int(np.argmax(na))}; fill or drop them (an item without features "
                                 f"is one left out of the frame)")
            numeric = pd.api.types.is_numeric_dtype(s.dtype) and not isinstance(s.dtype, pd.CategoricalDtype)
            if numeric and c not in categorical:
                v = s.to_numpy(dtype=np.float64)
                _check_finite(v, f"item features: column {c!r}")
                blocks.append(sp.csr_matrix(v.astype(np.float32)[:, None]))
                names.append(str(c))
            else:
                codes, uniques = _factorize(s, c)
                n = len(df)
                blocks.append(sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), codes)),
                                            shape=(n, len(uniques))))
                names.extend(f"{c}={u}" for u in uniques)
                any_onehot = True
        m = sp.hstack(blocks, format="csr", dtype=np.float32)
        as_sparse = any_onehot if sparse is None else sparse
        m = _canonical_csr(m) if as_sparse else np.ascontiguousarray(m.toarray(), dtype=np.float32)
        return cls._aligned(name, m, a, imap, tuple(names), on_missing)

    @classmethod
    def _aligned(cls, name: str, m, ids: np.ndarray, imap: ItemMap, cols: tuple[str, ...], on_missing: str
                 ) -> "ItemFeatures":
        """Rows (matrix m, ids) -> the [N, D] matrix in the map's item order."""
        dup = pd.Index(ids).duplicated()
        if dup.any():
            raise ValueError(f"features {name!r}: item id {ids[[np.argmax(dup)]].tolist()[0]!r} has more than one "
                             f"feature row "
                             f"({int(dup.sum())} duplicate id(s)); give one row per item")
        N = len(imap)
        if ids.size:
            pos, known = imap.lookup(ids)
        else:
            pos, known = np.zeros(0, np.int64), np.zeros(0, bool)
        src = np.full(N, -1, dtype=np.int64)  # feature row of every item, -1 if none
        src[pos[known]] = np.flatnonzero(known)
        missing = src < 0
        n_missing = int(missing.sum())
        if n_missing and on_missing == "raise":
            raise ValueError(f"features {name!r}: {n_missing} of {N} items have no feature row, e.g. "
                             f"{imap.ids[missing][:5].tolist()}")
        if n_missing:
            warnings.warn(f"features {name!r}: {n_missing} of {N} items have no feature row; their features are "
                          f"zero", stacklevel=3)
        R, D = m.shape
        if sp.issparse(m):
            # an appended empty row stands in for every missing item
            ext = sp.vstack([m, sp.csr_matrix((1, D), dtype=np.float32)], format="csr")
            out = _canonical_csr(ext[np.where(missing, R, src)])
        else:
            out = np.zeros((N, D), dtype=np.float32)
            out[~missing] = m[src[~missing]]
        return cls(name=name, matrix=out, item_ids=imap.ids, columns=cols, n_missing=n_missing,
                   n_unknown=int((~known).sum()))


def read_item_features(path: str | os.PathLike, item_map, *, item_key: str = "ItemId", columns=None,
                       categorical=None, name: str | None = None, sep: str | None = None,
                       sparse: bool | None = None, on_missing: str = "warn") -> ItemFeatures:
    """Read a csv / tsv (optionally compressed) with a header row and build the features via ``from_frame``.

    The id column is read as written and converted to the map's kind (integer maps: decimal integers; string
    maps: exact strings). Every other chosen column is a number column if all its values parse as numbers,
    else a categorical one; ``categorical`` one-hot encodes numeric-looking columns too (e.g. category ids).
    ``sep`` defaults to tab for .tsv / .txt, else comma. E.g. DIGINETICA's categories:
    ``read_item_features("item_categories.tsv.gz", data.item_ids, item_key="item_id",
    categorical=["category_id"])``."""
    path = os.fspath(path)
    imap = _as_item_map(item_map)
    sep = _infer_sep(path) if sep is None else sep
    df = read_csv_checked(path, sep=sep, dtype=str, keep_default_na=False)
    if item_key not in df.columns:
        raise missing_columns_error([item_key], list(df.columns), path)
    categorical = [categorical] if isinstance(categorical, str) else list(categorical or [])
    chosen = [c for c in df.columns if c != item_key] if columns is None else \
        ([columns] if isinstance(columns, str) else list(columns))
    unknown = [c for c in chosen + categorical if c not in df.columns]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {unknown}; the columns are {list(df.columns)}")
    out = pd.DataFrame(index=df.index)
    ids = df[item_key]
    empty = (ids == "").to_numpy(dtype=bool)
    if empty.any():
        raise ValueError(f"{path}: column {item_key!r} has {int(empty.sum())} empty id(s), first at data row "
                         f"{int(np.argmax(empty))}")
    out[item_key] = to_int_ids(ids, item_key) if imap.kind == "int" else ids.astype(object)
    for c in chosen:
        if c == item_key:
            raise ValueError(f"{path}: the id column {item_key!r} cannot also be a feature column")
        s = df[c]
        empty = (s.str.strip() == "").to_numpy(dtype=bool)
        if empty.any():
            raise ValueError(f"{path}: column {c!r} has {int(empty.sum())} empty value(s), first at data row "
                             f"{int(np.argmax(empty))}; fill them, or leave the item out of the file")
        num = pd.to_numeric(s, errors="coerce") if c not in categorical else None
        out[c] = num if num is not None and not num.isna().any() else s
    return ItemFeatures.from_frame(out, imap, item_key=item_key, columns=chosen, categorical=categorical,
                                   name=name, sparse=sparse, on_missing=on_missing)


# ---------------------------------------------------------------------------------------------------- helpers
def _as_item_map(item_map) -> ItemMap:
    if isinstance(item_map, ItemMap):
        return item_map
    try:
        return ItemMap(item_map, owner="the click log")
    except ValueError as e:
        raise ValueError(f"item_map must be an ItemMap or the sorted unique item ids of the clicks "
                         f"(SessionData.item_ids): {e}") from None


def _check_name(name) -> None:
    if not isinstance(name, str) or not name or name != name.strip() or name == "id":
        raise ValueError(f"a feature name is a non-empty string without surrounding spaces, not 'id' (the item ID "
                         f"source of a p-RNN); got {name!r}")


def _check_on_missing(on_missing) -> None:
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING} (items without features are never silent); got "
                         f"{on_missing!r}")


def _check_finite(v: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(v) | (np.abs(v) > _F32_MAX)
    if bad.any():
        i = int(np.argmax(bad.ravel()))
        raise ValueError(f"{what} has {int(bad.sum())} value(s) that are NaN, infinite or beyond float32, e.g. "
                         f"{v.ravel()[i]!r} at flat position {i}")


def _canonical_csr(m) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sum_duplicates()  # also sorts the indices
    m.eliminate_zeros()
    return m


def _as_feature_matrix(matrix, name: str):
    """A dense 2-D float32 array or a canonical float32 CSR matrix; ValueError for anything else."""
    what = f"features {name!r}"
    if sp.issparse(matrix):
        if matrix.ndim != 2:
            raise ValueError(f"{what}: the matrix must be 2-D; got shape {matrix.shape}")
        if matrix.dtype.kind not in "iufb":
            raise ValueError(f"{what}: the matrix must hold real numbers; got dtype {matrix.dtype}")
        m = sp.csr_matrix(matrix)
        _check_finite(np.asarray(m.data, dtype=np.float64), what)
        if m.shape[1] < 1:
            raise ValueError(f"{what}: the matrix has no columns")
        return _canonical_csr(m)
    try:
        a = np.asarray(matrix)
    except (ValueError, TypeError):
        raise ValueError(f"{what}: the matrix must be a 2-D numeric array or a scipy sparse matrix") from None
    if a.ndim != 2:
        raise ValueError(f"{what}: the matrix must be 2-D [rows, D]; got shape {a.shape}")
    if a.dtype.kind not in "iufb":
        raise ValueError(f"{what}: the matrix must hold real numbers; got dtype {a.dtype}")
    if a.shape[1] < 1:
        raise ValueError(f"{what}: the matrix has no columns")
    _check_finite(a.astype(np.float64, copy=False), what)
    return np.ascontiguousarray(a, dtype=np.float32)


def _column_names(columns, D: int, name: str) -> tuple[str, ...]:
    if columns is None:
        return tuple(str(j) for j in range(D))
    cols = tuple(str(c) for c in columns)
    if len(cols) != D:
        raise ValueError(f"features {name!r}: {len(cols)} column names for {D} columns")
    return cols


def _factorize(s: pd.Series, col: str) -> tuple[np.ndarray, list]:
    """(code of every row, sorted distinct values) of a categorical column."""
    if s.dtype == object and pd.api.types.infer_dtype(s, skipna=False).startswith("mixed"):
        raise ValueError(f"item features: column {col!r} mixes value types (e.g. numbers and strings), so "
                         f"1 and '1' would be two categories of one name; convert it to one type")
    codes, uniques = pd.factorize(s, sort=True)
    return codes.astype(np.int64), list(uniques)
