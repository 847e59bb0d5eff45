"""The official GRU4Rec evaluation: session-parallel replay, the target's rank among ALL items.

The protocol is docs/design.md section 3.

Test events whose item is not in the model's item map are dropped and counted; sessions left shorter than 2
are dropped and counted. Test sessions are replayed session-parallel from a zero hidden state; at every event
except a session's first the model scores all items (or ``candidates``) and the target's rank is
    standard     = 1 + #(score > target)
    conservative = #(score >= target)                  (the target itself included)
    median       = standard + (#ties - 1) / 2          (#ties: items scoring equal, target included)
Recall@k = share of ranks <= k (HitRate@k: the same number, one target per event); MRR@k = mean of 1/rank
over ranks <= k (0 otherwise); NDCG@k = mean of 1/log2(1 + rank) over ranks <= k (one relevant item, so the ideal
DCG is 1). With ``candidates`` a target outside the candidate set cannot be recommended: its rank is infinite (a
miss at every cutoff) and such events are counted.

Ties: ``standard`` ranks a target tied with many items first among them, so a degenerate model whose scores are
all equal gets recall@1 = 1. The official protocol is kept, but the result reports the share of targets tied with
at least one other item and a warning names a protocol-driven result when many targets tie with many items.
"""
from __future__ import annotations

import logging
import math
import warnings

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


# A target tied with this many other items (or this share of the catalogue, if larger) counts as a "many-way"
# tie; when more than TIE_WARN_SHARE of the targets are in one, the metrics say more about the tie rule than
# about the model.
TIE_MANY_ITEMS = 10
TIE_MANY_SHARE = 0.001
TIE_WARN_SHARE = 0.05


def metrics_from_ranks(ranks, cutoffs) -> dict:
    """recall (= hit_rate), mrr and ndcg at each cutoff from the targets' ranks (inf: never recommended)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    n = max(ranks.size, 1)
    recall = {k: float((ranks <= k).sum() / n) for k in cutoffs}
    with np.errstate(divide="ignore"):
        inv = np.where(np.isfinite(ranks), 1.0 / ranks, 0.0)
        # rank r at a fractional position (median mode) keeps the same discount formula
        disc = np.where(np.isfinite(ranks), 1.0 / np.log2(1.0 + np.where(np.isfinite(ranks), ranks, 1.0)), 0.0)
    mrr = {k: float(np.where(ranks <= k, inv, 0.0).sum() / n) for k in cutoffs}
    ndcg = {k: float(np.where(ranks <= k, disc, 0.0).sum() / n) for k in cutoffs}
    return {"recall": recall, "hit_rate": dict(recall), "mrr": mrr, "ndcg": ndcg, "n_events": int(ranks.size)}


def recommendation_stats(top_items, item_support, n_items: int) -> dict:
    """Beyond-accuracy statistics of top-k lists ``top_items`` [events, k] (item indices, -1 = empty slot):
    coverage (share of the catalogue recommended at least once), popularity (mean share of the training clicks
    of a recommended item, normalised by the most popular item's: 1 = always the top item) and Gini (of how
    often each item is recommended, over the whole catalogue: 0 = uniform, 1 = one item only)."""
    top = np.asarray(top_items, dtype=np.int64)
    flat = top[top >= 0]
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1; got {n_items}")
    counts = np.bincount(flat, minlength=n_items).astype(np.float64)
    support = np.asarray(item_support, dtype=np.float64)
    peak = support.max() if support.size and support.max() > 0 else 1.0
    x = np.sort(counts)
    total = x.sum()
    if total > 0:
        i = np.arange(1, n_items + 1, dtype=np.float64)
        gini = float(((2 * i - n_items - 1) * x).sum() / (n_items * total))
    else:
        gini = 0.0
    return {"coverage": float((counts > 0).sum() / n_items),
            "popularity": float(support[flat].mean() / peak) if flat.size else 0.0,
            "gini": gini}


def beyond_accuracy(recommender, test, k: int = 20, batch_size: int = 512) -> dict:
    """Coverage@k, popularity@k and Gini@k (``recommendation_stats``) of the top-k lists that ``recommender``
    (a Model or a fitted baseline) gives at every evaluated event of ``test`` (the protocol's events: unknown
    items dropped, sessions left shorter than 2 dropped, every prefix of a session but the whole)."""
    k = _check_cutoffs([k])[0]
    item_ids = recommender.item_ids
    support = getattr(recommender, "item_support", None)
    support = np.asarray(recommender.support if support is None else support, dtype=np.float64)
    data, _, _ = prepare_test(item_ids, test)
    sess, ends = evaluation_events(data)
    starts = data.offsets[sess]
    tops = []
    for b0 in range(0, ends.size, batch_size):
        s, e = starts[b0:b0 + batch_size], ends[b0:b0 + batch_size]
        if hasattr(recommender, "score_prefixes"):  # the baselines score prefixes of item indices directly
            sc = recommender.score_prefixes(data, sess[b0:b0 + batch_size], e)
            kk = min(k, sc.shape[1])
            top = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        else:
            prefixes = [item_ids[data.items[a:z]] for a, z in zip(s, e)]
            ids, scores = recommender.recommend_batch(prefixes, k=k)
            ok = np.isfinite(scores)
            top = np.full(ids.shape, -1, dtype=np.int64)
            top[ok] = recommender.item_map.index(ids[ok], on_unknown="raise")[0]
        tops.append(top)
    top = np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)
    return {f"{name}@{k}": v for name, v in recommendation_stats(top, support, len(item_ids)).items()}


def tie_stats(n_equal, n_items: int) -> dict:
    """tie_share: share of targets tied with at least one other item; many_tie_share: share tied with
    max(TIE_MANY_ITEMS, TIE_MANY_SHARE * n_items) others or more."""
    eq = np.asarray(n_equal, dtype=np.float64)
    n = max(eq.size, 1)
    many = max(TIE_MANY_ITEMS, math.ceil(TIE_MANY_SHARE * n_items))
    return {"tie_share": float((eq >= 2).sum() / n), "many_tie_share": float((eq >= many + 1).sum() / n),
            "many_tie_threshold": int(many)}


def _check_cutoffs(cutoffs):
    if isinstance(cutoffs, (int, np.integer)) or not hasattr(cutoffs, "__iter__") or isinstance(cutoffs, str):
        raise ValueError(f"cutoffs must be a sequence of positive ints, e.g. (5, 10, 20) or [{cutoffs!r}]; "
                         f"got {cutoffs!r}")
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
    ``candidates`` (original ids) -> sorted unique item indices (unknown ones ignored), or None. Test ids of
    another type than ``item_ids`` (strings vs integers) are a ValueError: nothing is converted to match.
    Returns (remapped SessionData, report, cand_idx)."""
    from .data import SessionData
    from .itemmap import ItemMap
    if not isinstance(test, SessionData):
        hint = " (wrap a DataFrame with SessionData.from_pandas(df))" if hasattr(test, "columns") else ""
        raise TypeError(f"test must be a SessionData; got {type(test).__name__}{hint}")
    data, report = test.remap(item_ids)
    if report["unknown_events"] or report["dropped_sessions"]:
        log.info("evaluation: dropped %d test events with items unknown to the model and %d sessions left "
                 "shorter than 2", report["unknown_events"], report["dropped_sessions"])
    cand_idx = None
    if candidates is not None:
        cand_idx = ItemMap(item_ids).index_set(candidates, "candidates")
        if cand_idx.size == 0:
            raise ValueError("none of the candidate item ids is known to the model")
    return data, report, cand_idx


def _cat(parts) -> np.ndarray:
    if isinstance(parts, list):
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    return np.asarray(parts, dtype=np.float64).ravel()


def finish_metrics(ranks, report: dict, cutoffs, mode: str, return_ranks: bool, n_equal=None, n_items: int = 0,
                   outside=0) -> dict:
    """The protocol's second half: ranks (a list of arrays or one array) -> the result dict of ``evaluate``.
    ``n_equal``: the ties of each target (for the tie report); ``outside``: events whose target was not a
    candidate (their rank is already inf)."""
    ranks = _cat(ranks)
    res = metrics_from_ranks(ranks, cutoffs)
    res.update(unknown_events=report["unknown_events"], dropped_sessions=report["dropped_sessions"],
               mode=mode, cutoffs=list(cutoffs), targets_outside_candidates=int(outside))
    if n_equal is not None:
        ties = tie_stats(_cat(n_equal), n_items)
        res.update(ties)
        if ranks.size and ties["many_tie_share"] > TIE_WARN_SHARE:
            warnings.warn(f"{100 * ties['many_tie_share']:.1f}% of the targets tie with "
                          f"{ties['many_tie_threshold']} or more items: with mode={mode!r} the metrics reflect the "
                          f"tie rule more than the model (compare mode='conservative' or 'median')", stacklevel=3)
    if return_ranks:
        res["ranks"] = ranks
    return res


def outside_candidates(targets, cand_idx) -> np.ndarray:
    """Mask of targets (item indices) that are not in the sorted candidate indices ``cand_idx``."""
    targets = np.asarray(targets, dtype=np.int64)
    if cand_idx is None:
        return np.zeros(targets.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(cand_idx, targets), cand_idx.size - 1)
    return cand_idx[pos] != targets


def _ranks(gt, eq, targets, cand_idx, mode):
    """Ranks with the candidate rule applied: a target outside the candidates is a miss (inf)."""
    r = ranks_from_counts(gt, eq, mode)
    out = outside_candidates(targets, cand_idx)
    r[out] = np.inf
    return r, int(out.sum())


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
    ranks, equal, outside = [], [], 0
    for b0 in range(0, ends.size, batch_size):
        s, e = sess[b0:b0 + batch_size], ends[b0:b0 + batch_size]
        gt, eq = rank_counts(score_prefixes(data, s, e), data.items[e], cand_idx)
        r, o = _ranks(gt, eq, data.items[e], cand_idx, mode)
        ranks.append(r)
        equal.append(np.asarray(eq))
        outside += o
    return finish_metrics(ranks, report, cutoffs, mode, return_ranks, equal, len(item_ids), outside)


def evaluate(model, test, cutoffs=(1, 5, 10, 20), mode: str = "standard", batch_size: int = 512,
             backend: str = "auto", candidates=None, return_ranks: bool = False, comm=None) -> dict:
    """Recall@k and MRR@k of ``model`` on ``test`` (a SessionData), the official way.

    Returns {"recall" (= "hit_rate"), "mrr", "ndcg": {k: ..}, "n_events": evaluated events, "unknown_events":
    dropped test events with items unknown to the model, "dropped_sessions": test sessions left shorter than 2,
    "tie_share" / "many_tie_share": targets tied with other items, "targets_outside_candidates", ...};
    ``return_ranks=True`` adds "ranks" (one per evaluated event, in schedule order; inf = a miss).
    ``candidates``: original item ids to rank against (e.g. the 50,000 most popular), or None for all items.
    A target that is not a candidate cannot be recommended: it is a miss (rank inf) at every cutoff, counted in
    "targets_outside_candidates". ``cutoffs``: a sequence of positive ints.
    The baselines run the same protocol through ``evaluate_scorer`` (same preparation, ranks and metrics).
    ``comm``: a Communicator (comm.py) of several ranks shards the test sessions: each rank replays a contiguous
    block of sessions (about 1/P of the events, ``dataparallel.session_shard``) and the ranks' ranks and ties are
    gathered, so every rank returns the one-process metrics ("ranks" in rank order, then schedule order).
    """
    from .backends import backend_class

    cutoffs = check_protocol_args(cutoffs, mode, batch_size)
    data, report, cand_idx = prepare_test(model.item_ids, test, candidates)
    ranks, equal, outside = [], [], 0
    sharded = comm is not None and comm.size > 1
    if sharded:
        from .dataparallel import session_shard
        data = session_shard(data.offsets, data.items, comm.rank, comm.size)
    if data.n_events:
        if getattr(model, "prnn", None) is not None:
            from .backends.prnn_numpy import prnn_backend_class
            be = prnn_backend_class(backend)(model.layout, model.params)
            be.eval_subnets = model.scoring
        else:
            be = backend_class(backend)(model.cfg, model.n_items, model.params)
        try:
            ranks, equal, outside = _replay(be, data, batch_size, mode, cand_idx)
        finally:
            be.close()
    if sharded:
        parts = comm.allgather((_cat(ranks), _cat(equal), outside), "gathering the evaluation's ranks")
        ranks, equal, outside = [p[0] for p in parts], [p[1] for p in parts], sum(p[2] for p in parts)
    return finish_metrics(ranks, report, cutoffs, mode, return_ranks, equal, model.n_items, outside)


def _replay(be, data, batch_size, mode, cand_idx):
    sched = EpochSchedule(data.offsets, data.items, min(batch_size, max(data.n_sessions, 1)))
    be.reset_eval(sched.batch_size)
    ranks, equal, outside = [], [], 0
    while True:
        chunk = sched.next_chunk(256)
        if chunk is None:
            break
        gt, eq = be.eval_chunk(chunk.inputs, chunk.targets, chunk.reset, chunk.active, candidates=cand_idx)
        act = chunk.active  # [T, B]: boolean indexing keeps the schedule order (step, then row)
        eq = np.asarray(eq)[act]
        r, o = _ranks(np.asarray(gt)[act], eq, chunk.targets[act], cand_idx, mode)
        ranks.append(r)
        equal.append(eq)
        outside += o
    return ranks, equal, outside
