"""Drop-in for users of the official GRU4Rec code: its parameter strings, parameter files and search spaces.

- ``-ps``-style strings: ``"loss=bpr-max,layers=224,elu_param=0.5,n_sample=2048"`` (several layers as ``100/100``);
- parameter files (``paramfiles/*.py``: ``gru4rec_params = OrderedDict([('loss', 'bpr-max'), ...])``), read as
  data with ``ast`` and never executed;
- JSON-lines search spaces (``paramspaces/*.json``: ``{"name": "learning_rate", "dtype": "float", "values": [0.01,
  0.25], "step": 0.005}`` per line) for ``tune``.

Official names map onto TrainConfig: ``elu_param=a`` (PyTorch code) is ``final_act='elu-a'`` (0: linear);
``final_act='softmax'`` / ``'softmax_logit'`` (Theano code, the cross-entropy output) is ``'linear'`` scores;
``hidden_act='tanh'`` and ``adapt='adagrad'`` are what this library always does (anything else is refused).
"""
from __future__ import annotations

import ast
import json
import os
from typing import Any

from .config import TrainConfig

# Official fields that this library implements in one way only: the value that means that way.
_FIXED = {"hidden_act": ("tanh",), "adapt": ("adagrad",)}
# Official fields that have no effect on training here (the official code's own bookkeeping).
_IGNORED = {"logq_sample", "train_random_order", "lmbd", "time_sort"}


def _fields() -> set:
    return set(TrainConfig.__dataclass_fields__)


def _parse_value(name: str, text: str) -> Any:
    t = text.strip()
    if name == "layers":
        try:
            return [int(x) for x in t.split("/")]
        except ValueError:
            raise ValueError(f"parameter layers must be ints separated by '/' (e.g. 100/100); got {text!r}") from None
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def to_config_dict(params: dict) -> dict:
    """Official parameter names and values -> TrainConfig keyword arguments (ValueError naming a bad one)."""
    out: dict[str, Any] = {}
    fields = _fields()
    for name, value in params.items():
        if not isinstance(name, str):
            raise ValueError(f"parameter names must be strings; got {name!r}")
        if name in _IGNORED:
            continue
        if name in _FIXED:
            if str(value).lower() not in _FIXED[name]:
                raise ValueError(f"parameter {name}={value!r} is not supported: gru4rec-kernels implements "
                                 f"{name}={_FIXED[name][0]!r} only")
            continue
        if name == "elu_param":
            try:
                a = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"parameter elu_param must be a number >= 0; got {value!r}") from None
            if "final_act" in params and str(params["final_act"]).lower() not in ("linear", "softmax"):
                if a > 0:
                    raise ValueError(f"parameters elu_param={value!r} and final_act={params['final_act']!r} "
                                     "conflict: give one of them")
                continue
            out["final_act"] = "linear" if a == 0 else f"elu-{value}"
            continue
        if name == "final_act" and str(value).lower() in ("softmax", "softmax_logit"):
            out.setdefault("final_act", "linear")
            continue
        if name not in fields:
            raise ValueError(f"unknown parameter {name!r}; known: {sorted(fields | {'elu_param'})}")
        out[name] = value
    return out


def parse_param_string(text: str) -> dict:
    """``"loss=bpr-max,layers=100/100,elu_param=1"`` -> TrainConfig keyword arguments."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a parameter string looks like 'loss=bpr-max,layers=100,...'; got {text!r}")
    params: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"parameter string: {part!r} is not of the form name=value")
        if name in params:
            raise ValueError(f"parameter string: {name!r} is given twice")
        params[name] = _parse_value(name, value)
    return to_config_dict(params)


def read_param_file(path: str | os.PathLike) -> dict:
    """An official parameter file (Python source with ``gru4rec_params = OrderedDict([...])`` or a dict literal),
    parsed with ``ast`` and never executed -> TrainConfig keyword arguments."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"parameter file {path!r} is a directory")
    with open(path, encoding="utf-8") as f:
        source = f.read(1 << 20)
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ValueError(f"parameter file {path!r} is not valid Python: {e}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "gru4rec_params"
                                                for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and value.args and not value.keywords:
                value = value.args[0]  # OrderedDict([...]) / dict([...]): its one literal argument
            try:
                lit = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                raise ValueError(f"parameter file {path!r}: gru4rec_params must be a literal list of (name, value) "
                                 "pairs or a dict literal") from None
            try:
                params = dict(lit)
            except (TypeError, ValueError):
                raise ValueError(f"parameter file {path!r}: gru4rec_params is not a list of (name, value) pairs") \
                    from None
            return to_config_dict(params)
    raise ValueError(f"parameter file {path!r} has no 'gru4rec_params = ...' assignment")


def read_param_space(text_or_path: str | os.PathLike) -> dict:
    """An official JSON-lines search space -> this library's search-space dict (see ``tune``)."""
    text = os.fspath(text_or_path)
    if not text.lstrip().startswith("{"):
        with open(text, encoding="utf-8") as f:
            text = f.read(1 << 20)
    space: dict[str, Any] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"search space line {lineno}: not valid JSON ({e})") from None
        if not isinstance(entry, dict) or "name" not in entry or "dtype" not in entry or "values" not in entry:
            raise ValueError(f"search space line {lineno}: needs 'name', 'dtype' and 'values'; got {line.strip()!r}")
        name, dtype, values = entry["name"], entry["dtype"], entry["values"]
        if dtype == "categorical":
            if name == "elu_param":
                space["final_act"] = {"type": "categorical",
                                      "choices": ["linear" if float(v) == 0 else f"elu-{v}" for v in values]}
            else:
                space[name] = {"type": "categorical", "choices": list(values)}
        elif dtype in ("int", "float"):
            if not isinstance(values, list) or len(values) != 2:
                raise ValueError(f"search space line {lineno}: {dtype} 'values' must be [low, high]; got {values!r}")
            spec = {"type": dtype, "low": values[0], "high": values[1]}
            if "step" in entry:
                spec["step"] = entry["step"]
            if entry.get("log"):
                spec["log"] = True
            space[name] = spec
        else:
            raise ValueError(f"search space line {lineno}: dtype must be int, float or categorical; got {dtype!r}")
    if not space:
        raise ValueError("the search space file has no entries")
    return space
