"""Ratings as parallel arrays (Ratings), from files or from a table's
columns, and what is made of them: one of several, a subset, the last of
each repeated (user, item) pair."""
import warnings
from dataclasses import dataclass

import numpy as np

from .ids import _union_kind, as_ids
from .parsing import DataError, DataWarning, _rating_values, first_bad_rating, rating_problem
from ..safeio import shorten


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
