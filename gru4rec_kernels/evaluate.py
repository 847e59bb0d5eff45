"""The official GRU4Rec evaluation: session-parallel replay, the target's rank among ALL items (DESIGN.md s.4).

Test events whose item is not in the model's item map are dropped and counted; sessions left shorter than 2
are dropped and counted. Test sessions are replayed session-parallel from a zero hidden state; at every event
except a session's first the model scores all items (or ``candidates``) and the target's rank is
    standard     = 1 + #(score > target)
    conservative = #(score >= target)                  (the target itself included)
    median       = standard + (#ties - 1) / 2          (#ties: items scoring equal, target included)
Recall@k = share of ranks <= k; MRR@k = mean of 1/rank over ranks <= k (0 otherwise).
"""
from __future__ import annotations

import logging

import numpy as np

from .batching import EpochSchedule

log = logging.getLogger("gru4rec_kernels")

MODES = ("standard", "conservative", "median")


def ranks_from_counts(n_greater, n_equal, mode: str):
    n_greater = np.asarray(n_greater, dtype=np.float64)
    n_equal = np.asarray(n_equal, dtype=np.float64)
    if mode == "standard":
        return 1.0 + n_greater
    if mode == "conservative":
        return n_greater + n_equal
    if mode == "median":
        return 1.0 + n_greater + (n_equal - 1.0) / 2.0
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}")


def metrics_from_ranks(ranks, cutoffs) -> dict:
    ranks = np.asarray(ranks, dtype=np.float64)
    n = max(ranks.size, 1)
    recall = {k: float((ranks <= k).sum() / n) for k in cutoffs}
    mrr = {k: float(np.where(ranks <= k, 1.0 / ranks, 0.0).sum() / n) for k in cutoffs}
    return {"recall": recall, "mrr": mrr, "n_events": int(ranks.size)}


def _check_cutoffs(cutoffs):
    cutoffs = tuple(cutoffs)
    if not cutoffs or any(not isinstance(k, (int, np.integer)) or k < 1 for k in cutoffs):
        raise ValueError(f"cutoffs must be positive ints; got {cutoffs!r}")
    return tuple(int(k) for k in cutoffs)


def check_protocol_args(cutoffs, mode: str, batch_size: int) -> tuple:
    cutoffs = _check_cutoffs(cutoffs)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    return cutoffs


def prepare_test(item_ids, test, candidates=None):
    """The protocol's first half, for any recommender over the item map ``item_ids`` (sorted original ids):
    test events with unknown items dropped, then sessions left shorter than 2 (counted in the report, logged);
    ``candidates`` (original ids) -> sorted unique item indices (unknown ones ignored), or None.
    Returns (remapped SessionData, report, cand_idx)."""
    data, report = test.remap(item_ids)
    if report["unknown_events"] or report["dropped_sessions"]:
        log.info("evaluation: dropped %d test events with items unknown to the model and %d sessions left "
                 "shorter than 2", report["unknown_events"], report["dropped_sessions"])
    cand_idx = None
    if candidates is not None:
        from .recommend import as_item_array
        c = as_item_array(candidates, "candidates")
        item_ids = np.asarray(item_ids)
        pos = np.minimum(np.searchsorted(item_ids, c), item_ids.size - 1)
        cand_idx = np.unique(pos[item_ids[pos] == c])
        if cand_idx.size == 0:
            raise ValueError("none of the candidate item ids is known to the model")
    return data, report, cand_idx


def finish_metrics(ranks, report: dict, cutoffs, mode: str, return_ranks: bool) -> dict:
    """The protocol's second half: ranks (a list of arrays or one array) -> the result dict of ``evaluate``."""
    ranks = np.concatenate(ranks) if isinstance(ranks, list) and len(ranks) else np.asarray(ranks, dtype=np.float64)
    ranks = ranks.astype(np.float64, copy=False).ravel()
    res = metrics_from_ranks(ranks, cutoffs)
    res.update(unknown_events=report["unknown_events"], dropped_sessions=report["dropped_sessions"],
               mode=mode, cutoffs=list(cutoffs))
    if return_ranks:
        res["ranks"] = ranks
    return res


def rank_counts(scores, targets, cand_idx=None):
    """(# items scoring strictly above the target, # scoring equal, target included) per row of scores [B, N];
    with ``cand_idx`` only those items count (the target still counts once in n_equal when it is not one)."""
    scores = np.asarray(scores)
    t = scores[np.arange(scores.shape[0]), np.asarray(targets)][:, None]
    if cand_idx is None:
        return (scores > t).sum(axis=1), (scores == t).sum(axis=1)
    sc = scores[:, cand_idx]
    return (sc > t).sum(axis=1), np.maximum((sc == t).sum(axis=1), 1)


def evaluation_events(data):
    """(session index, prefix end) of every evaluated event: every event except a session's first; the prefix
    is ``data.items[data.offsets[s]:end]`` and the target ``data.items[end]``."""
    lengths = data.session_lengths()
    sess = np.repeat(np.arange(data.n_sessions, dtype=np.int64), lengths)
    is_eval = np.ones(data.n_events, dtype=bool)
    is_eval[data.offsets[:-1][lengths > 0]] = False
    ends = np.flatnonzero(is_eval).astype(np.int64)
    return sess[ends], ends


def evaluate_scorer(score_prefixes, item_ids, test, cutoffs=(1, 5, 10, 20), mode: str = "standard",
                    batch_size: int = 512, candidates=None, return_ranks: bool = False) -> dict:
    """The same protocol as ``evaluate`` for any recommender that can score session prefixes (the baselines).

    ``score_prefixes(data, sess, ends)`` -> scores [len(ends), n_items] for the prefixes
    ``data.items[data.offsets[sess[j]]:ends[j]]`` of the remapped test data (item indices of ``item_ids``).
    Returns the same dict as ``evaluate``.
    """
    cutoffs = check_protocol_args(cutoffs, mode, batch_size)
    data, report, cand_idx = prepare_test(item_ids, test, candidates)
    sess, ends = evaluation_events(data)
    ranks = []
    for b0 in range(0, ends.size, batch_size):
        s, e = sess[b0:b0 + batch_size], ends[b0:b0 + batch_size]
        gt, eq = rank_counts(score_prefixes(data, s, e), data.items[e], cand_idx)
        ranks.append(ranks_from_counts(gt, eq, mode))
    return finish_metrics(ranks, report, cutoffs, mode, return_ranks)


def evaluate(model, test, cutoffs=(1, 5, 10, 20), mode: str = "standard", batch_size: int = 512,
             backend: str = "auto", candidates=None, return_ranks: bool = False) -> dict:
    """Recall@k and MRR@k of ``model`` on ``test`` (a SessionData), the official way.

    Returns {"recall": {k: ..}, "mrr": {k: ..}, "n_events": evaluated events, "unknown_events": dropped test
    events with items unknown to the model, "dropped_sessions": test sessions left shorter than 2, ...}.
    ``candidates``: original item ids to rank against (e.g. the 50,000 most popular), or None for all items.
    The baselines run the same protocol through ``evaluate_scorer`` (same preparation, ranks and metrics).
    """
    from .backends import backend_class

    cutoffs = check_protocol_args(cutoffs, mode, batch_size)
    data, report, cand_idx = prepare_test(model.item_ids, test, candidates)
    ranks = []
    if data.n_events:
        be = backend_class(backend)(model.cfg, model.n_items, model.params)
        try:
            ranks = _replay(be, data, batch_size, mode, cand_idx)
        finally:
            be.close()
    return finish_metrics(ranks, report, cutoffs, mode, return_ranks)


def _replay(be, data, batch_size, mode, cand_idx):
    sched = EpochSchedule(data.offsets, data.items, min(batch_size, max(data.n_sessions, 1)))
    be.reset_eval(sched.batch_size)
    ranks = []
    while True:
        chunk = sched.next_chunk(256)
        if chunk is None:
            break
        for t in range(chunk.inputs.shape[0]):
            act = chunk.active[t]
            gt, eq = be.eval_step(chunk.inputs[t], chunk.targets[t], chunk.reset[t], act, candidates=cand_idx)
            ranks.append(ranks_from_counts(np.asarray(gt)[act], np.asarray(eq)[act], mode))
    return ranks
