"""Next-item recommendation from a trained model: top-k for one session, for many, and greedy continuation.

What is computed (docs/design.md section 2, the inference half of ``reference.hidden_step`` / ``reference.score_all``):
replay the session's items through the GRU layers from a zero hidden state (no dropout), then score every item
``f(h @ Wy.T + By)`` with the model's final activation ``f`` and return the k best, best first, in ORIGINAL item
ids, with their scores (float32).

Rules (the same for ``recommend_one``, ``recommend_batch``, ``Model.recommend`` and ``SessionRecommender``):
- unknown item ids in a session are skipped with a warning (``on_unknown="warn"``), silently ("ignore"), or raise
  ``UnknownItemError`` ("raise");
- ``exclude``: ids that are never recommended (unknown ones are ignored); ``candidates``: rank only these ids
  (unknown ones are ignored; none known -> empty result);
- ties are broken by item index (= ascending original id, as ``item_ids`` is sorted): the order is a total
  order on (score descending, id ascending), so results never depend on thread count or tiling;
- k larger than what can be recommended (items, or candidates, minus exclusions): the k' available are
  returned, so arrays may be shorter than k;
- **popularity fallback**: a session with no known item (empty, or all ids unknown) gets the most popular
  items by training support (``model.item_support``: training event counts), ties by id, with the same exclude /
  candidates rules; its scores are those support counts (as float32), not model scores;
- bad input (k < 1 or not an int, non-integer ids, nested sequences of the wrong shape) is a ``ValueError``.

How (CPU, Numba):
- one session: the GRU step is ``backends/cpu/gru.py``'s ``gru_fwd_row`` (per layer three mat-vecs in axpy
  form and the training kernels' gate elements, no fast-math, so the same state is computed bit for bit
  whether the session is replayed at once or click by click: this is what makes ``SessionRecommender`` equal
  to a replay). Scoring is fused with the top-k (``topk._topk_one``): items are split into chunks, one per
  parallel task; each task computes its items' scores (fast-math dot products) and keeps a bounded min-heap
  of its k best, then the heaps are merged. Nothing of size N is materialised or sorted.
- many sessions (``recommend_batch``): sessions are sorted by length and right-aligned, so at every step the
  sessions still running form a prefix of the batch: the training forward (``gru.gru_fwd_prefix``) runs over
  that prefix at every step (masking by slicing). Scoring is again fused with the top-k, in one Numba kernel
  (``topk._topk_rows``): parallel tasks of ROWS_PER_TASK rows x a range of items. A task keeps its rows' hidden
  states transposed (in L1 / L2) and scores MR items at a time with the training GEMM micro-kernel
  (``backends/cpu/gemm.py``), then the bias and f in a vectorised loop, as evaluation's ``rank_counts`` does. A
  score is offered to its row's heap only if it reaches the heap's worst kept score (one compare per (item,
  row)); exclusions are looked up only for the few that pass. Measured on this 2-core machine with
  ``bench/compare_trees.py --workload recommend`` (1,000 sessions x 700k items, H 100, k = 20, each session
  excluding its own items; the previous kernel, four rows per pass of fast-math dot products with an exclusion
  pointer advanced for every (item, row), and this one alternating over 4 rounds): 121-138 -> 526-550
  sessions/s, 4.1x, the same ids (``bench/results/compare_trees_recommend.json``). Alternatives: ``np.argpartition``
  on a BLAS score tile was not used because it picks arbitrarily among scores tied at the k-th place (ties
  would not be broken by index); BLAS tiles + a parallel Numba heap update was the first version and was
  dropped: OpenBLAS's and Numba's thread pools alternate every tile and each spins while the other works.
  Batch hidden states come from the GEMM micro-kernel, single-session ones from the serial row step: they
  agree to float32 rounding (rankings can differ only between items whose scores are within rounding of each other).
- threads: the single-session scorer splits items over Numba's threads. On a machine whose cores are busy
  with other work a parallel region waits for its slowest thread; a serving process that answers many
  requests at once should rather call ``numba.set_num_threads(1)`` in each request thread (one core per
  request; the results do not change, see the tests).

The per-model ``_Engine`` (parameter tuples for Numba, popularity order) is cached per Model object; it holds
references to ``model.params`` (no copies), so in-place parameter edits are seen; replacing an entry of
``model.params`` rebuilds it.
"""
from __future__ import annotations

import numbers
import threading
import weakref

import numba
import numpy as np

from .backends.cpu.buffers import Hyper, Params, layer_params, make_hyper, make_workspace, placeholder, sx_name
from .backends.cpu.gru import gru_fwd_prefix, gru_fwd_row
from .codes import MODE_ONEHOT
from .itemmap import as_item_array
from .parallel import parallel_region
from .topk import _topk_one, _topk_one_serial, _topk_rows, check_k, topk_from_scores

__all__ = ["recommend_one", "recommend_batch", "continue_sequence", "topk_from_scores", "as_item_array",
           "check_k"]

# Batch scorer: rows per parallel task (their transposed hidden states stay in cache while every item tile of
# the task's range is scored against them), and the fewest items an item range may have.
ROWS_PER_TASK = 64
MIN_CHUNK_ITEMS = 512
# Chunks per thread for the single-session scorer (more chunks = better balance on a busy machine).
CHUNKS_PER_THREAD = 4


# ================================================================================================ input checks
def _is_nested(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim == 2 or (x.dtype == object and x.size > 0 and not np.isscalar(x.flat[0]))
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and all(isinstance(v, (list, tuple, np.ndarray)) for v in x)
    return False


# ================================================================================================ the engine
def _cfg_key(cfg) -> tuple:
    """The config fields an engine depends on: a change to any of them rebuilds it."""
    return (tuple(cfg.layers), cfg.final_act, cfg.constrained_embedding, cfg.embedding)


class _Engine:
    """Numba-ready view of one Model: parameter tuples, the item map, the popularity order."""

    def __init__(self, model):
        cfg = model.cfg
        P = model.params
        self.model_ref = weakref.ref(model)
        self.cfg_key = _cfg_key(model.cfg)
        self.params_src = dict(P)
        self.item_map = model.item_map
        self.item_ids = model.item_ids
        self.n_items = model.n_items
        self.layers = list(cfg.layers)
        self.state_size = int(sum(self.layers))
        self.top_off = self.state_size - self.layers[-1]
        self.cfg = cfg
        self.mode = cfg.input_mode_code
        self.Wy = P["Wy"]
        self.By = P["By"]
        sx = sx_name(cfg)
        # the GRU of backends/cpu/gru.py: the layer-0 input table (Wy, E or Wx0) and per-layer weights
        self.emb = P["Wy"] if sx is None else P[sx]
        self.params = Params(np.zeros(1, np.float32), self.Wy, self.By, placeholder() if sx is None else P[sx],
                             layer_params(P, len(self.layers), self.mode == MODE_ONEHOT))
        self.hyper: Hyper = make_hyper(cfg, np.zeros(1 + len(self.layers), dtype=np.int64))  # never drops out
        self.act_code, self.act_a = cfg.final_act_code
        self.support = np.asarray(model.item_support, dtype=np.float64)
        self._pop_order = None
        self._empty = np.zeros(0, dtype=np.int64)
        self._local = threading.local()

    def valid_for(self, model) -> bool:
        P = model.params
        return (model.item_ids is self.item_ids and _cfg_key(model.cfg) == self.cfg_key
                and len(P) == len(self.params_src) and all(P.get(k) is v for k, v in self.params_src.items()))

    # ------------------------------------------------------------------ ids
    def to_index(self, ids, on_unknown: str, what: str = "session_items") -> np.ndarray:
        return self.item_map.index(ids, on_unknown, what, stacklevel=4)[0]

    def index_set(self, ids, what: str) -> np.ndarray | None:
        """exclude / candidates -> sorted unique item indices; unknown ids are ignored."""
        return self.item_map.index_set(ids, what)

    def scalar_index(self, item) -> int:
        """One original id -> index, or -1 if unknown. ValueError if it is not an integer."""
        return self.item_map.scalar_index(item)

    # ------------------------------------------------------------------ GRU
    def _work(self) -> np.ndarray:
        w = getattr(self._local, "work", None)
        if w is None:
            w = self._local.work = np.empty(7 * max(self.layers), dtype=np.float32)
        return w

    def new_state(self) -> np.ndarray:
        return np.zeros(self.state_size, dtype=np.float32)

    def advance(self, state: np.ndarray, idx: np.ndarray) -> None:
        """Feed the item indices ``idx`` (int64) into ``state`` in place."""
        if idx.size:
            gru_fwd_row(idx, state, self.mode, self.emb, self.params.layers, self._work())

    def replay(self, idx: np.ndarray) -> np.ndarray:
        st = self.new_state()
        self.advance(st, np.ascontiguousarray(idx, dtype=np.int64))
        return st

    def top(self, state: np.ndarray) -> np.ndarray:
        return state[self.top_off:]

    # ------------------------------------------------------------------ ranking
    def restrict(self, excl, cand):
        """Fold exclusions into the candidate list (both sorted unique indices or None)."""
        if cand is not None and excl is not None and excl.size:
            cand = np.setdiff1d(cand, excl, assume_unique=True)
        return excl, cand

    def n_available(self, excl, cand) -> int:
        if cand is not None:
            return int(cand.size)
        return self.n_items - (0 if excl is None else int(excl.size))

    def topk_state(self, state, k: int, excl, cand, parallel: bool = False):
        """Model top-k for one hidden state; excl/cand already through ``restrict``. (indices, scores).

        One thread by default: a served request must not take the machine's cores from the others (and a
        parallel region per request serialises under Numba's workqueue layer). ``parallel=True`` splits the
        items over the threads for a caller that owns the machine; the result is the same."""
        k = min(k, self.n_available(excl, cand))
        if k <= 0:
            return self._empty, np.zeros(0, dtype=np.float32)
        args = (np.ascontiguousarray(self.top(state)), self.Wy, self.By, self.act_code, self.act_a, k,
                cand if cand is not None else self._empty, cand is not None, excl if excl is not None else self._empty)
        if not parallel:
            return _topk_one_serial(*args, 1)
        n = cand.size if cand is not None else self.n_items
        with parallel_region():
            return _topk_one(*args, max(1, min(numba.get_num_threads() * CHUNKS_PER_THREAD, n // 512)))

    @property
    def pop_order(self) -> np.ndarray:
        if self._pop_order is None:
            self._pop_order = np.lexsort((np.arange(self.n_items), -self.support))
        return self._pop_order

    def popular(self, k: int, excl, cand):
        """The popularity fallback: most supported items (ties by index) with their support as the score."""
        k = min(k, self.n_available(excl, cand))
        if k <= 0:
            return self._empty, np.zeros(0, dtype=np.float32)
        if cand is not None:
            order = cand[np.lexsort((cand, -self.support[cand]))][:k]
        else:
            ne = 0 if excl is None else excl.size
            head = self.pop_order[:k + ne]
            order = head[~np.isin(head, excl)][:k] if ne else head[:k]
        return order, self.support[order].astype(np.float32)


    def batch_top(self, flat_idx: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """The vectors the scorer multiplies with Wy after replaying n sessions: [n, Wy's width]."""
        return batch_hidden(self, flat_idx, lens)


class _PRNNEngine(_Engine):
    """A p-RNN's engine: the same ranking (the scorer sees the scaled concatenation [a_1 h_1 | ... | a_K h_K],
    the width of Wy). Many sessions (``batch_top``) are replayed together by the cpu p-RNN backend's forward
    (``PRNNCpuBackend.replay``, built with ``inference=True`` on the model's own arrays: no copies, in-place
    edits seen), as recommend_batch's GRU4Rec replay; one session (``advance``: recommend_one, SessionRecommender)
    by the numpy reference. The two agree to float32 rounding, as GRU4Rec's batch and row steps do. The state
    is one flat vector: subnet 0's layers, then subnet 1's, ..."""

    def __init__(self, model):
        P = model.params
        self.model_ref = weakref.ref(model)
        self.cfg_key = ("prnn", model.prnn, model.scoring, _cfg_key(model.cfg))
        self.params_src = dict(P)
        self.item_map = model.item_map
        self.item_ids = model.item_ids
        self.n_items = model.n_items
        self.cfg = model.cfg
        self.layout = model.layout
        self.scoring = model.scoring
        self.sizes = [h for sub in self.layout.subnets for h in sub.layers]
        self.state_size = int(sum(self.sizes))
        self.Wy = P["Wy"]
        self.By = P["By"]
        self.params = P
        self.act_code, self.act_a = model.cfg.final_act_code
        self.support = np.asarray(model.item_support, dtype=np.float64)
        self._pop_order = None
        self._empty = np.zeros(0, dtype=np.int64)
        self._local = threading.local()
        self._backend = None  # built at the first batch (replay)
        self._backend_lock = threading.Lock()
        K = len(self.layout.subnets)
        self.run = np.zeros(K, dtype=np.bool_)
        self.run[list(range(K)) if self.scoring is None else list(self.scoring)] = True

    def valid_for(self, model) -> bool:
        P = model.params
        return (getattr(model, "prnn", None) is not None and model.item_ids is self.item_ids
                and ("prnn", model.prnn, model.scoring, _cfg_key(model.cfg)) == self.cfg_key
                and len(P) == len(self.params_src) and all(P.get(k) is v for k, v in self.params_src.items()))

    def _split(self, state: np.ndarray) -> list:
        """A flat state [..., state_size] -> per subnet, per layer views [rows, H]."""
        st = state.reshape(-1, self.state_size)
        out, o = [], 0
        for sub in self.layout.subnets:
            layers = []
            for h in sub.layers:
                layers.append(st[:, o:o + h])
                o += h
            out.append(layers)
        return out

    @property
    def backend(self):
        """The cpu p-RNN backend that replays batches: on the model's own arrays (inference=True), or on copies
        of them when one is read-only (a memory-mapped model: Numba types those apart)."""
        with self._backend_lock:
            if self._backend is None:
                from .backends.cpu.prnn import PRNNCpuBackend
                shared = all(v.flags.writeable for v in self.params.values())
                self._backend = PRNNCpuBackend(self.layout, self.params, inference=shared)
            return self._backend

    def _replay(self, states: np.ndarray, Xt: np.ndarray, m_t: np.ndarray) -> None:
        """states [n, state_size] advanced in place by the schedule (Xt, m_t) (prefix_schedule's)."""
        hid = [np.ascontiguousarray(h) for Hk in self._split(states) for h in Hk]
        self.backend.replay(hid, Xt, m_t, self.run)
        states[:] = np.concatenate(hid, axis=1)

    def advance(self, state: np.ndarray, idx: np.ndarray) -> None:
        """One session's state by the numpy reference (reference_prnn.hidden_step): for one row, the compiled
        replay's per-call cost (typing its buffers' tuples: ~1.2 ms, measured) is more than the whole step."""
        from .reference_prnn import hidden_step
        if not idx.size:
            return
        H = [[h.copy() for h in Hk] for Hk in self._split(state)]
        for i in np.asarray(idx, dtype=np.int64):
            H = hidden_step(self.params, self.layout, H, np.array([i]), self.scoring)
        state[:] = np.concatenate([h for Hk in H for h in Hk], axis=1).ravel()

    def _tops(self, states: np.ndarray) -> np.ndarray:
        from .reference_prnn import concat_hidden
        H = self._split(states)
        run = range(len(H)) if self.scoring is None else self.scoring
        return concat_hidden(self.layout, {k: H[k][-1] for k in run}, H[0][0].shape[0], np.float32)

    def top(self, state: np.ndarray) -> np.ndarray:
        return self._tops(state)[0]

    def batch_top(self, flat_idx: np.ndarray, lens: np.ndarray) -> np.ndarray:
        states = np.zeros((lens.size, self.state_size), dtype=np.float32)
        if lens.size and flat_idx.size:
            order, Xt, m_t = prefix_schedule(flat_idx, lens)
            sorted_states = np.zeros_like(states)
            self._replay(sorted_states, Xt, m_t)
            states[order] = sorted_states
        return self._tops(states)


_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def engine_for(model) -> _Engine:
    """The cached _Engine of ``model`` (rebuilt if ``model.params`` entries or ``item_ids`` were replaced)."""
    eng = _ENGINES.get(model)
    if eng is not None and eng.valid_for(model):
        return eng
    with _ENGINES_LOCK:
        eng = _ENGINES.get(model)
        if eng is None or not eng.valid_for(model):
            eng = _PRNNEngine(model) if getattr(model, "prnn", None) is not None else _Engine(model)
            _ENGINES[model] = eng
    return eng


def clear_cache(model=None) -> None:
    """Forget the cached engine of ``model`` (or of every model)."""
    with _ENGINES_LOCK:
        if model is None:
            _ENGINES.clear()
        else:
            _ENGINES.pop(model, None)


# ================================================================================================ public API
def recommend_one(model, session_items, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
    """Top-k next items for one session (original item ids, oldest first).

    Returns ``(item_ids int64 [k'], scores float32 [k'])`` best first, k' = min(k, what can be recommended).
    See the module docstring for unknown ids, exclude / candidates, ties and the popularity fallback.
    """
    k = check_k(k)
    eng = engine_for(model)
    idx = eng.to_index(session_items, on_unknown)
    excl, cand = eng.restrict(eng.index_set(exclude, "exclude"), eng.index_set(candidates, "candidates"))
    if idx.size == 0:
        order, scores = eng.popular(k, excl, cand)
    else:
        order, scores = eng.topk_state(eng.replay(idx), k, excl, cand)
    return eng.item_ids[order], scores


def _parse_sessions(sessions, kind="int") -> list:
    """sessions -> list of int64 id arrays (ValueError naming the bad element)."""
    if isinstance(sessions, np.ndarray) and sessions.ndim == 2:
        rows = list(sessions)
    elif isinstance(sessions, (list, tuple)) or (isinstance(sessions, np.ndarray) and sessions.dtype == object
                                                 and sessions.ndim == 1):
        rows = list(sessions)
    else:
        raise ValueError("sessions must be a sequence of sessions (a list of item-id sequences, or a 2-D array); "
                         f"got {type(sessions).__name__}")
    arrays = []
    for j, s in enumerate(rows):
        if np.isscalar(s) or s is None:
            raise ValueError(f"sessions must be a sequence of sessions (each a sequence of item ids); element {j} "
                             f"is {s!r} (for one session use recommend_one / Model.recommend)")
        arrays.append(as_item_array(s, f"sessions[{j}]", kind))
    return arrays


def _map_sessions(eng: _Engine, arrays: list, on_unknown: str):
    """id arrays -> (flat item indices, kept length per session). One warning for the whole batch."""
    if on_unknown not in ("warn", "ignore", "raise"):
        raise ValueError(f"on_unknown must be 'warn', 'ignore' or 'raise'; got {on_unknown!r}")
    lens = np.array([a.size for a in arrays], dtype=np.int64)
    if not lens.sum():
        return np.zeros(0, dtype=np.int64), np.zeros(len(arrays), dtype=np.int64)
    flat = np.concatenate(arrays)
    _, known = eng.model_ref().item_index(flat, on_unknown=on_unknown)
    pos = np.minimum(np.searchsorted(eng.item_ids, flat), eng.n_items - 1)
    seg = np.repeat(np.arange(len(arrays)), lens)
    kept_len = np.bincount(seg[known], minlength=len(arrays)).astype(np.int64)
    return pos[known].astype(np.int64), kept_len


def prefix_schedule(flat_idx: np.ndarray, lens: np.ndarray):
    """n sessions (given flat, with lengths) as a schedule that replays them together: (order, Xt [T, n] int32,
    m_t [T] int64). Sessions are sorted by length (longest first, ``order``) and right-aligned, so at step t the
    running sessions are the first m_t rows; Xt[t, r] is the item at step t of sorted row r (0, never read,
    before its session starts)."""
    order = np.argsort(-lens, kind="stable")
    sl = lens[order]
    T = int(sl[0]) if sl.size else 0
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))[order]
    pos_in = np.arange(T)[:, None] - (T - sl)[None, :]
    valid = pos_in >= 0
    Xt = np.where(valid, flat_idx[np.minimum(starts[None, :] + np.maximum(pos_in, 0), max(flat_idx.size - 1, 0))], 0)
    return order, np.ascontiguousarray(Xt, dtype=np.int32), valid.sum(axis=1).astype(np.int64)


def batch_hidden(eng: _Engine, flat_idx: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Top-layer hidden state [n, H] after replaying n sessions (given flat, with lengths) together
    (``prefix_schedule``): every layer is one set of GEMMs over the running prefix per step (gru.gru_fwd_prefix:
    the training forward of backends/cpu/gru.py without dropout). Sessions of length 0 keep the zero state."""
    n = lens.size
    out = np.zeros((n, eng.layers[-1]), dtype=np.float32)
    if n == 0 or flat_idx.size == 0:
        return out
    order, Xt, m_t = prefix_schedule(flat_idx, lens)
    cfg = eng.cfg
    sx_cols = eng.params.Sx.shape[1] if sx_name(cfg) else 0
    work = make_workspace(cfg, n, 0, sx_cols, 0, np.full(1, -1, np.int32), with_scores=False)
    hid = tuple(np.zeros((n, h), dtype=np.float32) for h in eng.layers)
    with parallel_region():
        gru_fwd_prefix(eng.params, eng.hyper, work, hid, Xt, m_t)
    out[order] = hid[-1]
    return out


def _batch_excl(eng: _Engine, exclude, n: int):
    """exclude -> (per-row sorted index lists as (ptr, end, idx), global sorted set or None, per_row flag)."""
    if exclude is None:
        return None, None
    if _is_nested(exclude):
        rows = list(exclude)
        if len(rows) != n:
            raise ValueError(f"exclude: one sequence per session was given ({len(rows)}), but there are {n} sessions")
        sets = [eng.index_set(e, f"exclude[{j}]") for j, e in enumerate(rows)]
        return None, sets
    return eng.index_set(exclude, "exclude"), None


def recommend_batch(model, sessions, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
    """Top-k for many sessions at once: ``(item_ids int64 [n, k'], scores float32 [n, k'])``, best first.

    ``sessions``: a list of item-id sequences (any lengths) or a 2-D array (one session per row).
    ``exclude``: one sequence of ids for every session, or one sequence per session (a list of n sequences).
    k' = min(k, number of items or candidates, minus global exclusions); a row that has fewer items available
    (per-session exclusions) is padded with id -1 and score NaN. Sessions with no known item get the popularity
    fallback (see the module docstring). Scores agree with ``recommend_one`` to float32 rounding.
    """
    k = check_k(k)
    eng = engine_for(model)
    arrays = _parse_sessions(sessions, eng.item_map.kind)
    n = len(arrays)
    g_excl, row_excl = _batch_excl(eng, exclude, n)
    cand = eng.index_set(candidates, "candidates")
    flat_idx, lens = _map_sessions(eng, arrays, on_unknown)
    g_excl, cand = eng.restrict(g_excl, cand)
    kk = min(k, eng.n_available(g_excl, cand))
    ids = eng.item_map.full((n, max(kk, 0)))  # -1 (int ids) or None (str ids) where a row runs short
    scores = np.full((n, max(kk, 0)), np.nan, dtype=np.float32)
    if n == 0 or kk <= 0:
        return ids, scores
    # per-row exclusion lists (global ones shared)
    if row_excl is not None:
        if cand is not None:
            row_excl = [np.intersect1d(e, cand, assume_unique=True) for e in row_excl]
        ex_len = np.array([e.size for e in row_excl], dtype=np.int64)
        ex_idx = np.concatenate(row_excl) if ex_len.sum() else np.zeros(1, dtype=np.int64)
        ex_ptr = np.concatenate(([0], np.cumsum(ex_len)[:-1])).astype(np.int64)
        ex_end = ex_ptr + ex_len
    elif g_excl is not None and g_excl.size and cand is None:
        ex_idx = g_excl
        ex_ptr = np.zeros(n, dtype=np.int64)
        ex_end = np.full(n, g_excl.size, dtype=np.int64)
    else:
        ex_idx = np.zeros(1, dtype=np.int64)
        ex_ptr = np.zeros(n, dtype=np.int64)
        ex_end = np.zeros(n, dtype=np.int64)

    fallback = lens == 0
    model_rows = np.flatnonzero(~fallback)
    if model_rows.size:
        Htop = np.ascontiguousarray(eng.batch_top(flat_idx, lens)[model_rows])
        R = model_rows.size
        n_cand = cand.size if cand is not None else eng.n_items
        nrb = -(-R // ROWS_PER_TASK)
        tasks = numba.get_num_threads() * CHUNKS_PER_THREAD
        n_chunks = max(1, min(-(-tasks // nrb), n_cand // MIN_CHUNK_ITEMS + 1))
        with parallel_region():
            top_i, top_s, cnt = _topk_rows(Htop, eng.Wy, eng.By, eng.act_code, eng.act_a, kk,
                                           cand if cand is not None else eng._empty, cand is not None,
                                           ex_ptr[model_rows], ex_end[model_rows], ex_idx, ROWS_PER_TASK,
                                           n_chunks)
        for j, row in enumerate(model_rows):
            m = cnt[j]
            ids[row, :m] = eng.item_ids[top_i[j, :m]]
            scores[row, :m] = top_s[j, :m]
    for r in np.flatnonzero(fallback):
        ex = g_excl if row_excl is None else row_excl[r]
        c_r = cand if (cand is None or row_excl is None) else np.setdiff1d(cand, row_excl[r], assume_unique=True)
        order, sc = eng.popular(kk, ex if c_r is None else None, c_r)
        ids[r, :order.size] = eng.item_ids[order]
        scores[r, :order.size] = sc
    return ids, scores


def continue_sequence(model, session_items, n: int, exclude_seen: bool = False, candidates=None,
                      on_unknown: str = "warn") -> np.ndarray:
    """Greedy continuation: n times take the top-1 item, append it to the session and feed it back.

    Returns the n generated original ids (fewer if ``exclude_seen`` runs out of items). ``exclude_seen``: never
    generate an item already in the session or generated before. An empty / all-unknown session starts from
    the most popular item (the popularity fallback), then follows the model.
    """
    eng = engine_for(model)
    idx = eng.to_index(session_items, on_unknown)
    state = eng.replay(idx) if idx.size else None
    return _continue(eng, state, idx, n, exclude_seen, eng.index_set(candidates, "candidates"))


def _continue(eng: _Engine, state, seen_idx, n, exclude_seen: bool, cand) -> np.ndarray:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be an int >= 0; got {n!r}")
    seen = set(int(i) for i in seen_idx) if exclude_seen else set()
    out = []
    for _ in range(int(n)):
        excl = np.array(sorted(seen), dtype=np.int64) if seen else None
        ex, c = eng.restrict(excl, cand)
        if state is None:
            order, _ = eng.popular(1, ex, c)
        else:
            order, _ = eng.topk_state(state, 1, ex, c)
        if order.size == 0:
            break
        i = int(order[0])
        out.append(i)
        if exclude_seen:
            seen.add(i)
        if state is None:
            state = eng.new_state()
        eng.advance(state, np.array([i], dtype=np.int64))
    return eng.item_ids[np.array(out, dtype=np.int64)]
