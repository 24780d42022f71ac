"""Rating files in, id index and splits out (docs/model.md §1, §11).

Every problem with the input raises :class:`DataError` whose one-line message
names the file, the line where there is one, and what is wrong, so that the
CLI can print it as it is.
"""
import re
import warnings
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path

import numpy as np
import scipy.sparse as sp


class DataError(ValueError):
    """Bad input data; the message is one self-contained line."""


class DataWarning(UserWarning):
    """Input that was read, but not exactly as written (e.g. duplicates)."""


@dataclass(eq=False)
class Ratings:
    """Ratings as parallel arrays, in file order.

    ``users`` and ``items`` hold ids: int64 when every id of the column is an
    integer written plainly, else an object array of str (see as_ids). ``source`` is the path, for messages. ``shape`` is
    ``(n_users, n_items)`` when the ids are 0-based positions in a matrix of
    that size (a .mat file), so that an index can cover users and items
    without any rating, as the official code does; None for text files.
    """

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    source: str
    shape: tuple | None = None

    def __post_init__(self):
        """Checked as a file's ratings are (DataError naming the source and
        the row): ratings by hand or from a table are no less hostile."""
        self.users, self.items = as_ids(self.users), as_ids(self.items)
        try:
            self.values = np.asarray(self.values, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise DataError(f"{self.source}: the ratings are not all numbers") from None
        n = self.values.size
        if self.users.shape != (n,) or self.items.shape != (n,):
            raise DataError(f"{self.source}: {self.users.size} users and {self.items.size} "
                            f"items for {n} ratings")
        bad = np.flatnonzero(~(self.values > 0) | ~(self.values <= MAX_RATING))
        if bad.size:
            v = self.values[bad[0]]
            problem = ("is not a finite number" if not np.isfinite(v) else
                       f"is above {MAX_RATING:g}" if v > MAX_RATING else
                       "is not > 0 (0 means a missing rating: shift the scale)")
            raise DataError(f"{self.source}: row {bad[0]}: rating {v:g} {problem}")

    def __len__(self):
        return len(self.values)

    @classmethod
    def from_columns(cls, table, user="user", item="item", rating="rating", source=None):
        """Ratings from the named columns of any column mapping: a pandas or
        polars DataFrame, a dict of arrays (no dependency on either). Ids
        keep their kind: integer columns as int64 (whole-number floats too),
        others as text; every rating is checked as a file's is."""
        source = source or f"a {type(table).__name__} of ratings"
        columns = []
        for role, name in (("user", user), ("item", item), ("rating", rating)):
            try:
                columns.append(np.asarray(table[name]))
            except (KeyError, IndexError, TypeError, ValueError):
                have = list(getattr(table, "columns", None) or getattr(table, "keys", list)())
                raise DataError(f"{source}: no {role} column {name!r}"
                                + (f" (columns: {', '.join(map(str, have))})" if have else "")
                                ) from None
        users, items = (_whole_number_ids(source, ids, role)
                        for ids, role in zip(columns[:2], ("user", "item")))
        return cls(users, items, columns[2], source)


def as_ids(ids):
    """Ids as the library holds them: int64 for integers, otherwise an object
    array of str, whose memory is what the ids' text needs (a fixed-width
    unicode array costs its longest id times their number)."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False)
    if ids.dtype == object and all(isinstance(x, str) for x in ids.tolist()):
        return ids
    return ids.astype(str).astype(object)


def _whole_number_ids(source, ids, what):
    """A float id column (a DataFrame's integer column with a gap turns to
    float) as int64 if every id is a whole number; DataError otherwise."""
    if ids.dtype.kind != "f":
        return ids
    whole = np.isfinite(ids) & (ids == np.round(ids))
    if not whole.all():
        raise DataError(f"{source}: row {np.flatnonzero(~whole)[0]}: {what} id "
                        f"{ids[~whole][0]:g} is not an id (a whole number or text)")
    return ids.astype(np.int64)


def subset(ratings, mask):
    """The ratings selected by a boolean mask or an index array, in that order."""
    return replace(ratings, users=ratings.users[mask], items=ratings.items[mask],
                   values=ratings.values[mask])


# ---------------------------------------------------------------- text files

_SEP_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";",
                " ": None, "space": None, "whitespace": None}
_SEP_CANDIDATES = ("::", "\t", ",", ";", None)   # None = runs of whitespace
_SEP_NAMES = {"::": "'::'", "\t": "tab", ",": "comma", ";": "semicolon", None: "whitespace"}
_DETECT_LINES = 5
# (allowed field counts, what they are) of a ratings file and of a pairs file
_RATING_FIELDS = (range(3, 5), "3 or 4 (user, item, rating[, timestamp])")
_PAIR_FIELDS = (range(2, 1 << 31), "at least 2 (user, item[, ...])")
_WORD = re.compile(r"[A-Za-z_][\w .()/-]*")
PLAIN_INT = re.compile(r"-?(0|[1-9][0-9]*)")     # [0-9]: ASCII digits only
# first fields that make a lone first line of a pairs file a header
_ID_COLUMN_NAMES = {"user", "users", "user_id", "userid", "uid", "item", "items", "item_id",
                    "itemid", "iid", "movie", "movie_id", "movieid", "id"}
# The largest rating glocalk-np trains on: squared float32 residuals of
# larger ones would leave float32's range; rescale such data.
MAX_RATING = 1e6


def read_ratings(path, sep=None):
    """Read ``user, item, rating[, timestamp]`` lines into :class:`Ratings`.

    ``sep`` is a literal separator (``","``, ``"\\t"``, ``"::"``, ``";"``;
    also ``"tab"``, ``"comma"``, ``"semicolon"``), ``"whitespace"`` (or
    ``" "``) for runs of blanks, or None to detect it from the first lines.
    A first line whose fields are all words and whose rating is not a number
    is a header. Blank lines are skipped; the timestamp is ignored. Ratings
    must be finite and > 0 (0 means "missing" to the model, docs/model.md §1).
    Duplicate (user, item) pairs keep their last rating, with a DataWarning.

    The common case is parsed without a Python loop per line; a slow scan
    only runs to name the line of an error once one is found.
    """
    src = str(path)
    lines, linenos = _content_lines(src, "ratings")
    sep = _detect_sep(lines[:_DETECT_LINES]) if sep is None else _parse_sep(src, sep)
    if _is_header(_split_line(lines[0], sep)):
        lines, linenos = lines[1:], linenos[1:]
        if not lines:
            raise DataError(f"{src}: no ratings (only a header line)")
    tokens, k = _tokens(src, lines, linenos, sep)
    values = _parse_ratings(src, tokens[2::k], linenos)
    users = _parse_ids(src, tokens[0::k], linenos, "user")
    items = _parse_ids(src, tokens[1::k], linenos, "item")
    return _drop_duplicates(Ratings(users, items, values, src))


def read_pairs(path, sep=None):
    """(users, items) id arrays of a ``user, item[, ...]`` file, in file order,
    e.g. the pairs to predict; further columns are ignored. Separators and
    ids are read as by :func:`read_ratings`. A first line is a header if it
    is one for read_ratings, or if its user and item fields are words while
    the next line's user or item is a number (string ids without a rating
    column leave no way to tell a header from data)."""
    src = str(path)
    lines, linenos = _content_lines(src, "(user, item) pairs")
    sep = (_detect_sep(lines[:_DETECT_LINES], _PAIR_FIELDS[0]) if sep is None
           else _parse_sep(src, sep))
    first, second = (_split_line(line, sep) for line in (lines + lines)[:2])
    names = {f.strip().strip("\"'").lower() for f in first[:2]}
    if _is_header(first) or (_is_header(first[:2] + ["rating"])
                             and (any(map(_is_number, second[:2])) or names <= _ID_COLUMN_NAMES)):
        lines, linenos = lines[1:], linenos[1:]
        if not lines:
            raise DataError(f"{src}: no (user, item) pairs (only a header line)")
    tokens, k = _tokens(src, lines, linenos, sep, _PAIR_FIELDS)
    return (_parse_ids(src, tokens[0::k], linenos, "user"),
            _parse_ids(src, tokens[1::k], linenos, "item"))


def _content_lines(src, what):
    """(non-blank lines, their 1-based line numbers); DataError if there are none."""
    lines = _read_lines(src)
    keep = np.fromiter(map(bool, map(str.strip, lines)), bool, len(lines))
    linenos = np.flatnonzero(keep) + 1
    if linenos.size and linenos[-1] == linenos.size:   # blank lines only at the end
        lines = lines[:linenos.size]
    elif not keep.all():
        lines = [lines[i - 1] for i in linenos]
    if not lines:
        raise DataError(f"{src}: no {what} (the file is empty)")
    return lines, linenos


def _read_lines(src):
    """The file's lines, decoded as UTF-8 (a BOM is dropped)."""
    try:
        raw = Path(src).read_bytes()
    except OSError as e:
        raise DataError(f"{src}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{src}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _parse_sep(src, sep):
    """An explicit separator: an alias or a literal string."""
    if not isinstance(sep, str) or sep == "":
        raise DataError(f"{src}: invalid separator {sep!r}")
    return _SEP_ALIASES.get(sep.lower(), sep)


def _split_line(line, sep):
    return line.split() if sep is None else line.split(sep)


def _detect_sep(sample, counts_ok=_RATING_FIELDS[0]):
    """The first candidate that splits every sampled line into the same number
    of fields, one of ``counts_ok`` (3 or 4 for ratings); failing that, the
    first one present on the first line, so that the column check then names
    the offending line."""
    for sep in _SEP_CANDIDATES:
        counts = {len(_split_line(line, sep)) for line in sample}
        if len(counts) == 1 and min(counts) in counts_ok:
            return sep
    return next((s for s in _SEP_CANDIDATES[:-1] if s in sample[0]), None)


def _is_number(s):
    try:
        float(s)
    except ValueError:
        return False
    return True


def _is_header(fields):
    """A header names its columns: user, item and rating fields are words, and
    the rating is not a number (which would make it a data line)."""
    if len(fields) not in (3, 4) or _is_number(fields[2]):
        return False
    return all(_WORD.fullmatch(f.strip().strip("\"'")) and not _is_number(f)
               for f in fields[:3])


def _tokens(src, lines, linenos, sep, fields=_RATING_FIELDS):
    """All fields as one flat list and the number of fields per line, which
    must be the same on every line and one of ``fields`` (counts, description).

    The whole body is split at once; the per-line field counts (C-level
    ``map``) guarantee that the flat list lines up k fields per line.
    """
    if sep is None:
        counts = np.fromiter(map(len, map(str.split, lines)), np.intp, len(lines))
    else:
        counts = np.fromiter(map(str.count, lines, repeat(sep)), np.intp, len(lines)) + 1
    k = int(counts[0])
    what = f"separated by {_SEP_NAMES.get(sep, repr(sep))}"
    if k not in fields[0]:
        raise DataError(f"{src}:{linenos[0]}: found {_n_fields(k)} {what}, "
                        f"expected {fields[1]}")
    bad = np.flatnonzero(counts != k)
    if bad.size:
        i = bad[0]
        raise DataError(f"{src}:{linenos[i]}: found {_n_fields(counts[i])} "
                        f"{what}, expected {k} as on line {linenos[0]}")
    # "\n" + sep between lines: no line holds "\n", so a line ending in part
    # of the separator (e.g. '3:' with '::') cannot shift the next line's fields
    tokens = " ".join(lines).split() if sep is None else ("\n" + sep).join(lines).split(sep)
    return tokens, k


def _n_fields(count):
    return "1 field" if count == 1 else f"{count} fields"


def _parse_ratings(src, col, linenos):
    """Ratings as float64, each finite and > 0."""
    try:
        values = np.fromiter(map(float, col), np.float64, len(col))
    except ValueError:
        i = next(i for i, s in enumerate(col) if not _is_number(s))
        problem = "empty rating" if not col[i].strip() else f"rating {col[i].strip()!r} is not a number"
        raise DataError(f"{src}:{linenos[i]}: {problem}") from None
    bad = np.flatnonzero(~(values > 0) | ~(values <= MAX_RATING))
    if bad.size:
        i = bad[0]
        tok = col[i].strip()
        if not np.isfinite(values[i]):
            raise DataError(f"{src}:{linenos[i]}: rating {tok!r} is not a finite number")
        if values[i] > MAX_RATING:
            raise DataError(f"{src}:{linenos[i]}: rating {tok!r} is above {MAX_RATING:g}, the "
                            "largest glocalk-np trains on in float32: rescale the ratings")
        raise DataError(f"{src}:{linenos[i]}: rating {tok!r} is not > 0; ratings must be > 0 "
                        "because the model reads 0 as a missing rating: shift the scale "
                        "(e.g. add 1 to every rating) before training")
    return values


def _parse_ids(src, col, linenos, what):
    """int64 ids when every id of the column is an integer written plainly
    ('-'? and ASCII digits without leading zeros, the form str(int) gives);
    otherwise every id stays the text it is (surrounding blanks stripped),
    so that no two ids written differently are merged ('01' and '1', '1_0'
    and '10', Arabic-Indic digits and ASCII ones). A DataWarning names the
    first id that is a number in another form next to plain integers."""
    col = list(map(str.strip, col))
    try:
        ints = np.fromiter(map(int, col), np.int64, len(col))
    except (ValueError, OverflowError):
        ints = None
    if ints is not None and all(map(str.__eq__, map(str, ints.tolist()), col)):
        return ints
    empty = next((i for i, t in enumerate(col) if not t), None)
    if empty is not None:
        raise DataError(f"{src}:{linenos[empty]}: empty {what} id")
    if any(map(PLAIN_INT.fullmatch, col)):
        odd = next((i for i, t in enumerate(col) if not PLAIN_INT.fullmatch(t) and _is_number(t)),
                   None)
        if odd is not None:
            warnings.warn(f"{src}:{linenos[odd]}: {what} id {col[odd]!r} is a number not "
                          f"written as a plain integer, so all {what} ids are read as text and "
                          f"{col[odd]!r} is another {what} than any plain integer id",
                          DataWarning, stacklevel=4)
    return np.array(col, dtype=object)


def _drop_duplicates(r):
    """Keep the last rating of each (user, item) pair, warning if any repeat."""
    n = len(r)
    _, u = np.unique(r.users, return_inverse=True)
    _, i = np.unique(r.items, return_inverse=True)
    key = u.astype(np.int64) * (int(i.max()) + 1) + i
    _, first_rev, counts = np.unique(key[::-1], return_index=True, return_counts=True)
    if len(counts) == n:
        return r
    k = int(np.count_nonzero(counts > 1))
    warnings.warn(f"{r.source}: {k} duplicate (user, item) pairs; kept the last of each",
                  DataWarning, stacklevel=3)
    return subset(r, np.sort(n - 1 - first_rev))


# ---------------------------------------------------------------- .mat files

_MONTI_VARS = ("M", "Otraining", "Otest")


def read_monti_mat(path):
    """(train, test) from Monti et al.'s MATLAB v7.3 file (docs/model.md §11).

    As in the official loader, each dense variable is read with h5py and
    transposed (HDF5 holds MATLAB's column-major arrays transposed); then
    rows of M are users and columns items, train = Otraining * M and
    test = Otest * M. Ids are 0-based int64 positions, in row-major order,
    and ``shape`` is M's (n_users, n_items).
    """
    src = str(path)
    try:
        import h5py
    except ImportError:
        raise DataError(f"{src}: reading MATLAB v7.3 files needs h5py: "
                        "pip install glocalk-np[mat]") from None
    try:
        Path(src).open("rb").close()
    except OSError as e:
        raise DataError(f"{src}: cannot read: {e.strerror or e}") from None
    try:
        f = h5py.File(src, "r")
    except OSError:
        raise DataError(f"{src}: not a MATLAB v7.3 (HDF5) file; save it with "
                        "MATLAB's -v7.3 option") from None
    with f:
        M, train_mask, test_mask = (_dense_variable(src, f, name) for name in _MONTI_VARS)
    if not (M.shape == train_mask.shape == test_mask.shape):
        raise DataError(f"{src}: M, Otraining and Otest differ in shape "
                        f"({M.shape}, {train_mask.shape}, {test_mask.shape})")
    bad = ~np.isfinite(M) | (M < 0) | (M > MAX_RATING)
    if bad.any():
        u, i = np.argwhere(bad)[0]
        raise DataError(f"{src}: M[{u}, {i}] = {M[u, i]}: ratings must be finite, > 0 and "
                        f"at most {MAX_RATING:g}")
    return _masked(src, M, train_mask, "Otraining"), _masked(src, M, test_mask, "Otest")


def _dense_variable(src, f, name):
    if name not in f:
        raise DataError(f"{src}: no variable {name!r} (expected Monti et al.'s M, Otraining "
                        f"and Otest; found {', '.join(f.keys()) or 'none'})")
    ds = f[name]
    if not hasattr(ds, "shape") or len(ds.shape) != 2 or ds.dtype.kind not in "biuf":
        raise DataError(f"{src}: variable {name!r} is not a dense numeric matrix")
    return np.asarray(ds, dtype=np.float64).T


def _masked(src, M, mask, name):
    R = mask * M
    users, items = np.nonzero(R)
    if users.size == 0:
        raise DataError(f"{src}: {name} selects no ratings")
    return Ratings(users.astype(np.int64), items.astype(np.int64), R[users, items], src,
                   shape=M.shape)


def read_any(path, sep=None):
    """(train, test) for a .mat file, (ratings, None) for a text file."""
    if str(path).lower().endswith(".mat"):
        return read_monti_mat(path)
    return read_ratings(path, sep), None


# ---------------------------------------------------------------- index

@dataclass(frozen=True, eq=False)
class Index:
    """Sorted unique user and item ids; a position is an id's rank.

    Integer ids sort numerically, which is docs/model.md §11's "renumbered by sorted id";
    str ids sort lexicographically.
    """

    users: np.ndarray
    items: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "users", as_ids(self.users))
        object.__setattr__(self, "items", as_ids(self.items))

    @classmethod
    def from_ratings(cls, *ratings):
        """The ids of all the given ratings (e.g. train and test, as the
        official loaders do). If every one has a ``shape`` (a .mat file), the
        index is all of 0..n-1 so that unrated users and items keep their
        place."""
        if not ratings:
            raise TypeError("Index.from_ratings needs at least one Ratings")
        if all(r.shape is not None for r in ratings):
            n_users, n_items = np.max([r.shape for r in ratings], axis=0)
            return cls(np.arange(n_users, dtype=np.int64), np.arange(n_items, dtype=np.int64))
        return cls(_union([r.users for r in ratings]), _union([r.items for r in ratings]))

    @property
    def n_users(self):
        return len(self.users)

    @property
    def n_items(self):
        return len(self.items)

    def lookup(self, ratings):
        """(item_pos, user_pos, known): positions are -1 where an id is unknown."""
        u, ku = _positions(self.users, ratings.users)
        i, ki = _positions(self.items, ratings.items)
        known = ku & ki
        return np.where(known, i, -1), np.where(known, u, -1), known

    def matrix(self, ratings):
        """(R, n_dropped): R is n_items x n_users CSR (rows are ITEMS, docs/model.md §1),
        float64, canonical; ratings of unknown users or items are dropped and
        counted. A repeated (item, user) keeps its last rating."""
        i, u, known = self.lookup(ratings)
        key = i[known] * self.n_users + u[known]
        key, first_rev = np.unique(key[::-1], return_index=True)
        values = ratings.values[known][::-1][first_rev].astype(np.float64)
        rows, cols = np.divmod(key, self.n_users)
        indptr = np.zeros(self.n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=self.n_items), out=indptr[1:])
        R = sp.csr_matrix((values, cols, indptr), shape=(self.n_items, self.n_users))
        return R, int(np.count_nonzero(~known))


def _is_int(a):
    return a.dtype.kind in "iu"


def _as_text(ids):
    """Ids as an object array of str (integer ids written plainly)."""
    return ids.astype(str).astype(object) if _is_int(ids) else as_ids(ids)


def _union(arrays):
    """Sorted unique ids; int ids become str if another array has str ids."""
    arrays = [as_ids(a) for a in arrays]
    if not all(_is_int(a) for a in arrays):
        arrays = [_as_text(a) for a in arrays]
    return np.unique(np.concatenate(arrays))


def _positions(keys, ids):
    """Ranks of ``ids`` in the sorted ``keys`` and whether each was found."""
    keys, ids = as_ids(keys), as_ids(ids)
    if _is_int(keys) != _is_int(ids):
        keys, ids = _as_text(keys), _as_text(ids)
        order = np.argsort(keys)
        pos, found = _positions(keys[order], ids)
        return order[pos], found
    if len(keys) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return pos.astype(np.int64), keys[pos] == ids


# ---------------------------------------------------------------- splits

def random_split(ratings, frac, seed):
    """(rest, held_out): a uniformly random ``frac`` of the ratings held out
    (``numpy.random.default_rng(seed)``); both sides keep file order."""
    n = len(ratings)
    n_out = int(round(frac * n)) if 0 < frac < 1 else 0
    if not 0 < n_out < n:
        raise DataError(f"{ratings.source}: cannot hold out frac={frac} of {n} ratings: "
                        "one side of the split would be empty (frac must be in (0, 1))")
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed).permutation(n)[:n_out]] = True
    return subset(ratings, ~held), subset(ratings, held)


def ml1m_split(ratings, frac=0.1, seed=1234):
    """(train, test) by the official ML-1M recipe (docs/model.md §11).

    The legacy code runs ``np.random.seed(seed); idx = np.arange(n);
    np.random.shuffle(idx)`` and takes the first ``int(frac * n)`` shuffled
    ratings as test. ``np.random.RandomState(seed).shuffle`` draws the same
    stream without touching numpy's global state. Both sides keep file order.
    """
    n = len(ratings)
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    n_test = int(frac * n)
    if not 0 < n_test < n:
        raise DataError(f"{ratings.source}: cannot hold out frac={frac} of {n} ratings: "
                        "one side of the split would be empty")
    return subset(ratings, np.sort(idx[n_test:])), subset(ratings, np.sort(idx[:n_test]))
