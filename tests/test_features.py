"""ItemFeatures: aligned to the clicks' ItemMap from a DataFrame, a file or a matrix; missing items counted and
warned about; bad input refused with a clear error; DIGINETICA's categories read through the DataFrame path."""
import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import dataset

from gru4rec_kernels.features import ItemFeatures, read_item_features
from gru4rec_kernels.itemmap import ItemMap

MAP = ItemMap([10, 20, 30, 40])


def frame(**extra):
    d = {"ItemId": [30, 10, 99, 20], "price": [3.0, 1.0, 9.0, 2.0], "brand": ["b", "a", "c", "b"]}
    d.update(extra)
    return pd.DataFrame(d)


def test_numeric_columns_become_a_dense_matrix_in_item_order():
    with pytest.warns(UserWarning, match=r"1 of 4 items have no feature row"):
        f = ItemFeatures.from_frame(frame(), MAP, columns=["price"])
    assert not f.sparse and f.matrix.dtype == np.float32 and f.matrix.flags.c_contiguous
    np.testing.assert_array_equal(f.matrix[:, 0], [1.0, 2.0, 3.0, 0.0])  # item 40 has none: a zero row
    assert (f.n_missing, f.n_unknown, f.name, f.columns) == (1, 1, "price", ("price",))
    assert f.item_ids is MAP.ids


def test_string_columns_become_one_hot_csr():
    with pytest.warns(UserWarning, match="1 of 4"):
        f = ItemFeatures.from_frame(frame(), MAP, columns=["brand"], name="brand")
    assert f.sparse and f.matrix.dtype == np.float32 and f.columns == ("brand=a", "brand=b", "brand=c")
    np.testing.assert_array_equal(f.matrix.toarray(), [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert f.matrix.has_sorted_indices


def test_mixed_and_forced_columns():
    with pytest.warns(UserWarning):
        f = ItemFeatures.from_frame(frame(shop=[7, 7, 8, 5]), MAP, categorical=["shop"])
    assert f.sparse and f.name == "price+brand+shop"
    assert f.columns == ("price", "brand=a", "brand=b", "brand=c", "shop=5", "shop=7", "shop=8")
    np.testing.assert_array_equal(f.matrix.toarray()[0], [1, 1, 0, 0, 0, 1, 0])  # item 10
    with pytest.warns(UserWarning):
        d = ItemFeatures.from_frame(frame(), MAP, sparse=False)
    assert not d.sparse and np.array_equal(d.matrix, f.matrix.toarray()[:, :4])


def test_on_missing_raise_names_the_items():
    with pytest.raises(ValueError, match=r"1 of 4 items have no feature row, e\.g\. \[40\]"):
        ItemFeatures.from_frame(frame(), MAP, on_missing="raise")
    with pytest.raises(ValueError, match="never silent"):
        ItemFeatures.from_frame(frame(), MAP, on_missing="ignore")


@pytest.mark.parametrize("df,kw,match", [
    (frame(ItemId=[30, 10, 30, 20]), {}, r"item id 30 has more than one feature row"),
    (frame(price=[1.0, np.nan, 2.0, 3.0]), {}, r"column 'price' has 1 missing"),
    (frame(brand=["a", None, "b", "c"]), {}, r"column 'brand' has 1 missing"),
    (frame(price=[1.0, np.inf, 2.0, 3.0]), {}, r"'price' has 1 value\(s\) that are NaN, infinite"),
    (frame(price=[1.0, 1e39, 2.0, 3.0]), {}, r"beyond float32"),
    (frame(ItemId=[30, 10, None, 20]), {}, r"column 'ItemId' has 1 missing id"),
    (frame(ItemId=["30", "10", "99", "20"]), {}, r"are integers, these are strings"),
    (frame(), {"columns": ["colour"]}, r"unknown column\(s\) \['colour'\]"),
    (frame(), {"item_key": "item"}, r"missing column\(s\) \['item'\]"),
    (frame(), {"columns": ["ItemId", "price"]}, r"cannot also be a feature column"),
    (frame(), {"categorical": ["price"], "columns": ["brand"]}, r"not among columns"),
    (frame(), {"name": "id"}, r"not 'id'"),
    (frame(brand=["a", 1, "b", "c"]), {}, r"mixes value types"),
    (frame().iloc[:0], {}, r"no rows"),
])
def test_bad_frames_are_refused(df, kw, match):
    with pytest.raises(ValueError, match=match):
        ItemFeatures.from_frame(df, MAP, **kw)


def test_from_matrix_dense_and_sparse():
    m = np.arange(8, dtype=np.float64).reshape(4, 2)
    with pytest.warns(UserWarning, match="1 of 4"):
        f = ItemFeatures.from_matrix(m, [40, 10, 20, 77], MAP, name="vec")
    np.testing.assert_array_equal(f.matrix, [[2, 3], [4, 5], [0, 0], [0, 1]])
    assert (f.n_missing, f.n_unknown, f.columns) == (1, 1, ("0", "1"))
    coo = sp.coo_matrix(([1.0, 2.0, 0.0, 4.0, 5.0], ([0, 0, 1, 2, 2], [1, 1, 0, 2, 0])), shape=(3, 3))
    with pytest.warns(UserWarning, match="1 of 4"):
        s = ItemFeatures.from_matrix(coo, [30, 20, 10], MAP, name="tags", columns=["x", "y", "z"])
    assert s.sparse and s.matrix.format == "csr" and s.columns == ("x", "y", "z")
    np.testing.assert_array_equal(s.matrix.toarray(), [[5, 0, 4], [0, 0, 0], [0, 3, 0], [0, 0, 0]])
    assert s.matrix.nnz == 3  # duplicates summed, the explicit zero dropped


@pytest.mark.parametrize("matrix,ids,kw,match", [
    (np.ones((3, 2)), [10, 20], {}, r"3 matrix rows but 2 ids"),
    (np.ones(4), [10, 20, 30, 40], {}, r"must be 2-D"),
    (np.ones((4, 0)), [10, 20, 30, 40], {}, r"no columns"),
    (np.array([[1.0], [np.nan]]), [10, 20], {}, r"NaN, infinite"),
    (sp.csr_matrix(np.array([[np.inf], [1.0]])), [10, 20], {}, r"NaN, infinite"),
    (np.array([["a"], ["b"]]), [10, 20], {}, r"real numbers"),
    (np.ones((2, 2)), [10, 10], {}, r"item id 10 has more than one"),
    (np.ones((2, 2)), [10, 20], {"columns": ["a"]}, r"1 column names for 2 columns"),
    (np.ones((2, 2)), ["10", "20"], {}, r"are integers, these are strings"),
])
def test_bad_matrices_are_refused(matrix, ids, kw, match):
    with pytest.raises(ValueError, match=match):
        ItemFeatures.from_matrix(matrix, ids, MAP, **kw)


def test_string_item_maps_keep_ids_exact(tmp_path):
    smap = ItemMap(["007", "7", "a"])
    f = ItemFeatures.from_matrix(np.eye(3), ["7", "a", "007"], smap, name="e")
    np.testing.assert_array_equal(f.matrix, np.eye(3)[[2, 0, 1]])
    p = tmp_path / "f.tsv"
    p.write_text("item\tcolour\tweight\n007\tred\t1.5\n7\tblue\t2\na\tred\t0\n")
    r = read_item_features(p, smap, item_key="item")
    assert r.sparse and r.columns == ("colour=blue", "colour=red", "weight")
    np.testing.assert_array_equal(r.matrix.toarray(), [[0, 1, 1.5], [1, 0, 2], [0, 1, 0]])


def test_read_item_features_from_a_file(tmp_path):
    p = tmp_path / "feat.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("ItemId,cat,score\n10,5,0.5\n20,5,1.5\n30,12,2.5\n40,7,-1\n")
    num = read_item_features(p, MAP, columns=["cat", "score"])
    assert not num.sparse and num.matrix[2].tolist() == [12.0, 2.5]  # numbers unless told categorical
    cat = read_item_features(p, MAP, columns=["cat"], categorical=["cat"], name="cat")
    assert cat.sparse and cat.columns == ("cat=12", "cat=5", "cat=7")  # read as written: string order
    np.testing.assert_array_equal(cat.matrix.toarray(), [[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['colour'\]"):
        read_item_features(p, MAP, columns=["colour"])
    bad = tmp_path / "bad.csv"
    bad.write_text("ItemId,cat\n10,5\n20,\n")
    with pytest.raises(ValueError, match=r"column 'cat' has 1 empty value"):
        read_item_features(bad, MAP)
    with pytest.raises(FileNotFoundError):
        read_item_features(tmp_path / "none.csv", MAP)


CATEGORIES = dataset("diginetica_srgnn", "item_categories.tsv.gz")
TRAIN = dataset("diginetica_srgnn", "train_sessions.tsv.gz")


@pytest.mark.skipif(not (CATEGORIES.exists() and TRAIN.exists()), reason="diginetica_srgnn is absent")
@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_diginetica_categories_align_with_the_clicks(id_kind):
    items = pd.read_csv(TRAIN, sep="\t", usecols=["item_id"], dtype={"item_id": id_kind})["item_id"]
    imap = ItemMap(np.sort(items.unique()) if id_kind == "int" else sorted(items.unique()))
    f = read_item_features(CATEGORIES, imap, item_key="item_id", categorical=["category_id"], name="category")
    assert (f.n_items, f.dim, f.n_missing, f.n_unknown) == (43097, 995, 0, 0)
    assert f.sparse and f.matrix.nnz == 43097 and np.all(np.diff(f.matrix.indptr) == 1)
    raw = pd.read_csv(CATEGORIES, sep="\t", dtype=str).set_index("item_id")["category_id"]
    for i in (0, 1234, 43096):
        item = imap.ids[i]
        assert f.columns[f.matrix.indices[i]] == f"category_id={raw[str(item)]}"
