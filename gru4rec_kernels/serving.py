"""SessionRecommender: serve a model to live sessions, one click at a time.

Per session id it keeps the GRU hidden state (all layers, float32) and, for ``exclude_seen`` and
``continue_sequence`` only, the clicked item history. A click is one GRU step (``gru_fwd_row`` of
``backends/cpu/gru.py``, the function ``recommend_one`` uses to replay a session, so ``recommend(sid)`` equals
``recommend_one(model, all clicks)`` exactly, ranks and scores). Memory is bounded:

- LRU over sessions: at most ``max_sessions`` are kept (an ``OrderedDict`` in access order; a click or a
  recommend is an access); the least recently used one is dropped when a new one would exceed the bound;
- optional idle TTL: a session not accessed for ``ttl_seconds`` is forgotten (checked on every access, oldest
  first, so expiry costs O(1) amortised); the clock is injectable (``clock=``) for tests;
- optional ``max_history``: only the last ``max_history`` clicked items are kept (the hidden state still
  reflects the whole session; ``exclude_seen`` then excludes only those last items).

A forgotten, ended, unknown or empty session is not an error: ``recommend`` gives the popularity fallback
(``model.item_support``, see ``recommend``), and a later click starts it afresh.

Thread safety: one lock guards the dict and every per-session update; ``recommend`` copies the state under the
lock and ranks outside it. K threads clicking their own sessions give the same results as one thread.
"""
from __future__ import annotations

import numbers
import threading
import time
import warnings
from collections import OrderedDict

import numpy as np

from .recommend import _continue, check_k, engine_for

__all__ = ["SessionRecommender"]


class _Session:
    __slots__ = ("state", "history", "last", "n_clicks")

    def __init__(self, state: np.ndarray, now: float):
        self.state = state
        self.history: list[int] = []
        self.last = now
        self.n_clicks = 0


class SessionRecommender:
    """Keeps live sessions' hidden states and recommends from them.

    Parameters
    ----------
    model : Model
    max_sessions : int
        LRU bound on the number of sessions kept (default 100,000).
    ttl_seconds : float or None
        Forget a session not accessed for this long (default: never).
    max_history : int or None
        Keep only the last ``max_history`` clicked items per session (default: all).
    on_unknown : "warn" | "ignore" | "raise"
        What a click on an item unknown to the model does: warn and ignore it (state unchanged), ignore it
        silently, or raise ``UnknownItemError``.
    clock : callable returning seconds (default ``time.monotonic``); inject a fake one in tests.
    """

    def __init__(self, model, max_sessions: int = 100_000, ttl_seconds: float | None = None,
                 max_history: int | None = None, *, on_unknown: str = "warn", clock=time.monotonic):
        if not isinstance(max_sessions, numbers.Integral) or isinstance(max_sessions, bool) or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive int; got {max_sessions!r}")
        if ttl_seconds is not None and (isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, numbers.Real)
                                        or not ttl_seconds > 0):
            raise ValueError(f"ttl_seconds must be a number > 0 or None; got {ttl_seconds!r}")
        if max_history is not None and (not isinstance(max_history, numbers.Integral) or isinstance(max_history, bool)
                                        or max_history < 0):
            raise ValueError(f"max_history must be an int >= 0 or None; got {max_history!r}")
        if on_unknown not in ("warn", "ignore", "raise"):
            raise ValueError(f"on_unknown must be 'warn', 'ignore' or 'raise'; got {on_unknown!r}")
        if not callable(clock):
            raise ValueError("clock must be a callable returning seconds")
        self.model = model
        self.max_sessions = int(max_sessions)
        self.ttl_seconds = None if ttl_seconds is None else float(ttl_seconds)
        self.max_history = None if max_history is None else int(max_history)
        self.on_unknown = on_unknown
        self._clock = clock
        self._eng = engine_for(model)
        self._sessions: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self.n_evicted = 0  # sessions dropped by the LRU bound
        self.n_expired = 0  # sessions dropped by the TTL
        self.n_invalidated = 0  # sessions dropped because the model changed

    # ------------------------------------------------------------------ internals (call with the lock held)
    def _expire(self, now: float) -> None:
        if self.ttl_seconds is None:
            return
        limit = now - self.ttl_seconds
        d = self._sessions
        while d:
            sid, s = next(iter(d.items()))
            if s.last > limit:
                break
            d.popitem(last=False)
            self.n_expired += 1

    def _engine(self):
        """The model's current engine; live sessions are dropped when the model changed under them (new
        parameters, item ids or config), since their states belong to the old model."""
        eng = engine_for(self.model)
        if eng is not self._eng:
            self.n_invalidated += len(self._sessions)
            self._sessions.clear()
            self._eng = eng
        return eng

    def _lookup(self, session_id):
        try:
            return self._sessions.get(session_id)
        except TypeError:
            raise ValueError(f"session_id must be hashable (an int or a str); got {type(session_id).__name__}") \
                from None

    def _get(self, session_id, now: float):
        """The live session (moved to the LRU end, last access updated) or None."""
        s = self._lookup(session_id)
        if s is not None:
            self._sessions.move_to_end(session_id)
            s.last = now
        return s

    # ------------------------------------------------------------------ API
    def click(self, session_id, item_id) -> bool:
        """One click: advance the session's state by ``item_id`` (a new session starts from zero).

        Returns True if the click was applied, False if the item is unknown to the model (warned / ignored,
        state unchanged; ``on_unknown='raise'`` raises ``UnknownItemError`` instead). A non-integer item id is a
        ``ValueError``.
        """
        with self._lock:
            eng = self._engine()
        idx = eng.scalar_index(item_id)
        if idx < 0:
            if self.on_unknown == "raise":
                from .model import UnknownItemError
                raise UnknownItemError(f"item id {item_id!r} is unknown to the model")
            if self.on_unknown == "warn":
                warnings.warn(f"ignoring a click on item id {item_id!r}, unknown to the model (session "
                              f"{session_id!r} unchanged)", stacklevel=2)
            return False
        step = np.array([idx], dtype=np.int64)
        with self._lock:
            now = self._clock()
            self._expire(now)
            s = self._get(session_id, now)
            if s is None:
                s = _Session(self._eng.new_state(), now)
                self._sessions[session_id] = s
                if len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
                    self.n_evicted += 1
            if self._engine() is not eng:  # the model changed since the id was mapped: map it again
                return self.click(session_id, item_id)
            eng.advance(s.state, step)
            s.n_clicks += 1
            if self.max_history != 0:
                s.history.append(idx)
                if self.max_history is not None and len(s.history) > self.max_history:
                    del s.history[0]
        return True

    def _snapshot(self, session_id, want_history: bool):
        with self._lock:
            self._engine()
            now = self._clock()
            self._expire(now)
            s = self._get(session_id, now)
            if s is None or s.n_clicks == 0:
                return None, []
            return s.state.copy(), (list(s.history) if want_history else [])

    def recommend(self, session_id, k: int = 20, exclude_seen: bool = False, candidates=None, exclude=None):
        """Top-k next items for a live session: (item_ids int64 [k'], scores float32 [k']), best first.

        Exactly ``recommend_one(model, <every item clicked in this session>, k, ...)``. ``exclude_seen``: never
        recommend the (kept) history; ``exclude``: more ids never to recommend; ``candidates``: rank only these.
        An unknown / expired / ended session gets the popularity fallback (never an error).
        """
        k = check_k(k)
        state, hist = self._snapshot(session_id, exclude_seen)
        eng = self._eng
        excl = eng.index_set(exclude, "exclude")
        if hist:
            h = np.unique(np.asarray(hist, dtype=np.int64))
            excl = h if excl is None else np.union1d(excl, h)
        excl, cand = eng.restrict(excl, eng.index_set(candidates, "candidates"))
        if state is None:
            order, scores = eng.popular(k, excl, cand)
        else:
            order, scores = eng.topk_state(state, k, excl, cand)
        return eng.item_ids[order], scores

    def continue_sequence(self, session_id, n: int, exclude_seen: bool = False, candidates=None) -> np.ndarray:
        """Greedy continuation of a live session: n times take the top-1, feed it back. Returns the n ids
        (original). The stored session is not modified. ``exclude_seen``: never repeat an item of the (kept)
        history or one already generated. An unknown / empty session starts from the most popular item."""
        state, hist = self._snapshot(session_id, exclude_seen)
        return _continue(self._eng, state, np.asarray(hist, dtype=np.int64), n, exclude_seen,
                         self._eng.index_set(candidates, "candidates"))

    def end(self, session_id) -> bool:
        """Forget a session (e.g. on checkout). Returns whether it was live."""
        with self._lock:
            try:
                return self._sessions.pop(session_id, None) is not None
            except TypeError:
                raise ValueError(f"session_id must be hashable; got {type(session_id).__name__}") from None

    def history(self, session_id) -> np.ndarray:
        """The kept clicked items of a session (original ids, oldest first); empty if unknown or expired."""
        with self._lock:
            eng = self._engine()
            self._expire(self._clock())
            s = self._lookup(session_id)
            h = list(s.history) if s is not None else []
        return eng.item_ids[np.asarray(h, dtype=np.int64)]

    def hidden_state(self, session_id) -> np.ndarray | None:
        """A copy of the session's hidden state (all layers concatenated), or None if unknown or expired."""
        with self._lock:
            self._engine()
            self._expire(self._clock())
            s = self._lookup(session_id)
            return None if s is None else s.state.copy()

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def __len__(self) -> int:
        with self._lock:
            if self.ttl_seconds is not None:
                self._expire(self._clock())
            return len(self._sessions)

    def __contains__(self, session_id) -> bool:
        with self._lock:
            self._engine()
            if self.ttl_seconds is not None:
                self._expire(self._clock())
            return self._lookup(session_id) is not None

    def __repr__(self) -> str:
        return (f"SessionRecommender(sessions={len(self)}, max_sessions={self.max_sessions}, "
                f"ttl_seconds={self.ttl_seconds}, max_history={self.max_history})")
