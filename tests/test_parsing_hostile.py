"""Hostile text where numbers and ids are parsed, through the real command
(exit status 2 and one ``Error:`` line, as test_hostile.refused asserts):
long digit runs and huge fields in ratings files, update files, numeric
options and the API's strings; update and fold-in errors naming the file's
line; splits too small for the file; a users file whose ids hold blanks.

The timeouts only catch a hang (the decimal rule once took 85 s on a 60 KB
field and longer on more); they time nothing.
"""
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from glocalk_np.data import DataError, DataWarning, Ratings, read_ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.synthetic import low_rank_ratings
import cli_process
from test_hostile import TINY, TINY_ARGS, refused

HANG = 120                              # seconds: a hang, not a slow answer
DIGITS = "1" * 60_000                   # a 60 KB digit run
TEN_MB = "1" * 10_000_000               # a 10 MB field
# a digit run that then stops being a number backtracked quadratically
LONG_FIELDS = {"60 KB": DIGITS + "x", "10 MB": TEN_MB}


def g(*args, cwd=None):
    return cli_process.run(*args, cwd=cwd, timeout=HANG)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """m.npz (TINY) fitted on 40 users x 30 items rated 1-5 (integer ids)."""
    d = tmp_path_factory.mktemp("parsing")
    ratings = low_rank_ratings(40, 30, 0.4, 2, seed=1)
    GLocalK(TINY, validation_fraction=0, refit=False).fit(ratings).save(d / "m.npz")
    return d / "m.npz"


# ---------------------------------------------------------------- long fields

@pytest.mark.parametrize("size", LONG_FIELDS)
def test_a_long_rating_in_a_ratings_file_is_refused_at_once(tmp_path, size):
    (tmp_path / "r.csv").write_text(f"1,1,4\n2,2,{LONG_FIELDS[size]}\n")
    refused(g("fit", "r.csv", *TINY_ARGS, "--out", "o.npz", cwd=tmp_path),
            f"r.csv:2: rating of {len(LONG_FIELDS[size]):,} characters, more than the 1,000 of "
            "any number")


@pytest.mark.parametrize("size", LONG_FIELDS)
def test_a_long_rating_in_an_update_file_is_refused_at_once(tmp_path, model, size):
    (tmp_path / "new.csv").write_text(f"user,item,rating\n1,1,4\n2,2,{LONG_FIELDS[size]}\n")
    refused(g("update", model, "new.csv", "--out", "o.npz", cwd=tmp_path),
            f"new.csv:3: rating of {len(LONG_FIELDS[size]):,} characters")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("size", LONG_FIELDS)
def test_a_long_id_is_read_as_an_id_at_once(tmp_path, model, size):
    """Ids have no bound (test_hostile: one costs its length); a run of
    digits too long for int() is an id as text, not int()'s error."""
    (tmp_path / "pairs.csv").write_text(f"1,1\n{LONG_FIELDS[size]},2\n")
    done = g("predict", model, "pairs.csv", "--out", "p.csv", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "limit" not in done.stderr and all(
        len(line) < 600 for line in done.stderr.splitlines()), done.stderr[-2000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3


def test_a_long_digit_run_in_a_numeric_option_is_answered_at_once(tmp_path):
    """An argument holds at most 128 KiB on Linux: 120 KB of digits took
    minutes with the old rule."""
    (tmp_path / "r.csv").write_text("1,1,4\n2,2,3\n")
    for value in ("1" * 120_000 + "x", DIGITS + "e" + DIGITS + "x", DIGITS + "." + DIGITS + "x"):
        refused(g("fit", "r.csv", "--test-frac", value, cwd=tmp_path),
                "Invalid value for '--test-frac'", "is not a decimal number")
    for value in ("1" * 400, "1e400", "-1e400"):            # decimals past float64's range
        refused(g("fit", "r.csv", "--test-frac", value, cwd=tmp_path),
                "Invalid value for '--test-frac'", "is too large a number")
    fine = g("fit", "r.csv", *TINY_ARGS, "--val-frac", "0", "--test-frac", "0." + "4" * 120_000,
             "--quiet", "--out", "o.npz", cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr[-500:]


def test_long_fields_from_the_api_are_answered_at_once():
    """Ratings and ids given as text to the API follow the file's rules; in
    a process of its own, so that a hang ends at the timeout."""
    script = textwrap.dedent("""
        import warnings
        from glocalk_np.data import DataError, Ratings, as_ids, parse_decimal
        warnings.simplefilter("ignore")
        for field in ("1" * 60_000 + "x", "1" * 10_000_000):
            try:
                Ratings.from_columns({"user": [1, 2], "item": [1, 2], "rating": ["4", field]})
            except DataError as e:
                assert str(e).startswith(f"a dict of ratings: row 1: rating of {len(field):,} "
                                         "characters"), e
            else:
                raise AssertionError(len(field))
            assert as_ids(["1", field], "--user", "user").tolist() == ["1", field]
            try:                      # the rule of numbers itself has no bound
                assert parse_decimal(field) == float("inf")
            except ValueError as e:
                assert field.endswith("x") and "is not a decimal number" in str(e), e
        assert parse_decimal("0." + "4" * 1_000_000) == 0.4444444444444444
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=HANG)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]


@pytest.mark.parametrize("rating, problem", [
    ("4." + "0" * 998, None),
    ("9" * 999, "is beyond ±1e+06"),                  # float() reads it as inf: not 'not finite'
    ("-1e400", "is beyond ±1e+06"),
    ("4." + "0" * 999, "rating of 1,001 characters, more than the 1,000 of any number")])
def test_a_rating_of_up_to_1000_characters_is_read_as_a_number(rating, problem):
    if problem is None:
        assert Ratings([1], [1], [rating], "t").values.tolist() == [4.0]
    else:
        with pytest.raises(DataError, match=f"^t: row 0: .*{re.escape(problem)}"):
            Ratings([1], [1], [rating], "t")


# ---------------------------------------------------------------- update and fold-in

def test_update_errors_name_the_file_s_line(tmp_path, model):
    # a header (line 1) and a blank line (3): the bad rating is the 3rd, on line 5
    (tmp_path / "new.csv").write_text("user,item,rating\n1,1,4\n\n1,2,3\n2,3,9\n")
    refused(g("update", model, "new.csv", "--out", "o.npz", cwd=tmp_path),
            "new.csv:5: rating 9 is outside the model's training range [1, 5]")
    (tmp_path / "new.csv").write_text("user,item,rating\n1,1,4\n\n1,777,3\n1,n7,5\n")
    refused(g("update", model, "new.csv", "--out", "o.npz", cwd=tmp_path),
            "new.csv:5: new item id 'n7' is not of the kind of the model's item ids (integers)")


@pytest.mark.parametrize("text, line, user", [
    ("1,1,4\nabc,2,3\n", 2, "abc"),            # a known user first: it was the one blamed
    ("user,item,rating\n1,1,4\n4242,2,3\n\nx y,3,4\n", 5, "x y"),   # a new integer one first
])
def test_fold_in_names_the_user_it_cannot_add(tmp_path, model, text, line, user):
    (tmp_path / "new.csv").write_text(text)
    refused(g("update", model, "new.csv", "--out", "o.npz", "--fold-in", cwd=tmp_path),
            f"new.csv:{line}: new user id {user!r} is not of the kind of the model's user ids")
    assert not (tmp_path / "o.npz").exists()


# ---------------------------------------------------------------- splits

@pytest.mark.parametrize("text, options, problem", [
    ("1,1,4\n", (), "too few ratings to hold out a validation set: 0.05 of 1 rating rounds to "
                    "none"),
    ("1,1,4\n1,2,3\n2,1,3\n", ("--test-frac", "0.1"),
     "too few ratings to hold out a test set: 0.1 of 3 ratings rounds to none"),
    ("1,1,4\n2,2,3\n", ("--val-frac", "0.9"),
     "too few ratings to hold out a validation set: 0.9 of 2 ratings rounds to all 2, leaving "
     "none to train on"),
])
def test_a_split_too_small_for_the_file_says_so(tmp_path, text, options, problem):
    (tmp_path / "small.csv").write_text(text)
    line = refused(g("fit", "small.csv", *TINY_ARGS, *options, "--out", "o.npz", cwd=tmp_path))
    assert line == f"Error: small.csv: {problem}"


# ---------------------------------------------------------------- users files

def recommended_for(model, users_file, cwd):
    """The users `recommend --users` answered for, in order."""
    done = g("recommend", model, "--users", users_file, "--top", "1", "--format", "json",
             cwd=cwd)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    return [json.loads(line)["user"] for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """A model whose users are named with blanks inside: 'John A', 'Mary Ann B', ..."""
    d = tmp_path_factory.mktemp("named")
    r = low_rank_ratings(12, 10, 0.7, 2, seed=4)
    names = np.array([f"John {chr(64 + u)}" if u % 2 else f"Mary Ann {chr(64 + u)}"
                      for u in r.users.tolist()], dtype=object)
    GLocalK(TINY, validation_fraction=0, refit=False).fit(
        Ratings(names, r.items, r.values, "named")).save(d / "m.npz")
    return d / "m.npz"


@pytest.mark.parametrize("layout", ["{}\n", "{},a comment\n", "{}\tx\n", "{};x;y\n"])
def test_a_users_file_keeps_blanks_inside_an_id(tmp_path, named, layout):
    (tmp_path / "users.txt").write_text(layout.format("John A") + layout.format("Mary Ann B"))
    assert recommended_for(named, "users.txt", tmp_path) == ["John A", "Mary Ann B"]


def test_a_blank_separated_ratings_file_gives_its_users(tmp_path, model):
    (tmp_path / "users.txt").write_text("user item rating\n3 1 4\n5  2 3.5 881250949\n")
    assert recommended_for(model, "users.txt", tmp_path) == [3, 5]


# ---------------------------------------------------------------- tables

def test_duplicates_in_a_table_warn_as_in_a_file_and_keep_the_last(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"user": [1, 1, 2, 1], "item": [1, 2, 1, 1],
                          "rating": [1.0, 2.0, 4.0, 5.0]})
    (tmp_path / "r.csv").write_text(frame.to_csv(index=False))
    with pytest.warns(DataWarning) as from_file:
        in_file = read_ratings(tmp_path / "r.csv")
    with pytest.warns(DataWarning) as from_table:
        in_table = Ratings.from_columns(frame)
    assert [str(w.message).split(": ", 1)[1] for w in [*from_file, *from_table]] == [
        "1 duplicate (user, item) pairs; kept the last of each"] * 2
    for r in (in_file, in_table):
        assert list(zip(r.users.tolist(), r.items.tolist(), r.values.tolist())) == [
            (1, 2, 2.0), (2, 1, 4.0), (1, 1, 5.0)]


def test_a_table_given_to_update_names_its_own_rows(model):
    pd = pytest.importorskip("pandas")
    m = GLocalK.load(model)
    frame = pd.DataFrame({"user": [1, 1, 2, 3], "item": [1, 1, 2, 3],
                          "rating": [4.0, 4.0, 3.0, 9.0]})
    # the first of the pair is dropped: the bad rating is the table's row 3, not the 3rd kept
    with pytest.warns(DataWarning, match="the update table: 1 duplicate"), \
            pytest.raises(ValueError, match=r"^the update table: row 3: rating 9 is outside"):
        m.update(frame)
