"""A trained GRU4Rec model: parameters, item-id map, config; save / load (the file format: ``modelfile``);
recommend."""
from __future__ import annotations

import numpy as np

from . import modelfile
from .config import TrainConfig
from .itemmap import ItemMap, UnknownItemError  # noqa: F401  (UnknownItemError: re-exported)
from .layout import param_specs
from .modelfile import FORMAT_NAME, FORMAT_VERSION, ModelFileError  # noqa: F401  (re-exported)


class Model:
    """A trained GRU4Rec v2 model, or a p-RNN (``prnn`` a PRNNConfig, ``features`` its ItemFeatures aligned with
    ``item_ids``, ``scoring`` the subnets that score: None for all, fewer for a residual run stopped early).
    ``params`` are host float32 arrays under their layout names."""

    def __init__(self, cfg: TrainConfig, item_ids, params: dict, history=None, item_support=None, prnn=None,
                 features=(), scoring=None):
        self.cfg = cfg
        self.item_map = ItemMap(item_ids)
        self.prnn = prnn
        self.layout = None
        self.scoring = None
        if prnn is not None:
            from .prnn_layout import PRNNLayout
            self.layout = PRNNLayout(cfg, prnn, len(self.item_map), features)
            for f in self.layout.features.values():
                if not np.array_equal(np.asarray(f.item_ids), np.asarray(self.item_map.ids)):
                    raise ValueError(f"features {f.name!r} are aligned with other item ids than the model's; build "
                                     "them with the model's item map")
            if scoring is not None:
                self.scoring = tuple(sorted(int(k) for k in scoring))
                if not self.scoring or not set(self.scoring) <= set(range(len(self.layout.subnets))):
                    raise ValueError(f"scoring must name subnets of 0..{len(self.layout.subnets) - 1}; got {scoring!r}")
                if len(self.scoring) == len(self.layout.subnets):
                    self.scoring = None
        elif features or scoring is not None:
            raise ValueError("features / scoring are p-RNN arguments: give prnn= too")
        self.params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
        self.history = list(history or [])
        self.item_support = (np.zeros(self.n_items) if item_support is None
                             else np.asarray(item_support, dtype=np.float64))
        self._check_params()

    @property
    def item_ids(self) -> np.ndarray:
        """The original item ids, sorted; an item's index is its position here."""
        return self.item_map.ids

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    @property
    def features(self) -> dict:
        """The p-RNN's feature sources by name ({} for GRU4Rec)."""
        return {} if self.layout is None else dict(self.layout.features)

    def _check_params(self, error=ValueError) -> None:
        specs = param_specs(self.cfg, self.n_items) if self.layout is None else self.layout.param_specs()
        want = {s.name: s.shape for s in specs}
        missing = sorted(set(want) - set(self.params))
        extra = sorted(set(self.params) - set(want))
        if missing:
            raise error(f"missing parameter tensor(s) {missing}")
        if extra:
            raise error(f"unexpected parameter tensor(s) {extra}")
        for k, shape in want.items():
            if self.params[k].shape != shape:
                raise error(f"parameter {k!r} has shape {self.params[k].shape}, the config needs {shape}")
        if self.item_support.shape != (self.n_items,):
            raise error(f"item_support has shape {self.item_support.shape}, expected ({self.n_items},)")

    # ------------------------------------------------------------------ save / load
    def save(self, path) -> None:
        """Write the model file atomically (see ``modelfile``)."""
        modelfile.atomic_write_bytes(path, modelfile.encode_model(self.cfg, self.item_ids, self.item_support,
                                                                  self.params, self.history, self.prnn,
                                                                  self.features, self.scoring))

    @classmethod
    def load(cls, path) -> "Model":
        """Read a model file; a missing file is FileNotFoundError, anything wrong with it ModelFileError."""
        return cls(**modelfile.read_model_file(path))

    @classmethod
    def from_bytes(cls, buf, what="model file") -> "Model":
        """A model from the bytes of a model file (``what`` names it in error messages)."""
        return cls(**modelfile.decode_model(buf, what))

    # ------------------------------------------------------------------ item ids
    def item_index(self, ids, on_unknown: str = "warn"):
        """Original ids -> item indices; unknown ids are dropped with a warning ('warn'), silently ('ignore')
        or raise UnknownItemError ('raise'). Returns (indices int64, known mask)."""
        return self.item_map.index(ids, on_unknown, stacklevel=4)

    # ------------------------------------------------------------------ inference
    def hidden_state(self, session_idx) -> list:
        """Replay a session (item indices) from a zero state: the hidden state per layer, batch of one."""
        if self.layout is not None:
            from . import reference_prnn as rp
            H = [[np.zeros((1, h), dtype=np.float32) for h in sub.layers] for sub in self.layout.subnets]
            for i in np.asarray(session_idx, dtype=np.int64):
                H = rp.hidden_step(self.params, self.layout, H, np.array([i]), self.scoring)
            return H  # per subnet, per layer
        from .reference import hidden_step
        H = [np.zeros((1, h), dtype=np.float32) for h in self.cfg.layers]
        for i in np.asarray(session_idx, dtype=np.int64):
            H = hidden_step(self.params, self.cfg, H, np.array([i]))
        return H

    def recommend(self, session_items, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
        """Top-k next items for one session (a sequence of original item ids, oldest first).

        Returns (item_ids, scores), best first, in original ids: the type of ids the model was trained on (int64,
        or Python str in an object array); the ids given must be of that type too. ``exclude``: ids never to
        recommend (e.g. the session's own items); ``candidates``: restrict to these ids. Unknown ids are skipped
        with a warning (``on_unknown='raise'`` to raise). A session with no known item gets the most popular items.
        """
        from .recommend import recommend_one
        return recommend_one(self, session_items, k=k, exclude=exclude, candidates=candidates,
                             on_unknown=on_unknown)

    def recommend_batch(self, sessions, k: int = 20, exclude=None, candidates=None, on_unknown: str = "warn"):
        """Top-k for many sessions at once: (item_ids [n, k], scores [n, k]); see ``recommend``."""
        from .recommend import recommend_batch
        return recommend_batch(self, sessions, k=k, exclude=exclude, candidates=candidates, on_unknown=on_unknown)

    def __repr__(self) -> str:
        if self.prnn is not None:
            return (f"Model(p-RNN {self.prnn.architecture}, strategy={self.prnn.strategy!r}, "
                    f"subnets={[s.sources for s in self.layout.subnets]}, items={self.n_items}, "
                    f"epochs_trained={len(self.history)})")
        return (f"Model(layers={self.cfg.layers}, loss={self.cfg.loss!r}, items={self.n_items}, "
                f"epochs_trained={len(self.history)})")
