"""Id and time columns of a click log -> numpy arrays: the conversions and checks ``SessionData`` and the
preprocessing share, so a column one rejects is rejected by the other with the same message.

Ids are integers (int64) or strings (exact Python str, never stripped or parsed): ``encode_ids`` returns
integer ids as they are and string ids as codes into their sorted uniques, so that no per-event Python string
is made and "007", "7", "+7" and " 7 " stay four ids.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_INT_RE = r"[+-]?\d+"


# ---------------------------------------------------------------------------------------------------- column checks
def _check_no_nan(values: Any, col: str) -> None:
    na = pd.isna(values)
    if np.any(na):
        na = np.asarray(na)
        raise ValueError(f"column {col!r} has {int(na.sum())} missing (NaN/None) value(s), first at row "
                         f"{int(np.argmax(na))}; drop or fill those rows first")


def _column_series(values: Any, col: str, requirement: str) -> pd.Series:
    """The column as a Series (no copy), checked for missing values and booleans (which pandas counts as
    numbers); ``requirement`` finishes the error message for booleans."""
    s = values if isinstance(values, pd.Series) else pd.Series(values, copy=False)
    _check_no_nan(s, col)
    if pd.api.types.is_bool_dtype(s.dtype):
        raise ValueError(f"column {col!r} holds booleans; {requirement}")
    return s


def to_int_ids(values: Any, col: str) -> np.ndarray:
    """Ids -> int64. Accepts integers, floats that are exactly integer, strings of decimal integers."""
    s = _column_series(values, col, "ids must be integers")
    dt = s.dtype
    if pd.api.types.is_integer_dtype(dt):
        a = s.to_numpy()
        if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"column {col!r} has ids above 2**63-1; ids must fit in int64")
        return a.astype(np.int64, copy=False)
    if pd.api.types.is_float_dtype(dt):
        a = s.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(a) | (a != np.floor(a)) | (np.abs(a) > 2.0 ** 63 - 1024)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"column {col!r} has non-integer id {a[i]!r} at row {i}; ids must be integers "
                             f"(or floats that are exactly integer)")
        return a.astype(np.int64)
    if pd.api.types.is_object_dtype(dt) or pd.api.types.is_string_dtype(dt):
        st = s.astype(str).str.strip()
        ok = st.str.fullmatch(_INT_RE).to_numpy(dtype=bool)
        if not ok.all():
            i = int(np.argmax(~ok))
            raise ValueError(f"column {col!r} has non-integer id {s.iloc[i]!r} at row {i}; ids must be integers, "
                             f"floats that are exactly integer, or strings of decimal digits")
        num = pd.to_numeric(st, errors="coerce")
        if not pd.api.types.is_integer_dtype(num.dtype) or (num.dtype == np.uint64 and num.max() >= 2 ** 63):
            raise ValueError(f"column {col!r} has ids that do not fit in int64")
        return num.to_numpy().astype(np.int64)
    raise ValueError(f"column {col!r} has dtype {dt}; ids must be integers")


ID_TYPES = ("auto", "str", "int")


def check_id_type(id_type: str) -> str:
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type must be 'auto', 'str' or 'int'; got {id_type!r}")
    return id_type


def _sorted_codes(codes: np.ndarray, uniques: list) -> tuple[np.ndarray, np.ndarray]:
    """(codes into ``uniques``, unique Python strs) -> (codes into the sorted uniques, sorted uniques as an
    object array). Sorted by Python's str order, the order ItemMap and the model file rely on."""
    u = np.empty(len(uniques), dtype=object)
    u[:] = uniques
    order = np.argsort(u, kind="stable")
    rank = np.empty(u.size, dtype=np.int64)
    rank[order] = np.arange(u.size, dtype=np.int64)
    return rank[codes], u[order]


def _str_of_uniques(s: pd.Series, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Factorize, then the str() of every unique value; two values with the same string are an error (they
    would merge into one id)."""
    codes, uniq = pd.factorize(s, sort=False)
    strs = [str(v) for v in np.asarray(uniq, dtype=object).tolist()]
    if len(set(strs)) != len(strs):
        seen: dict[str, Any] = {}
        for v, t in zip(np.asarray(uniq, dtype=object).tolist(), strs):
            if t in seen:
                raise ValueError(f"column {col!r}: the distinct ids {seen[t]!r} and {v!r} are both the string {t!r}; "
                                 f"make the ids distinct strings (or integers) first")
            seen[t] = v
    return _sorted_codes(np.asarray(codes, dtype=np.int64), strs)


def encode_ids(values: Any, col: str, id_type: str = "auto") -> tuple[np.ndarray, np.ndarray | None]:
    """An id column -> ``(ids int64, None)`` for integer ids, or ``(codes int64, sorted unique strs)`` for
    string ids (codes index the sorted uniques, so they order like the strings).

    ``id_type``: 'auto' keeps integer columns (and floats that are exactly integer) as integers and strings
    exactly as given (no stripping, no number parsing: "007", "7", "+7" and " 7 " are four ids); other
    values pandas can factorize (categoricals, UUIDs, ...) become their str(), if those are distinct. A
    column mixing integers and strings is an error. 'str': every id as its string (numbers as their integer's
    decimal string). 'int': integers, parsing decimal strings (the caller's explicit choice: "007" is 7)."""
    check_id_type(id_type)
    if id_type == "int":
        return to_int_ids(values, col), None
    s = _column_series(values, col, "ids must be integers or strings")
    dt = s.dtype
    if isinstance(dt, pd.StringDtype):
        codes, uniq = pd.factorize(s, sort=False)
        return _sorted_codes(np.asarray(codes, dtype=np.int64), [str.__str__(v) for v in uniq.tolist()])
    inferred = pd.api.types.infer_dtype(s, skipna=False) if dt is np.dtype(object) else None
    if inferred == "boolean" or (inferred and inferred.startswith("mixed")
                                  and any(isinstance(v, (bool, np.bool_)) for v in s.tolist())):
        i = next(j for j, v in enumerate(s.tolist()) if isinstance(v, (bool, np.bool_)))
        raise ValueError(f"column {col!r} has non-integer id {s.iloc[i]!r} at row {i}; booleans are not ids")
    numeric = pd.api.types.is_integer_dtype(dt) or pd.api.types.is_float_dtype(dt) or inferred in (
        "integer", "floating", "mixed-integer-float")
    if numeric:
        ints = to_int_ids(s, col)
        if id_type == "auto":
            return ints, None
        codes, uniq = pd.factorize(ints, sort=False)
        return _sorted_codes(np.asarray(codes, dtype=np.int64), [str(int(v)) for v in uniq.tolist()])
    if inferred == "string":
        codes, uniq = pd.factorize(s, sort=False)
        return _sorted_codes(np.asarray(codes, dtype=np.int64), [str.__str__(v) for v in uniq.tolist()])
    if id_type == "auto" and inferred == "mixed-integer" and any(isinstance(v, str) for v in s.tolist()):
        i = next(j for j, v in enumerate(s.tolist()) if not isinstance(v, str))
        raise ValueError(f"column {col!r} mixes integer and string ids (e.g. {s.iloc[i]!r} at row {i}); read it "
                         f"with id_type='str' (every id as its string) or id_type='int' (strings parsed as integers)")
    return _str_of_uniques(s, col)


def to_ids(values: Any, col: str, id_type: str = "auto") -> np.ndarray:
    """An id column -> int64 array, or object array of Python str (see ``encode_ids``), one entry per row."""
    ids, uniq = encode_ids(values, col, id_type)
    return ids if uniq is None else uniq[ids]


def to_times(values: Any, col: str) -> np.ndarray:
    """Time column -> float64. Numbers are kept as they are; datetimes / ISO strings become epoch seconds (UTC)."""
    s = _column_series(values, col, "time must be numeric or a date/time")
    dt = s.dtype
    if pd.api.types.is_numeric_dtype(dt):
        a = s.to_numpy(dtype=np.float64)
    elif pd.api.types.is_datetime64_any_dtype(dt):
        a = _datetime_seconds(s)
    elif pd.api.types.is_object_dtype(dt) or pd.api.types.is_string_dtype(dt):
        num = pd.to_numeric(s, errors="coerce")
        if not num.isna().any():
            a = num.to_numpy(dtype=np.float64)
        else:
            try:
                parsed = pd.to_datetime(s, utc=True, format="ISO8601")
            except (ValueError, TypeError):
                try:
                    parsed = pd.to_datetime(s, utc=True, format="mixed")
                except (ValueError, TypeError, OverflowError):
                    bad = num.isna().to_numpy()
                    i = int(np.argmax(bad))
                    raise ValueError(f"column {col!r} has a value that is neither a number nor a date/time: "
                                     f"{s.iloc[i]!r} at row {i}") from None
            a = _datetime_seconds(parsed)
    else:
        raise ValueError(f"column {col!r} has dtype {dt}; time must be numeric or a date/time")
    if not np.all(np.isfinite(a)):
        i = int(np.argmax(~np.isfinite(a)))
        raise ValueError(f"column {col!r} has a non-finite time {a[i]!r} at row {i}")
    return a


def _datetime_seconds(s: pd.Series) -> np.ndarray:
    s = pd.Series(s, copy=False)
    if s.dt.tz is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)  # naive datetimes are taken as UTC, never local time
    ns = s.to_numpy().astype("datetime64[ns]").astype(np.int64)
    # whole seconds + fraction, so 20:21:58.444 becomes the float nearest to ...318.444 (ns/1e9 is not)
    return (ns // 1_000_000_000).astype(np.float64) + (ns % 1_000_000_000) / 1e9
