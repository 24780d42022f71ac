"""Rating files in, id index and splits out (docs/model.md §1, §11).

Every problem with the input raises :class:`DataError` whose one-line message
names the file, the line where there is one, and what is wrong, so that the
CLI can print it as it is.
"""
import re
import warnings
from dataclasses import dataclass
from itertools import islice, repeat

import numpy as np
import scipy.sparse as sp

from .safeio import gib, open_input, physical_memory, read_text, shorten


class DataError(ValueError):
    """Bad input data; the message is one self-contained line."""


class DataWarning(UserWarning):
    """Input that was read, but not exactly as written (e.g. duplicates)."""


@dataclass(eq=False)
class Ratings:
    """Ratings as parallel arrays, in file order.

    ``users`` and ``items`` hold ids: int64 when every id of the column is an
    integer written plainly, else an object array of str (see as_ids).
    ``source`` is the path, for messages. ``shape`` is
    ``(n_users, n_items)`` when the ids are 0-based positions in a matrix of
    that size (a .mat file), so that an index can cover users and items
    without any rating, as the official code does; None for text files.
    ``lines`` holds each rating's 1-based line in ``source`` for a text
    file's ratings, ``rows`` its 0-based row in the table or arrays given for
    others' (None: its position here); ``where`` names them in messages, so
    that a rating is named where it was written after duplicates were
    dropped or a split was made.
    """

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    source: str
    shape: tuple | None = None
    lines: np.ndarray | None = None
    rows: np.ndarray | None = None

    def __post_init__(self):
        """Checked as a file's ratings are (DataError naming the source and
        the row): ratings by hand or from a table are no less hostile. Ids
        follow the rules of ids in a file (as_ids), ratings given as text
        the rule of ratings in a file (one strict decimal form)."""
        self.users = as_ids(self.users, self.source, "user")
        self.items = as_ids(self.items, self.source, "item")
        self.values = _rating_values(self.source, self.values)
        n = self.values.size
        if self.users.shape != (n,) or self.items.shape != (n,):
            raise DataError(f"{self.source}: {self.users.size} users and {self.items.size} "
                            f"items for {n} ratings")
        bad = first_bad_rating(self.values)
        if bad is not None:
            v = self.values[bad]
            raise DataError(f"{self.where(bad)}: rating {v:g} {rating_problem(v)}")

    def __len__(self):
        return len(self.values)

    def where(self, i):
        """Where rating ``i`` was given, for a message: 'FILE:LINE' for a
        text file's, else 'SOURCE: row N'."""
        if self.lines is not None:
            return f"{self.source}:{self.lines[i]}"
        return f"{self.source}: row {i if self.rows is None else self.rows[i]}"

    @classmethod
    def checked(cls, users, items, values, source, shape=None, lines=None, rows=None):
        """Ratings from arrays that a reader here has already checked by the
        same rules (held ids, float64 ratings in range): not checked again."""
        out = object.__new__(cls)
        out.__dict__.update(users=users, items=items, values=values, source=source,
                            shape=shape, lines=lines, rows=rows)
        return out

    @classmethod
    def from_columns(cls, table, user="user", item="item", rating="rating", source=None):
        """Ratings from the named columns of any column mapping: a pandas or
        polars DataFrame, a dict of arrays (no dependency on either). Where a
        default name is absent, the one column named as MovieLens and others
        name it (userId, movieId, item_id, ...; any case) is used. Ids keep
        their kind (as_ids: integer columns as int64, whole-number floats
        too, others as text); every rating is checked as a file's is, and
        duplicate (user, item) pairs keep their last rating with a
        DataWarning, as a file's do."""
        source = source or f"a {type(table).__name__} of ratings"
        return _drop_duplicates(cls(*table_columns(
            table, {"user": user, "item": item, "rating": rating}, source), source))


def table_columns(table, roles, source):
    """The columns of ``table`` (a DataFrame or a mapping) for each role of
    ``roles`` ({role: column name}): a default name (the role's own) that is
    absent falls back to the one column other tools name it by (userId,
    movieId, ...); DataError naming ``source`` for a missing one."""
    names = _column_names(table)
    columns = []
    for role, name in roles.items():
        if name == role and name not in names:
            name = _alias(names, role, source)
        try:
            columns.append(table[name])
        except (KeyError, IndexError, TypeError, ValueError):
            raise DataError(f"{source}: no {role} column {shorten(name)!r}"
                            + (f" (columns: {shorten(', '.join(map(str, names)), 200)})"
                               if names else "")) from None
    return columns


def _column_names(table):
    """The column names of a DataFrame or the keys of a mapping, as a list."""
    columns = getattr(table, "columns", None)
    if columns is None and hasattr(table, "keys"):
        columns = table.keys()
    try:
        return list(columns) if columns is not None else []
    except TypeError:
        return []


def _alias(names, role, source):
    """The one column of ``names`` that other tools use for ``role``, else
    ``role`` itself (whose absence the caller then reports)."""
    found = [n for n in names if isinstance(n, str) and n.lower() in COLUMN_ALIASES[role]]
    if len(found) > 1:
        raise DataError(f"{source}: several {role} columns ({', '.join(found)}); name one")
    return found[0] if found else role


# Column names that mean user, item and rating in MovieLens, LensKit,
# Surprise and cornac files (compared in lower case).
COLUMN_ALIASES = {"user": ("user", "users", "userid", "user_id", "uid"),
                  "item": ("item", "items", "itemid", "item_id", "iid", "movie", "movieid",
                           "movie_id"),
                  "rating": ("rating", "ratings", "score", "stars")}


def as_ids(ids, source="ids", what="user", warn=True):
    """Ids as the library holds them, by the rules of ids read from a file:
    int64 when every id of the column is an integer (an int, a whole float,
    or text written as a plain integer), else an object array of the ids'
    text (surrounding blanks stripped; memory = the text, where a
    fixed-width unicode array costs its longest id times their number).
    DataError (naming ``source`` and the row) for a missing id (None, NaN),
    an empty one, one that is neither an integer nor text (1.5, True, a
    date), and a column that mixes numbers with text (1 and '1' would
    otherwise be merged, or not, by accident). ``warn``: the DataWarning on a
    number written otherwise than as a plain integer (off for ids to look
    up, whose file has warned already)."""
    raw = ids
    ids = np.asarray(ids)
    if ids.dtype.kind in "US" and not isinstance(raw, np.ndarray):
        ids = np.asarray(raw, dtype=object)     # a list of 1 and 'a' would read as text
    ids = ids.ravel()
    kind = ids.dtype.kind
    if kind in "iu":
        if kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
            raise DataError(f"{source}: {what} id {ids.max()} is beyond 64-bit integers")
        return ids.astype(np.int64, copy=False)
    if kind == "f":
        return _whole_numbers(source, ids, what)
    if kind in "US":
        return _text_ids(source, _decoded(source, ids.tolist(), what), what, warn)
    if kind != "O":
        raise DataError(f"{source}: {what} ids of dtype {ids.dtype} are not ids "
                        "(integers or text)")
    values = ids.tolist()
    missing = next((i for i, v in enumerate(values) if _missing(v)), None)
    if missing is not None:
        raise DataError(f"{source}: row {missing}: missing {what} id")
    texts = [isinstance(v, (str, bytes)) for v in values]
    if all(texts):
        return _text_ids(source, _decoded(source, values, what), what, warn)
    if any(texts):
        i, j = texts.index(True), texts.index(False)
        raise DataError(f"{source}: {what} ids mix text and numbers (row {i}: "
                        f"{shorten(values[i])!r}, row {j}: {shorten(values[j])!r}); give "
                        "them as one kind")
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                   np.floating)):
            raise DataError(f"{source}: row {i}: {what} id {shorten(repr(v))} is not an id "
                            "(an integer or text)")
    try:
        return as_ids(np.array(values, dtype=np.float64 if any(
            isinstance(v, (float, np.floating)) for v in values) else np.int64), source, what,
            warn)
    except OverflowError:
        raise DataError(f"{source}: a {what} id is beyond 64-bit integers") from None


def _missing(v):
    """Whether ``v`` stands for a missing value: None, NaN, pandas' NA or NaT."""
    return v is None or type(v).__name__ in ("NAType", "NaTType") or (
        isinstance(v, (float, np.floating)) and v != v)


def _whole_numbers(source, ids, what):
    """A float id column (a DataFrame's integer column with a gap turns to
    float) as int64 if every id is a whole number; DataError otherwise."""
    whole = np.isfinite(ids) & (ids == np.round(ids)) & (np.abs(ids) < 2.0 ** 63)
    if not whole.all():
        i = np.flatnonzero(~whole)[0]
        if np.isnan(ids[i]):
            raise DataError(f"{source}: row {i}: missing {what} id (NaN)")
        raise DataError(f"{source}: row {i}: {what} id {ids[i]:g} is not an id "
                        "(a whole number or text)")
    return ids.astype(np.int64)


def _decoded(source, values, what):
    """Text ids as str: bytes decoded as UTF-8."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{source}: row {i}: {what} id is not UTF-8 text") from None
        out.append(v)
    return out


_LINE_OR_NUL = re.compile("[\n\r\0]")


def bad_text_id(ids):
    """The first id of an object array of str that no ratings file could
    hold as read (empty, blanks around it, a line break or a NUL), or None."""
    return next((t for t in ids.tolist()
                 if not t or t.strip() != t or _LINE_OR_NUL.search(t)), None)


def _text_ids(source, col, what, warn=True):
    """Ids given as text, read as a file's column is (_parse_ids), rows
    numbered from 0."""
    bad = next((i for i, t in enumerate(col) if _LINE_OR_NUL.search(t)), None)
    if bad is not None:
        raise DataError(f"{source}: row {bad}: {what} id {shorten(repr(col[bad]))} holds a line "
                        "break or a NUL character, which no ratings file can")
    return _parse_ids(col, lambda i: f"{source}: row {i}", what, warn)


def concatenate(*ratings):
    """One Ratings of several, in order (their ids int64 if all are, else
    text); the first one's source, and a shape where all have one. Where
    they all come from that source (parts of one file, e.g. a split), each
    rating keeps its line or row there."""
    users, items = (_union_kind([getattr(r, side) for r in ratings])
                    for side in ("users", "items"))
    shapes = [r.shape for r in ratings]
    shape = tuple(np.max(shapes, axis=0).tolist()) if all(x is not None for x in shapes) else None
    lines = rows = None
    if all(r.source == ratings[0].source for r in ratings):
        if all(r.lines is not None for r in ratings):
            lines = np.concatenate([r.lines for r in ratings])
        elif all(r.lines is None for r in ratings):
            rows = np.concatenate([_rows(r) for r in ratings])
    return Ratings.checked(np.concatenate(users), np.concatenate(items),
                           np.concatenate([r.values for r in ratings]), ratings[0].source, shape,
                           lines, rows)


def subset(ratings, mask):
    """The ratings selected by a boolean mask or an index array, in that
    order (already checked: not checked again), each with its line or row."""
    lines = None if ratings.lines is None else ratings.lines[mask]
    rows = None if lines is not None else _rows(ratings)[mask]
    return Ratings.checked(ratings.users[mask], ratings.items[mask], ratings.values[mask],
                           ratings.source, ratings.shape, lines, rows)


def _rows(ratings):
    """Each rating's row in the table or arrays given (see Ratings)."""
    return np.arange(len(ratings)) if ratings.rows is None else ratings.rows


# ---------------------------------------------------------------- text files

_SEP_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";",
                " ": None, "space": None, "whitespace": None}
_SEP_CANDIDATES = ("::", "\t", ",", ";", None)   # None = runs of whitespace
_SEP_NAMES = {"::": "'::'", "\t": "tab", ",": "comma", ";": "semicolon", None: "whitespace"}
_DETECT_LINES = 5
# (allowed field counts, what they are) of a ratings and a pairs file
_RATING_FIELDS = (range(3, 5), "3 or 4 (user, item, rating[, timestamp])")
_PAIR_FIELDS = (range(2, 1 << 31), "at least 2 (user, item[, ...])")
_WORD = re.compile(r"[A-Za-z_][\w .()/-]*")
# An integer id as str(int) writes it: ASCII digits, no leading zeros, no '-0'.
PLAIN_INT = re.compile(r"0|-?[1-9][0-9]*")
# The one form of a number written as text, for ratings and command-line
# options alike: ASCII decimal with an optional sign, fraction and exponent.
# Python's float() also takes '4_5' (45), other scripts' digits, 'inf' and
# 'nan'; none of them is a rating anyone wrote on purpose. No two repeats can
# take the same digits (a '.' or 'e' stands between them), so a failing
# fullmatch gives each digit back once: linear time. '[0-9]+\.?[0-9]*' split
# a digit run between two repeats in every way: quadratic, 85 s on 60 KB.
DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_NOT_DECIMAL = re.compile(r"[^0-9eE.+\- \t\n\r\f\v]")   # what no decimal (with blanks) holds
ASCII_BLANKS = " \t\n\r\f\v"       # the blanks around a number (str.strip takes more)
# first fields that make a lone first line of a pairs file a header
_ID_COLUMN_NAMES = {"user", "users", "user_id", "userid", "uid", "item", "items", "item_id",
                    "itemid", "iid", "movie", "movie_id", "movieid", "id"}
# The largest rating glocalk-np trains on: squared float32 residuals of
# larger ones would leave float32's range; rescale such data.
MAX_RATING = 1e6
MIN_RATING = 1e-6
# Peak bytes of memory per byte of a text file while it is parsed (lines,
# fields and ids as Python objects): 19x measured on ML-100K's u1.base, 27x
# on ML-1M's 13-byte lines; shorter lines cost more per byte.
TEXT_BYTES_PER_BYTE = 40
# The most characters of a rating: 50 times a float's longest repr, so that
# a crafted one (10 MB of digits) is refused at once for its length. Ids
# have no bound: one costs its length (a URL as an item id is one).
MAX_RATING_CHARS = 1000


def read_ratings(path, sep=None):
    """Read ``user, item, rating[, timestamp]`` lines into :class:`Ratings`.

    ``sep`` is a literal separator (``","``, ``"\\t"``, ``"::"``, ``";"``;
    also ``"tab"``, ``"comma"``, ``"semicolon"``), ``"whitespace"`` (or
    ``" "``) for runs of blanks, or None to detect it from the first lines.
    A first line whose fields are all words and whose rating is not a number
    is a header. Blank lines are skipped; the timestamp is ignored. Ratings
    are decimal numbers (DECIMAL), any finite ones (rating_problem: 0 and
    negatives too; the network trains on them mapped onto 1-5, scale.py).
    Duplicate (user, item) pairs keep their last
    rating, with a DataWarning. The file must be a regular file of UTF-8
    text (safeio.read_text: no FIFO, device or binary file is read).

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
    where = _lines_of(src, linenos)
    values = _parse_ratings(tokens[2::k], where)
    users = _parse_ids(tokens[0::k], where, "user")
    items = _parse_ids(tokens[1::k], where, "item")
    return _drop_duplicates(Ratings.checked(users, items, values, src, lines=linenos))


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
    where = _lines_of(src, linenos)
    return (_parse_ids(tokens[0::k], where, "user"),
            _parse_ids(tokens[1::k], where, "item"))


def read_ids(path, sep=None, what="user"):
    """The ids in the first field of each line of ``path``, in file order,
    read as a ratings file's ids are (blanks around them stripped, quotes
    kept, int64 when all are plain integers). ``sep`` as for read_ratings;
    detected, it is the first of '::', tab, comma and semicolon found on
    each of the first lines, else runs of blanks where those lines read as
    a ratings file whose fields blanks separate, else none: an id per line,
    blanks inside it kept ('John Smith'), as in a ratings file that
    separates its fields otherwise. A lone first field that names an id
    column (user, user_id, id, ...) is a header."""
    src = str(path)
    lines, linenos = _content_lines(src, f"{what} ids")
    sep = _ids_sep(lines[:_DETECT_LINES]) if sep is None else _parse_sep(src, sep)
    first = _split_line(lines[0], sep)[0].strip().strip("\"'").lower()
    if first in _ID_COLUMN_NAMES:
        lines, linenos = lines[1:], linenos[1:]
        if not lines:
            raise DataError(f"{src}: no {what} ids (only a header line)")
    fields = [_split_line(line, sep)[0] for line in lines]
    return _parse_ids(fields, _lines_of(src, linenos), what)


def _ids_sep(sample):
    """The separator of a file of ids detected from its first lines (see
    read_ids); '\\n' (found in no line) for none. Blanks separate only the
    lines of a ratings file (3 or 4 fields, the rating a number, a header
    allowed), for a name of two words or three is no user and item."""
    sep = next((c for c in _SEP_CANDIDATES[:-1] if all(c in line for line in sample)), None)
    if sep is not None:
        return sep
    rows = [line.split() for line in sample]
    if _is_header(rows[0]):
        rows = rows[1:]
    ratings = all(len(f) in _RATING_FIELDS[0] and DECIMAL.fullmatch(f[2]) for f in rows)
    return None if ratings else "\n"


def _lines_of(src, linenos):
    """Where entry i of a file's data lines is, for messages: 'FILE:LINE'."""
    return lambda i: f"{src}:{linenos[i]}"


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
    raw = read_text(src, DataError, TEXT_BYTES_PER_BYTE)
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
        raise DataError(f"{src}: invalid separator {shorten(repr(sep))}")
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
    """Whether float() reads ``s``: a header's fields must not be, so that
    'inf' or '4_5' in a first line is an error in the data, not a header."""
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
    what = f"separated by {_SEP_NAMES.get(sep, shorten(repr(sep)))}"
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


def parse_decimal(text):
    """The float a DECIMAL ``text`` (surrounding blanks allowed) writes;
    ValueError for anything else."""
    if not isinstance(text, str) or not DECIMAL.fullmatch(text.strip(ASCII_BLANKS)):
        raise ValueError(f"{shorten(repr(text))} is not a decimal number")
    return float(text)


def _parse_ratings(col, where):
    """Ratings written as text (DECIMAL), as float64, each one glocalk-np
    trains on (rating_problem); ``where(i)`` locates entry i for messages."""
    long = np.flatnonzero(np.fromiter(map(len, col), np.int64, len(col)) > MAX_RATING_CHARS)
    if long.size:
        raise DataError(f"{where(long[0])}: rating of {len(col[long[0]]):,} characters, more "
                        f"than the {MAX_RATING_CHARS:,} of any number")
    try:
        values = np.fromiter(map(float, col), np.float64, len(col))
        if _NOT_DECIMAL.search(" ".join(col)):      # what float() takes and DECIMAL does not
            raise ValueError
    except (ValueError, TypeError):
        i = next((i for i, s in enumerate(col) if not isinstance(s, str)
                  or not DECIMAL.fullmatch(s.strip(ASCII_BLANKS))), 0)
        tok = col[i].strip(ASCII_BLANKS) if isinstance(col[i], str) else col[i]
        raise DataError(f"{where(i)}: " + ("empty rating" if tok == "" else
                                           f"rating {shorten(repr(tok))} {_not_decimal(tok)}")
                        ) from None
    i = first_bad_rating(values)
    if i is not None:
        tok = shorten(repr(col[i].strip(ASCII_BLANKS)))
        # a decimal is finite: float() gives ±inf only beyond float64's range
        v = values[i] if np.isfinite(values[i]) else np.copysign(np.finfo(float).max, values[i])
        raise DataError(f"{where(i)}: rating {tok} {rating_problem(v)}")
    return values


def first_bad_rating(values):
    """The position of the first rating glocalk-np cannot train on (see
    rating_problem), or None."""
    size = np.abs(values)
    bad = ~np.isfinite(values) | (size > MAX_RATING) | ((size < MIN_RATING) & (values != 0))
    return int(np.argmax(bad)) if bad.any() else None


def rating_problem(v):
    """Why the rating ``v`` cannot be trained on, for a message: ratings are
    any finite numbers, 0 and negatives included (the network trains on them
    mapped onto 1-5, scale.py), of magnitude at most MAX_RATING (float32's
    squares overflow beyond) and, but for 0, at least MIN_RATING (smaller
    ones vanish in float32)."""
    if not np.isfinite(v):
        return "is not a finite number"
    if abs(v) > MAX_RATING:
        return (f"is beyond ±{MAX_RATING:g}, the largest glocalk-np trains on in float32: "
                "rescale the ratings")
    return (f"is within ±{MIN_RATING:g} of 0 but not 0, finer than glocalk-np trains on in "
            "float32: rescale the ratings")


def _not_decimal(tok):
    """What is wrong with a rating that is not DECIMAL."""
    if _is_number(tok):
        if not np.isfinite(float(tok)):
            return "is not a finite number"
        return "is not written as a decimal number (ASCII digits, '.', an exponent)"
    return "is not a number"


def _rating_values(source, values):
    """Ratings given to Ratings(): numbers as float64; text by the rule of
    ratings in a file (DECIMAL), so that '4_5' is an error, not 45."""
    raw = np.asarray(values)
    if raw.dtype.kind == "b":
        raise DataError(f"{source}: the ratings are booleans, not numbers")
    if raw.dtype.kind in "iuf":
        return raw.astype(np.float64).ravel()
    if raw.dtype.kind not in "USO":
        raise DataError(f"{source}: ratings of dtype {raw.dtype} are not numbers")
    col = raw.ravel().tolist()
    numbers = [isinstance(v, (int, float, np.integer, np.floating))
               and not isinstance(v, (bool, np.bool_)) for v in col]
    if all(numbers):
        return np.array(col, dtype=np.float64)
    i = numbers.index(False)
    if not isinstance(col[i], str) or not all(isinstance(v, str) for v in col):
        raise DataError(f"{source}: row {i}: rating {shorten(repr(col[i]))} is not a number")
    return _parse_ratings(col, lambda j: f"{source}: row {j}")


def _parse_ids(col, where, what, warn=True):
    """int64 ids when every id of the column is an integer written plainly
    (PLAIN_INT: '-'? and ASCII digits without leading zeros, the form
    str(int) gives); otherwise every id stays the text it is (surrounding
    blanks stripped), so that no two ids written differently are merged
    ('01' and '1', '-0' and '0', '1_0' and '10', Arabic-Indic digits and
    ASCII ones). A DataWarning names the first id that is a number in
    another form next to plain integers. ``where(i)`` locates entry i."""
    col = list(map(str.strip, col))
    try:
        ints = np.fromiter(map(int, col), np.int64, len(col))
    except (ValueError, OverflowError):
        ints = None
    if ints is not None and all(map(str.__eq__, map(str, ints.tolist()), col)):
        return ints
    empty = next((i for i, t in enumerate(col) if not t), None)
    if empty is not None:
        raise DataError(f"{where(empty)}: empty {what} id")
    if warn and all(map(PLAIN_INT.fullmatch, col)):      # plain, but beyond 64 bits
        # 20 digits are beyond 64 bits, and int() may refuse a long one (its limit)
        big = next(i for i, t in enumerate(col)
                   if len(t.lstrip("-")) > 19 or abs(int(t)) > np.iinfo(np.int64).max)
        warnings.warn(f"{where(big)}: {what} id {shorten(col[big])} is beyond 64-bit "
                      f"integers, so all {what} ids are read as text", DataWarning,
                      stacklevel=4)
    elif warn and any(map(PLAIN_INT.fullmatch, col)):
        odd = next((i for i, t in enumerate(col)
                    if not PLAIN_INT.fullmatch(t) and _is_number(t.strip("\"'"))), None)
        if odd is not None:
            odd_id = shorten(repr(col[odd]))
            warnings.warn(f"{where(odd)}: {what} id {odd_id} is a number not written as a "
                          f"plain integer, so all {what} ids are read as text and {odd_id} is "
                          f"another {what} than any plain integer id", DataWarning, stacklevel=4)
    return np.array(col, dtype=object)


def _drop_duplicates(r):
    """Keep the last rating of each (user, item) pair, warning if any repeat:
    the one rule for a file's ratings and a table's."""
    n = len(r)
    if n < 2:
        return r
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


def ratings_csv(ratings):
    """``ratings`` as the text of a ratings file that read_ratings reads back
    to the same ratings: a header, then user, item, rating per line, the
    first of comma, tab, semicolon and '::' that no id contains as the
    separator, and each rating as repr writes a float (exact)."""
    texts = [str(x) for x in ratings.users.tolist() + ratings.items.tolist()]
    sep = next((c for c in (",", "\t", ";", "::") if not any(c in t for t in texts)), None)
    if sep is None:
        raise DataError(f"{ratings.source}: its ids hold every separator a ratings file can "
                        "use; they cannot be written as one")
    lines = [sep.join(("user", "item", "rating"))]
    lines += [sep.join((str(u), str(i), repr(float(v)))) for u, i, v in
              zip(ratings.users.tolist(), ratings.items.tolist(), ratings.values.tolist())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- .mat files

_MONTI_VARS = ("M", "Otraining", "Otest")
# Bytes of one dense block of a .mat variable read at a time, and the most
# one HDF5 chunk may decompress to (MATLAB writes chunks of a few columns).
_MAT_BLOCK_BYTES = 32 << 20
_MAT_CHUNK_BYTES = 16 << 20
# The most entries a .mat variable may declare: Monti's format stores every
# matrix dense (Douban's and Flixster's are 3000 x 3000), so reading one
# takes time in its declared size, whatever it holds. Larger data: text files.
MAX_MAT_ENTRIES = 1 << 28
# Memory a rating costs from here to a trained model (ids, values, the
# index, the matrices and the engine's arrays), for refusing a file whose
# ratings would not fit before they are gathered.
BYTES_PER_RATING = 200


def read_monti_mat(path):
    """(train, test) from Monti et al.'s MATLAB v7.3 file (docs/model.md §11).

    As in the official loader, each dense variable is read with h5py and
    transposed (HDF5 holds MATLAB's column-major arrays transposed); then
    rows of M are users and columns items, train = Otraining * M and
    test = Otest * M. Ids are 0-based int64 positions, in row-major order,
    and ``shape`` is M's (n_users, n_items).

    Nothing dense of M's size is held: the three variables are read in
    blocks of _MAT_BLOCK_BYTES along their chunks and only the selected
    ratings are kept, so memory follows the ratings, not the declared
    shape; a declared shape over MAX_MAT_ENTRIES, chunks over
    _MAT_CHUNK_BYTES and more ratings than memory holds are refused before
    they are read. M must be finite and in [0, MAX_RATING] (a 0 in M is no
    rating: the masks select M's non-zero entries, as the official loader
    does), the masks 0 or 1.
    """
    src = str(path)
    try:
        import h5py
    except ImportError:
        raise DataError(f"{src}: reading MATLAB v7.3 files needs h5py: "
                        "pip install glocalk-np[mat]") from None
    with open_input(src, DataError) as handle:
        try:
            f = h5py.File(handle, "r")
        except OSError:
            raise DataError(f"{src}: not a MATLAB v7.3 (HDF5) file; save it with "
                            "MATLAB's -v7.3 option") from None
        with f:
            M, train_mask, test_mask = (_dense_variable(src, f, name) for name in _MONTI_VARS)
            if not (M.shape == train_mask.shape == test_mask.shape):
                raise DataError(f"{src}: M, Otraining and Otest differ in shape "
                                f"({M.shape[::-1]}, {train_mask.shape[::-1]}, "
                                f"{test_mask.shape[::-1]})")
            n_items, n_users = M.shape       # HDF5 holds M transposed
            memory = physical_memory()
            if n_items * n_users > MAX_MAT_ENTRIES:
                raise DataError(f"{src}: M declares {n_users} x {n_items} ratings "
                                f"({gib(8 * n_items * n_users)} dense), beyond the "
                                f"{MAX_MAT_ENTRIES:,} entries read from a .mat file; give "
                                "such data as a ratings text file")
            parts = {"Otraining": [], "Otest": []}
            kept = 0
            for block in _blocks(M):
                values = _block(src, M, block, "M")
                bad = ~np.isfinite(values) | (values < 0) | (values > MAX_RATING)
                if bad.any():
                    i, u = _origin(block, np.argwhere(bad)[0])
                    raise DataError(f"{src}: M[{u}, {i}] = {values[bad][0]}: ratings must be "
                                    f"finite, > 0 and at most {MAX_RATING:g}")
                for name, mask in (("Otraining", train_mask), ("Otest", test_mask)):
                    selected = _block(src, mask, block, name)
                    if not np.isin(selected, (0, 1)).all():
                        raise DataError(f"{src}: {name} holds values other than 0 and 1")
                    rows, cols = np.nonzero(selected * values)
                    small = first_bad_rating(values[rows, cols])
                    if small is not None:
                        i, u = _origin(block, (rows[small], cols[small]))
                        v = values[rows[small], cols[small]]
                        raise DataError(f"{src}: M[{u}, {i}] = {v}: rating {rating_problem(v)}")
                    i, u = _origin(block, (rows, cols))
                    parts[name].append((u, i, values[rows, cols]))
                    kept += rows.size
                if memory and kept * BYTES_PER_RATING > memory:
                    raise DataError(f"{src}: more than {kept:,} ratings, beyond what this "
                                    f"machine's {gib(memory)} of memory can train on")
    return tuple(_masked(src, parts[name], name, (n_users, n_items)) for name in parts)


def _dense_variable(src, f, name):
    """The HDF5 dataset of MATLAB variable ``name``, checked to be a 2-D
    numeric matrix whose chunks are of a size that can be read."""
    if name not in f:
        found = ", ".join(islice(f.keys(), 10))
        raise DataError(f"{src}: no variable {name!r} (expected Monti et al.'s M, Otraining "
                        f"and Otest; found {shorten(found, 200) or 'none'})")
    link = f.get(name, getlink=True)
    if type(link).__name__ != "HardLink":      # a link to another file (a FIFO, a device)
        raise DataError(f"{src}: variable {name!r} is a link to another file")
    ds = f[name]
    if not hasattr(ds, "shape") or len(ds.shape) != 2 or ds.dtype.kind not in "biuf":
        raise DataError(f"{src}: variable {name!r} is not a dense numeric matrix")
    if ds.external or ds.is_virtual:          # its data lives in other files
        raise DataError(f"{src}: variable {name!r} keeps its data in other files")
    if ds.chunks is not None and int(np.prod(ds.chunks)) * ds.dtype.itemsize > _MAT_CHUNK_BYTES:
        raise DataError(f"{src}: variable {name!r} is stored in chunks of {ds.chunks}, larger "
                        "than any MATLAB file's: corrupt or crafted file")
    return ds


def _blocks(ds):
    """Slices of the HDF5 dataset ``ds`` of about _MAT_BLOCK_BYTES each,
    along the axis its chunks are thinnest in (so that no chunk is
    decompressed for more than one block): (axis, start, stop)."""
    shape = ds.shape
    chunks = ds.chunks or (1, shape[1])          # contiguous: whole rows
    axis = 0 if chunks[0] * shape[1] <= chunks[1] * shape[0] else 1
    other = shape[1 - axis]
    step = max(chunks[axis], (_MAT_BLOCK_BYTES // max(8 * other, 1)) // chunks[axis]
               * chunks[axis])
    return [(axis, a, min(a + step, shape[axis])) for a in range(0, shape[axis], step)]


def _block(src, ds, block, name):
    """One block of ``ds`` as float64, HDF5's orientation."""
    axis, a, b = block
    try:
        part = ds[a:b, :] if axis == 0 else ds[:, a:b]
    except (OSError, ValueError) as e:
        raise DataError(f"{src}: variable {name!r} cannot be read ({shorten(e, 100)})") from None
    return np.asarray(part, dtype=np.float64)


def _origin(block, index):
    """(item, user) positions in M of (row, col) positions in a block."""
    axis, a, _ = block
    rows, cols = index
    return (rows + a, cols) if axis == 0 else (rows, cols + a)


def _masked(src, parts, name, shape):
    """The Ratings gathered block by block, in M's row-major order (users,
    then items), as np.nonzero of the whole product gives them."""
    users, items, values = (np.concatenate([p[k] for p in parts]) for k in range(3))
    if users.size == 0:
        raise DataError(f"{src}: {name} selects no ratings")
    order = np.lexsort((items, users))
    return Ratings.checked(users[order].astype(np.int64), items[order].astype(np.int64),
                           values[order], src, shape)


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
        # ids held as they are: an index's are already ids (its text ids are
        # sorted as text, which turning '2', '10' into integers would undo)
        object.__setattr__(self, "users", _held(self.users))
        object.__setattr__(self, "items", _held(self.items))

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


def _held(ids):
    """Ids as held (int64, or an object array of str) from arrays that
    already follow as_ids' rules: no check again."""
    ids = np.asarray(ids)
    if _is_int(ids):
        return ids.astype(np.int64, copy=False)
    return ids if ids.dtype == object else ids.astype(str).astype(object)


def _as_text(ids):
    """Ids as an object array of str (integer ids written plainly)."""
    return ids.astype(str).astype(object) if _is_int(ids) else _held(ids)


def _union_kind(arrays):
    """The id arrays in one kind: int64 if all are, else text."""
    arrays = [_held(a) for a in arrays]
    if not all(_is_int(a) for a in arrays):
        arrays = [_as_text(a) for a in arrays]
    return arrays


def _union(arrays):
    """Sorted unique ids; int ids become str if another array has str ids."""
    return np.unique(np.concatenate(_union_kind(arrays)))


def _positions(keys, ids):
    """Ranks of ``ids`` in the sorted ``keys`` and whether each was found
    (both as_ids' ids)."""
    keys, ids = _held(keys), _held(ids)
    if _is_int(keys) != _is_int(ids):
        keys, ids = _as_text(keys), _as_text(ids)
        order = np.argsort(keys)
        pos, found = _positions(keys[order], ids)
        return order[pos], found
    if len(keys) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return pos.astype(np.int64), keys[pos] == ids


def ids_in_kind(known, ratings, what):
    """(ids, found): the ``what`` ids ('user' or 'item') of ``ratings``
    written as the sorted ids ``known`` (an Index's) hold them, known ones
    as stored and new ones as text where ``known`` are text, and whether
    each is known. DataError naming the line of the first new id that is
    not an integer where ``known`` are integers: it cannot join them."""
    ids = getattr(ratings, f"{what}s")
    pos, found = _positions(known, ids)
    out = known[pos].copy()
    new = np.flatnonzero(~found)
    if _is_int(known) and not _is_int(ids) and new.size:
        # the column is text for one id not written as a plain integer
        bad = next((j for j in new.tolist() if not PLAIN_INT.fullmatch(ids[j])), new[0])
        raise DataError(f"{ratings.where(bad)}: new {what} id {shorten(repr(ids[bad]))} is not "
                        f"of the kind of the model's {what} ids (integers)")
    out[new] = ids[new] if _is_int(out) else _as_text(ids[new])
    return out, found


# ---------------------------------------------------------------- splits

def random_split(ratings, frac, seed, name="a random part"):
    """(rest, held_out): a uniformly random ``frac`` of the ratings held out
    (``numpy.random.default_rng(seed)``); both sides keep file order.
    ``name`` names the held-out set in the DataError for a side left empty
    (e.g. 'a validation set')."""
    n = len(ratings)
    n_out = int(round(frac * n)) if 0 < frac < 1 else 0
    _check_split(ratings, frac, n_out, name)
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
    _check_split(ratings, frac, n_test, "a test set")
    return subset(ratings, np.sort(idx[n_test:])), subset(ratings, np.sort(idx[:n_test]))


def _check_split(ratings, frac, n_out, name):
    """DataError unless holding out ``n_out`` of the ratings (``frac`` of
    them) as the set ``name`` leaves both sides some, said in the terms of
    the data (the file, its count, the set): the fraction may be a default
    the user never gave."""
    n = len(ratings)
    them = "1 rating" if n == 1 else f"{n} ratings"
    if not 0 < frac < 1:
        raise DataError(f"{ratings.source}: cannot hold out {name} from {them}: the "
                        f"fraction {frac} is not in (0, 1)")
    if not 0 < n_out < n:
        raise DataError(f"{ratings.source}: too few ratings to hold out {name}: {frac:g} of "
                        f"{them} rounds to " + ("none" if n_out == 0 else
                                                f"all {n}, leaving none to train on"))
