"""What a model file and a checkpoint hold, and the check of every entry.

The compiled kernels index their arrays without bounds checks, so a file is
trusted only after every array has the dtype, shape and values that the
config and the training matrix imply and every metadata field has its type:
the layer chain (params.shapes), ids sorted and unique, CSR index arrays in
range and monotone, finite parameters and ratings. modelfile.py has already
checked the container (sizes declared in the npz headers, no pickle). Each
problem raises one ModelFileError line naming the file and the entry.

Arrays (prefixes are the entry names' start):
    param/<name>, member<k>/<name>   parameters (params.py's names)
    index/users, index/items         int64 ids; string ids (format 2) as
        index/<kind>/utf8 (uint8, the ids' UTF-8 bytes back to back) and
        index/<kind>/offsets (int64, n + 1), which costs what the ids' text
        does; format 1 stored them as fixed-width unicode, still read
    train/indptr, indices, data, shape   the training matrix, CSR
    seen/indptr, indices             the pattern of the other ratings given to
                                     fit (validation, test), left out by
                                     recommend
    picks/indptr, indices, data      the pick model's weights (picks.py), CSR
                                     items x items float32 (format 4); its
                                     method, penalty and mix in the metadata
    best/<selection>/<name>          a checkpoint's best-epoch parameters
"""
from dataclasses import fields

import numpy as np
import scipy.sparse as sp

from .data import bad_text_id, first_bad_rating, rating_problem
from .safeio import shorten
from .params import LAYER_KEYS, STAGES, check_shapes, shapes
from .config import SELECTIONS, Config
from .picks import METHODS, PickModel
from .records import Best, EpochRecord, Member


# ---------------------------------------------------------------- metadata

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_list(v):
    return isinstance(v, list) and all(isinstance(k, str) for k in v)


def field(contents, name, ok, expected):
    """The metadata field ``name`` if ``ok(value)``, else ModelFileError
    saying that ``expected`` was expected."""
    value = contents.field(name)
    if not ok(value):
        raise contents.error(f"metadata field {name!r} is not {expected}")
    return value


def read_config(contents):
    """The stored Config; ModelFileError if it is not a valid one (e.g. edited).
    Files from before the rating scale map (no 'scale' in their config) were
    trained on the ratings as given: scale 'none'."""
    stored = field(contents, "config", lambda v: isinstance(v, dict), "an object")
    try:
        return Config(**{"scale": "none", **stored})
    except (TypeError, ValueError) as e:
        raise contents.error(f"invalid config ({e})") from None


_RECORD_TYPES = {"stage": lambda v: v in STAGES, "epoch": lambda v: _is_int(v) and v >= 1,
                 "train_rmse": _is_number, "seconds": _is_number,
                 "evaluations": lambda v: _is_int(v) and v >= 0,
                 "metrics": lambda v: isinstance(v, dict) and all(
                     isinstance(s, dict) and all(x is None or _is_number(x) for x in s.values())
                     for s in v.values())}
assert set(_RECORD_TYPES) == {f.name for f in fields(EpochRecord)}


def _is_record(r):
    return (isinstance(r, dict) and set(r) == set(_RECORD_TYPES)
            and all(ok(r[k]) for k, ok in _RECORD_TYPES.items()))


def read_history(contents, config, name="history"):
    """The list of EpochRecords in the metadata field ``name``: pre-training
    epochs 1, 2, ... then fine-tuning epochs 1, 2, ..., no more than the
    config has."""
    history = [EpochRecord(**r) for r in field(
        contents, name, lambda v: isinstance(v, list) and all(map(_is_record, v)),
        "a list of epoch records")]
    stages = [r.stage for r in history]
    pre = stages.count("pretrain")
    expected = ([("pretrain", e) for e in range(1, pre + 1)]
                + [("finetune", e) for e in range(1, len(history) - pre + 1)])
    if [(r.stage, r.epoch) for r in history] != expected \
            or pre > config.epochs_pretrain or len(history) - pre > config.epochs_finetune:
        raise contents.error(f"metadata field {name!r} does not follow the config's schedule")
    return history


def is_best_epoch(config):
    """A check of a fine-tuning epoch number under ``config``."""
    return lambda v: _is_int(v) and 1 <= v <= config.epochs_finetune


# ---------------------------------------------------------------- parameters

def pack_params(prefix, params):
    """Parameter arrays under prefixed names, e.g. 'param/W0'."""
    return {prefix + k: np.asarray(v) for k, v in params.items()}


def unpack_params(contents, prefix, keys, config, shape, stage):
    """The parameter dict stored under ``prefix`` in the order of ``keys``
    (the optimiser's vector order), checked against the network that
    ``config`` builds on a ``shape`` (items x users) matrix, with C exactly
    when ``stage`` is 'finetune'; every value finite."""
    where = prefix.rstrip("/")
    arrays = len(LAYER_KEYS) * (config.n_layers + 1) + (stage == "finetune")
    if arrays > len(contents.arrays):     # before a list of n_layers entries is built
        raise contents.error(f"{where}: the config's {config.n_layers} hidden layers need "
                             f"{arrays} arrays; the file holds {len(contents.arrays)} entries")
    expected = shapes(*shape, config.n_hidden, config.n_layers, config.kernel_dim,
                      config.gk_size if stage == "finetune" else None)
    if not _is_str_list(keys) or keys != list(expected):
        raise contents.error(f"{where}: arrays listed as {str(keys)[:80]}, the config's "
                             f"network has {', '.join(expected)}")
    params = {k: contents[prefix + k] for k in keys}
    try:
        check_shapes(params, expected, where)
    except ValueError as e:
        raise contents.error(str(e)) from None
    for k, a in params.items():
        if not np.isfinite(a).all():
            raise contents.error(f"{where}: {k} holds NaN or infinite values")
    return params


def read_members(contents, config, shape):
    """The Members of a model file: the first (meta ``params``, ``stage``,
    ``best_epoch``; arrays param/) and the others of a seed ensemble (meta
    ``members``; arrays member<k>/), without history or metrics."""
    first = {"seed": config.seed, "params": contents.field("params"),
             "stage": field(contents, "stage", lambda v: v in STAGES, "a stage name"),
             "best_epoch": contents.field("best_epoch")}
    others = field(contents, "members", lambda v: isinstance(v, list) and all(
        isinstance(m, dict) and set(m) == set(first) and m["stage"] in STAGES
        and _is_int(m["seed"]) for m in v), "a list of ensemble members")
    members = []
    for k, m in enumerate([first] + others):
        if not (is_best_epoch(config)(m["best_epoch"]) if m["stage"] == "finetune"
                else m["best_epoch"] is None):
            raise contents.error(f"metadata: best epoch {str(m['best_epoch'])[:20]} of a "
                                 f"{m['stage']} model with {config.epochs_finetune} "
                                 "fine-tuning epochs")
        params = unpack_params(contents, f"member{k}/" if k else "param/", m["params"],
                               config, shape, m["stage"])
        members.append(Member(m["seed"], params, m["stage"], m["best_epoch"]))
    return members


# ---------------------------------------------------------------- ids

def pack_ids(name, ids):
    """int64 ids as they are; string ids as UTF-8 bytes and offsets (never
    an object array, which would need pickle)."""
    if ids.dtype.kind in "iu":
        return {name: ids.astype(np.int64)}
    encoded = [s.encode("utf-8") for s in ids.tolist()]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return {f"{name}/utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            f"{name}/offsets": offsets}


def unpack_ids(contents, name):
    """The ids stored by pack_ids (or format 1's unicode array): int64 or an
    object array of str, one-dimensional, sorted and unique (an Index's)."""
    if f"{name}/utf8" in contents.arrays:
        blob, offsets = contents[f"{name}/utf8"], contents[f"{name}/offsets"]
        if blob.dtype != np.uint8 or blob.ndim != 1 or not _is_offsets(offsets, blob.size):
            raise contents.error(f"{name}: malformed string ids")
        text = blob.tobytes()
        try:
            ids = np.array([text[a:b].decode("utf-8")
                            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())],
                           dtype=object)
        except UnicodeDecodeError:
            raise contents.error(f"{name}: string ids are not UTF-8") from None
    else:
        ids = contents[name]
        if ids.dtype.kind == "U":
            ids = ids.astype(object)
        elif ids.dtype != np.int64:
            raise contents.error(f"{name}: ids of dtype {ids.dtype}, expected int64 or text")
    if ids.ndim != 1 or ids.size == 0:
        raise contents.error(f"{name}: expected a non-empty list of ids, got shape {ids.shape}")
    if not (ids[1:] > ids[:-1]).all():
        raise contents.error(f"{name}: ids are not sorted and unique")
    bad = bad_text_id(ids) if ids.dtype == object else None
    if bad is not None:
        raise contents.error(f"{name}: id {shorten(repr(bad))} is empty, has blanks around it "
                             "or holds a line break or NUL: no ratings file has such an id")
    return ids


def _is_offsets(offsets, end):
    """Whether ``offsets`` is a 1-D int64 array rising from 0 to ``end``."""
    return (offsets.dtype == np.int64 and offsets.ndim == 1 and offsets.size >= 1
            and offsets[0] == 0 and offsets[-1] == end and bool((np.diff(offsets) >= 0).all()))


# ---------------------------------------------------------------- training matrix

def pack_matrix(prefix, R):
    return {f"{prefix}indptr": R.indptr, f"{prefix}indices": R.indices,
            f"{prefix}data": R.data, f"{prefix}shape": np.array(R.shape, dtype=np.int64)}


def unpack_matrix(contents, prefix, shape):
    """The CSR matrix stored by pack_matrix, checked to be ``shape``
    (n_items, n_users) with every column index in range, each row's indices
    strictly increasing, and ratings glocalk-np trains on (data.rating_problem)."""
    stored, data = contents[prefix + "shape"], contents[prefix + "data"]
    m, n = shape
    if stored.dtype.kind not in "iu" or stored.shape != (2,) or tuple(stored.tolist()) != shape:
        raise contents.error(f"{prefix}shape: {stored.tolist()!s:.60}, the index has "
                             f"{m} items x {n} users")
    if data.ndim != 1 or data.dtype.kind != "f" or data.dtype.itemsize < 4:
        raise contents.error(f"{prefix}data: {data.dtype} of shape {data.shape}, expected "
                             "1-D float")
    indptr, indices = _pattern(contents, prefix, shape)
    if indices.size != data.size or indices.size == 0:
        raise contents.error(f"{prefix}: {indices.size} indices and {data.size} ratings")
    bad = first_bad_rating(data)
    if bad is not None:
        raise contents.error(f"{prefix}data: rating {data[bad]:g} "
                             f"{rating_problem(data[bad]).split(':')[0]}")
    return sp.csr_matrix((data.astype(np.float64), indices, indptr), shape=shape)


def pack_pattern(prefix, P):
    """A sparsity pattern (CSR) without its values."""
    return {f"{prefix}indptr": P.indptr.astype(np.int64),
            f"{prefix}indices": P.indices.astype(np.int64)}


def unpack_pattern(contents, prefix, shape):
    """The bool CSR pattern stored by pack_pattern, checked as unpack_matrix
    checks a matrix's; an empty one where the file has none (files written
    before it was kept)."""
    if not contents.has(prefix + "indptr"):
        return sp.csr_matrix(shape, dtype=bool)
    indptr, indices = _pattern(contents, prefix, shape)
    return sp.csr_matrix((np.ones(indices.size, dtype=bool), indices, indptr), shape=shape)


def pack_picks(prefix, picks):
    """(arrays, metadata) of a PickModel."""
    W = picks.weights
    return ({f"{prefix}indptr": W.indptr.astype(np.int64),
             f"{prefix}indices": W.indices.astype(np.int32),   # 8 bytes a weight in all
             f"{prefix}data": W.data.astype(np.float32)},
            {"method": picks.method, "penalty": picks.penalty, "mix": picks.mix})


def unpack_picks(contents, prefix, n_items):
    """The PickModel stored by pack_picks over ``n_items`` items, checked
    (metadata field 'picks'); None where the file has none (format 3 and
    older)."""
    if "picks" not in contents.meta:
        return None
    meta = field(contents, "picks", lambda v: (
        isinstance(v, dict) and set(v) == {"method", "penalty", "mix"}
        and v["method"] in METHODS and _is_number(v["mix"]) and 0 <= v["mix"] <= 1e6
        and (v["penalty"] is None if v["method"] == "cosine"
             else _is_number(v["penalty"]) and 0 < v["penalty"] <= 1e12)),
        "an object of a method (ease or cosine), its penalty and a mix in [0, 1e6]")
    indptr, indices = _pattern(contents, prefix, (n_items, n_items), "an item")
    data = contents[prefix + "data"]
    if data.dtype != np.float32 or data.shape != indices.shape:
        raise contents.error(f"{prefix}data: {data.dtype} of shape {data.shape}, expected "
                             f"float32 of shape {indices.shape}")
    if not np.isfinite(data).all():
        raise contents.error(f"{prefix}data: a weight is not finite")
    W = sp.csr_matrix((data, indices, indptr), shape=(n_items, n_items))
    return PickModel(W, meta["method"], meta["penalty"], float(meta["mix"]))


def _pattern(contents, prefix, shape, columns="a user"):
    """(indptr, indices) as int64 of the CSR arrays under ``prefix``, checked:
    m + 1 offsets rising from 0, every column index in 0..n-1, each row's
    strictly increasing (``columns``: what a column is, for the message)."""
    indptr, indices = contents[prefix + "indptr"], contents[prefix + "indices"]
    m, n = shape
    if indices.ndim != 1 or indices.dtype.kind != "i" or indices.dtype.itemsize < 4:
        raise contents.error(f"{prefix}indices: {indices.dtype} of shape {indices.shape}, "
                             "expected 1-D int32/int64")
    if indptr.dtype.kind != "i" or indptr.shape != (m + 1,) \
            or not _is_offsets(indptr.astype(np.int64), indices.size):
        raise contents.error(f"{prefix}indptr: not {m + 1} offsets rising from 0 to "
                             f"{indices.size}")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise contents.error(f"{prefix}indices: {columns} position outside 0..{n - 1}")
    rising = np.diff(indices) > 0
    rising[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < indices.size)] - 1] = True
    if not rising.all():
        raise contents.error(f"{prefix}indices: a row's column positions are not "
                             "strictly increasing")
    return indptr.astype(np.int64), indices.astype(np.int64)


# ---------------------------------------------------------------- checkpoints

def read_best(contents, config, shape):
    """A checkpoint's ``best``: {selection: Best}, the params of 'last'
    None (they are the current ones)."""
    def ok(v):
        return isinstance(v, dict) and set(v) <= set(SELECTIONS) and all(
            isinstance(e, dict) and set(e) == ({"epoch", "rmse"} | ({"params"} if s != "last"
                                                                    else set()))
            and is_best_epoch(config)(e["epoch"]) and (e["rmse"] is None or _is_number(e["rmse"]))
            for s, e in v.items())
    best = {}
    for sel, e in field(contents, "best", ok, "a map of selections to best epochs").items():
        params = (None if sel == "last" else
                  unpack_params(contents, f"best/{sel}/", e["params"], config, shape, "finetune"))
        best[sel] = Best(e["epoch"], e["rmse"], params)
    return best


def is_fingerprint(v):
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def is_weight(v):
    """None or a number in [0, 1] (a blend weight)."""
    return v is None or (_is_number(v) and 0 <= v <= 1)
