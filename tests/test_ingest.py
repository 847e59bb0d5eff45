"""Out-of-core ingestion (DuckDB) against the in-memory path, and the SessionData directory it writes.

The reference is the in-memory protocol: ``preprocess.preprocess`` on the DataFrame pandas reads from the same
file, then ``SessionData.from_pandas`` of its train split and of its test split remapped to train's items.
Every ingest test compares all arrays of both splits to it, bit for bit, ids included.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

import gru4rec_kernels as g
from gru4rec_kernels import datadir
from gru4rec_kernels.columns import to_ids, to_times
from gru4rec_kernels.data import SessionData
from gru4rec_kernels.preprocess import filter_support, preprocess
from gru4rec_kernels.synthetic import generate_clicks

duckdb = pytest.importorskip("duckdb")
from gru4rec_kernels import ingest as ingest_mod  # noqa: E402  (after the skip: it needs duckdb to run)
from gru4rec_kernels.ingest import IngestError, ingest  # noqa: E402

ARRAYS = ("items", "offsets", "times", "item_ids", "session_ids")


# ---------------------------------------------------------------------------------------------------- references
def reference(df: pd.DataFrame, id_type: str = "auto", test_days: float | None = 1.0, **kw):
    """The in-memory path: (train, test) SessionData, test in train's item map (or (train, None))."""
    if test_days is None:
        d = pd.DataFrame({"SessionId": to_ids(df["SessionId"], "SessionId", id_type),
                          "ItemId": to_ids(df["ItemId"], "ItemId", id_type), "Time": to_times(df["Time"], "Time")})
        return SessionData.from_pandas(filter_support(d, kw.get("min_item_support", 5),
                                                      kw.get("min_session_length", 2), kw.get("iterate", True))), None
    splits = preprocess(df, id_type=id_type, test_days=test_days, **kw)
    train = SessionData.from_pandas(splits["train_full"])
    test, _ = SessionData.from_pandas(splits["test"]).remap(train.item_ids)
    return train, test


def assert_same(got: SessionData, want: SessionData, skip: tuple = ()) -> None:
    for name in (a for a in ARRAYS if a not in skip):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        if a.dtype == object:
            assert a.tolist() == b.tolist(), name
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def assert_ingested(out, train: SessionData, test: SessionData | None) -> None:
    assert_same(SessionData.open(os.path.join(out, "train"), checksum=True), train)
    if test is None:
        assert not os.path.exists(os.path.join(out, "test"))
    else:
        assert_same(SessionData.open(os.path.join(out, "test"), checksum=True), test)


# ---------------------------------------------------------------------------------------------------- data
def click_log(n_sessions: int = 700, n_items: int = 120, seed: int = 0) -> pd.DataFrame:
    """A raw log in no particular row order, times on a 20 s grid (many equal times within a session: the file
    order must break those ties), rare items and one-event sessions for the filters."""
    df = generate_clicks(n_items=n_items, n_sessions=n_sessions, seed=seed)
    df["Time"] = np.floor(df["Time"] / 20.0) * 20.0
    # A cascade that only a repeated filter removes: item A has 5 events, one in the session [A, R] with R
    # rare; the first pass drops R, then that session (now 1 event), leaving A with 4 events for the second.
    popular = int(df["ItemId"].value_counts().index[0])
    a, r, s0, t0 = 10**6, 10**6 + 1, int(df["SessionId"].max()) + 1, float(df["Time"].min())
    rows = [(s0 + k, item, t0 + 60 * k + j) for k in range(4) for j, item in enumerate((a, popular, popular))]
    rows += [(s0 + 4, a, t0 + 500), (s0 + 4, r, t0 + 510)]
    df = pd.concat([df, pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])], ignore_index=True)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def str_ids(df: pd.DataFrame) -> pd.DataFrame:
    """String ids where distinct ids share an integer value ("1", "01", "001"): they must stay distinct."""
    out = df.copy()
    out["SessionId"] = "s" + df["SessionId"].astype(str)
    out["ItemId"] = [("0" * (k % 3)) + str(k // 3) for k in df["ItemId"].tolist()]
    return out


@pytest.fixture(scope="module")
def log():
    return click_log()


def run(source, out, **kw):
    kw.setdefault("progress", False)
    return ingest(source, out, **kw)


# ------------------------------------------------------------------------------------------ equal to the in-memory path
@pytest.mark.parametrize("ids", ["int", "str"])
def test_csv_equals_in_memory(tmp_path, log, ids):
    df = log if ids == "int" else str_ids(log)
    path = tmp_path / "clicks.csv"
    df.to_csv(path, index=False)
    if ids == "int":
        want = reference(pd.read_csv(path), id_type="int")
        rep = run(path, tmp_path / "out", id_type="int")
    else:  # CSV ids are the exact strings by default, as SessionData.from_csv reads them
        want = reference(pd.read_csv(path, dtype={"SessionId": str, "ItemId": str}, keep_default_na=False), "str")
        rep = run(path, tmp_path / "out")
    assert_ingested(tmp_path / "out", *want)
    assert rep["stages"] == {s: "done" for s in ingest_mod.STAGES}
    assert rep["counts"]["train"]["events"] == want[0].n_events and rep["counts"]["raw"]["events"] == len(df)
    assert rep["id_kinds"]["item_id_kind"] == ids and rep["filter_passes"] >= 2  # the filter did iterate
    summary = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert summary["key"] == rep["key"] and summary["counts"] == rep["counts"]


def test_tsv_gz_and_auto_ids(tmp_path, log):
    """A gzipped TSV; id_type='auto' makes canonical integer strings integers and keeps '01' as a string."""
    path = tmp_path / "clicks.tsv.gz"
    df = log.copy()
    df["ItemId"] = str_ids(log)["ItemId"]
    df.to_csv(path, sep="\t", index=False)
    run(path, tmp_path / "out", id_type="auto")
    raw = pd.read_csv(path, sep="\t", dtype={"SessionId": str, "ItemId": str}, keep_default_na=False)
    raw["SessionId"] = raw["SessionId"].astype(np.int64)  # every session id is canonical: auto reads ints
    train, test = reference(raw, "auto")
    assert train.session_ids.dtype == np.int64 and train.item_ids.dtype == object
    assert_ingested(tmp_path / "out", train, test)


@pytest.mark.parametrize("ids", ["int", "str"])
def test_parquet_file_equals_in_memory(tmp_path, log, ids):
    df = log if ids == "int" else str_ids(log)
    path = tmp_path / "clicks.parquet"
    df.to_parquet(path, index=False)
    run(path, tmp_path / "out")
    assert_ingested(tmp_path / "out", *reference(pd.read_parquet(path)))


@pytest.mark.parametrize("ids", ["int", "str"])
def test_hive_partitioned_directory_equals_in_memory(tmp_path, log, ids):
    """Partitions by event day (a session across midnight is in two files), read in path order."""
    df = log if ids == "int" else str_ids(log)
    root = tmp_path / "clicks"
    day = pd.to_datetime(df["Time"], unit="s").dt.strftime("%Y-%m-%d")
    for d, part in df.groupby(day, sort=True):
        (root / f"day={d}").mkdir(parents=True)
        part.to_parquet(root / f"day={d}" / "part-0.parquet", index=False)
    (root / "_SUCCESS").write_text("")
    assert len(list(root.iterdir())) >= 7
    run(root, tmp_path / "out")
    assert_ingested(tmp_path / "out", *reference(pd.read_parquet(root, columns=["SessionId", "ItemId", "Time"])))


def test_dates_as_iso_strings_and_timestamps(tmp_path, log):
    """Time as ISO strings in a CSV and as a timestamp column in Parquet: UTC epoch seconds, as to_times."""
    df = log.copy()
    df["Time"] = pd.to_datetime(df["Time"] + (df.index % 1000) / 1000.0, unit="s")
    csv = tmp_path / "clicks.csv"
    df.assign(Time=df["Time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z").to_csv(csv, index=False)
    run(csv, tmp_path / "a", id_type="int")
    assert_ingested(tmp_path / "a", *reference(pd.read_csv(csv), "int"))
    pq = tmp_path / "clicks.parquet"
    df.to_parquet(pq, index=False)
    run(pq, tmp_path / "b")
    assert_ingested(tmp_path / "b", *reference(pd.read_parquet(pq)))


@pytest.mark.parametrize("kw", [dict(iterate=False), dict(min_item_support=3, min_session_length=3, test_days=2.0),
                                dict(test_days=None)])
def test_options_equal_in_memory(tmp_path, log, kw):
    path = tmp_path / "clicks.parquet"
    log.to_parquet(path, index=False)
    rep = run(path, tmp_path / "out", **kw)
    assert_ingested(tmp_path / "out", *reference(log, **kw))
    if kw.get("iterate") is False:
        assert rep["filter_passes"] == 1
        assert reference(log, **kw)[0].n_events != reference(log)[0].n_events  # the option matters here


def test_without_times(tmp_path, log):
    path = tmp_path / "clicks.parquet"
    log.to_parquet(path, index=False)
    run(path, tmp_path / "out", times=False)
    train, _ = reference(log)
    got = SessionData.open(tmp_path / "out" / "train", checksum=True)
    assert not (tmp_path / "out" / "train" / "times.npy").exists()
    np.testing.assert_array_equal(np.asarray(got.items), train.items)
    # times default to each event's session start
    np.testing.assert_array_equal(got.times, np.repeat(train.times[train.offsets[:-1]], train.session_lengths()))


def test_spilling_under_a_small_memory_limit_gives_the_same_output(tmp_path):
    """16 MB and one thread for ~440k events: DuckDB has to spill (seen in its temp directory) and the output
    must not change."""
    df = generate_clicks(n_items=3000, n_sessions=80_000, seed=3)
    path = tmp_path / "big.parquet"
    df.to_parquet(path, index=False)
    spill = tmp_path / "spill"
    peak, stop = [0], threading.Event()

    def watch():  # DuckDB deletes its spill files when an operator finishes: sample the folder meanwhile
        while not stop.is_set():
            total = sum(f.stat().st_size for f in spill.rglob("*") if f.is_file()) if spill.exists() else 0
            peak[0] = max(peak[0], total)
            time.sleep(0.002)

    th = threading.Thread(target=watch)
    th.start()
    try:
        run(path, tmp_path / "out", memory_limit="16MB", threads=1, temp_dir=str(spill))
    finally:
        stop.set()
        th.join()
    assert peak[0] > 0, "expected DuckDB to spill under a 16 MB limit"
    assert_ingested(tmp_path / "out", *reference(df))


# ---------------------------------------------------------------------------------------------- restart, atomicity
def _stage_write_failing_on(split):
    """A _stage_write that dies after its first batch of events of ``split`` (files half-written)."""
    real = ingest_mod._stage_write

    def fake(con, name, out, opts, provenance, id_kinds, n_items, progress):
        if name != split:
            return real(con, name, out, opts, provenance, id_kinds, n_items, progress)

        def boom(n):
            raise RuntimeError("injected failure")
        return real(con, name, out, opts, provenance, id_kinds, n_items, boom)
    return fake


def test_failure_leaves_previous_output_and_rerun_resumes(tmp_path, log, monkeypatch):
    path = tmp_path / "clicks.parquet"
    log.to_parquet(path, index=False)
    out = tmp_path / "out"
    run(path, out, min_item_support=2)  # the previous state
    before = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    monkeypatch.setattr(ingest_mod, "_stage_write", _stage_write_failing_on("test"))
    with pytest.raises(RuntimeError, match="injected"):
        run(path, out)  # other options: a new output, which fails half-way through writing test/
    after = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    assert after == before and json.loads((out / "ingest.json").read_text())["options"]["min_item_support"] == 2
    work = tmp_path / ".out.ingest"
    assert (work / "out" / "test" / "items.npy").exists() and not (work / "out" / "test" / "meta.json").exists()
    monkeypatch.undo()
    rep = run(path, out)
    assert rep["stages"] == {"load": "skipped (done before)", "filter": "skipped (done before)",
                             "split": "skipped (done before)", "write train": "skipped (done before)",
                             "write test": "done"}
    assert not work.exists()
    assert_ingested(out, *reference(log))
    # complete and unchanged input: nothing to do
    assert set(run(path, out)["stages"].values()) == {"up to date"}
    # a changed input file is ingested again
    log.iloc[:-5].to_parquet(path, index=False)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert run(path, out)["stages"]["load"] == "done"
    assert_ingested(out, *reference(log.iloc[:-5]))


def test_failure_of_a_first_ingest_leaves_no_output(tmp_path, log, monkeypatch):
    path = tmp_path / "clicks.parquet"
    log.to_parquet(path, index=False)

    def boom(con, opts):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(ingest_mod, "_stage_filter", boom)
    with pytest.raises(RuntimeError, match="injected"):
        run(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    rep = run(path, tmp_path / "out")
    assert rep["stages"]["load"] == "skipped (done before)" and rep["stages"]["filter"] == "done"
    assert_ingested(tmp_path / "out", *reference(log))


# ------------------------------------------------------------------------------------------ SessionData.open / save
@pytest.mark.parametrize("ids", ["int", "str"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_open_round_trip(tmp_path, log, ids, mmap):
    data = SessionData.from_pandas(log if ids == "int" else str_ids(log))
    path = data.save(tmp_path / "d")
    got = SessionData.open(path, mmap=mmap, checksum=True)
    assert_same(got, data)
    assert isinstance(got, SessionData) and got.n_sessions == data.n_sessions and repr(got) == repr(data)
    assert isinstance(got.items, np.memmap) == mmap
    if mmap:
        with pytest.raises(ValueError, match="read-only"):
            got.items[0] = 1
    # the arrays are plain .npy files
    np.testing.assert_array_equal(np.load(os.path.join(path, "offsets.npy")), data.offsets)
    # transforms give in-memory SessionData equal to the in-memory ones
    assert_same(got.filter_min_length(3)[0], data.filter_min_length(3)[0])
    # saving again replaces the directory
    data.filter_min_length(4)[0].save(path)
    assert SessionData.open(path).n_events == data.filter_min_length(4)[0].n_events


def test_open_detects_damage(tmp_path, log):
    path = SessionData.from_pandas(log).save(tmp_path / "d")
    items = os.path.join(path, "items.npy")
    raw = bytearray(open(items, "rb").read())
    raw[-1] ^= 0xFF
    open(items, "wb").write(bytes(raw))
    SessionData.open(path)  # sizes and dtypes still match: the cheap check passes
    with pytest.raises(datadir.DataDirError, match="CRC32"):
        SessionData.open(path, checksum=True)
    open(items, "wb").write(bytes(raw[:-8]))
    with pytest.raises(datadir.DataDirError, match="truncated"):
        SessionData.open(path)
    os.remove(os.path.join(path, "meta.json"))
    with pytest.raises(datadir.DataDirError, match="meta.json"):
        SessionData.open(path)
    with pytest.raises(FileNotFoundError):
        SessionData.open(tmp_path / "nowhere")


def test_open_ingest_root_says_which_split(tmp_path, log):
    path = tmp_path / "clicks.parquet"
    log.to_parquet(path, index=False)
    run(path, tmp_path / "out")
    with pytest.raises(datadir.DataDirError, match="train"):
        SessionData.open(tmp_path / "out")


def test_fit_on_opened_data_equals_in_memory(tmp_path, log):
    """One epoch (numpy backend) on the memory-mapped ingest output equals one on the in-memory SessionData;
    the maps are read-only, so nothing in training writes into the data."""
    path = tmp_path / "clicks.parquet"
    log.to_parquet(path, index=False)
    run(path, tmp_path / "out")
    train, test = reference(log)
    opened = SessionData.open(tmp_path / "out" / "train")
    cfg = g.TrainConfig(layers=[8], n_sample=8, batch_size=8, n_epochs=1, sample_store_size=1000)
    a = g.Trainer(cfg, backend="numpy", show_progress=False).fit(opened)
    b = g.Trainer(cfg, backend="numpy", show_progress=False).fit(train)
    assert a.history[0]["loss"] == b.history[0]["loss"]
    for k in b.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    opened_test = SessionData.open(tmp_path / "out" / "test")
    assert g.evaluate(a, opened_test, cutoffs=(5,)) == g.evaluate(b, test, cutoffs=(5,))


# ---------------------------------------------------------------------------------------------------- bad input
def _csv(tmp_path, text: str, name: str = "c.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bad_input_errors(tmp_path, log):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ItemId'\]"):
        run(_csv(tmp_path, "SessionId,Item,Time\n1,2,3\n"), out)
    with pytest.raises(IngestError, match="empty"):
        run(_csv(tmp_path, "SessionId,ItemId,Time\n"), out)
    with pytest.raises(IngestError, match="non-integer id.*'x7'"):
        run(_csv(tmp_path, "SessionId,ItemId,Time\n1,5,3\n1,x7,4\n"), out, id_type="int")
    with pytest.raises(IngestError, match="missing"):
        run(_csv(tmp_path, "SessionId,ItemId,Time\n1,,3\n1,2,4\n"), out)
    with pytest.raises(IngestError, match="neither a number nor a date"):
        run(_csv(tmp_path, "SessionId,ItemId,Time\n1,5,3\n1,7,soon\n"), out)
    nan_ids = log.astype({"ItemId": float})
    nan_ids.loc[3, "ItemId"] = np.nan
    nan_ids.to_parquet(tmp_path / "nan.parquet", index=False)
    with pytest.raises(IngestError, match=r"'ItemId' has 1 missing \(NULL/NaN"):
        run(tmp_path / "nan.parquet", out)
    frac = log.astype({"ItemId": float})
    frac.loc[3, "ItemId"] = 2.5
    frac.to_parquet(tmp_path / "frac.parquet", index=False)
    with pytest.raises(IngestError, match="non-integer id.*2.5"):
        run(tmp_path / "frac.parquet", out)
    log.assign(ItemId=log["ItemId"] > 50).to_parquet(tmp_path / "bool.parquet", index=False)
    with pytest.raises(IngestError, match="booleans"):
        run(tmp_path / "bool.parquet", out)
    log.assign(Time=np.where(log.index == 2, np.inf, log["Time"])).to_parquet(tmp_path / "inf.parquet", index=False)
    with pytest.raises(IngestError, match="non-finite time"):
        run(tmp_path / "inf.parquet", out)
    log.to_parquet(tmp_path / "ok.parquet", index=False)
    with pytest.raises(IngestError, match="nothing is left"):
        run(tmp_path / "ok.parquet", out, min_item_support=10**6)
    with pytest.raises(IngestError, match="no training session"):
        run(tmp_path / "ok.parquet", out, test_days=10**4)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(IngestError, match="no Parquet file"):
        run(tmp_path / "empty_dir", out)
    with pytest.raises(FileNotFoundError):
        run(tmp_path / "nope.parquet", out)
    with pytest.raises(IngestError, match="cannot read"):
        run(_csv(tmp_path, "PAR1 but not parquet", "broken.parquet"), out)
    assert not out.exists()


@pytest.mark.parametrize("kw, match", [
    (dict(min_item_support=0), "min_item_support"), (dict(min_session_length=1.5), "min_session_length"),
    (dict(test_days=-1), "test_days"), (dict(test_days=float("nan")), "test_days"),
    (dict(memory_limit="lots"), "memory_limit"), (dict(memory_limit="1MB"), "at least 16MB"),
    (dict(threads=0), "threads"), (dict(id_type="float"), "id_type"),
    (dict(sep="ab"), "sep"), (dict(item_key="SessionId"), "three different columns")])
def test_bad_options(tmp_path, log, kw, match):
    log.to_parquet(tmp_path / "ok.parquet", index=False)
    with pytest.raises(ValueError, match=match):
        run(tmp_path / "ok.parquet", tmp_path / "out", **kw)


def test_out_of_memory_is_a_clear_error_and_keeps_finished_stages(tmp_path, log, monkeypatch):
    log.to_parquet(tmp_path / "ok.parquet", index=False)

    def oom(con, opts):  # what DuckDB raises when a stage needs more than the limit and cannot spill
        raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block of size 256.0 KiB")
    monkeypatch.setattr(ingest_mod, "_stage_filter", oom)
    with pytest.raises(RuntimeError, match="stage 'filter': DuckDB ran out of memory under memory_limit=64MB"):
        run(tmp_path / "ok.parquet", tmp_path / "out", memory_limit="64MB")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    assert run(tmp_path / "ok.parquet", tmp_path / "out")["stages"]["load"] == "skipped (done before)"


# ----------------------------------------------------------------------------------------- CLI, optional dependency
def test_cli_ingest(tmp_path, log, capsys):
    from gru4rec_kernels.cli import main
    path = tmp_path / "clicks.tsv"
    log.to_csv(path, sep="\t", index=False)
    rc = main(["ingest", str(path), "--out", str(tmp_path / "out"), "--id-type", "int", "--memory-limit", "256MB",
               "--threads", "1", "--no-progress", "--json", str(tmp_path / "rep.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "write test: done" in text and "train:" in text
    assert json.loads((tmp_path / "rep.json").read_text())["options"]["id_type"] == "int"
    assert_ingested(tmp_path / "out", *reference(pd.read_csv(path, sep="\t"), "int"))
    assert main(["ingest", str(path), "--out", str(tmp_path / "out2"), "--min-item-support", "0"]) == 2
    assert "min_item_support" in capsys.readouterr().err
    assert main(["ingest", str(path), "--out", str(tmp_path / "o3"), "--no-split", "--no-times", "--single-pass",
                 "--no-progress", "--id-type", "int"]) == 0
    capsys.readouterr()
    assert not (tmp_path / "o3" / "test").exists() and not (tmp_path / "o3" / "train" / "times.npy").exists()
    assert_same(SessionData.open(tmp_path / "o3" / "train"),
                reference(pd.read_csv(path, sep="\t"), "int", test_days=None, iterate=False)[0], skip=("times",))


def test_without_duckdb(tmp_path):
    """``import gru4rec_kernels`` works without DuckDB; ``gru4rec ingest`` says how to install it."""
    code = ("import sys; sys.modules['duckdb'] = None\n"
            "import gru4rec_kernels, gru4rec_kernels.ingest\n"
            "from gru4rec_kernels.cli import main\n"
            f"sys.exit(main(['ingest', {str(tmp_path / 'src')!r}, '--out', {str(tmp_path / 'out')!r}]))\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.parquet").write_bytes(b"PAR1")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "needs DuckDB" in r.stderr and "pip install" in r.stderr
