"""The p-RNN table (issue 15): ID only, feature only, concatenated input and p-RNN under each training strategy,
at equal total and at equal per-subnet hidden size, on DIGINETICA with its item categories.

    python bench/prnn_table.py [--dataset diginetica] [--backend auto] [--epochs 2] [--hidden 64]
        [--max-train-events N] [--max-test-sessions K] [--loss bpr-max] [--n-sample 2048] [--models ...]
        [--no-ablation] [--out PATH]

- Data: ``$GRU4REC_DATA`` (default ../shared/data next to the repo root), diginetica_srgnn: train_sessions /
  test_sessions (no times: the global row number is the time, as bench/train_throughput.py) and
  item_categories.tsv.gz (43,097 items, 995 categories, one-hot CSR: docs/prnn.md section 1). Skipped cleanly
  (exit 0) when absent. ``--max-train-events N`` trains on the most recent whole sessions holding at most N
  events (those nearest the test week), with that subset's own item map; test events whose item the subset
  never saw are dropped by the protocol and counted (``unknown_events``); ``--max-test-sessions K`` evaluates on
  a random sample (seed 0) of K whole test sessions. ``--dataset synthetic``:
  ``synthetic.generate_category_clicks`` (its last 20% of sessions as the test split), for the test and demos.
- Settings: the official DIGINETICA paramfile (diginetica_bprmax_shared_best.py, bench/train_throughput.PARAMS)
  with ``layers``, ``n_epochs``, ``loss`` and ``n_sample`` from the options; ``--loss cross-entropy`` uses the
  linear final activation (the official cross-entropy output), every other value unchanged.
- Models, all trained by ``Trainer(cfg, backend, prnn=PRNNConfig, features=...)`` so every row runs on the same
  backend (the 'id' architecture is GRU4Rec, bit for bit on numpy): ``id``, ``feature``, ``concat`` with one
  subnet of H units; ``parallel`` (ID subnet + category subnet) under simultaneous, alternating, interleaving and
  residual training at equal TOTAL size (H/2 + H/2: the same output width as the H-unit models) and at equal
  PER-SUBNET size (H + H).
- Metrics: recall@20, MRR@20, NDCG@20 on the test split (the official protocol, ``evaluate``, all items
  ranked, standard ties); training seconds (the fit's wall time, and the epochs' own seconds without the
  warm-up). Two measurements for when p-RNN does not beat ID only: the per-subnet ablation (each p-RNN scored
  with its ID subnet only and its category subnet only: ``Model(scoring=(k,))``), and MRR@20 / recall@20 by
  bucket of the target item's training support (quartiles over the evaluated events) and of the input item's.

Writes bench/results/prnn_table.json (or ``--out``): the command, the machine and its load (``uptime`` at start
and end), the data, the config, one entry per model and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

STRATEGIES = ("simultaneous", "alternating", "interleaving", "residual")
MODELS = ("id", "feature", "concat", *(f"prnn-{s}-{g}" for g in ("total", "per-subnet") for s in STRATEGIES))
CUTOFF = 20
CATEGORIES = "diginetica_srgnn/item_categories.tsv.gz"


def thread_env() -> dict:
    """The thread-count variables of the run (part of the command: they change the numpy backend's speed)."""
    return {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}


def machine() -> dict:
    """The CPU, library versions and BLAS threads (train_throughput.machine_info without its torch import, which
    costs seconds and has no part here)."""
    import platform

    import train_throughput as tt
    info = {"nproc": os.cpu_count(), "cpu_model": None, "python": sys.version.split()[0], "numpy": np.__version__,
            "numpy_openblas_core": tt.openblas_core(), "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info
        info["blas_threads"] = [d.get("num_threads") for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        pass
    return info


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------ data
def most_recent_sessions(df: pd.DataFrame, max_events: int | None) -> pd.DataFrame:
    """The last whole sessions of ``df`` (rows in time order, sessions contiguous) holding at most ``max_events``
    events; all of ``df`` when ``max_events`` is None."""
    if max_events is None or max_events >= len(df):
        return df
    sess = df["SessionId"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sess[1:] != sess[:-1]])
    first = starts[np.searchsorted(starts, len(df) - max_events)] if max_events > 0 else len(df)
    if first >= len(df):
        raise ValueError(f"--max-train-events {max_events} is smaller than the last session")
    return df.iloc[first:]


def sample_sessions(df: pd.DataFrame, max_sessions: int | None, seed: int = 0) -> pd.DataFrame:
    """A seeded random sample of ``max_sessions`` whole sessions of ``df`` (all of it when None), in file order."""
    ids = df["SessionId"].unique()
    if max_sessions is None or max_sessions >= ids.size:
        return df
    keep = np.random.default_rng(seed).choice(ids, max_sessions, replace=False)
    return df[df["SessionId"].isin(keep)]


def load(args):
    """(train SessionData, test SessionData, category ItemFeatures, description) or None when the data is absent."""
    from gru4rec_kernels import SessionData
    from gru4rec_kernels.features import ItemFeatures, read_item_features
    if args.dataset == "synthetic":
        from gru4rec_kernels.synthetic import generate_category_clicks
        clicks, cats = generate_category_clicks(n_items=args.synthetic_items, n_categories=10,
                                                n_sessions=args.synthetic_sessions, seed=1)
        last = clicks["SessionId"].unique()[int(0.8 * clicks["SessionId"].nunique()):]
        df_train, df_test = clicks[~clicks["SessionId"].isin(last)], clicks[clicks["SessionId"].isin(last)]
        df_train = most_recent_sessions(df_train, args.max_train_events)
        df_test = sample_sessions(df_test, args.max_test_sessions)
        train, test = SessionData.from_pandas(df_train), SessionData.from_pandas(df_test)
        cat = ItemFeatures.from_frame(cats, train.item_ids, item_key="ItemId", name="category")
        source = "synthetic.generate_category_clicks(n_categories=10, seed=1): last 20% of sessions = test"
    else:
        import train_throughput as tt
        df_train, df_test = tt.load_frames("diginetica")
        cat_path = os.path.join(tt.data_dir(), CATEGORIES)
        if df_train is None or not os.path.exists(cat_path):
            return None
        full = (len(df_train), df_train["SessionId"].nunique())
        full_test = df_test["SessionId"].nunique()
        df_train = most_recent_sessions(df_train, args.max_train_events)
        df_test = sample_sessions(df_test, args.max_test_sessions)
        train, test = SessionData.from_pandas(df_train), SessionData.from_pandas(df_test)
        cat = read_item_features(cat_path, train.item_ids, item_key="item_id", categorical=["category_id"],
                                 name="category")
        source = (f"{os.path.normpath(tt.data_dir())}/diginetica_srgnn (train {full[0]:,} events / {full[1]:,} "
                  f"sessions, test {full_test:,} sessions; the global row number is the time)")
    desc = {"source": source, "max_train_events": args.max_train_events,
            "subset": "all" if args.max_train_events is None else "the most recent whole sessions",
            "max_test_sessions": args.max_test_sessions,
            "test_subset": "all" if args.max_test_sessions is None else "a random sample of whole sessions (seed 0)",
            "train": {"events": int(train.n_events), "sessions": int(train.n_sessions), "items": int(train.n_items)},
            "test": {"events": int(test.n_events), "sessions": int(test.n_sessions)},
            "features": {"name": cat.name, "shape": list(cat.matrix.shape), "kind": "sparse" if cat.sparse else "dense",
                         "n_missing": int(cat.n_missing)}}
    return train, test, cat, desc


def config(args):
    import train_throughput as tt

    from gru4rec_kernels import TrainConfig
    from gru4rec_kernels.official import parse_param_string
    kw = parse_param_string(tt.PARAMS["diginetica"][1])
    kw.update(layers=[args.hidden], n_epochs=args.epochs, loss=args.loss, n_sample=args.n_sample)
    if args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    if args.loss == "cross-entropy":
        kw["final_act"] = "linear"
    return TrainConfig(**kw)


def model_spec(name: str, H: int):
    """(PRNNConfig, group, subnet layers) of a row of the table."""
    from gru4rec_kernels.prnn_config import PRNNConfig
    if name in ("id", "feature", "concat"):
        return (PRNNConfig.for_architecture(name, [] if name == "id" else ["category"], layers=[[H]]), "one subnet",
                [[H]])
    _, strategy, group = name.split("-", 2)
    layers = [[H // 2], [H - H // 2]] if group == "total" else [[H], [H]]
    prnn = PRNNConfig.for_architecture("parallel", ["category"], layers=layers, strategy=strategy)
    return prnn, {"total": "equal total size", "per-subnet": "equal per-subnet size"}[group], layers


# ------------------------------------------------------------------------------------------------ measurements
def evaluated_events(item_ids, test, batch_size: int):
    """(input items, target items) of every evaluated test event, in the order ``evaluate(return_ranks=True)``
    returns the ranks: its schedule's steps, then rows (evaluate._replay)."""
    from gru4rec_kernels.batching import EpochSchedule
    from gru4rec_kernels.evaluate import prepare_test
    data, _, _ = prepare_test(item_ids, test)
    sched = EpochSchedule(data.offsets, data.items, min(batch_size, max(data.n_sessions, 1)))
    inputs, targets = [], []
    while (ch := sched.next_chunk(256)) is not None:
        inputs.append(ch.inputs[ch.active])
        targets.append(ch.targets[ch.active])
    return np.concatenate(inputs), np.concatenate(targets)


def support_buckets(support, items) -> tuple[np.ndarray, list]:
    """Bucket of each event by its item's training support, cut at the quartiles over the events (an event at
    an edge falls in the lower bucket, so ties make buckets uneven): (bucket per event, [{support, n_events}])."""
    s = np.asarray(support, dtype=np.float64)[items]
    edges = np.unique(np.quantile(s, [0.25, 0.5, 0.75]))
    b = np.searchsorted(edges, s, side="left")
    info = []
    for k in range(edges.size + 1):
        sel = s[b == k]
        info.append({"support": [float(sel.min()), float(sel.max())] if sel.size else None, "n_events": int(sel.size)})
    return b, info


def bucket_metrics(ranks, buckets, n_buckets: int) -> list:
    out = []
    for k in range(n_buckets):
        r = ranks[buckets == k]
        hit = r <= CUTOFF
        out.append({f"recall@{CUTOFF}": float(hit.mean()) if r.size else None,
                    f"mrr@{CUTOFF}": float(np.where(hit, 1.0 / r, 0.0).mean()) if r.size else None})
    return out


def metrics(res: dict) -> dict:
    return {f"{m}@{CUTOFF}": res[m][CUTOFF] for m in ("recall", "mrr", "ndcg")}


def run_model(name, args, cfg, train, test, cat, events):
    from gru4rec_kernels.evaluate import evaluate
    from gru4rec_kernels.model import Model
    from gru4rec_kernels.trainer import Trainer
    prnn, group, layers = model_spec(name, args.hidden)
    features = [cat] if prnn.features else None
    t0 = time.perf_counter()
    model = Trainer(cfg, backend=args.backend, show_progress=False, prnn=prnn, features=features).fit(train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate(model, test, cutoffs=(CUTOFF,), backend=args.backend, return_ranks=True,
                   batch_size=args.eval_batch_size)
    eval_s = time.perf_counter() - t0
    ranks = res["ranks"]
    if ranks.size != events["targets"].size:
        raise RuntimeError(f"{ranks.size} ranks for {events['targets'].size} evaluated events: the event order "
                           "replicated here no longer matches evaluate's")
    row = {"name": name, "architecture": prnn.architecture, "strategy": prnn.strategy, "group": group,
           "subnets": [list(s.sources) for s in prnn.subnets], "subnet_layers": layers,
           "hidden_total": sum(h[-1] for h in layers), "train_seconds": fit_s,
           "epoch_seconds": [h["seconds"] for h in model.history], "losses": [h["loss"] for h in model.history],
           "eval_seconds": eval_s, **metrics(res), "unknown_events": res["unknown_events"],
           "n_events": res["n_events"],
           "by_target_support": bucket_metrics(ranks, events["target_bucket"], len(events["target_buckets"])),
           "by_input_support": bucket_metrics(ranks, events["input_bucket"], len(events["input_buckets"]))}
    if prnn.architecture == "parallel" and not args.no_ablation:
        row["ablation"] = {}
        for k, sub in enumerate(prnn.subnets):
            only = Model(model.cfg, model.item_ids, model.params, item_support=model.item_support, prnn=prnn,
                         features=list(model.features.values()), scoring=(k,))
            r = evaluate(only, test, cutoffs=(CUTOFF,), backend=args.backend, batch_size=args.eval_batch_size)
            row["ablation"]["+".join(sub.sources) + " subnet only"] = metrics(r)
    return row


def markdown(rows) -> list[str]:
    k = CUTOFF
    lines = [f"| model | subnets | recall@{k} | MRR@{k} | NDCG@{k} | train s | ID subnet only MRR@{k} | "
             f"category subnet only MRR@{k} | MRR@{k} by target support quartile (rare -> popular) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ab = r.get("ablation", {})
        only = [f"{v[f'mrr@{k}']:.4f}" for v in ab.values()] or ["", ""]
        buckets = " / ".join("-" if b[f"mrr@{k}"] is None else f"{b[f'mrr@{k}']:.3f}" for b in r["by_target_support"])
        lines.append(f"| {r['name']} | {' + '.join(str(h[-1]) for h in r['subnet_layers'])} | {r[f'recall@{k}']:.4f} "
                     f"| {r[f'mrr@{k}']:.4f} | {r[f'ndcg@{k}']:.4f} | {r['train_seconds']:.0f} | {only[0]} | "
                     f"{only[1]} | {buckets} |")
    return lines


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("diginetica", "synthetic"), default="diginetica")
    ap.add_argument("--backend", default="auto", help="the p-RNN backend (auto: the fastest built one)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64, help="H: the one-subnet models' units; p-RNN H/2+H/2 and H+H")
    ap.add_argument("--max-train-events", type=int, default=None, help="train on the most recent whole sessions "
                    "holding at most this many events")
    ap.add_argument("--max-test-sessions", type=int, default=None, help="evaluate on a random sample (seed 0) "
                    "of this many whole test sessions (evaluation on the numpy backend costs as much as training)")
    ap.add_argument("--loss", choices=("bpr-max", "cross-entropy"), default="bpr-max")
    ap.add_argument("--n-sample", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the paramfile's (128)")
    ap.add_argument("--eval-batch-size", type=int, default=512)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--no-ablation", action="store_true", help="skip the per-subnet ablation evaluations")
    ap.add_argument("--synthetic-items", type=int, default=2000)
    ap.add_argument("--synthetic-sessions", type=int, default=3000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.epochs < 2 and any("residual" in m or "alternating" in m for m in args.models):
        ap.error("--epochs must be >= 2: residual and alternating training give each of the 2 subnets an epoch")
    if args.hidden < 2:
        ap.error("--hidden must be >= 2 (the equal-total p-RNNs split it into two subnets)")

    import train_throughput as tt

    from gru4rec_kernels.backends.prnn_numpy import resolve_prnn_backend
    backend = resolve_prnn_backend(args.backend)
    loaded = load(args)
    if loaded is None:
        print(f"diginetica: no diginetica_srgnn train / test / {os.path.basename(CATEGORIES)} under "
              f"{tt.data_dir()}: skipped")
        return 0
    train, test, cat, desc = loaded
    cfg = config(args)
    res = {"kind": "MEASURED (CPU)" if backend != "cuda" else "MEASURED",
           "command": "".join(f"{k}={v} " for k, v in thread_env().items() if v is not None)
           + "python bench/prnn_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "commit": tt.commit(), "uptime_at_start": uptime(), "machine": machine(), "backend": backend,
           "env": thread_env(),
           "data": desc, "config": cfg.to_dict(),
           "param_source": f"official paramfiles/{tt.PARAMS['diginetica'][0]} with layers, n_epochs, loss, "
                           "n_sample from the options" + ("; final_act linear (cross-entropy)"
                                                          if args.loss == "cross-entropy" else ""),
           "protocol": f"evaluate(): every test event but a session's first, all {train.n_items:,} items ranked, "
                       "standard ties; unknown test items dropped"}
    inputs, targets = evaluated_events(train.item_ids, test, args.eval_batch_size)
    support = train.item_support()
    tb, t_info = support_buckets(support, targets)
    ib, i_info = support_buckets(support, inputs)
    events = {"targets": targets, "target_bucket": tb, "target_buckets": t_info, "input_bucket": ib,
              "input_buckets": i_info}
    res["buckets"] = {"target_support": t_info, "input_support": i_info,
                      "rule": "quartiles of the training support over the evaluated events"}
    print(f"train {desc['train']}  test {desc['test']}  backend {backend}  config {cfg.to_json()}", flush=True)
    rows = []
    for name in args.models:
        row = run_model(name, args, cfg, train, test, cat, events)
        rows.append(row)
        print(f"{name:28s} recall@{CUTOFF} {row[f'recall@{CUTOFF}']:.4f}  mrr@{CUTOFF} {row[f'mrr@{CUTOFF}']:.4f}  "
              f"ndcg@{CUTOFF} {row[f'ndcg@{CUTOFF}']:.4f}  train {row['train_seconds']:.0f} s"
              + "".join(f"  [{k}: mrr {v[f'mrr@{CUTOFF}']:.4f}]" for k, v in row.get("ablation", {}).items()),
              flush=True)
    res["models"] = rows
    res["table"] = markdown(rows)
    res["uptime_at_end"] = uptime()
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    out = args.out or os.path.join(HERE, "results", "prnn_table.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print("\n".join(res["table"]))
    print(f"wrote {out}  (load: {res['uptime_at_start']} -> {res['uptime_at_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
