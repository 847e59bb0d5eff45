"""TrainConfig: every hyperparameter of GRU4Rec v2, validated, with the official defaults.

Field names are the official GRU4Rec ones (Hidasi & Karatzoglou, CIKM 2018; the official Theano / PyTorch
code). A bad value raises ``ValueError`` naming the field and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .codes import (  # noqa: F401  (re-exported: config is where users look for them)
    ACT_ELU,
    ACT_LEAKY,
    ACT_LINEAR,
    ACT_RELU,
    ACT_TANH,
    FINAL_ACTS,
    LOSS_CODES,
    LOSSES,
    MODE_CODES,
    parse_final_act,
)


@dataclass
class TrainConfig:
    """Hyperparameters of a GRU4Rec v2 model and its training run.

    Defaults follow the official GRU4Rec code (PyTorch release) where it has one: cross-entropy loss, linear
    final activation, one layer of 100 units, constrained (shared input/output) embedding, 2048 extra negative
    samples drawn with P(i) ~ support_i^0.5, Adagrad (lr 0.05) without momentum, mini-batch 64, 10 epochs.
    """

    layers: list[int] = field(default_factory=lambda: [100])
    loss: str = "cross-entropy"
    final_act: str = "linear"
    embedding: int = 0
    constrained_embedding: bool = True
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048
    sample_alpha: float = 0.5
    sample_store_size: int = 10_000_000
    bpreg: float = 1.0
    logq: float = 0.0
    batch_size: int = 64
    n_epochs: int = 10
    seed: int = 42
    # Beyond the official code (off by default, so the official algorithm is what runs):
    mask_accidental_hits: bool = False  # drop a negative column whose item equals the row's target
    grad_cap: float = 0.0  # global-norm gradient clipping as the Theano grad_cap; 0 = off

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_validated", True)

    def __setattr__(self, name: str, value: Any) -> None:
        # A field set after construction is validated like one given to the constructor, so a config can never
        # hold a value that the checks would have refused.
        if self.__dict__.get("_validated") and name in self.__dataclass_fields__:
            value = getattr(dataclasses.replace(self, **{name: value}), name)
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            self.layers = [self.layers]
        if not isinstance(self.layers, (list, tuple)) or len(self.layers) == 0:
            raise ValueError(f"layers must be a non-empty list of positive ints (e.g. [100]); got {self.layers!r}")
        for h in self.layers:
            if not _is_int(h) or h < 1:
                raise ValueError(f"layers must be a non-empty list of positive ints (e.g. [100]); got {self.layers!r}")
        self.layers = [int(h) for h in self.layers]
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}")
        parse_final_act(self.final_act)
        self.final_act = self.final_act.strip().lower()
        if not _is_int(self.embedding) or self.embedding < 0:
            raise ValueError(f"embedding must be 0 (none) or a positive int size; got {self.embedding!r}")
        if not isinstance(self.constrained_embedding, bool):
            raise ValueError(f"constrained_embedding must be True or False; got {self.constrained_embedding!r}")
        if self.constrained_embedding and self.embedding:
            raise ValueError("embedding must be 0 when constrained_embedding is True (the constrained embedding is "
                             f"the output matrix, of size layers[-1]); got embedding={self.embedding}")
        for name in ("dropout_p_embed", "dropout_p_hidden"):
            v = getattr(self, name)
            if not _is_real(v) or not (0.0 <= v < 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1); got {v!r}")
        _positive(self, "learning_rate")
        if not _is_real(self.momentum) or not (0.0 <= self.momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum!r}")
        if not _is_int(self.n_sample) or self.n_sample < 0:
            raise ValueError(f"n_sample must be an int >= 0; got {self.n_sample!r}")
        if not _is_real(self.sample_alpha) or not (0.0 <= self.sample_alpha <= 1.0):
            raise ValueError(f"sample_alpha must be in [0, 1]; got {self.sample_alpha!r}")
        if not _is_int(self.sample_store_size) or self.sample_store_size < 0:
            raise ValueError(f"sample_store_size must be an int >= 0; got {self.sample_store_size!r}")
        if self.n_sample > 0 and self.sample_store_size and self.sample_store_size < self.n_sample:
            raise ValueError(f"sample_store_size must be 0 (draw every step) or >= n_sample ({self.n_sample}); "
                             f"got {self.sample_store_size}")
        for name in ("bpreg", "logq", "grad_cap"):
            v = getattr(self, name)
            if not _is_real(v) or v < 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if self.logq > 0 and self.loss != "cross-entropy":
            raise ValueError(f"logq applies to loss='cross-entropy' only; got loss={self.loss!r} with logq={self.logq}")
        for name in ("batch_size", "n_epochs"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1; got {v!r}")
        if not _is_int(self.seed) or self.seed < 0 or self.seed >= 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32); got {self.seed!r}")
        if not isinstance(self.mask_accidental_hits, bool):
            raise ValueError(f"mask_accidental_hits must be True or False; got {self.mask_accidental_hits!r}")
        for name in ("embedding", "n_sample", "sample_store_size", "batch_size", "n_epochs", "seed"):
            setattr(self, name, int(getattr(self, name)))
        for name in ("dropout_p_embed", "dropout_p_hidden", "learning_rate", "momentum", "sample_alpha", "bpreg",
                     "logq", "grad_cap"):
            setattr(self, name, float(getattr(self, name)))

    # ------------------------------------------------------------------ derived
    @property
    def final_act_code(self) -> tuple[int, float]:
        return parse_final_act(self.final_act)

    @property
    def loss_code(self) -> int:
        return LOSS_CODES[self.loss]

    @property
    def input_mode_code(self) -> int:
        """codes.MODE_CONSTRAINED | MODE_EMBEDDING | MODE_ONEHOT."""
        return MODE_CODES[self.input_mode]

    @property
    def input_mode(self) -> str:
        """'constrained' | 'embedding' | 'onehot'."""
        if self.constrained_embedding:
            return "constrained"
        return "embedding" if self.embedding else "onehot"

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**config_fields(cls, d))

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json_object(cls, text))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def config_fields(cls, d: Any, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``d`` checked as the fields of the config dataclass ``cls`` (TrainConfig, PRNNConfig): a dict with no
    unknown field and every ``required`` one, or a ValueError naming what is wrong."""
    name = cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"a {name} is read from a JSON object; got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {name} field(s) {unknown}; known fields: {sorted(known)}")
    for f in required:
        if f not in d:
            raise ValueError(f"{name}: the field {f!r} is missing")
    return d


def json_object(cls, text: str) -> Any:
    """The parsed JSON ``text`` of a ``cls`` config, or a ValueError naming the config."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cls.__name__} JSON is not valid JSON: {e}") from None


def _is_int(v: Any) -> bool:
    import numbers
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    import numbers
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _positive(cfg: TrainConfig, name: str) -> None:
    v = getattr(cfg, name)
    if not _is_real(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {v!r}")
