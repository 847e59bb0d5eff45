"""Ids of any type, and distinct ids never merge: "007", "7", "+7" and " 7 " are four items, sessions "01" and
"1" two sessions; the ids given at training come back, with their type, from every recommend path."""
from __future__ import annotations

import json
import uuid
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gru4rec_kernels as g
from gru4rec_kernels.cli import main
from gru4rec_kernels.itemmap import ItemMap, as_item_array
from gru4rec_kernels.layout import init_params
from gru4rec_kernels.modelfile import ModelFileError, decode_str_ids, encode_str_ids

MERGING = ["007", "7", "+7", " 7 "]


def _merge_log() -> pd.DataFrame:
    # session "01": 007, 7; session "1": +7, " 7 ", 007
    return pd.DataFrame({"SessionId": ["01", "01", "1", "1", "1"],
                         "ItemId": ["007", "7", "+7", " 7 ", "007"],
                         "Time": [1.0, 2.0, 3.0, 4.0, 5.0]})


def _tiny_model(item_ids) -> g.Model:
    cfg = g.TrainConfig(layers=[4], n_sample=0, batch_size=4)
    _, params = init_params(cfg, len(item_ids), seed=1)
    return g.Model(cfg, item_ids, params)


def _assert_str_ids(ids, want) -> None:
    assert ids.dtype == object and all(type(v) is str for v in ids)
    assert ids.tolist() == want


# ---------------------------------------------------------------------------------------------------- merging
def test_distinct_string_ids_stay_distinct_from_pandas():
    d = g.SessionData.from_pandas(_merge_log())
    _assert_str_ids(d.item_ids, sorted(MERGING))
    _assert_str_ids(d.session_ids, ["01", "1"])
    assert d.session(1).tolist() == ["+7", " 7 ", "007"]
    assert d.item_support().tolist() == [1, 1, 2, 1]  # " 7 ", "+7", "007", "7"
    back = g.SessionData.from_pandas(d.to_pandas())
    np.testing.assert_array_equal(back.item_ids, d.item_ids)


def test_distinct_string_ids_stay_distinct_from_csv(tmp_path):
    p = tmp_path / "log.csv"
    _merge_log().to_csv(p, index=False)
    d = g.SessionData.from_csv(p)
    _assert_str_ids(d.item_ids, sorted(MERGING))
    _assert_str_ids(d.session_ids, ["01", "1"])
    # integers are the caller's explicit choice: then the four spellings are one item, the two sessions one
    d = g.SessionData.from_csv(p, id_type="int")
    assert d.item_ids.tolist() == [7] and d.session_ids.tolist() == [1]
    # "auto": integers only where every id is a canonically written integer, so nothing can merge
    d = g.SessionData.from_csv(p, id_type="auto")
    _assert_str_ids(d.item_ids, sorted(MERGING))
    _assert_str_ids(d.session_ids, ["01", "1"])
    pd.DataFrame({"SessionId": ["1", "1", "-2", "-2"], "ItemId": ["7", "0", "+7", "9"], "Time": [1, 2, 3, 4]}
                 ).to_csv(p, index=False)
    d = g.SessionData.from_csv(p, id_type="auto")
    assert d.session_ids.tolist() == [1, -2] and d.session_ids.dtype == np.int64
    _assert_str_ids(d.item_ids, ["+7", "0", "7", "9"])


def test_csv_na_is_an_id_but_an_empty_field_is_missing(tmp_path):
    p = tmp_path / "na.tsv"
    p.write_text("SessionId\tItemId\tTime\nNA\tnull\t1\nNA\tNA\t2\n")
    d = g.SessionData.from_csv(p, sep="\t")
    _assert_str_ids(d.item_ids, ["NA", "null"])
    _assert_str_ids(d.session_ids, ["NA"])
    p.write_text("SessionId\tItemId\tTime\n1\t5\t1\n1\t\t2\n")
    with pytest.raises(ValueError, match=r"'ItemId' has 1 missing \(empty\) value.*row 1"):
        g.SessionData.from_csv(p, sep="\t")
    p.write_text("SessionId\tItemId\tTime\n1\t5\t1\n1\t6\t\n")  # the time column keeps its NA handling
    with pytest.raises(ValueError, match="'Time' has 1 missing"):
        g.SessionData.from_csv(p, sep="\t")


def test_int_ids_unchanged(tmp_path):
    df = pd.DataFrame({"SessionId": [3, 3, 1, 1], "ItemId": [10, 12, 12, 11], "Time": [1.0, 2.0, 3.0, 4.0]})
    d = g.SessionData.from_pandas(df)
    assert d.item_ids.dtype == np.int64 and d.item_ids.tolist() == [10, 11, 12]
    assert d.session_ids.dtype == np.int64 and d.session_ids.tolist() == [3, 1]
    df.to_csv(tmp_path / "i.csv", index=False)
    di = g.SessionData.from_csv(tmp_path / "i.csv", id_type="int")
    for a in ("item_ids", "items", "offsets", "session_ids", "times"):
        np.testing.assert_array_equal(getattr(di, a), getattr(d, a))
    ds = g.SessionData.from_csv(tmp_path / "i.csv")  # the default: the file's strings
    _assert_str_ids(ds.item_ids, ["10", "11", "12"])
    floats = g.SessionData.from_pandas(df.astype({"ItemId": float}))  # exact-integer floats stay integers
    np.testing.assert_array_equal(floats.item_ids, d.item_ids)


def test_auto_rules_for_other_id_types():
    base = {"SessionId": [1, 1, 2, 2], "Time": [1.0, 2.0, 3.0, 4.0]}
    with pytest.raises(ValueError, match="'ItemId' mixes integer and string ids.*id_type='str'"):
        g.SessionData.from_pandas(pd.DataFrame({**base, "ItemId": pd.Series([1, "a", 2, "b"], dtype=object)}))
    d = g.SessionData.from_pandas(pd.DataFrame({**base, "ItemId": pd.Series([1, "a", 2, "b"], dtype=object)}),
                                  id_type="str")
    _assert_str_ids(d.item_ids, ["1", "2", "a", "b"])
    _assert_str_ids(d.session_ids, ["1", "2"])  # 'str': every id as its string, integers too
    with pytest.raises(ValueError, match="distinct ids 1 and '1' are both the string '1'"):
        g.SessionData.from_pandas(pd.DataFrame({**base, "ItemId": pd.Series([1, "1", 2, 2], dtype=object)}),
                                  id_type="str")
    u = [uuid.UUID(int=i) for i in range(3)]
    d = g.SessionData.from_arrays([1, 1, 2, 2], [u[2], u[0], u[1], u[2]])
    _assert_str_ids(d.item_ids, [str(x) for x in u])
    d = g.SessionData.from_pandas(pd.DataFrame({**base, "ItemId": pd.Categorical(["b", "a", "b", "c"])}))
    _assert_str_ids(d.item_ids, ["a", "b", "c"])
    with pytest.raises(ValueError, match="id_type must be"):
        g.SessionData.from_pandas(pd.DataFrame({**base, "ItemId": [1, 2, 3, 4]}), id_type="bytes")
    # a list mixing ints and strs is not silently made all-strings by numpy
    with pytest.raises(ValueError, match="mixes integer and string"):
        g.SessionData.from_arrays([1, 1, 2, 2], [7, "007", 7, "007"])


# ---------------------------------------------------------------------------------------------------- ItemMap
def test_item_map_kinds():
    m = ItemMap(np.array(sorted(MERGING), dtype=object))
    assert m.kind == "str"
    idx, known = m.index(["7", "x", "007"], on_unknown="ignore")
    assert idx.tolist() == [3, 2] and known.tolist() == [True, False, True]
    assert m.scalar_index("+7") == 1 and m.scalar_index("8") == -1
    assert m.index_set(["7", " 7 ", "nope"], "exclude").tolist() == [0, 3]
    with pytest.raises(ValueError, match="are strings, these are integers"):
        m.index([7])
    with pytest.raises(ValueError, match="must be a str"):
        m.scalar_index(7)
    with pytest.raises(ValueError, match="mixes string and integer"):
        m.index(["7", 7])
    with pytest.raises(g.UnknownItemError):
        m.index(["8"], on_unknown="raise")
    mi = ItemMap([1, 7, 9])
    with pytest.raises(ValueError, match="are integers, these are strings"):
        mi.index(["7"])
    with pytest.raises(ValueError, match="must be an integer"):
        mi.scalar_index("7")
    assert mi.index([7, 8], on_unknown="ignore")[0].tolist() == [1]
    with pytest.raises(ValueError, match="sorted and unique"):
        ItemMap(np.array(["b", "a"], dtype=object))
    with pytest.raises(ValueError, match="mixes string and integer"):
        ItemMap([7, "8"])
    assert as_item_array(np.array(["a", "b"]), kind="str").dtype == object  # numpy unicode -> Python str
    with pytest.raises(ValueError, match="expected integers"):  # the default: integer ids, as it always took
        as_item_array(["a"])
    assert m.full(2).tolist() == [None, None] and mi.full(2).tolist() == [-1, -1]


def test_remap_refuses_a_kind_mismatch():
    s = g.SessionData.from_pandas(_merge_log())
    with pytest.raises(ValueError, match="the model's item ids are integers, the test data's are strings: read both "
                                         "with the same id_type"):
        s.remap(np.array([7]))
    data, report = s.remap(np.array(["007", "7"], dtype=object), allow_empty=True)
    assert report["unknown_events"] == 2 and data.n_sessions == 1 and data.session(0).tolist() == ["007", "7"]


# ---------------------------------------------------------------------------------------------------- model file
def test_str_model_save_load_round_trip(tmp_path):
    ids = np.array(sorted(["", " 7 ", "+7", "007", "7", "NA", "é€😀", "a\tb,c"]), dtype=object)
    m = _tiny_model(ids)
    m.save(tmp_path / "m.safetensors")
    m2 = g.Model.load(tmp_path / "m.safetensors")
    _assert_str_ids(m2.item_ids, ids.tolist())
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    a = m.recommend(["007", "7"], k=5)
    b = m2.recommend(["007", "7"], k=5)
    assert a[0].tolist() == b[0].tolist()
    np.testing.assert_array_equal(a[1], b[1])


def test_str_id_tensors_are_checked():
    utf8, off = encode_str_ids(["a", "é"])
    assert decode_str_ids(utf8, off, "f").tolist() == ["a", "é"]
    with pytest.raises(ModelFileError, match="offsets must rise"):
        decode_str_ids(utf8, off[::-1].copy(), "f")
    with pytest.raises(ModelFileError, match="offsets must rise"):
        decode_str_ids(utf8[:-1].copy(), off, "f")
    with pytest.raises(ModelFileError, match="not valid UTF-8"):
        decode_str_ids(np.array([0xC3, 0x28], np.uint8), np.array([0, 2], np.int64), "f")
    with pytest.raises(ValueError, match="not valid Unicode"):
        encode_str_ids(["\ud800"])


def test_checkpoint_fingerprint_covers_string_ids():
    from gru4rec_kernels.checkpoint import data_fingerprint
    a = g.SessionData.from_pandas(_merge_log())
    b = g.SessionData.from_pandas(_merge_log().replace({"ItemId": {" 7 ": " 7"}}))
    assert data_fingerprint(a) != data_fingerprint(b)
    assert data_fingerprint(a) == data_fingerprint(g.SessionData.from_pandas(_merge_log()))


# ---------------------------------------------------------------------------------------------------- evaluation
def test_evaluate_str_ids_equals_int_ids():
    from gru4rec_kernels.synthetic import default_split
    tr, te = default_split(n_items=60, n_sessions=300)

    def as_str(df):  # zero-padded: the strings sort like the integers, so item indices are the same
        return df.assign(SessionId=df["SessionId"].map("s{:07d}".format), ItemId=df["ItemId"].map("i{:07d}".format))

    train_i, test_i = g.SessionData.from_pandas(tr), g.SessionData.from_pandas(te)
    train_s, test_s = g.SessionData.from_pandas(as_str(tr)), g.SessionData.from_pandas(as_str(te))
    assert train_s.item_ids.dtype == object and train_s.n_items == train_i.n_items
    cfg = g.TrainConfig(layers=[8], n_sample=0, batch_size=8)
    _, params = init_params(cfg, train_i.n_items, seed=3)
    mi, ms = g.Model(cfg, train_i.item_ids, params), g.Model(cfg, train_s.item_ids, params)
    ri = g.evaluate(mi, test_i, cutoffs=(5, 20), backend="numpy", return_ranks=True)
    rs = g.evaluate(ms, test_s, cutoffs=(5, 20), backend="numpy", return_ranks=True)
    np.testing.assert_array_equal(ri["ranks"], rs["ranks"])
    assert ri["recall"] == rs["recall"] and ri["mrr"] == rs["mrr"]
    bi = g.POP().fit(train_i).evaluate(test_i, cutoffs=(5,))
    bs = g.POP().fit(train_s).evaluate(test_s, cutoffs=(5,))
    assert bi["recall"] == bs["recall"]
    with pytest.raises(ValueError, match="read both with the same id_type"):
        g.evaluate(mi, test_s, backend="numpy")


# ---------------------------------------------------------------------------------------------------- round trip
_TEXT = st.text(alphabet=st.one_of(st.sampled_from(list(" \t0123456789+-.")), st.characters(codec="utf-8")),
                max_size=6)
ID_SETS = st.one_of(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), min_size=2, max_size=8, unique=True),
                    st.lists(_TEXT, min_size=2, max_size=8, unique=True))


def _model_from(given_ids: list):
    """A click log over exactly ``given_ids`` (every id in a 2-event session) -> (data, tiny model)."""
    n = len(given_ids)
    sess = [f"s{j // 2}" if isinstance(given_ids[0], str) else j // 2 for j in range(2 * n)]
    items = [given_ids[j % n] for j in range(2 * n)]
    data = g.SessionData.from_pandas(pd.DataFrame({"SessionId": sess, "ItemId": pd.Series(items, dtype=object
                                                   if isinstance(items[0], str) else np.int64),
                                                   "Time": np.arange(2 * n, dtype=float)}))
    return data, _tiny_model(data.item_ids)


def _check_returned(ids, given_ids) -> None:
    for v in ids.tolist():
        assert v in given_ids
        assert type(v) is type(given_ids[0])  # str stays str, int stays int (never "7" for 7 or 7 for "007")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(given_ids=ID_SETS, pick=st.lists(st.integers(0, 7), min_size=1, max_size=4))
def test_any_ids_in_the_same_ids_out(given_ids, pick):
    data, model = _model_from(given_ids)
    assert sorted(data.item_ids.tolist()) == sorted(given_ids) and data.n_items == len(given_ids)
    session = [given_ids[i % len(given_ids)] for i in pick]
    ids, scores = model.recommend(session, k=len(given_ids))
    _check_returned(ids, given_ids)
    assert sorted(ids.tolist()) == sorted(given_ids)  # k = every item: each id exactly once
    ids, _ = model.recommend(session, k=3, exclude=session[:1], candidates=given_ids)
    _check_returned(ids, given_ids)
    assert session[0] not in ids.tolist()
    rec = g.SessionRecommender(model)
    for v in session:
        assert rec.click("live", v)
    ids_live, scores_live = rec.recommend("live", k=len(given_ids))
    assert ids_live.tolist() == model.recommend(session, k=len(given_ids))[0].tolist()
    np.testing.assert_allclose(scores_live, model.recommend(session, k=len(given_ids))[1], rtol=1e-5, atol=1e-6)
    _check_returned(rec.history("live"), given_ids)
    b_ids, _ = model.recommend_batch([session, session[:1]], k=2)
    _check_returned(b_ids.ravel(), given_ids)


@settings(max_examples=30, deadline=None)
@given(given_ids=st.lists(_TEXT, min_size=2, max_size=8, unique=True),
       pick=st.lists(st.integers(0, 7), min_size=1, max_size=4))
def test_recommend_batch_str_ids(given_ids, pick):
    _, model = _model_from(given_ids)
    session = [given_ids[i % len(given_ids)] for i in pick]
    b_ids, b_scores = model.recommend_batch([session, session[:1], []], k=len(given_ids), exclude=[session, [], []])
    for row_i, row_s in zip(b_ids, b_scores):
        _check_returned(row_i[~np.isnan(row_s)], given_ids)
    one = model.recommend(session, k=len(given_ids), exclude=session)[0].tolist()
    assert b_ids[0][:len(one)].tolist() == one


def test_int_model_rejects_string_ids_and_back():
    _, mi = _model_from([5, 7, 9])
    with pytest.raises(ValueError, match="are integers, these are strings"):
        mi.recommend(["7"])
    _, ms = _model_from(["5", "7", "9"])
    with pytest.raises(ValueError, match="are strings, these are integers"):
        ms.recommend([7])
    with pytest.raises(ValueError, match="must be a str"):
        g.SessionRecommender(ms).click("s", 7)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert ms.recommend(["8"], k=1)[0].tolist() == [ms.recommend([], k=1)[0][0]]  # unknown: popularity
    assert any("unknown" in str(x.message) for x in w)


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def str_model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ids")
    rows = []
    for s in range(40):
        for j in range(4):
            rows.append((f"0{s}", MERGING[(s + j) % 4] if j % 2 else f"x{(s * 3 + j) % 9}", s * 10 + j))
    log = d / "train.csv"
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(log, index=False)
    model = d / "m.safetensors"
    assert main(["train", "--train", str(log), "--test", str(log), "--save", str(model), "--n-epochs", "1",
                 "--layers", "8", "--n-sample", "0", "--batch-size", "4", "--backend", "numpy",
                 "--no-progress"]) == 0
    return d, log, model


def test_cli_recommend_on_a_str_model(str_model_files, capsys):
    d, log, model = str_model_files
    m = g.Model.load(model)
    assert set(MERGING) <= set(m.item_ids.tolist()) and m.item_ids.dtype == object
    capsys.readouterr()
    assert main(["recommend", "--model", str(model), "--session", "007", " 7 ", "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["session"] == ["007", " 7 "]
    assert out["items"] == m.recommend(["007", " 7 "], k=4)[0].tolist()
    assert all(isinstance(v, str) for v in out["items"])
    assert main(["recommend", "--model", str(model), "--session", "+7", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[1] for ln in lines[1:]] == m.recommend(["+7"], k=3)[0].tolist()
    assert main(["recommend", "--model", str(model), "--session", "7", "--id-type", "int"]) == 2
    assert "the model's item ids are strings" in capsys.readouterr().err
    # evaluate reads the test file with the model's id type by default
    assert main(["evaluate", "--model", str(model), "--test", str(log), "--cutoffs", "5"]) == 0
    ints = d / "ints.csv"
    ints.write_text("SessionId,ItemId,Time\n1,7,1\n1,8,2\n")
    assert main(["evaluate", "--model", str(model), "--test", str(ints), "--id-type", "int"]) == 2
    assert "read both with the same id_type" in capsys.readouterr().err


def test_cli_recommend_sessions_file_on_a_str_model(str_model_files, capsys):
    d, _, model = str_model_files
    m = g.Model.load(model)
    f = d / "sessions.txt"
    f.write_text("007 +7\n7\n")
    capsys.readouterr()
    rc = main(["recommend", "--model", str(model), "--sessions", str(f), "-k", "2", "--json"])
    err = capsys.readouterr()
    if rc != 0:
        raise RuntimeError(err.err)
    out = json.loads(err.out)
    assert out[0]["items"] == m.recommend(["007", "+7"], k=2)[0].tolist()
    assert out[1]["items"] == m.recommend(["7"], k=2)[0].tolist()
