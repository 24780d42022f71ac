"""Ids as the library holds them (int64, or an object array of their
text; as_ids) and the index of a matrix: sorted unique user and item ids,
a position being an id's rank (docs/model.md §1, §11)."""
import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .parsing import PLAIN_INT, DataError, _parse_ids
from ..safeio import shorten


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
