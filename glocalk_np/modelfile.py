"""The container of model files and checkpoints: an npz archive, written
atomically, read without pickle, and checked before anything trusts it.

Layout: ``kind`` (MODEL or CHECKPOINT), ``format_version``, ``meta`` (one
JSON document in a 0-d unicode array) and named arrays. What the arrays and
the JSON hold is up to the caller (see estimator.py); this module only
guarantees that a file is either wholly written or not at all, and that
every problem on reading raises one :class:`ModelFileError` line that names
the file.
"""
import json
import math
import os
import zipfile
import zlib

import numpy as np

from .safeio import atomic_output

# 2: string ids as UTF-8 bytes and offsets (1: fixed-width unicode arrays,
# still read).
FORMAT_VERSION = 2
# Declared array bytes a file may hold in all: about ten times an ML-10M
# model, so that a crafted header cannot make the reader allocate terabytes.
MAX_BYTES = 16 << 30
MAX_ENTRIES = 4096
# bool, integers, floats and unicode: everything glocalk-np writes
_DTYPE_KINDS = "biufU"
MODEL = "glocalk-np-model"
CHECKPOINT = "glocalk-np-checkpoint"
KINDS = {MODEL: "model", CHECKPOINT: "checkpoint"}
_RESERVED = ("kind", "format_version", "meta")


class ModelFileError(ValueError):
    """A model file or checkpoint that cannot be used; one line naming the file."""


def _json_default(value):
    """NumPy scalars (e.g. an np.int64 hyper-parameter) as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write(path, kind, arrays, meta):
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` atomically
    (safeio.atomic_output: a failure or Ctrl-C at any point leaves the
    previous file as it was, and no temp file behind)."""
    clash = set(arrays) & set(_RESERVED)
    if clash:
        raise ValueError(f"reserved array name(s): {', '.join(sorted(clash))}")
    header = dict(kind=np.array(kind), format_version=np.int64(FORMAT_VERSION),
                  meta=np.array(json.dumps(meta, default=_json_default)))
    with atomic_output(path) as f:
        np.savez(f, **header, **arrays)   # a file object: no '.npz' appended


class Contents:
    """A read file's arrays and meta; a missing entry raises ModelFileError."""

    def __init__(self, path, arrays, meta):
        self.path, self.arrays, self.meta = path, arrays, meta

    def error(self, problem):
        return ModelFileError(f"{self.path}: {problem}")

    def __getitem__(self, name):
        if name not in self.arrays:
            raise self.error(f"missing entry {name!r}")
        return self.arrays[name]

    def field(self, name):
        if name not in self.meta:
            raise self.error(f"missing metadata field {name!r}")
        return self.meta[name]


def read(path, kind):
    """The :class:`Contents` of the ``kind`` file at ``path``.

    Raises ModelFileError for a missing or unreadable file, a truncated or
    corrupt archive (bad CRC), a file that is not ours (no ``kind``), the
    other kind (a checkpoint given as a model), a newer format version or
    unreadable metadata.
    """
    path = os.fspath(path)
    arrays = _read_arrays(path)
    if "kind" not in arrays:
        raise ModelFileError(f"{path}: not a glocalk-np file "
                             "(an npz archive without a 'kind' entry)")
    found = str(arrays["kind"])
    if found in KINDS and found != kind:
        raise ModelFileError(f"{path}: is a glocalk-np {KINDS[found]}, not a {KINDS[kind]}")
    if found != kind:
        raise ModelFileError(f"{path}: not a glocalk-np file (kind {found[:40]!r})")
    contents = Contents(path, arrays, {})
    version = contents["format_version"]
    if version.ndim != 0 or version.dtype.kind not in "iu" or version < 1:
        raise contents.error(f"invalid format version {str(version)[:40]}")
    if version > FORMAT_VERSION:
        raise contents.error(f"format version {int(version)} is newer than this glocalk-np "
                             f"reads ({FORMAT_VERSION}); upgrade glocalk-np")
    try:
        contents.meta = json.loads(str(contents["meta"]))
    except json.JSONDecodeError as e:
        raise contents.error(f"unreadable metadata ({e})") from None
    if not isinstance(contents.meta, dict):
        raise contents.error("unreadable metadata (not a JSON object)")
    return contents


def _read_arrays(path):
    """Every array of the npz at ``path``, read now so that a bad CRC shows
    here. Each entry's header is checked first: a plain dtype, and a declared
    size that the entry really holds and that stays under MAX_BYTES in all,
    so that nothing is allocated on a header's word alone."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":
                raise ModelFileError(f"{path}: not a glocalk-np file (not an npz archive)")
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                _check_headers(path, zf)
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror or e}") from None
    except MemoryError:
        raise ModelFileError(f"{path}: too large to load into this machine's memory") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated file ({e})") from None


def _check_headers(path, zf):
    """ModelFileError for an entry that is not a plain .npy array of the
    size its header declares, or for a total above MAX_BYTES."""
    entries = zf.infolist()
    if len(entries) > MAX_ENTRIES:
        raise ModelFileError(f"{path}: {len(entries)} entries; a glocalk-np file has far fewer")
    total = 0
    for info in entries:
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if name is None:
            raise ModelFileError(f"{path}: unexpected entry {info.filename[:60]!r}")
        with zf.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            header_size = member.tell()
        if dtype.hasobject or dtype.kind not in _DTYPE_KINDS or dtype.fields is not None:
            raise ModelFileError(f"{path}: entry {name!r} has dtype {dtype}, which glocalk-np "
                                 "never writes")
        nbytes = dtype.itemsize * math.prod(shape)
        if info.file_size != header_size + nbytes:
            raise ModelFileError(f"{path}: entry {name!r} declares shape {shape} of {dtype} "
                                 f"({nbytes} bytes) but holds {info.file_size - header_size}: "
                                 "corrupt or crafted file")
        total += nbytes
        if total > MAX_BYTES:
            raise ModelFileError(f"{path}: arrays of more than {MAX_BYTES >> 30} GiB in all, "
                                 "beyond any real model: corrupt or crafted file")
