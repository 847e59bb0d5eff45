"""`gru4rec train | evaluate | preprocess | recommend | ...`: the command line over the same API.

Every TrainConfig field is an option of `train` (same name, dashes for underscores). `--config FILE` reads a
JSON config (e.g. the best one written by `gru4rec tune`); options given on the command line override it.
Without --train, `train` uses the built-in synthetic click log (gru4rec_kernels.synthetic).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from .config import TrainConfig

log = logging.getLogger("gru4rec_kernels")


# ------------------------------------------------------------------------------------------------ helpers
def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sep", default=None, help="field separator (default: tab for .tsv/.txt, comma otherwise)")
    p.add_argument("--session-key", default="SessionId", help="session id column (default SessionId)")
    p.add_argument("--item-key", default="ItemId", help="item id column (default ItemId)")
    p.add_argument("--time-key", default="Time",
                   help="time column (default Time); 'none' uses the row order within a session as time")


def _load_data(path: str, args):
    from .data import SessionData
    tk = None if str(args.time_key).lower() == "none" else args.time_key
    kw = dict(session_key=args.session_key, item_key=args.item_key, time_key=tk)
    if str(path).endswith(".parquet"):
        return SessionData.from_parquet(path, **kw)
    return SessionData.from_csv(path, sep=args.sep, **kw)


def _default_data():
    from .data import SessionData
    from .synthetic import default_split
    tr, te = default_split()
    return SessionData.from_pandas(tr), SessionData.from_pandas(te)


def _config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hyperparameters (TrainConfig fields; defaults are the official GRU4Rec ones)")
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "layers":
            g.add_argument(name, type=int, nargs="+", default=None, help=f"hidden units per layer (default {default})")
        elif f.type in ("bool", bool):
            g.add_argument(name, type=_parse_bool, default=None, metavar="{true,false}", help=f"(default {default})")
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__,
                                                               str)
            g.add_argument(name, type=typ, default=None, help=f"(default {default})")


def _parse_bool(v: str) -> bool:
    v = v.lower()
    if v in ("1", "true", "yes", "y"):
        return True
    if v in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def config_from_args(args) -> TrainConfig:
    d = {}
    if getattr(args, "config", None):
        with open(args.config) as f:
            text = f.read()
        d = TrainConfig.from_json(text).to_dict()
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            d[f.name] = v
    return TrainConfig(**d)


def _print_metrics(name: str, res: dict) -> None:
    ks = sorted(res["recall"])
    print(f"{name}: " + "  ".join(f"recall@{k}={res['recall'][k]:.4f}" for k in ks) + "  "
          + "  ".join(f"mrr@{k}={res['mrr'][k]:.4f}" for k in ks) + f"  ({res['n_events']} events)")


# ------------------------------------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    from .evaluate import evaluate
    from .trainer import Trainer
    cfg = config_from_args(args)
    if args.train:
        train = _load_data(args.train, args)
        test = _load_data(args.test, args) if args.test else None
    else:
        print("no --train given: using the built-in SYNTHETIC click log (gru4rec_kernels.synthetic)")
        train, test = _default_data()
    valid = _load_data(args.valid, args) if args.valid else None
    print(f"train: {train}  config: {cfg.to_json()}")
    model = Trainer(cfg, backend=args.backend, show_progress=not args.no_progress).fit(train, valid=valid)
    for rec in model.history:
        print(f"epoch {rec['epoch']}: loss {rec['loss']:.4f}  {rec['mb_per_s']:.0f} mb/s  "
              f"{rec['events_per_s']:.0f} events/s")
    if args.save:
        model.save(args.save)
        print(f"saved {args.save}")
    if test is not None:
        res = evaluate(model, test, cutoffs=tuple(args.cutoffs), mode=args.mode, backend=args.backend)
        _print_metrics("GRU4Rec", res)
        if not args.train:
            from .baselines import POP
            _print_metrics("POP", POP().fit(train).evaluate(test, cutoffs=tuple(args.cutoffs), mode=args.mode))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"history": model.history, "test": res}, f, indent=1, default=float)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate
    from .model import Model
    model = Model.load(args.model)
    test = _load_data(args.test, args)
    res = evaluate(model, test, cutoffs=tuple(args.cutoffs), mode=args.mode, backend=args.backend)
    _print_metrics("GRU4Rec", res)
    print(f"dropped: {res['unknown_events']} test events with unknown items, "
          f"{res['dropped_sessions']} sessions left shorter than 2")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=float)
    return 0


def cmd_preprocess(args) -> int:
    from .data import preprocess_rsc15
    counts = preprocess_rsc15(args.input, args.out, min_item_support=args.min_item_support,
                              test_days=args.test_days)
    print(json.dumps(counts, indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gru4rec", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (and evaluate it on --test)")
    t.add_argument("--train", help="training click log (csv/tsv/parquet); default: built-in synthetic data")
    t.add_argument("--test", help="test click log, evaluated after training")
    t.add_argument("--valid", help="validation click log, evaluated after every epoch")
    t.add_argument("--save", help="write the model to this .safetensors file")
    t.add_argument("--config", help="JSON file of TrainConfig fields (command-line options override it)")
    t.add_argument("--backend", default="auto", choices=["auto", "numpy", "cpu", "cuda"])
    t.add_argument("--cutoffs", type=int, nargs="+", default=[5, 10, 20])
    t.add_argument("--mode", default="standard", choices=["standard", "conservative", "median"])
    t.add_argument("--json", help="write history and test metrics as JSON here")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_options(t)
    _config_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on a test click log")
    e.add_argument("--model", required=True)
    e.add_argument("--test", required=True)
    e.add_argument("--backend", default="auto", choices=["auto", "numpy", "cpu", "cuda"])
    e.add_argument("--cutoffs", type=int, nargs="+", default=[1, 5, 10, 20])
    e.add_argument("--mode", default="standard", choices=["standard", "conservative", "median"])
    e.add_argument("--json", help="write the metrics as JSON here")
    _add_data_options(e)
    e.set_defaults(func=cmd_evaluate)

    pp = sub.add_parser("preprocess", help="official GRU4Rec preprocessing of a raw YooChoose/RSC15 click file")
    pp.add_argument("input", help="yoochoose-clicks.dat (SessionId,Timestamp,ItemId,Category; no header)")
    pp.add_argument("--out", required=True, help="output directory for train_full/test/train_tr/train_valid .tsv")
    pp.add_argument("--min-item-support", type=int, default=5)
    pp.add_argument("--test-days", type=float, default=1.0)
    pp.set_defaults(func=cmd_preprocess)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        print(f"gru4rec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
