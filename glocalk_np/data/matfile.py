"""Monti et al.'s MATLAB files (docs/model.md §11), and the reader of
either kind of ratings file."""
from itertools import islice

import numpy as np

from .parsing import MAX_RATING, DataError, first_bad_rating, rating_problem
from .ratings import Ratings
from ..safeio import gib, open_input, physical_memory, shorten
from .textfiles import read_ratings


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
