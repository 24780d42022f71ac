"""The data layer: parsing, error messages, index orientation, splits, real files."""
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from glocalk_np.data import (DataError, DataWarning, Index, Ratings, ml1m_split,
                             random_split, read_any, read_monti_mat, read_ratings, subset)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def error(path, *args, **kwargs):
    """The one-line DataError message that reading ``path`` raises."""
    with pytest.raises(DataError) as e:
        read_ratings(path, *args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def ratings(users, items, values, source="mem"):
    return Ratings(np.asarray(users), np.asarray(items), np.asarray(values, float), source)


# ------------------------------------------------------------ separators and headers

@pytest.mark.parametrize("text", [
    "1,10,5\n2,20,3.5\n3,10,1\n",
    "1\t10\t5\t881250949\n2\t20\t3.5\t881250950\n3\t10\t1\t881250951\n",
    "1::10::5::978300760\n2::20::3.5::978300761\n3::10::1::978300762\n",
    "1::10::5\n2::20::3.5\n3::10::1\n",
    "1;10;5\n2;20;3.5\n3;10;1\n",
    "1   10  5\n2\t 20 3.5\n  3 10 1  \n",
    "userId,movieId,rating,timestamp\n1,10,5,9\n2,20,3.5,9\n3,10,1,9\n",
    "user item rating\n1 10 5\n2 20 3.5\n3 10 1\n",
    '"user_id";"item_id";"rating"\n1;10;5\n2;20;3.5\n3;10;1\n',
    "\ufeffuser,item,rating\r\n1,10,5\r\n\r\n2,20,3.5\r\n3,10,1\r\n\r\n",
])
def test_separators_and_headers(tmp_path, text):
    r = read_ratings(write(tmp_path, "r.txt", text))
    assert r.users.dtype == np.int64 and r.items.dtype == np.int64
    np.testing.assert_array_equal(r.users, [1, 2, 3])
    np.testing.assert_array_equal(r.items, [10, 20, 10])
    np.testing.assert_array_equal(r.values, [5.0, 3.5, 1.0])
    assert r.values.dtype == np.float64 and r.source == str(tmp_path / "r.txt")


@pytest.mark.parametrize("sep", [",", "comma", " ", "whitespace", "\t", "tab", "\\t"])
def test_explicit_separator(tmp_path, sep):
    char = {"comma": ",", "whitespace": " ", "tab": "\t", "\\t": "\t"}.get(sep, sep)
    r = read_ratings(write(tmp_path, "r.txt", f"a{char}x{char}2\nb{char}y{char}4\n"), sep=sep)
    np.testing.assert_array_equal(r.values, [2.0, 4.0])


def test_explicit_separator_overrides_detection(tmp_path):
    path = write(tmp_path, "r.txt", "a;b,x,4;5\n")
    assert error(path) == f"{path}:1: rating '4;5' is not a number"   # detected: comma
    r = read_ratings(path, sep=";")
    assert r.items.tolist() == ["b,x,4"] and r.values.tolist() == [5.0]
    path = write(tmp_path, "eu.txt", "1;2;4,5\n")
    assert error(path, sep=";") == f"{path}:1: rating '4,5' is not a number"


def test_string_ids_kept_in_file_order_and_stripped(tmp_path):
    r = read_ratings(write(tmp_path, "r.csv", "alice, m2 ,4\nbob,m1,2\nalice,m1,3\n"))
    assert r.users.dtype.kind == "O" and r.items.dtype.kind == "O"
    assert r.users.tolist() == ["alice", "bob", "alice"]
    assert r.items.tolist() == ["m2", "m1", "m1"]


def test_one_non_integer_id_makes_the_column_str(tmp_path):
    r = read_ratings(write(tmp_path, "r.csv", "1,7,4\nu2,8,2\n"))
    assert r.users.tolist() == ["1", "u2"] and r.items.dtype == np.int64


def test_half_stars_and_percent_scale(tmp_path):
    r = read_ratings(write(tmp_path, "r.csv", "1,1,0.5\n1,2,4.5\n2,1,100\n2,2,37.25\n"))
    np.testing.assert_array_equal(r.values, [0.5, 4.5, 100.0, 37.25])


def test_non_numeric_rating_on_first_line_is_an_error_not_a_header(tmp_path):
    path = write(tmp_path, "r.csv", "1,2,abc\n3,4,5\n")
    assert error(path) == f"{path}:1: rating 'abc' is not a number"


# ------------------------------------------------------------ errors

def test_missing_file_and_directory(tmp_path):
    assert error(tmp_path / "ratings.csv") == f"{tmp_path / 'ratings.csv'}: cannot read: No such file or directory"
    assert error(tmp_path) == f"{tmp_path}: is a folder, not a regular file"


@pytest.mark.parametrize("text, problem", [
    ("", "no ratings (the file is empty)"),
    ("\n  \n\t\n", "no ratings (the file is empty)"),
    ("user,item,rating\n\n", "no ratings (only a header line)"),
])
def test_no_ratings(tmp_path, text, problem):
    path = write(tmp_path, "r.csv", text)
    assert error(path) == f"{path}: {problem}"


def test_wrong_column_count_on_first_line(tmp_path):
    path = write(tmp_path, "r.csv", "\n1,2\n3,4\n")
    msg = error(path)
    assert msg.startswith(f"{path}:2: found 2 fields") and "expected 3 or 4" in msg


def test_wrong_column_count_later_names_the_line(tmp_path):
    body = "".join(f"{u},{u},4,99\n" for u in range(1, 16))
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n" + body + "\n16,1,2,3,4\n")
    # header is line 1, ratings lines 2..16, a blank line 17, the bad line 18
    msg = error(path)
    assert msg.startswith(f"{path}:18: found 5 fields separated by comma, expected 4 as on line 2")


def test_non_numeric_rating_later_is_not_a_header(tmp_path):
    body = "".join(f"{u},{u},4\n" for u in range(1, 17))
    path = write(tmp_path, "ratings.csv", body + "17,1,abc\n18,1,3\n")
    assert error(path) == f"{path}:17: rating 'abc' is not a number"


@pytest.mark.parametrize("bad, problem", [
    ("", "empty rating"),
    ("nan", "rating 'nan' is not a finite number"),
    ("-inf", "rating '-inf' is not a finite number"),
    ("inf", "rating 'inf' is not a finite number"),
])
def test_bad_rating_values(tmp_path, bad, problem):
    path = write(tmp_path, "r.csv", f"1,1,4\n2,2,{bad}\n")
    assert error(path) == f"{path}:2: {problem}"


def test_zero_and_negative_ratings_are_ratings(tmp_path):
    path = write(tmp_path, "r.tsv", "1\t1\t4\n1\t2\t0\n2\t2\t-7.5\n2\t3\t0.0\n")
    assert read_ratings(path).values.tolist() == [4.0, 0.0, -7.5, 0.0]


@pytest.mark.parametrize("bad, problem", [("1e7", "is beyond ±1e+06"), ("-1e7", "is beyond"),
                                          ("1e-7", "is within ±1e-06 of 0 but not 0")])
def test_ratings_glocalk_np_cannot_train_on(tmp_path, bad, problem):
    path = write(tmp_path, "r.tsv", f"1\t1\t4\n1\t2\t3\n2\t2\t{bad}\n")
    assert error(path).startswith(f"{path}:3: rating '{bad}' {problem}")


@pytest.mark.parametrize("line, what", [(",2,5", "user"), ("1, ,5", "item")])
def test_empty_id(tmp_path, line, what):
    path = write(tmp_path, "r.csv", f"a,b,3\n{line}\n")
    assert error(path) == f"{path}:2: empty {what} id"


def test_not_utf8(tmp_path):
    path = write(tmp_path, "r.csv", b"1,1,4\n2,\xff,3\n")
    assert error(path) == f"{path}:2: not UTF-8 text (byte 0xff)"


def test_empty_separator(tmp_path):
    path = write(tmp_path, "r.csv", "1,1,4\n")
    assert error(path, sep="") == f"{path}: invalid separator ''"


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError) and issubclass(DataWarning, UserWarning)


# ------------------------------------------------------------ duplicates

def test_duplicates_keep_last_and_warn(tmp_path):
    path = write(tmp_path, "r.csv", "1,1,1\n1,2,2\n1,1,3\n2,1,4\n1,1,5\n1,2,1.5\n")
    with pytest.warns(DataWarning) as w:
        r = read_ratings(path)
    assert len(w) == 1
    assert str(w[0].message) == f"{path}: 2 duplicate (user, item) pairs; kept the last of each"
    assert list(zip(r.users.tolist(), r.items.tolist(), r.values.tolist())) == [
        (2, 1, 4.0), (1, 1, 5.0), (1, 2, 1.5)]


def test_ratings_kept_name_their_line_or_row(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating\n1,1,1\n\n1,1,3\n2,1,4\n")
    with pytest.warns(DataWarning):
        r = read_ratings(path)
    assert [r.where(i) for i in range(2)] == [f"{path}:4", f"{path}:5"]
    held, rest = random_split(r, 0.5, seed=0)
    assert {held.where(0), rest.where(0)} == {f"{path}:4", f"{path}:5"}
    with pytest.warns(DataWarning, match="^t: 1 duplicate"):
        table = Ratings.from_columns({"user": [1, 1, 2], "item": [1, 1, 1], "rating": [1, 3, 4]},
                                     source="t")
    assert [table.where(i) for i in range(2)] == ["t: row 1", "t: row 2"]
    assert ratings([1], [1], [3]).where(0) == "mem: row 0"


def test_no_warning_without_duplicates(tmp_path):
    path = write(tmp_path, "r.csv", "1,2,1\n2,1,2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_ratings(path)) == 2


# ------------------------------------------------------------ index and matrix

def test_matrix_rows_are_items_columns_users():
    r = ratings([10, 2, 10], [7, 7, 3], [5, 4, 1])
    index = Index.from_ratings(r)
    assert index.users.tolist() == [2, 10]          # numeric, not lexicographic
    assert index.items.tolist() == [3, 7]
    R, dropped = index.matrix(r)
    assert dropped == 0 and R.shape == (2, 2) and R.dtype == np.float64
    assert R.has_canonical_format
    np.testing.assert_array_equal(R.toarray(), [[0, 1], [4, 5]])


def test_string_ids_sort_lexicographically():
    index = Index.from_ratings(ratings(["b", "a", "c10", "c9"], ["x"] * 4, [1] * 4))
    assert index.users.tolist() == ["a", "b", "c10", "c9"]


def test_lookup_flags_unknown_and_matrix_drops_them():
    index = Index.from_ratings(ratings([1, 2], [5, 6], [1, 2]))
    test = ratings([1, 3, 2, 2], [6, 5, 9, 5], [3, 4, 5, 2])
    item_pos, user_pos, known = index.lookup(test)
    assert known.tolist() == [True, False, False, True]
    assert item_pos.tolist() == [1, -1, -1, 0] and user_pos.tolist() == [0, -1, -1, 1]
    R, dropped = index.matrix(test)
    assert dropped == 2 and R.shape == (2, 2)
    np.testing.assert_array_equal(R.toarray(), [[0, 2], [3, 0]])


def test_index_over_several_ratings():
    train = ratings([1, 3], [1, 2], [1, 1])
    test = ratings([2], [4], [1])
    index = Index.from_ratings(train, test)
    assert index.users.tolist() == [1, 2, 3] and index.items.tolist() == [1, 2, 4]
    assert index.matrix(train)[0].shape == (3, 3)


def test_mixed_int_and_str_ids():
    index = Index.from_ratings(ratings([1, 2], [1, 1], [1, 1]), ratings(["u9", "2"], [1, 1], [1, 1]))
    assert index.users.tolist() == ["1", "2", "u9"]
    _, user_pos, known = index.lookup(ratings([2, 1, 5], [1, 1, 1], [1, 1, 1]))
    assert user_pos.tolist() == [1, 0, -1] and known.tolist() == [True, True, False]
    str_index = Index.from_ratings(ratings(["1", "u"], [1, 1], [1, 1]))
    int_index = Index.from_ratings(ratings([5, 1], [1, 1], [1, 1]))
    _, user_pos, known = int_index.lookup(ratings(["5", "u"], [1, 1], [1, 1]))
    assert user_pos.tolist() == [1, -1] and known.tolist() == [True, False]
    assert str_index.lookup(ratings([1], [1], [1]))[2].tolist() == [True]


def test_matrix_keeps_last_of_repeated_entries():
    r = ratings([1, 1], [1, 1], [2, 4])
    R, _ = Index.from_ratings(r).matrix(r)
    assert R.nnz == 1 and R[0, 0] == 4


def test_subset_keeps_order_and_source():
    r = ratings([1, 2, 3], [4, 5, 6], [1, 2, 3], source="f")
    s = subset(r, np.array([2, 0]))
    assert s.users.tolist() == [3, 1] and s.values.tolist() == [3, 1] and s.source == "f"


# ------------------------------------------------------------ splits

def make(n):
    return ratings(np.arange(n), np.arange(n) % 7, np.arange(n) % 5 + 1, source="f.csv")


def test_random_split_sizes_partition_and_determinism():
    r = make(1000)
    rest, held = random_split(r, 0.2, seed=3)
    assert len(held) == 200 and len(rest) == 800
    assert sorted(rest.users.tolist() + held.users.tolist()) == list(range(1000))
    assert np.all(np.diff(held.users) > 0) and np.all(np.diff(rest.users) > 0)   # file order
    again = random_split(r, 0.2, seed=3)[1]
    other = random_split(r, 0.2, seed=4)[1]
    np.testing.assert_array_equal(held.users, again.users)
    assert not np.array_equal(held.users, other.users)


@pytest.mark.parametrize("frac, n, problem", [
    (0.0, 100, "cannot hold out a test set from 100 ratings: the fraction 0.0 is not in (0, 1)"),
    (1.0, 100, "cannot hold out a test set from 100 ratings: the fraction 1.0 is not in (0, 1)"),
    (1.5, 1, "cannot hold out a test set from 1 rating: the fraction 1.5 is not in (0, 1)"),
    (0.01, 10, "too few ratings to hold out a test set: 0.01 of 10 ratings rounds to none"),
    (0.05, 1, "too few ratings to hold out a test set: 0.05 of 1 rating rounds to none"),
    (0.99, 10, "too few ratings to hold out a test set: 0.99 of 10 ratings rounds to all 10, "
               "leaving none to train on")])
def test_random_split_refuses_an_empty_side_in_the_data_s_terms(frac, n, problem):
    with pytest.raises(DataError) as e:
        random_split(make(n), frac, seed=0, name="a test set")
    assert str(e.value) == f"f.csv: {problem}"


def test_ml1m_split_is_the_legacy_recipe():
    r = make(1003)
    saved = np.random.get_state()
    try:
        np.random.seed(1234)
        idx = np.arange(len(r))
        np.random.shuffle(idx)
        expect_test = set(idx[:int(0.1 * len(r))].tolist())
    finally:
        np.random.set_state(saved)
    before = np.random.get_state()[1].copy()
    train, test = ml1m_split(r)
    np.testing.assert_array_equal(np.random.get_state()[1], before)   # global state untouched
    assert set(test.users.tolist()) == expect_test and len(test) == 100
    assert set(train.users.tolist()) == set(range(1003)) - expect_test


# ------------------------------------------------------------ .mat files

def write_mat(path, variables):
    """Store matrices as MATLAB v7.3 does: HDF5 datasets, transposed."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for name, a in variables.items():
            f.create_dataset(name, data=np.asarray(a, float).T)
    return path


def test_monti_mat_orientation(tmp_path):
    M = np.array([[5, 0, 3], [0, 4, 1]])          # 2 users x 3 items, as MATLAB sees it
    train = np.array([[1, 0, 1], [0, 0, 0]])
    test = np.array([[0, 0, 0], [0, 1, 1]])
    path = write_mat(tmp_path / "m.mat", {"M": M, "Otraining": train, "Otest": test})
    tr, te = read_any(path)
    assert (tr.users.tolist(), tr.items.tolist(), tr.values.tolist()) == ([0, 0], [0, 2], [5, 3])
    assert (te.users.tolist(), te.items.tolist(), te.values.tolist()) == ([1, 1], [1, 2], [4, 1])
    assert tr.users.dtype == np.int64 and tr.shape == (2, 3)
    index = Index.from_ratings(subset(tr, [0]), te)       # item 1 / user 0 partly unrated: kept
    assert (index.n_users, index.n_items) == (2, 3)
    np.testing.assert_array_equal(index.matrix(tr)[0].toarray(), (M * train).T)


def test_monti_mat_errors(tmp_path):
    missing = tmp_path / "none.mat"
    with pytest.raises(DataError, match=r"none\.mat: cannot read: No such file"):
        read_monti_mat(missing)
    with pytest.raises(DataError, match=r"text\.mat: not a MATLAB v7\.3 \(HDF5\) file"):
        read_monti_mat(write(tmp_path, "text.mat", "1,2,3\n"))
    path = write_mat(tmp_path / "m.mat", {"M": np.eye(2), "Otraining": np.eye(2)})
    with pytest.raises(DataError, match=r"m\.mat: no variable 'Otest' .*found M, Otraining"):
        read_monti_mat(path)
    path = write_mat(tmp_path / "neg.mat", {"M": -np.eye(2), "Otraining": np.eye(2), "Otest": np.eye(2)})
    with pytest.raises(DataError, match=r"neg\.mat: M\[0, 0\] = -1\.0: ratings must be finite, > 0 and at most 1e\+06"):
        read_monti_mat(path)


def test_monti_mat_without_h5py(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with pytest.raises(DataError) as e:
        read_monti_mat(tmp_path / "d.mat")
    assert str(e.value) == f"{tmp_path / 'd.mat'}: reading MATLAB v7.3 files needs h5py: pip install glocalk-np[mat]"


def test_read_any_text(tmp_path):
    r, none = read_any(write(tmp_path, "r.csv", "1,1,4\n"))
    assert none is None and len(r) == 1


# ------------------------------------------------------------ real benchmark data

def data_file(*parts):
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path}")
    return path


def test_ml100k_u1():
    base = read_ratings(data_file("ml-100k", "u1.base"))
    test = read_ratings(data_file("ml-100k", "u1.test"))
    assert len(base) == 80_000 and len(test) == 20_000
    index = Index.from_ratings(base)
    assert (index.n_users, index.n_items) == (943, 1650)
    index = Index.from_ratings(base, test)
    assert (index.n_users, index.n_items) == (943, 1682)
    assert index.users.tolist() == list(range(1, 944)) and index.items.tolist() == list(range(1, 1683))
    R, dropped = index.matrix(test)
    assert R.shape == (1682, 943) and R.nnz == 20_000 and dropped == 0


def test_ml1m_ratings_uir():
    path = data_file("ml-1m", "ratings_uir.dat")
    start = time.perf_counter()
    r = read_ratings(path)
    print(f"read {path.name}: {time.perf_counter() - start:.2f} s")
    assert len(r) == 1_000_209 and r.values.sum() == 3_582_313
    counts = np.bincount(r.values.astype(int), minlength=6)[1:]
    assert counts.tolist() == [56_174, 107_557, 261_197, 348_971, 226_310]
    index = Index.from_ratings(r)
    assert (index.n_users, index.n_items) == (6040, 3706)
    train, test = ml1m_split(r)
    assert len(test) == 100_020 and len(train) == 900_189


@pytest.mark.parametrize("parts, n_train, n_test, levels", [
    (("douban", "douban_monti_dataset.mat"), 123_202, 13_689, [1, 2, 3, 4, 5]),
    (("flixster", "training_test_dataset_10_NNs.mat"), 23_556, 2_617, list(np.arange(1, 11) / 2)),
])
def test_monti_files(parts, n_train, n_test, levels):
    pytest.importorskip("h5py", reason="h5py is needed to read MATLAB v7.3 files")
    train, test = read_any(data_file(*parts))
    assert len(train) == n_train and len(test) == n_test
    assert np.unique(np.concatenate([train.values, test.values])).tolist() == levels
    index = Index.from_ratings(train, test)
    assert (index.n_users, index.n_items) == (3000, 3000)
    R_train, _ = index.matrix(train)
    R_test, _ = index.matrix(test)
    assert R_train.shape == (3000, 3000) and R_train.multiply(R_test).nnz == 0


class _Frame:
    """The part of a DataFrame that from_columns uses, without pandas."""

    def __init__(self, **columns):
        self._columns = columns
        self.columns = list(columns)

    def __getitem__(self, name):
        return self._columns[name]


def test_ratings_from_a_table_are_checked_like_a_file():
    r = Ratings.from_columns(_Frame(user=[1, 2], item=["a", "b"], rating=[4.0, 5.0]))
    assert r.users.dtype == np.int64 and r.items.tolist() == ["a", "b"]
    assert r.values.tolist() == [4.0, 5.0]
    gap = Ratings.from_columns({"uid": np.array([1.0, 2.0]), "item": [3, 4], "rating": [1, 2]},
                               user="uid")
    assert gap.users.dtype == np.int64 and gap.users.tolist() == [1, 2]
    with pytest.raises(DataError, match=r"row 1: rating 1e\+09 is beyond"):
        Ratings.from_columns(_Frame(user=[1, 2], item=[1, 2], rating=[4, 1e9]))
    with pytest.raises(DataError, match=r"no rating column 'stars' \(columns: user, item, rating\)"):
        Ratings.from_columns(_Frame(user=[1], item=[1], rating=[1]), rating="stars")
    with pytest.raises(DataError, match=r"row 0: user id 1.5 is not an id"):
        Ratings.from_columns({"user": [1.5], "item": [1], "rating": [3]})
    with pytest.raises(DataError, match="row 0: rating 'good' is not a number"):
        Ratings.from_columns({"user": [1], "item": [1], "rating": ["good"]})


def test_ratings_built_by_hand_are_checked_too():
    with pytest.raises(DataError, match=r"hand: row 2: rating 1e-09 is within"):
        Ratings(np.array([1, 2, 3]), np.array([1, 2, 3]), np.array([5.0, 1.0, 1e-9]), "hand")
    with pytest.raises(DataError, match=r"hand: row 0: rating nan is not a finite number"):
        Ratings(np.array([1]), np.array([1]), np.array([np.nan]), "hand")
    with pytest.raises(DataError, match="2 users and 1 items for 1 ratings"):
        Ratings(np.array([1, 2]), np.array([1]), np.array([3.0]), "hand")


def test_pandas_dataframe_fits_and_evaluates():
    pd = pytest.importorskip("pandas")
    from glocalk_np import GLocalK
    from glocalk_np.config import Config
    rng = np.random.default_rng(0)
    users, items = np.divmod(rng.permutation(300), 15)          # every pair once, shuffled
    df = pd.DataFrame({"user": users, "item": items, "rating": rng.integers(1, 6, 300) * 1.0})
    m = GLocalK(Config(n_hidden=4, kernel_dim=2, epochs_pretrain=1, epochs_finetune=1,
                       iters_pretrain=2, iters_finetune=2)).fit(df.iloc[:200], test=df.iloc[200:])
    assert m.evaluate(df.iloc[200:])["rmse"] == m.summary_["test"]["rmse"]
