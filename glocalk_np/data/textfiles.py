"""Ratings, (user, item) pairs and ids read from delimited text files,
and ratings written as one."""
import re
from itertools import repeat

import numpy as np

from .parsing import DECIMAL, DataError, _is_number, _parse_ids, _parse_ratings
from .ratings import Ratings, _drop_duplicates
from ..safeio import read_text, shorten


_SEP_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";",
                " ": None, "space": None, "whitespace": None}
_SEP_CANDIDATES = ("::", "\t", ",", ";", None)   # None = runs of whitespace
_SEP_NAMES = {"::": "'::'", "\t": "tab", ",": "comma", ";": "semicolon", None: "whitespace"}
_DETECT_LINES = 5
# (allowed field counts, what they are) of a ratings and a pairs file
_RATING_FIELDS = (range(3, 5), "3 or 4 (user, item, rating[, timestamp])")
_PAIR_FIELDS = (range(2, 1 << 31), "at least 2 (user, item[, ...])")
_WORD = re.compile(r"[A-Za-z_][\w .()/-]*")
# first fields that make a lone first line of a pairs file a header
_ID_COLUMN_NAMES = {"user", "users", "user_id", "userid", "uid", "item", "items", "item_id",
                    "itemid", "iid", "movie", "movie_id", "movieid", "id"}
# Peak bytes of memory per byte of a text file while it is parsed (lines,
# fields and ids as Python objects): 19x measured on ML-100K's u1.base, 27x
# on ML-1M's 13-byte lines; shorter lines cost more per byte.
TEXT_BYTES_PER_BYTE = 40


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
