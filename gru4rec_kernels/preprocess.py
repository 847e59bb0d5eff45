"""The official GRU4Rec preprocessing protocol: support filtering, the time split, RSC15 / YooChoose files.

Works on DataFrames with columns SessionId, ItemId, Time (seconds); the column conversions and checks are
``data``'s, so a log that ``SessionData`` rejects is rejected here with the same message.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import pandas as pd

from .data import missing_columns_error, read_csv_checked, to_ids, to_int_ids, to_times

__all__ = ["filter_support", "split_by_time", "preprocess", "write_splits", "preprocess_rsc15"]

_DAY = 86400.0


def filter_support(df: pd.DataFrame, min_item_support: int = 5, min_session_length: int = 2,
                   iterate: bool = True, session_key: str = "SessionId", item_key: str = "ItemId") -> pd.DataFrame:
    """Drop short sessions, then rare items, then short sessions again (official GRU4Rec order).

    ``iterate=True`` repeats until nothing changes (every item then has ``min_item_support`` events and every
    session ``min_session_length``); ``iterate=False`` is the official script's single pass."""
    while True:
        n0 = len(df)
        slen = df.groupby(session_key, sort=False)[session_key].transform("size")
        df = df[slen.to_numpy() >= min_session_length]
        isup = df.groupby(item_key, sort=False)[item_key].transform("size")
        df = df[isup.to_numpy() >= min_item_support]
        slen = df.groupby(session_key, sort=False)[session_key].transform("size")
        df = df[slen.to_numpy() >= min_session_length]
        if not iterate or len(df) == n0:
            return df


def split_by_time(df: pd.DataFrame, days: float = 1.0, min_session_length: int = 2,
                  session_key: str = "SessionId", item_key: str = "ItemId",
                  time_key: str = "Time") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Official GRU4Rec split: test = sessions whose LAST event is within ``days`` days of the log's last event.

    Time is in seconds. Test events whose item is not in train are dropped, then test sessions shorter than
    ``min_session_length``."""
    tmax = df[time_key].max()
    smax = df.groupby(session_key, sort=False)[time_key].transform("max").to_numpy()
    is_test = smax >= tmax - days * _DAY
    train, test = df[~is_test], df[is_test]
    test = test[test[item_key].isin(pd.unique(train[item_key])).to_numpy()]
    tlen = test.groupby(session_key, sort=False)[session_key].transform("size")
    test = test[tlen.to_numpy() >= min_session_length]
    return train, test


def split_by_sessions(df: pd.DataFrame, n_sessions: int, min_session_length: int = 2, session_key: str = "SessionId",
                      item_key: str = "ItemId", time_key: str = "Time") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same split by count: the ``n_sessions`` sessions that end last form the test set (ties by id), with
    their items unknown to train and then sessions shorter than ``min_session_length`` dropped."""
    if isinstance(n_sessions, bool) or not isinstance(n_sessions, int) or n_sessions < 1:
        raise ValueError(f"n_sessions must be a positive int; got {n_sessions!r}")
    ends = df.groupby(session_key, sort=False)[time_key].max()
    last = ends.sort_values(kind="stable").index[-n_sessions:]
    is_test = df[session_key].isin(last).to_numpy()
    train, test = df[~is_test], df[is_test]
    test = test[test[item_key].isin(pd.unique(train[item_key])).to_numpy()]
    tlen = test.groupby(session_key, sort=False)[session_key].transform("size")
    return train, test[tlen.to_numpy() >= min_session_length]


def validation_split(data, days: float | None = None, sessions: int | None = None):
    """(train, valid) SessionData cut off the end of ``data`` the official way (``split_by_time`` /
    ``split_by_sessions``): the sessions that end in the last ``days`` days (time in seconds), or the last
    ``sessions`` sessions; valid events whose item is not in train are dropped, then valid sessions shorter than
    2. For early stopping: ``Trainer(cfg).fit(*validation_split(train, days=1), patience=2)``.

    Works on the arrays (no DataFrame), so a memory-mapped ``SessionData.open`` log is split without copying it
    into pandas. train has the item map of its own events; valid is expressed in train's item map."""
    if (days is None) == (sessions is None):
        raise ValueError("give exactly one of days= or sessions=")
    lengths = data.session_lengths()
    ends = np.full(data.n_sessions, -np.inf)
    nonempty = lengths > 0
    ends[nonempty] = data.times[data.offsets[1:][nonempty] - 1]  # times ascend within a session
    if days is not None:
        is_valid = ends >= data.times.max(initial=-np.inf) - days * _DAY
        what = f"the last {days} day(s)"
    else:
        if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
            raise ValueError(f"sessions must be a positive int; got {sessions!r}")
        is_valid = np.zeros(data.n_sessions, dtype=bool)
        is_valid[np.argsort(ends, kind="stable")[-sessions:]] = True
        what = f"the last {sessions} session(s)"
    train_events = np.repeat(~is_valid, lengths)
    used = np.zeros(data.n_items, dtype=bool)
    used[data.items[train_events]] = True
    new_index = np.cumsum(used, dtype=np.int64) - 1  # item index in train's map
    n_train = int(train_events.sum())
    valid = None
    if n_train:
        train = data._subset(train_events, ~is_valid, data.item_ids[used], new_index[data.items].astype(np.int32))
        rest = data._subset(~train_events, is_valid, data.item_ids, data.items)
        if rest.n_events:
            valid, _ = rest.remap(train.item_ids, allow_empty=True)
    if n_train == 0 or valid is None or valid.n_events == 0:
        raise ValueError(f"splitting {what} off the data left {'no training' if n_train == 0 else 'no validation'} "
                         "events (is Time in seconds?)")
    return train, valid


def preprocess(df: pd.DataFrame, session_key: str = "SessionId", item_key: str = "ItemId",
               time_key: str = "Time", min_item_support: int = 5, min_session_length: int = 2,
               test_days: float = 1.0, iterate: bool = True, id_type: str = "auto") -> dict[str, pd.DataFrame]:
    """The official GRU4Rec protocol on a click log (time in seconds; dates / ISO strings are parsed).

    1. drop sessions shorter than ``min_session_length``, items with fewer than ``min_item_support`` events,
       sessions shorter than ``min_session_length`` again (repeated until stable when ``iterate``);
    2. test = sessions whose last event is in the last ``test_days`` days; train_full = the rest; test events
       of items not in train_full dropped, then test sessions shorter than ``min_session_length``;
    3. train_tr / train_valid: the same split of train_full.
    Ids are read as ``SessionData`` reads them (``id_type``: 'auto', 'str' or 'int'; distinct ids never merge).
    Returns DataFrames with columns SessionId, ItemId, Time (float seconds), sorted by session then time.
    The input is not modified.
    """
    missing = [c for c in (session_key, item_key, time_key) if c not in df.columns]
    if missing:
        raise missing_columns_error(missing, list(df.columns), "preprocess")
    if len(df) == 0:
        raise ValueError("the click log is empty (no rows)")
    d = pd.DataFrame({"SessionId": to_ids(df[session_key], session_key, id_type),
                      "ItemId": to_ids(df[item_key], item_key, id_type),
                      "Time": to_times(df[time_key], time_key)})
    d = filter_support(d, min_item_support, min_session_length, iterate)
    if len(d) == 0:
        raise ValueError(f"nothing is left after dropping sessions shorter than {min_session_length} and items "
                         f"with fewer than {min_item_support} events")
    d = d.sort_values(["SessionId", "Time"], kind="stable").reset_index(drop=True)
    train, test = split_by_time(d, test_days, min_session_length)
    tr, valid = split_by_time(train, test_days, min_session_length)
    return {"train_full": train.reset_index(drop=True), "test": test.reset_index(drop=True),
            "train_tr": tr.reset_index(drop=True), "train_valid": valid.reset_index(drop=True)}


def _counts(df: pd.DataFrame) -> dict[str, int]:
    return {"events": int(len(df)), "sessions": int(df["SessionId"].nunique()), "items": int(df["ItemId"].nunique())}


def write_splits(splits: dict[str, pd.DataFrame], out_dir: str | os.PathLike, suffix: str = ".tsv") -> dict[str, str]:
    """Write every split as ``<name><suffix>`` (tab separated, header SessionId ItemId Time), atomically:
    all files go to temporary names first and are renamed only when every one was written."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tmps: dict[str, str] = {}
    try:
        for name, frame in splits.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            tmps[name] = tmp
            with os.fdopen(fd, "w", newline="") as f:
                frame[["SessionId", "ItemId", "Time"]].to_csv(f, sep="\t", index=False)
        paths = {}
        for name, tmp in tmps.items():
            paths[name] = os.path.join(out_dir, name + suffix)
            os.replace(tmp, paths[name])
        return paths
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def preprocess_rsc15(clicks_path: str | os.PathLike, out_dir: str | os.PathLike, min_item_support: int = 5,
                     min_session_length: int = 2, test_days: float = 1.0, iterate: bool = True) -> dict[str, Any]:
    """Preprocess a raw YooChoose / RSC15 ``yoochoose-clicks.dat`` the official GRU4Rec way (see ``preprocess``).

    The input is comma separated without header: SessionId, Timestamp (ISO, UTC), ItemId, Category; its ids
    are integers (read as such, as the official script does). Writes
    ``train_full.tsv``, ``test.tsv``, ``train_tr.tsv``, ``train_valid.tsv`` into ``out_dir`` (atomically) and
    returns counts: ``raw`` / ``filtered`` / each split -> {events, sessions, items}, plus ``paths``.
    """
    clicks_path = os.fspath(clicks_path)
    raw = read_csv_checked(clicks_path, sep=",", header=None, usecols=[0, 1, 2], names=["SessionId", "Time", "ItemId"],
                    dtype={"Time": str})
    if len(raw) == 0:
        raise ValueError(f"{clicks_path}: the click log is empty (no rows)")
    try:
        d = pd.DataFrame({"SessionId": to_int_ids(raw["SessionId"], "SessionId"),
                          "ItemId": to_int_ids(raw["ItemId"], "ItemId"),
                          "Time": to_times(raw["Time"], "Time")})
        counts: dict[str, Any] = {"raw": _counts(d)}
        splits = preprocess(d, min_item_support=min_item_support, min_session_length=min_session_length,
                            test_days=test_days, iterate=iterate)
    except ValueError as e:
        raise ValueError(f"{clicks_path}: {e}") from None
    counts["filtered"] = _counts(filter_support(d, min_item_support, min_session_length, iterate))
    for name, frame in splits.items():
        counts[name] = _counts(frame)
    counts["paths"] = write_splits(splits, out_dir)
    return counts
