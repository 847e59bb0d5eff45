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
import os
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
    p.add_argument("--id-type", default=None, choices=["auto", "str", "int"],
                   help="how session and item ids are read: 'str' (the exact strings: '007' and '7' are two "
                        "items), 'int' (integers: '007' is 7), 'auto' (pandas' types). Default: the first data file "
                        "as 'str' (csv/tsv) or 'auto' (parquet); every other file, and any data given with a "
                        "--model, as that data's or model's id type")


def _id_type_like(args, like) -> str | None:
    """--id-type, else the id type of ``like`` (a SessionData or Model whose ids the data must match), else None
    (the reader's default)."""
    if args.id_type is not None:
        return args.id_type
    if like is not None:
        from .itemmap import id_kind
        return id_kind(like.item_ids)
    return None


def _load_data(path: str, args, like=None):
    from .data import SessionData
    tk = None if str(args.time_key).lower() == "none" else args.time_key
    kw = dict(session_key=args.session_key, item_key=args.item_key, time_key=tk)
    id_type = _id_type_like(args, like)
    if id_type is not None:
        kw["id_type"] = id_type
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


def _input_file(path: str, what: str) -> str:
    """A file the command reads: exists and is a regular file (checked before any work)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{what}: {path} is a directory, not a file")
    return path


def _output_file(path: str | None, what: str) -> None:
    """A file the command will write: checked before any work, so a bad path never costs a training run."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{what}: {path} is a directory; give a file name")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"{what}: {path} exists and is not a regular file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{what}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{what}: {path} is not writable")


def _output_dir(path: str | None, what: str) -> None:
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what}: {path} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    probe = path if os.path.isdir(path) else parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise ValueError(f"{what}: cannot create or write {path}")


def _check_cutoffs(cutoffs) -> tuple:
    if not cutoffs or any(k < 1 for k in cutoffs):
        raise ValueError(f"--cutoffs must be positive ints; got {cutoffs}")
    return tuple(cutoffs)


def config_from_args(args) -> TrainConfig:
    """--config (JSON), then --param-file and --params (official GRU4Rec forms), then explicit options."""
    from .official import parse_param_string, read_param_file
    d = {}
    if getattr(args, "config", None):
        with open(_input_file(args.config, "--config")) as f:
            text = f.read(1 << 20)
        d = TrainConfig.from_json(text).to_dict()
    if getattr(args, "param_file", None):
        d.update(read_param_file(_input_file(args.param_file, "--param-file")))
    if getattr(args, "params", None):
        d.update(parse_param_string(args.params))
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            d[f.name] = v
    return TrainConfig(**d)


def _model_label(model) -> str:
    """How printed metrics name the model: "p-RNN (<architecture>)" or "GRU4Rec"."""
    prnn = getattr(model, "prnn", None)
    return "GRU4Rec" if prnn is None else f"p-RNN ({getattr(prnn, 'architecture', 'p-RNN')})"


def _print_metrics(name: str, res: dict) -> None:
    ks = sorted(res["recall"])
    print(f"{name}: " + "  ".join(f"recall@{k}={res['recall'][k]:.4f}" for k in ks) + "  "
          + "  ".join(f"mrr@{k}={res['mrr'][k]:.4f}" for k in ks) + f"  ({res['n_events']} events)")


# ------------------------------------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    from .comm import is_everywhere, launched_ranks
    if not args.distributed:
        var, size = launched_ranks()
        if size > 1:
            raise ValueError(f"started as one of {size} MPI ranks ({var}={size}) without --distributed: every rank "
                             f"would train the whole model alone and write the same files; add --distributed (data "
                             f"parallelism over the ranks) or start one process")
        return _train(args, None)
    comm = _distributed_comm(args)
    try:
        return _train(args, comm)
    except BaseException as e:
        if not is_everywhere(e):  # this rank alone: the others may be waiting for it in a collective
            import traceback
            comm.abort(2, "".join(traceback.format_exception(e)) + f"gru4rec train: rank {comm.rank} of "
                       f"{comm.size} failed ({type(e).__name__}: {e}): aborting the job")
        if comm.rank == 0:
            raise  # every rank has it: rank 0 reports it, the others end quietly with the same status
        return 2


def _distributed_comm(args):
    """--distributed: the MPI world (mpiexec / srun), with NCCL for the gradient all-reduce on the cuda backend
    (--comm). On the cpu backend, the ranks of a node split its cores."""
    from .backends import resolve
    from .comm import MPIComm, NCCLComm
    if not args.collective_timeout > 0:
        raise ValueError(f"--collective-timeout must be a positive number of seconds; got {args.collective_timeout}")
    host = MPIComm(timeout=args.collective_timeout)
    backend = resolve(args.backend)
    kind = args.comm if args.comm != "auto" else ("nccl" if backend == "cuda" else "mpi")
    if backend == "cpu":
        import numba

        from .tune import usable_cores
        numba.set_num_threads(max(1, min(usable_cores() // host.local_size, numba.config.NUMBA_NUM_THREADS)))
    return NCCLComm(host) if kind == "nccl" else host


def _train(args, comm) -> int:
    from .comm import agree
    from .evaluate import evaluate
    from .trainer import Trainer, check_early_stopping
    rank0 = comm is None or comm.rank == 0
    say = print if rank0 else (lambda *a, **k: None)

    def prepare():
        cfg = config_from_args(args)
        cutoffs = _check_cutoffs(args.cutoffs)
        if rank0:  # rank 0 alone writes
            _output_file(args.save, "--save")
            _output_file(args.json, "--json")
            _output_dir(args.checkpoint_dir, "--checkpoint-dir")
        if args.checkpoint_every is not None and not args.checkpoint_dir:
            raise ValueError("--checkpoint-every needs --checkpoint-dir")
        if args.resume is not None and not os.path.exists(args.resume):
            raise FileNotFoundError(f"--resume: no such checkpoint file or folder: {args.resume}")
        for path in [args.train, args.valid, *(args.test or [])]:
            if path:
                _input_file(path, "data file")
        if args.train:
            train = _load_data(args.train, args)
            tests = {p: _load_data(p, args, like=train) for p in args.test or []}
        else:
            say("no --train given: using the built-in SYNTHETIC click log (gru4rec_kernels.synthetic)")
            train, test = _default_data()
            tests = {"synthetic test": test}
        valid = _load_data(args.valid, args, like=train) if args.valid else None
        eval_cutoffs, metric = check_early_stopping(valid, cutoffs, args.patience, args.metric)
        every = args.checkpoint_every
        if every is not None and every != "epoch":
            try:
                every = int(every)
            except ValueError:
                raise ValueError(f"--checkpoint-every must be 'epoch' or a number of steps; got {every!r}") from None
        prnn, features = _prnn_from_args(args, train)
        dp = {} if comm is None else {"comm": comm, "replica_check_every": args.replica_check_every}
        trainer = Trainer(cfg, backend=args.backend, show_progress=not args.no_progress, prnn=prnn,
                          features=features, **dp)
        return cfg, cutoffs, train, tests, valid, eval_cutoffs, metric, every, prnn, trainer

    what = "checking the arguments and reading the data"
    cfg, cutoffs, train, tests, valid, eval_cutoffs, metric, every, prnn, trainer = (
        prepare() if comm is None else agree(comm, what, prepare))
    say(f"train: {train}  config: {cfg.to_json()}" + (f"  p-RNN: {prnn.to_json()}" if prnn else "")
        + (f"  distributed: {comm.size} ranks x {cfg.batch_size / comm.size:g} lanes ({comm.name})" if comm else ""))
    model = trainer.fit(
        train, valid=valid, eval_cutoffs=eval_cutoffs, patience=args.patience, metric=metric,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=every, resume=args.resume)
    for rec in model.history:
        say(f"epoch {rec['epoch']}: loss {rec['loss']:.4f}  {rec['mb_per_s']:.0f} mb/s  "
            f"{rec['events_per_s']:.0f} events/s" + "".join(f"  {k} {v:.4f}" for k, v in rec.items()
                                                             if k.startswith(("recall@", "mrr@", "ndcg@"))))
    if model.best_epoch is not None and valid is not None:
        say(f"best epoch by {metric} on --valid: {model.best_epoch}")
    if args.save and rank0:
        model.save(args.save)
        say(f"saved {args.save}")
    results = {}
    for name, test in tests.items():
        res = evaluate(model, test, cutoffs=cutoffs, mode=args.mode, backend=args.backend, comm=comm)
        if rank0:
            label = _model_label(model)
            _print_metrics(f"{label} [{name}]" if len(tests) > 1 else label, res)
        results[name] = res
        if not args.train and rank0:
            from .baselines import POP
            _print_metrics("POP", POP().fit(train).evaluate(test, cutoffs=cutoffs, mode=args.mode))
    if args.json and rank0:
        out = {"history": model.history, "best_epoch": model.best_epoch}
        if len(results) == 1:
            out["test"] = next(iter(results.values()))
        elif results:
            out["tests"] = results
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=_json_default)
    return 0


def _prnn_from_args(args, train):
    """(PRNNConfig, [ItemFeatures]) from --architecture / --strategy / --item-features ...; (None, None) for
    GRU4Rec."""
    if args.architecture is None:
        if args.item_features or args.strategy or args.subnet_layers:
            raise ValueError("--item-features / --strategy / --subnet-layers need --architecture "
                             "(id, feature, concat or parallel)")
        return None, None
    from .features import read_item_features
    from .prnn_config import PRNNConfig
    features, names = [], []
    if args.item_features:
        _input_file(args.item_features, "--item-features")
        cat = [c for c in (args.feature_columns or "").split(",") if c]
        num = [c for c in (args.feature_numeric_columns or "").split(",") if c]
        if not cat and not num:
            raise ValueError("--item-features needs --feature-columns (categorical: one-hot) and / or "
                             "--feature-numeric-columns")
        f = read_item_features(args.item_features, train.item_ids, item_key=args.feature_item_key or args.item_key,
                               columns=cat + num, categorical=cat, name=args.feature_name)
        print(f"item features: {f}")
        features, names = [f], [f.name]
    elif args.architecture != "id":
        raise ValueError(f"--architecture {args.architecture} needs --item-features FILE and --feature-columns")
    if args.architecture == "id" and names:
        raise ValueError("--architecture id reads no features: drop --item-features, or choose parallel / concat "
                         "/ feature")
    layers = None
    if args.subnet_layers:
        try:
            layers = [[int(v) for v in spec.split(",")] for spec in args.subnet_layers]
        except ValueError:
            raise ValueError(f"--subnet-layers: one comma-separated list of layer sizes per subnet, e.g. "
                             f"'100 100' or '100,50 64'; got {args.subnet_layers}") from None
    kw = {"strategy": args.strategy} if args.strategy else {}
    return PRNNConfig.for_architecture(args.architecture, names, layers=layers, **kw), features


def _json_default(x):
    import numpy as np
    if isinstance(x, np.ndarray):
        return x.tolist()
    return float(x)


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate
    from .model import Model
    from .report import fit_baselines, format_table, results_json
    if args.baselines and not args.train:
        raise ValueError("--baselines needs --train (the training click log the baselines are fitted on)")
    cutoffs = _check_cutoffs(args.cutoffs)
    _output_file(args.json, "--json")
    for path in [args.model, *args.test, *([args.train] if args.train else [])]:
        _input_file(path, "input file")
    model = Model.load(args.model)
    train = _load_data(args.train, args, like=model) if args.baselines else None
    outs = {}
    for path in args.test:
        test = _load_data(path, args, like=model)
        res = evaluate(model, test, cutoffs=cutoffs, mode=args.mode, backend=args.backend)
        if args.beyond_accuracy:
            from .evaluate import beyond_accuracy
            res.update(beyond_accuracy(model, test, max(cutoffs)))
        label = _model_label(model)
        _print_metrics(label, res)
        results = {label: res}
        if train is not None:
            base = fit_baselines(train, test, cutoffs, mode=args.mode,
                                 beyond_accuracy_k=max(cutoffs) if args.beyond_accuracy else None)
            for name, r in base.items():
                _print_metrics(name, r)
            results.update(base)
        print(f"dropped: {res['unknown_events']} test events with unknown items, "
              f"{res['dropped_sessions']} sessions left shorter than 2")
        print()
        print(format_table(results, title=f"{path} ({args.mode} ranks)"))
        out = results_json({label: res})[label]
        if train is not None:
            out["baselines"] = results_json({k: v for k, v in results.items() if k != label})
        outs[path] = out
    if args.json:
        with open(args.json, "w") as f:
            json.dump(next(iter(outs.values())) if len(outs) == 1 else outs, f, indent=1, default=float)
    return 0


def _parse_id_tokens(line: str, where: str, kind: str = "int") -> list:
    """Ids separated by spaces or commas: strs as written for a str-id model, ints for an int-id one."""
    import re
    toks = [t for t in re.split(r"[,\s]+", line.strip()) if t]
    if kind == "str":
        return toks
    out = []
    for t in toks:
        try:
            v = int(t)
        except ValueError:
            raise ValueError(f"{where}: {t!r} is not an integer item id") from None
        if not -(2 ** 63) <= v < 2 ** 63:
            raise ValueError(f"{where}: item id {t} is out of the 64-bit integer range")
        out.append(v)
    return out


def _read_sessions(path: str, args, kind: str = "int") -> tuple[list, list]:
    """(labels, sessions) from a file: one session per line (ids separated by spaces or commas), or a click log
    with a header naming the session and item columns (sessions by their first event time, events by time).
    ``kind``: the model's id type; for 'str' the ids (and session labels) are the file's exact strings."""
    import re
    _input_file(path, "--sessions")
    import gzip
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    header = [t for t in re.split(r"[,;\t ]+", first.strip()) if t]
    if args.session_key in header and args.item_key in header:
        import pandas as pd
        sep = args.sep or ("\t" if "\t" in first else ("," if "," in first else r"\s+"))
        str_kw = {}
        if kind == "str":  # ids as written: no number parsing, "NA" is an id
            str_kw = dict(dtype={args.session_key: str, args.item_key: str}, keep_default_na=False,
                          na_values={args.time_key: ["", "NA", "NaN", "nan", "null", "NULL", "None"]})
        df = pd.read_csv(path, sep=sep, engine="python" if sep == r"\s+" else "c", **str_kw)
        tk = None if str(args.time_key).lower() == "none" or args.time_key not in df.columns else args.time_key
        if tk is not None:
            df = df.sort_values(tk, kind="stable")
        labels, sessions = [], []
        for sid, grp in df.groupby(args.session_key, sort=False):
            labels.append(sid.item() if hasattr(sid, "item") else sid)
            sessions.append(grp[args.item_key].tolist())
        return labels, sessions
    labels, sessions = [], []
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        labels.append(i)
        sessions.append(_parse_id_tokens(ln, f"{path}, line {i}", kind))
    if not sessions:
        raise ValueError(f"{path}: no session found (one session per line: item ids separated by spaces or commas)")
    return labels, sessions


def cmd_recommend(args) -> int:
    import numpy as np

    from .itemmap import id_kind
    from .model import Model
    from .recommend import recommend_one
    if (args.session is None) == (args.sessions is None):
        raise ValueError("give exactly one of --session ID [ID ...] or --sessions FILE")
    model = Model.load(_input_file(args.model, "--model"))
    kind = id_kind(model.item_ids)
    if args.id_type in ("str", "int") and args.id_type != kind:
        raise ValueError(f"--id-type {args.id_type}: the model's item ids are "
                         f"{'strings' if kind == 'str' else 'integers'}")
    if args.session is not None:
        # a str model takes every argument as one id, exactly as given (spaces and commas included)
        items = list(args.session) if kind == "str" else _parse_id_tokens(" ".join(args.session), "--session")
        ids, scores = recommend_one(model, items, k=args.k, exclude=items if args.exclude_seen else None)
        if args.json:
            print(json.dumps({"session": items, "items": ids.tolist(), "scores": [float(s) for s in scores]}))
        else:
            print("rank\titem_id\tscore")
            for r, (i, s) in enumerate(zip(ids, scores), 1):
                print(f"{r}\t{i}\t{s:.6g}")
        return 0
    labels, sessions = _read_sessions(args.sessions, args, kind)
    ids, scores = model.recommend_batch(sessions, k=args.k, exclude=sessions if args.exclude_seen else None)
    # padding (rows with fewer items available) has a NaN score; -1 may be a real id
    if args.json:
        out = []
        for lab, row_i, row_s in zip(labels, ids, scores):
            keep = ~np.isnan(row_s)
            out.append({"session": lab, "items": row_i[keep].tolist(), "scores": [float(v) for v in row_s[keep]]})
        print(json.dumps(out))
    else:
        for lab, row_i, row_s in zip(labels, ids, scores):
            print(f"{lab}\t" + " ".join(f"{i}:{s:.6g}" for i, s in zip(row_i, row_s) if not np.isnan(s)))
    return 0


def cmd_tune(args) -> int:
    from .modelfile import atomic_write_bytes
    from .tune import mpi_world, root_first, tune
    comm = mpi_world()  # under `mpiexec -n P` (with mpi4py): every rank is a worker, rank 0 reads and writes
    rank0 = comm is None or comm.Get_rank() == 0
    if args.train and args.data_dir:
        raise ValueError("give --train (a click log) or --data-dir (SessionData directories), not both")
    _output_file(args.out, "--out")
    _output_file(args.trials_json, "--trials-json")
    base = config_from_args(args)
    space = _load_space(args.space, base)
    load = lambda: _tune_data(args)
    train, valid = (root_first(comm, load) if comm is not None else load()) or (None, None)
    res = tune(train, space, valid=valid, base_config=base, metric=args.metric, n_trials=args.n_trials,
               timeout=args.timeout, backend=args.backend, seed=args.tune_seed, valid_days=args.valid_days,
               sampler=args.sampler, n_jobs=args.n_jobs, storage=args.storage, work_dir=args.work_dir, comm=comm)
    if not rank0:
        return 0
    for t in res.trials:
        val = f"{args.metric}={t['value']:.5f}" if t["state"] == "complete" else t["state"]
        print(f"trial {t['number']}: {val}  {json.dumps(t['params'])}"
              + (f"  ({t['reason']})" if t["state"] != "complete" and t.get("reason") else ""))
    print(f"best {args.metric}={res.best_value:.5f}: {res.best_config.to_json()}")
    text = json.dumps(res.best_config.to_dict(), indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(args.out, [text.encode()])
    print(f"wrote the best config to {args.out} (use: gru4rec train --config {args.out})")
    if args.trials_json:
        with open(args.trials_json, "w") as f:
            json.dump(res.to_dict(), f, indent=1, default=float)
    return 0


def _tune_data(args):
    """(train, valid or None) for `tune`: a click log (--train), SessionData directories (--data-dir), or the
    built-in synthetic log; --valid is a click log or a SessionData directory."""
    from .data import SessionData
    valid = None
    if args.data_dir:
        train, valid = _open_tune_dir(args.data_dir)
    elif args.train:
        train = _load_data(_input_file(args.train, "--train"), args)
    else:
        print("no --train given: using the built-in SYNTHETIC click log (gru4rec_kernels.synthetic)")
        train, _ = _default_data()
    if args.valid:
        valid = (SessionData.open(args.valid) if os.path.isdir(args.valid)
                 else _load_data(_input_file(args.valid, "--valid"), args, like=train))
    return train, valid


def _open_tune_dir(path: str):
    """--data-dir: a SessionData directory (the training data), or a folder with train/ and optionally valid/
    (e.g. the output of `gru4rec ingest`; its test/ is never used for tuning). Opened by memory map."""
    from .data import SessionData
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--data-dir: no such directory: {path}")
    if os.path.isfile(os.path.join(path, "meta.json")):
        return SessionData.open(path), None
    if not os.path.isdir(os.path.join(path, "train")):
        raise ValueError(f"--data-dir {path}: expected a SessionData directory (with meta.json) or a folder with "
                         f"train/ (and optionally valid/) SessionData directories, as `gru4rec ingest` writes")
    valid = os.path.join(path, "valid")
    return SessionData.open(os.path.join(path, "train")), SessionData.open(valid) if os.path.isdir(valid) else None


def _load_space(spec: str, base: TrainConfig):
    """A search space: this library's JSON object (file or string), or the official JSON-lines file."""
    from .official import read_param_space
    from .tune import load_search_space
    text = spec
    if not spec.lstrip().startswith("{"):
        with open(_input_file(spec, "--space")) as f:
            text = f.read(1 << 20)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and all(ln.lstrip().startswith("{") and ln.rstrip().endswith("}") for ln in lines):
        try:
            json.loads(text)
        except json.JSONDecodeError:  # one JSON object per line: the official format
            return load_search_space(read_param_space(text), base)
    return load_search_space(text, base)


def cmd_report(args) -> int:
    from .report import format_table, load_history, plot_history
    if not args.history and not args.results:
        raise ValueError("give --history FILE (with --out PNG) and/or --results FILE")
    _output_file(args.out, "--out")
    if args.results:
        with open(_input_file(args.results, "--results")) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{args.results}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("recall"), dict):
            raise ValueError(f"{args.results}: expected the JSON written by `gru4rec evaluate --json`")
        results = {"GRU4Rec": data}
        results.update(data.get("baselines", {}))
        print(format_table(results))
    if args.history:
        hist = load_history(_input_file(args.history, "--history"))
        if not args.out:
            raise ValueError("--history needs --out FILE.png")
        last = hist[-1]
        print(f"{len(hist)} epochs; last: " + "  ".join(f"{k}={v:.4f}" for k, v in last.items()
                                                       if k == "loss" or k.startswith(("recall@", "mrr@"))))
        plot_history(hist, args.out, title=args.title)
        print(f"wrote {args.out}")
    return 0


def cmd_preprocess(args) -> int:
    import math
    _input_file(args.input, "input")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: {args.out} exists and is not a directory")
    if not math.isfinite(args.test_days) or not 0 < args.test_days <= 365:
        raise ValueError(f"--test-days must be a number of days in (0, 365]; got {args.test_days}")
    if args.min_item_support < 1:
        raise ValueError(f"--min-item-support must be >= 1; got {args.min_item_support}")
    from .preprocess import preprocess_rsc15
    counts = preprocess_rsc15(args.input, args.out, min_item_support=args.min_item_support,
                              test_days=args.test_days)
    print(json.dumps(counts, indent=1, default=str))
    empty = [k for k, v in counts.items() if isinstance(v, dict) and not v.get("events", 1)]
    if empty:
        raise ValueError(f"the split left {empty} empty: check --test-days against the data's time span")
    return 0


def cmd_ingest(args) -> int:
    from .ingest import ingest
    _output_file(args.json, "--json")
    report = ingest(args.input, args.out, session_key=args.session_key, item_key=args.item_key,
                    time_key=args.time_key, id_type=args.id_type, sep=args.sep,
                    min_item_support=args.min_item_support, min_session_length=args.min_session_length,
                    test_days=None if args.no_split else args.test_days, iterate=not args.single_pass,
                    times=not args.no_times, memory_limit=args.memory_limit, threads=args.threads,
                    temp_dir=args.temp_dir, progress=not args.no_progress)
    for stage, what in report["stages"].items():
        print(f"{stage}: {what}" + (f" ({report['seconds'][stage]:.1f} s)" if stage in report.get("seconds", {})
                                    else ""))
    for name, c in report.get("counts", {}).items():
        print(f"{name}: " + ", ".join(f"{v:,} {k}" for k, v in c.items()))
    print(f"wrote {os.path.abspath(args.out)} (open a split with SessionData.open('{args.out}/train'))")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .comm import DEFAULT_TIMEOUT
    p = argparse.ArgumentParser(prog="gru4rec", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (and evaluate it on --test)")
    t.add_argument("--train", help="training click log (csv/tsv/parquet); default: built-in synthetic data")
    t.add_argument("--test", nargs="+", help="test click log(s), each evaluated after training")
    t.add_argument("--valid", help="validation click log, evaluated after every epoch")
    t.add_argument("--patience", type=int, default=None,
                   help="early stopping: stop after this many epochs without a better --metric on --valid; "
                        "the best epoch's model is kept")
    t.add_argument("--metric", default=None, help="validation metric for early stopping (default mrr@20)")
    t.add_argument("--checkpoint-dir", help="write checkpoints here (atomic; the last 3 kept)")
    t.add_argument("--checkpoint-every", default=None, help="'epoch' (default) or a number of steps")
    t.add_argument("--resume", help="continue from this checkpoint (file, or folder: its newest); n_epochs may grow")
    t.add_argument("--params", help="official GRU4Rec parameter string, e.g. 'loss=bpr-max,layers=224,elu_param=1'")
    t.add_argument("--param-file", help="official GRU4Rec parameter file (paramfiles/*.py; read, never run)")
    t.add_argument("--save", help="write the model to this .safetensors file")
    t.add_argument("--config", help="JSON file of TrainConfig fields (command-line options override it)")
    t.add_argument("--backend", default="auto", choices=["auto", "numpy", "cpu", "cuda"])
    t.add_argument("--cutoffs", type=int, nargs="+", default=[5, 10, 20])
    pr = t.add_argument_group("p-RNN (item features in parallel subnets; docs/prnn.md; numpy, cpu and cuda backends)")
    pr.add_argument("--architecture", choices=["id", "feature", "concat", "parallel"], default=None,
                    help="train a p-RNN of this architecture (default: plain GRU4Rec)")
    pr.add_argument("--strategy", choices=["simultaneous", "alternating", "interleaving", "residual"], default=None,
                    help="how the subnets train (default simultaneous)")
    pr.add_argument("--subnet-layers", nargs="+", default=None, metavar="SIZES",
                    help="layer sizes per subnet, one comma-separated list each (default --layers for every one)")
    pr.add_argument("--item-features", metavar="FILE", help="item features (csv / tsv, a header row)")
    pr.add_argument("--feature-columns", help="comma-separated categorical columns of FILE (one-hot, sparse)")
    pr.add_argument("--feature-numeric-columns", help="comma-separated numeric columns of FILE (dense values)")
    pr.add_argument("--feature-item-key", help="item id column of FILE (default --item-key)")
    pr.add_argument("--feature-name", default=None, help="name of the feature source (default: the columns)")
    t.add_argument("--mode", default="standard", choices=["standard", "conservative", "median"])
    t.add_argument("--json", help="write history and test metrics as JSON here")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    dp = t.add_argument_group("data parallelism (docs/distributed.md; extra 'mpi')")
    dp.add_argument("--distributed", action="store_true",
                    help="under `mpiexec -n P` / `srun`: every rank runs batch_size / P lanes of the global batch "
                         "and the gradients are summed each step (equal to one process at --batch-size); rank 0 "
                         "prints and writes")
    dp.add_argument("--comm", choices=["auto", "mpi", "nccl"], default="auto",
                    help="the gradient all-reduce: MPI on host buffers, or NCCL on the GPU (auto: NCCL on the cuda "
                         "backend)")
    dp.add_argument("--collective-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help=f"a collective that not every rank joins within this time ends the job (default "
                         f"{DEFAULT_TIMEOUT:g})")
    dp.add_argument("--replica-check-every", type=int, default=1000, metavar="STEPS",
                    help="compare the ranks' parameter checksums every this many steps (default 1000; and at "
                         "every epoch end)")
    _add_data_options(t)
    _config_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on a test click log")
    e.add_argument("--model", required=True)
    e.add_argument("--test", required=True, nargs="+", help="test click log(s)")
    e.add_argument("--backend", default="auto", choices=["auto", "numpy", "cpu", "cuda"])
    e.add_argument("--cutoffs", type=int, nargs="+", default=[1, 5, 10, 20])
    e.add_argument("--mode", default="standard", choices=["standard", "conservative", "median"])
    e.add_argument("--json", help="write the metrics as JSON here (baselines under the key 'baselines')")
    e.add_argument("--train", help="training click log: the baselines are fitted on it (with --baselines)")
    e.add_argument("--beyond-accuracy", action="store_true",
                   help="also coverage, popularity and Gini of the top-k lists at the largest cutoff")
    e.add_argument("--baselines", action="store_true",
                   help="also evaluate POP, S-POP and item-kNN fitted on --train, with the same protocol")
    _add_data_options(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k next items for sessions from a saved model")
    r.add_argument("--model", required=True)
    r.add_argument("--session", nargs="+", metavar="ID",
                   help="one session: item ids, oldest first (for a model with string ids, each argument is one id "
                        "exactly as written)")
    r.add_argument("--sessions", metavar="FILE",
                   help="one session per line (ids separated by spaces or commas), or a click log with a header "
                        "naming the session and item columns; ids are read as the model's id type")
    r.add_argument("-k", "--k", type=int, default=20, help="how many items (default 20)")
    r.add_argument("--exclude-seen", action="store_true", help="never recommend an item already in the session")
    r.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_data_options(r)
    r.set_defaults(func=cmd_recommend)

    tu = sub.add_parser("tune", help="hyperparameter search with Optuna (optional extra 'tune'); trials in "
                                     "parallel with --n-jobs P or under `mpiexec -n P` (extra 'mpi')")
    tu.add_argument("--train", help="training click log; default: built-in synthetic data")
    tu.add_argument("--data-dir", help="training data as a SessionData directory, or a folder with train/ (and "
                                       "valid/) ones (`gru4rec ingest` output): memory-mapped, never copied")
    tu.add_argument("--valid", help="validation click log or SessionData directory; default: the last "
                                    "--valid-days of the training data split off")
    tu.add_argument("--space", required=True,
                    help="search space: a JSON file or object string, or an official JSON-lines parameter space")
    tu.add_argument("--params", help="official GRU4Rec parameter string for the base config")
    tu.add_argument("--param-file", help="official GRU4Rec parameter file for the base config")
    tu.add_argument("--out", required=True, help="write the best config here as JSON (for train --config)")
    tu.add_argument("--n-trials", type=int, default=20)
    tu.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    tu.add_argument("--metric", default="mrr@20", help="mrr@K or recall@K on the validation set (default mrr@20)")
    tu.add_argument("--valid-days", type=float, default=1.0)
    tu.add_argument("--sampler", default="tpe", choices=["tpe", "random"],
                    help="Optuna sampler (default tpe); 'random' evaluates the same configs however many workers")
    tu.add_argument("--tune-seed", type=int, default=0, help="seed of the sampler (--seed is the model's)")
    tu.add_argument("--n-jobs", type=int, default=1,
                    help="worker processes running trials in parallel (at most the cores; each gets cores / "
                         "n-jobs threads). Under `mpiexec -n P` every rank is a worker instead")
    tu.add_argument("--storage", help="Optuna journal file for the study (kept; must not exist yet). Default: "
                                      "in memory, or a temporary file with several workers")
    tu.add_argument("--work-dir", help="folder for the temporary files (the data saved for the workers, the "
                                       "default storage); under MPI across nodes, one every rank sees")
    tu.add_argument("--config", help="JSON file of base TrainConfig fields (options below override it)")
    tu.add_argument("--backend", default="auto", choices=["auto", "numpy", "cpu", "cuda"])
    tu.add_argument("--trials-json", help="write every trial (params, value, state) as JSON here")
    _add_data_options(tu)
    _config_options(tu)
    tu.set_defaults(func=cmd_tune)

    rp = sub.add_parser("report", help="training curves (PNG) and the metrics table")
    rp.add_argument("--history", help="`train --json` output, or a .safetensors model (its stored history)")
    rp.add_argument("--out", help="PNG file for the loss and recall@k / mrr@k curves")
    rp.add_argument("--title", default=None)
    rp.add_argument("--results", help="`evaluate --json` output: print its table (model and baselines)")
    rp.set_defaults(func=cmd_report)

    pp = sub.add_parser("preprocess", help="official GRU4Rec preprocessing of a raw YooChoose/RSC15 click file")
    pp.add_argument("input", help="yoochoose-clicks.dat (SessionId,Timestamp,ItemId,Category; no header)")
    pp.add_argument("--out", required=True, help="output directory for train_full/test/train_tr/train_valid .tsv")
    pp.add_argument("--min-item-support", type=int, default=5)
    pp.add_argument("--test-days", type=float, default=1.0)
    pp.set_defaults(func=cmd_preprocess)

    ig = sub.add_parser("ingest", help="out-of-core preprocessing (DuckDB) of Parquet / CSV into memory-mappable "
                                       "train/ and test/ directories (optional extra 'ingest')")
    ig.add_argument("input", help="a directory of Parquet files (hive partitions too), a Parquet file, or a CSV / "
                                  "TSV file (.gz too) with a header")
    ig.add_argument("--out", required=True, help="output directory: train/, test/ (SessionData.open) and ingest.json")
    ig.add_argument("--session-key", default="SessionId")
    ig.add_argument("--item-key", default="ItemId")
    ig.add_argument("--time-key", default="Time", help="time column: seconds, or dates / date-time strings (UTC)")
    ig.add_argument("--id-type", default=None, choices=["auto", "str", "int"],
                    help="how ids are read: default 'str' for CSV (exact strings), 'auto' for Parquet")
    ig.add_argument("--sep", default=None, help="CSV separator (default: tab for .tsv/.txt, comma otherwise)")
    ig.add_argument("--min-item-support", type=int, default=5)
    ig.add_argument("--min-session-length", type=int, default=2)
    ig.add_argument("--test-days", type=float, default=1.0,
                    help="test = the sessions ending in the last this many days (default 1)")
    ig.add_argument("--no-split", action="store_true", help="no test split: everything goes to train/")
    ig.add_argument("--single-pass", action="store_true",
                    help="one pass of the support filter (the official script) instead of repeating until stable")
    ig.add_argument("--no-times", action="store_true", help="do not write times.npy (8 bytes an event less)")
    ig.add_argument("--memory-limit", default="2GB", help="DuckDB's memory limit; beyond it DuckDB spills to disk")
    ig.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    ig.add_argument("--temp-dir", default=None,
                    help="where DuckDB spills (default: the work directory next to --out)")
    ig.add_argument("--no-progress", action="store_true")
    ig.add_argument("--json", help="write the summary (counts, stages, seconds) here as JSON")
    ig.set_defaults(func=cmd_ingest)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, KeyError, OverflowError, TypeError) as e:
        print(f"gru4rec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
