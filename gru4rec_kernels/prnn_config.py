"""PRNNConfig: the p-RNN's subnets, architecture and training strategy, a companion of TrainConfig.

p-RNN (Hidasi, Quadrana, Karatzoglou, Tikk: "Parallel Recurrent Neural Network Architectures for Feature-rich
Session-based Recommendations", RecSys 2016, doi:10.1145/2959100.2959167) runs one GRU stack per input source
and scores items with the sum of the subnets' scores. The model and the choices made where the paper is silent
are docs/prnn.md.

Why a companion and not TrainConfig fields: TrainConfig is the official GRU4Rec hyperparameter set (the official
parameter strings and files map onto it, every backend and the model file read it); a p-RNN adds a list of
subnets, each with its own layers, input mode and dropout, which flat fields cannot hold. The shared
hyperparameters (loss, final activation, learning rate, momentum, samples, logq, batch size, epochs, seed,
grad_cap, mask_accidental_hits) stay in TrainConfig; a subnet field left ``None`` takes TrainConfig's value
(``layers``, the input mode of the item ID, ``embedding``, ``dropout_p_embed``, ``dropout_p_hidden``), so the
architecture ``"id"`` with every field ``None`` is today's GRU4Rec.

A bad value raises ``ValueError`` naming the field (``subnets[1].layers``, ``strategy``, ...).
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

from .codes import INPUT_MODES
from .config import TrainConfig, config_fields, json_object

__all__ = ["PRNNConfig", "SubnetConfig", "Subnet", "Phase", "ID_SOURCE", "ARCHITECTURES", "STRATEGIES",
           "BIAS_MODES"]

ID_SOURCE = "id"  # the item-ID input; every other source name is the name of an ItemFeatures
ARCHITECTURES = ("id", "feature", "concat", "parallel")
STRATEGIES = ("simultaneous", "alternating", "interleaving", "residual")
# Which phases train the shared output bias By: every phase, only the phases of the first subnet in `order`,
# or none (By stays at its initial zero).
BIAS_MODES = ("always", "first", "never")


@dataclass(frozen=True)
class SubnetConfig:
    """One GRU stack and the input sources it reads (``"id"`` and / or feature names). ``None``: TrainConfig's
    value. ``scale`` is a_k, the factor of this subnet's hidden state in the summed scores."""

    sources: tuple[str, ...]
    layers: tuple[int, ...] | None = None
    id_input: str | None = None  # 'constrained' | 'embedding' | 'onehot' (only with the 'id' source)
    embedding: int | None = None  # embedding size of id_input='embedding'
    dropout_p_embed: float | None = None  # on the ID embedding rows (constrained / embedding)
    dropout_p_hidden: float | None = None  # on every layer's output
    scale: float = 1.0

    def __post_init__(self) -> None:
        self._validate("subnet")

    def _validate(self, where: str) -> None:
        src = self.sources
        if isinstance(src, str) or not isinstance(src, (list, tuple)) or len(src) == 0:
            raise ValueError(f"{where}.sources must be a non-empty list of source names ('id' or feature names); "
                             f"got {src!r}")
        for s in src:
            if not isinstance(s, str) or not s or s != s.strip():
                raise ValueError(f"{where}.sources: a source name is a non-empty string without surrounding "
                                 f"spaces; got {s!r}")
        if len(set(src)) != len(src):
            raise ValueError(f"{where}.sources lists a source twice: {list(src)}")
        object.__setattr__(self, "sources", tuple(src))
        if self.layers is not None:
            layers = [self.layers] if _is_int(self.layers) else self.layers
            if not isinstance(layers, (list, tuple)) or not layers or not all(_is_int(h) and h >= 1 for h in layers):
                raise ValueError(f"{where}.layers must be None (TrainConfig.layers) or a non-empty list of positive "
                                 f"ints; got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(int(h) for h in layers))
        if self.id_input is not None:
            if ID_SOURCE not in src:
                raise ValueError(f"{where}.id_input applies to a subnet with the 'id' source only; sources are "
                                 f"{list(src)}")
            if self.id_input not in INPUT_MODES:
                raise ValueError(f"{where}.id_input must be None (TrainConfig's input mode) or one of {INPUT_MODES};"
                                 f" got {self.id_input!r}")
        if self.embedding is not None and (not _is_int(self.embedding) or self.embedding < 1):
            raise ValueError(f"{where}.embedding must be None (TrainConfig.embedding) or a positive int; got "
                             f"{self.embedding!r}")
        if self.embedding is not None and self.id_input not in (None, "embedding"):
            raise ValueError(f"{where}.embedding is the size of id_input='embedding'; got id_input="
                             f"{self.id_input!r} with embedding={self.embedding}")
        for name in ("dropout_p_embed", "dropout_p_hidden"):
            v = getattr(self, name)
            if v is not None and (not _is_real(v) or not 0.0 <= v < 1.0):
                raise ValueError(f"{where}.{name} must be None (TrainConfig's) or a probability in [0, 1); got {v!r}")
        if not _is_real(self.scale) or self.scale <= 0:
            raise ValueError(f"{where}.scale must be a finite number > 0; got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class Subnet:
    """A subnet with every value resolved against a TrainConfig (``PRNNConfig.resolve``)."""

    index: int
    sources: tuple[str, ...]
    layers: tuple[int, ...]
    id_input: str | None  # None when 'id' is not a source
    embedding: int  # > 0 only with id_input == 'embedding'
    dropout_p_embed: float
    dropout_p_hidden: float
    scale: float

    @property
    def hidden(self) -> int:
        """H_k: the width of the top layer, and of the subnet's block of the output weights."""
        return self.layers[-1]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if s != ID_SOURCE)

    @property
    def prefix(self) -> str:
        """Prefix of the subnet's parameter names (``s0.Wx0``)."""
        return f"s{self.index}."


@dataclass(frozen=True)
class Phase:
    """What one training step does: ``trainable`` subnets get updates (the others are frozen: no update, their
    Adagrad accumulators and momenta untouched); ``scoring`` subnets' hidden states enter the scores (the others
    do not run); ``train_bias``: the shared output bias By gets updates."""

    trainable: tuple[int, ...]
    scoring: tuple[int, ...]
    train_bias: bool


@dataclass(frozen=True)
class PRNNConfig:
    """The subnets (each a GRU stack over its sources; its block of the output weights is W_k [N, H_k]) and the
    training strategy.

    strategy: 'simultaneous' (every subnet every step), 'alternating' (one subnet per phase of
    ``epochs_per_phase`` epochs, in ``order``, cycling), 'interleaving' (one subnet per mini-batch, in ``order``,
    by the global step), 'residual' (phase p trains ``order[p]`` with the scores of ``order[0..p]`` only; the
    earlier subnets are frozen). ``order``: a permutation of the subnet indices (default 0, 1, ...).
    ``epochs_per_phase``: an int or one int per subnet; alternating default 1; residual default: n_epochs split
    evenly (the later phases take the remainder); residual with an explicit value must sum to n_epochs.
    ``train_bias``: 'always' | 'first' | 'never' (default 'first' for residual: the first subnet and its bias
    are one GRU4Rec model, frozen together; 'always' otherwise).
    """

    subnets: tuple[SubnetConfig, ...]
    strategy: str = "simultaneous"
    order: tuple[int, ...] | None = None
    epochs_per_phase: int | tuple[int, ...] | None = None
    train_bias: str | None = None

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        subs = self.subnets
        if isinstance(subs, (SubnetConfig, dict)) or not isinstance(subs, (list, tuple)) or len(subs) == 0:
            raise ValueError(f"subnets must be a non-empty list of SubnetConfig (or dicts); got {subs!r}")
        out = []
        for k, s in enumerate(subs):
            if isinstance(s, dict):
                known = {f.name for f in dataclasses.fields(SubnetConfig)}
                unknown = sorted(set(s) - known)
                if unknown:
                    raise ValueError(f"subnets[{k}]: unknown field(s) {unknown}; known: {sorted(known)}")
                if "sources" not in s:
                    raise ValueError(f"subnets[{k}].sources is missing")
                try:
                    s = SubnetConfig(**s)
                except ValueError as e:
                    raise ValueError(str(e).replace("subnet.", f"subnets[{k}].", 1)) from None
            elif not isinstance(s, SubnetConfig):
                raise ValueError(f"subnets[{k}] must be a SubnetConfig or a dict; got {type(s).__name__}")
            out.append(s)
        object.__setattr__(self, "subnets", tuple(out))
        seen: dict[str, int] = {}
        for k, s in enumerate(out):
            for src in s.sources:
                if src in seen:
                    raise ValueError(f"source {src!r} feeds subnets[{seen[src]}] and subnets[{k}]; each source "
                                     f"feeds one subnet")
                seen[src] = k
        K = len(out)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}; got {self.strategy!r}")
        if self.strategy != "simultaneous" and K < 2:
            raise ValueError(f"strategy={self.strategy!r} switches between subnets and needs 2 or more; this "
                             f"config has {K} (use 'simultaneous')")
        if self.order is not None:
            order = self.order
            if not isinstance(order, (list, tuple)) or sorted(order) != list(range(K)) \
                    or not all(_is_int(i) for i in order):
                raise ValueError(f"order must be a permutation of the subnet indices {list(range(K))}; got {order!r}")
            object.__setattr__(self, "order", tuple(int(i) for i in order))
        e = self.epochs_per_phase
        if e is not None:
            if self.strategy not in ("alternating", "residual"):
                raise ValueError(f"epochs_per_phase applies to strategy 'alternating' or 'residual'; got "
                                 f"strategy={self.strategy!r}")
            if _is_int(e):
                if e < 1:
                    raise ValueError(f"epochs_per_phase must be an int >= 1 or one such int per subnet; got {e!r}")
                object.__setattr__(self, "epochs_per_phase", int(e))
            elif isinstance(e, (list, tuple)) and len(e) == K and all(_is_int(v) and v >= 1 for v in e):
                object.__setattr__(self, "epochs_per_phase", tuple(int(v) for v in e))
            else:
                raise ValueError(f"epochs_per_phase must be an int >= 1 or one such int per subnet ({K}); got {e!r}")
        if self.train_bias is not None and self.train_bias not in BIAS_MODES:
            raise ValueError(f"train_bias must be None (by strategy) or one of {BIAS_MODES}; got {self.train_bias!r}")

    # ------------------------------------------------------------------ derived
    @property
    def architecture(self) -> str:
        """'id' (one subnet, the item ID only: GRU4Rec), 'feature' (one subnet, features only), 'concat' (one
        subnet over the ID and features), 'parallel' (two or more subnets: p-RNN)."""
        if len(self.subnets) > 1:
            return "parallel"
        src = self.subnets[0].sources
        if src == (ID_SOURCE,):
            return "id"
        return "concat" if ID_SOURCE in src else "feature"

    @property
    def features(self) -> tuple[str, ...]:
        """Every feature source, in subnet then source order."""
        return tuple(s for sub in self.subnets for s in sub.sources if s != ID_SOURCE)

    @property
    def phase_order(self) -> tuple[int, ...]:
        return self.order if self.order is not None else tuple(range(len(self.subnets)))

    @property
    def bias_mode(self) -> str:
        if self.train_bias is not None:
            return self.train_bias
        return "first" if self.strategy == "residual" else "always"

    def resolve(self, cfg: TrainConfig) -> tuple[Subnet, ...]:
        """The subnets with TrainConfig's values filled in; ValueError for combinations that cannot work."""
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"resolve needs a TrainConfig; got {type(cfg).__name__}")
        out = []
        for k, s in enumerate(self.subnets):
            has_id = ID_SOURCE in s.sources
            mode = (s.id_input or cfg.input_mode) if has_id else None
            emb = 0
            if mode == "embedding":
                emb = s.embedding if s.embedding is not None else cfg.embedding
                if emb < 1:
                    raise ValueError(f"subnets[{k}]: id_input='embedding' needs an embedding size (subnets[{k}]."
                                     f"embedding or TrainConfig.embedding); both are unset")
            out.append(Subnet(
                index=k, sources=s.sources, layers=s.layers if s.layers is not None else tuple(cfg.layers),
                id_input=mode, embedding=emb,
                dropout_p_embed=cfg.dropout_p_embed if s.dropout_p_embed is None else float(s.dropout_p_embed),
                dropout_p_hidden=cfg.dropout_p_hidden if s.dropout_p_hidden is None else float(s.dropout_p_hidden),
                scale=s.scale))
        return tuple(out)

    def check(self, cfg: TrainConfig) -> None:
        """Every rule that needs TrainConfig too (the subnets resolve; the residual phases fit n_epochs)."""
        self.resolve(cfg)
        self.phase_epochs(cfg.n_epochs)

    # ------------------------------------------------------------------ phases
    def phase_epochs(self, n_epochs: int) -> tuple[int, ...]:
        """Epochs of each phase (alternating: one cycle; residual: all phases; other strategies: (n_epochs,))."""
        if not _is_int(n_epochs) or n_epochs < 1:
            raise ValueError(f"n_epochs must be an int >= 1; got {n_epochs!r}")
        K, e = len(self.subnets), self.epochs_per_phase
        if self.strategy == "alternating":
            return (e,) * K if _is_int(e) else (e or (1,) * K)
        if self.strategy != "residual":
            return (n_epochs,)
        if e is None:
            if n_epochs < K:
                raise ValueError(f"residual training runs one phase per subnet and needs n_epochs >= {K}; got "
                                 f"n_epochs={n_epochs}")
            base, extra = divmod(n_epochs, K)
            return tuple(base + (1 if p >= K - extra else 0) for p in range(K))
        per = (e,) * K if _is_int(e) else e
        if sum(per) != n_epochs:
            raise ValueError(f"residual phases of epochs_per_phase={list(per)} take {sum(per)} epochs but "
                             f"n_epochs is {n_epochs}; make them equal")
        return per

    def phase(self, epoch: int, step: int, n_epochs: int) -> Phase:
        """The phase of a training step: ``epoch`` counts from 0, ``step`` is the global step (across epochs)."""
        if not _is_int(epoch) or not 0 <= epoch < n_epochs:
            raise ValueError(f"epoch must be an int in [0, n_epochs={n_epochs}); got {epoch!r}")
        if not _is_int(step) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        K, order = len(self.subnets), self.phase_order
        every = tuple(range(K))
        if self.strategy == "simultaneous":
            return Phase(every, every, self.bias_mode != "never")
        per = self.phase_epochs(n_epochs)
        if self.strategy == "interleaving":
            p = step % K
        elif self.strategy == "alternating":
            p = _phase_of(epoch % sum(per), per)
        else:
            p = _phase_of(epoch, per)
        k = order[p]
        scoring = tuple(sorted(order[:p + 1])) if self.strategy == "residual" else every
        bias = self.bias_mode == "always" or (self.bias_mode == "first" and k == order[0])
        return Phase((k,), scoring, bias)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_architecture(cls, architecture: str, features: list[str] | tuple[str, ...] = (), *,
                         layers: list | None = None, scales: list | None = None, **kwargs: Any) -> "PRNNConfig":
        """The config of a named architecture over ``features`` (feature names, each an ItemFeatures' name).

        'id': [id]; 'feature': [features...] (one subnet); 'concat': [id, features...] (one subnet);
        'parallel': [id], [f1], [f2], ... (one subnet per source, the ID first). ``layers``: None (TrainConfig's
        for every subnet) or one list of sizes per subnet; ``scales``: None or one a_k per subnet; ``kwargs``:
        strategy, order, epochs_per_phase, train_bias."""
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
        if isinstance(features, str):
            features = [features]
        features = list(features)
        if architecture == "id" and features:
            raise ValueError(f"architecture 'id' takes no features; got {features}")
        if architecture != "id" and not features:
            raise ValueError(f"architecture {architecture!r} needs at least one feature name")
        groups = {"id": [[ID_SOURCE]], "feature": [features], "concat": [[ID_SOURCE] + features],
                  "parallel": [[ID_SOURCE]] + [[f] for f in features]}[architecture]
        for name, per in (("layers", layers), ("scales", scales)):
            if per is not None and (not isinstance(per, (list, tuple)) or len(per) != len(groups)):
                raise ValueError(f"{name} must be None or a list with one entry per subnet ({len(groups)} for "
                                 f"{architecture!r} over {features}); got {per!r}")
        subs = [SubnetConfig(sources=tuple(g), layers=None if layers is None else layers[k],
                             scale=1.0 if scales is None else scales[k]) for k, g in enumerate(groups)]
        return cls(subnets=tuple(subs), **kwargs)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        e = self.epochs_per_phase
        return {"subnets": [s.to_dict() for s in self.subnets], "strategy": self.strategy,
                "order": None if self.order is None else list(self.order),
                "epochs_per_phase": list(e) if isinstance(e, tuple) else e, "train_bias": self.train_bias}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PRNNConfig":
        return cls(**config_fields(cls, d, required=("subnets",)))

    @classmethod
    def from_json(cls, text: str) -> "PRNNConfig":
        return cls.from_dict(json_object(cls, text))

    def replace(self, **changes: Any) -> "PRNNConfig":
        return dataclasses.replace(self, **changes)


def _phase_of(epoch: int, per: tuple[int, ...]) -> int:
    """Index of the phase that holds ``epoch`` when phase p lasts per[p] epochs (the last phase past the end)."""
    acc = 0
    for p, n in enumerate(per):
        acc += n
        if epoch < acc:
            return p
    return len(per) - 1


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
