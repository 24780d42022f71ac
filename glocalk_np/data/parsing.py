"""How a value is written in a ratings file, and which values glocalk-np
reads: the one rule of numbers (DECIMAL, and PLAIN_INT for integer ids),
the ratings it trains on, ids read as written; DataError and DataWarning,
which every reader of input raises and warns with.

Every problem with the input raises :class:`DataError` whose one-line message
names the file, the line where there is one, and what is wrong, so that the
CLI can print it as it is.
"""
import re
import warnings

import numpy as np

from ..safeio import shorten


class DataError(ValueError):
    """Bad input data; the message is one self-contained line."""


class DataWarning(UserWarning):
    """Input that was read, but not exactly as written (e.g. duplicates)."""


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
# The largest rating glocalk-np trains on: squared float32 residuals of
# larger ones would leave float32's range; rescale such data.
MAX_RATING = 1e6
MIN_RATING = 1e-6
# The most characters of a rating: 50 times a float's longest repr, so that
# a crafted one (10 MB of digits) is refused at once for its length. Ids
# have no bound: one costs its length (a URL as an item id is one).
MAX_RATING_CHARS = 1000


def _is_number(s):
    """Whether float() reads ``s``: a header's fields must not be, so that
    'inf' or '4_5' in a first line is an error in the data, not a header."""
    try:
        float(s)
    except ValueError:
        return False
    return True


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
