"""The baselines of the GRU4Rec papers: POP, S-POP and item-kNN, with the model's fit / recommend / evaluate surface.

- ``POP``: global popularity. score(i) = number of training events of item i.
- ``SPOP``: session popularity. Items already in the session first, by their count in the session; ties, and
  every other item, by global popularity. score(i) = count_in_session(i) + supp(i) / (max_j supp(j) + 1): the
  integer part is the session count, the fraction orders by popularity (so the scores rank exactly as the rule).
- ``ItemKNN``: item-to-item similarity from session co-occurrence (the item-kNN baseline of Hidasi et al.,
  ICLR 2016): with n(i) the number of training sessions containing i and n(i, j) the number containing both,
  sim(i, j) = n(i, j) / (sqrt(n(i) n(j)) + lmbd)        (lmbd = 0: the plain cosine of the session vectors),
  sim(i, i) = 0; only the ``n_neighbors`` most similar items of every item are kept (ties by index). The next
  item is scored from the session's LAST item: score(j) = sim(last, j).
  Built vectorised with scipy.sparse: the binary session x item matrix X, then X.T @ X.

Every baseline is fitted on a ``SessionData`` (its item map is the training one, like the model's) and
evaluated with the SAME protocol code as the model (``evaluate.evaluate_scorer``: the same unknown-item and short
session dropping and counting, the same rank modes and metrics). ``recommend`` follows the model's rules (see
``recommend``): unknown session ids skipped with a warning (or ``on_unknown``), ``exclude`` / ``candidates``,
ties by item id, k' <= k. A session with no known item gets popularity (item-kNN: also when the last item has
no neighbour it still returns its top-k by score, zeros ranked by id). Scores are float64.
"""
from __future__ import annotations

import numpy as np

from .evaluate import evaluate_scorer
from .itemmap import ItemMap
from .topk import check_k, topk_from_scores

__all__ = ["POP", "SPOP", "ItemKNN"]


class _Baseline:
    name = "baseline"

    def __init__(self) -> None:
        self.item_ids: np.ndarray | None = None
        self.support: np.ndarray | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, train) -> "_Baseline":
        """Fit on a SessionData (the training click log). Returns self."""
        from .data import SessionData
        if not isinstance(train, SessionData):
            raise TypeError(f"train must be a SessionData; got {type(train).__name__}")
        self.item_ids = train.item_ids.copy()
        self.support = train.item_support()
        self._fit(train)
        return self

    def _fit(self, train) -> None:
        pass

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return int(self.item_ids.size)

    def _check_fitted(self) -> None:
        if self.item_ids is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit(train) first")

    # ------------------------------------------------------------------ scoring (item indices)
    def score_session(self, idx: np.ndarray) -> np.ndarray:
        """Scores [n_items] of the next item after the session ``idx`` (item indices, at least one)."""
        return self.score_prefixes_of([idx])[0]

    def score_prefixes_of(self, prefixes: list) -> np.ndarray:
        raise NotImplementedError

    def score_prefixes(self, data, sess, ends) -> np.ndarray:
        """Scores [len(ends), n_items] for the prefixes data.items[data.offsets[sess[j]]:ends[j]] (the protocol
        hook of evaluate.evaluate_scorer). Default: one prefix at a time."""
        starts = data.offsets[sess]
        return self.score_prefixes_of([data.items[s:e].astype(np.int64) for s, e in zip(starts, ends)])

    # ------------------------------------------------------------------ public surface
    def _index(self, ids, on_unknown: str, what: str) -> np.ndarray:
        return ItemMap(self.item_ids, type(self).__name__).index(ids, on_unknown, what, stacklevel=4)[0]

    def _index_set(self, ids, what: str):
        return ItemMap(self.item_ids, type(self).__name__).index_set(ids, what)

    def recommend(self, session_items, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
        """Top-k next items for a session of original ids: (item_ids [k'], scores float64 [k']), best first. Ids,
        given and returned, are of the training data's type (int64, or str)."""
        self._check_fitted()
        k = check_k(k)
        idx = self._index(session_items, on_unknown, "session_items")
        scores = self.score_session(idx) if idx.size else self.support
        order, sc = topk_from_scores(np.asarray(scores, dtype=np.float64), k, self._index_set(exclude, "exclude"),
                                     self._index_set(candidates, "candidates"))
        return self.item_ids[order], sc

    def evaluate(self, test, cutoffs=(1, 5, 10, 20), mode: str = "standard", candidates=None,
                 batch_size: int = 512, return_ranks: bool = False) -> dict:
        """Recall@k / MRR@k on ``test`` with the model's protocol (``evaluate.evaluate``'s result keys)."""
        self._check_fitted()
        return evaluate_scorer(self.score_prefixes, self.item_ids, test, cutoffs=cutoffs, mode=mode,
                               batch_size=batch_size, candidates=candidates, return_ranks=return_ranks)

    def __repr__(self) -> str:
        state = f"items={self.item_ids.size}" if self.item_ids is not None else "not fitted"
        return f"{type(self).__name__}({state})"


class POP(_Baseline):
    """Global popularity: every session gets the most clicked training items."""

    name = "POP"

    def score_prefixes_of(self, prefixes: list) -> np.ndarray:
        return np.broadcast_to(self.support, (len(prefixes), self.support.size))

    def score_prefixes(self, data, sess, ends) -> np.ndarray:
        return np.broadcast_to(self.support, (len(ends), self.support.size))


class SPOP(_Baseline):
    """Session popularity: the session's own items by their count in it, then global popularity."""

    name = "S-POP"

    def _base(self) -> np.ndarray:
        return self.support / (self.support.max() + 1.0)

    def score_prefixes_of(self, prefixes: list) -> np.ndarray:
        out = np.tile(self._base(), (len(prefixes), 1))
        for r, p in enumerate(prefixes):
            np.add.at(out[r], p, 1.0)
        return out

    def score_prefixes(self, data, sess, ends) -> np.ndarray:
        # prefix counts of all rows at once: row j holds items[offsets[sess[j]]:ends[j]]
        starts = data.offsets[sess]
        plen = ends - starts
        rows = np.repeat(np.arange(ends.size), plen)
        first = np.concatenate(([0], np.cumsum(plen)[:-1]))
        ev = np.arange(int(plen.sum())) - np.repeat(first, plen) + np.repeat(starts, plen)
        out = np.tile(self._base(), (ends.size, 1))
        np.add.at(out, (rows, data.items[ev]), 1.0)
        return out


class ItemKNN(_Baseline):
    """Item-kNN from session co-occurrence (cosine with regularisation), scored from the session's last item.

    Parameters
    ----------
    n_neighbors : int
        Most similar items kept per item (default 100).
    lmbd : float
        Regularisation added to the cosine's denominator (default 20, as the session-rec item-kNN): rare items
        with a coincidental co-occurrence get a smaller similarity. 0 = plain cosine.
    """

    name = "item-kNN"

    def __init__(self, n_neighbors: int = 100, lmbd: float = 20.0):
        super().__init__()
        if not isinstance(n_neighbors, (int, np.integer)) or isinstance(n_neighbors, bool) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive int; got {n_neighbors!r}")
        if not isinstance(lmbd, (int, float, np.floating, np.integer)) or isinstance(lmbd, bool) \
                or not np.isfinite(lmbd) or lmbd < 0:
            raise ValueError(f"lmbd must be a finite number >= 0; got {lmbd!r}")
        self.n_neighbors = int(n_neighbors)
        self.lmbd = float(lmbd)
        self.sim = None  # scipy.sparse.csr_matrix [N, N]
        self.session_count = None  # n(i): training sessions containing item i

    def _fit(self, train) -> None:
        import scipy.sparse as sp
        N = train.n_items
        lengths = train.session_lengths()
        sess = np.repeat(np.arange(train.n_sessions, dtype=np.int64), lengths)
        X = sp.csr_matrix((np.ones(train.n_events, dtype=np.float64), (sess, train.items.astype(np.int64))),
                          shape=(train.n_sessions, N))
        X.sum_duplicates()
        X.data[:] = 1.0  # binary: does the session contain the item
        C = (X.T @ X).tocoo()
        self.session_count = np.asarray(X.sum(axis=0)).ravel()
        r, c, v = C.row.astype(np.int64), C.col.astype(np.int64), C.data
        off = r != c
        r, c, v = r[off], c[off], v[off]
        n = self.session_count
        sim = v / (np.sqrt(n[r] * n[c]) + self.lmbd)
        # keep the n_neighbors best per row: order by (row, -sim, col), rank within the row
        order = np.lexsort((c, -sim, r))
        r, c, sim = r[order], c[order], sim[order]
        first = np.searchsorted(r, np.arange(N))
        keep = (np.arange(r.size) - first[r]) < self.n_neighbors
        self.sim = sp.csr_matrix((sim[keep], (r[keep], c[keep])), shape=(N, N))

    def score_prefixes_of(self, prefixes: list) -> np.ndarray:
        last = np.array([p[-1] for p in prefixes], dtype=np.int64)
        return self.sim[last].toarray()

    def score_prefixes(self, data, sess, ends) -> np.ndarray:
        return self.sim[data.items[ends - 1].astype(np.int64)].toarray()

    def neighbors(self, item_id, k: int | None = None):
        """The kept neighbours of one original item id: (item_ids, similarities), most similar first."""
        self._check_fitted()
        i = self._index([item_id], "raise", "item_id")[0]
        row = self.sim[int(i)]
        order = np.lexsort((row.indices, -row.data))
        if k is not None:
            order = order[:check_k(k)]
        return self.item_ids[row.indices[order]], row.data[order]
