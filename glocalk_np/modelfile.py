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
import re
import zipfile
import zlib

import numpy as np

from .safeio import atomic_output, gib, open_input, parse_json, physical_memory, shorten

# 4: a model's pick model (picks/), which changes what it recommends.
# 3: a model's blend weight and seen pattern, which change what it predicts
# and recommends, so that an older reader refuses the file rather than
# ignoring them. 2: string ids as UTF-8 bytes and offsets (1: fixed-width
# unicode arrays). Every older version is still read.
FORMAT_VERSION = 4
MAX_ENTRIES = 4096
# Loading holds each array and, while it is checked, about one copy more.
LOAD_COPIES = 2
# Zip flag bits of an encrypted (0x1, 0x40) or patched (0x20) entry
_UNSUPPORTED_FLAGS = 0x61
# An entry's name: words joined by '/' (param/W0, index/users/utf8), never
# a path that climbs ('..') or starts at the root.
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*\.npy")
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
    previous file as it was, and no temp file behind). np.savez runs with
    the signals held: one that cut its zip archive's bookkeeping would leave
    an archive that cannot be closed (a ValueError in place of the signal,
    and a traceback when the archive is collected)."""
    clash = set(arrays) & set(_RESERVED)
    if clash:
        raise ValueError(f"reserved array name(s): {', '.join(sorted(clash))}")
    header = dict(kind=np.array(kind), format_version=np.int64(FORMAT_VERSION),
                  meta=np.array(json.dumps(meta, default=_json_default)))
    with atomic_output(path, hold=True) as f:
        np.savez(f, **header, **arrays)   # a file object: no '.npz' appended


class Contents:
    """A read file's arrays and meta; a missing entry raises ModelFileError.
    The entries read are remembered, so that :meth:`check_all_read` can
    refuse a file holding anything its reader did not expect."""

    def __init__(self, path, arrays, meta):
        self.path, self.arrays, self.meta = path, arrays, meta
        self._read = set()

    def error(self, problem):
        return ModelFileError(f"{self.path}: {problem}")

    def __getitem__(self, name):
        if name not in self.arrays:
            raise self.error(f"missing entry {shorten(repr(name))}")
        self._read.add(name)
        return self.arrays[name]

    def has(self, name):
        """Whether the entry ``name`` is there (without reading it)."""
        return name in self.arrays

    def check_all_read(self):
        """ModelFileError naming the first entry no reader asked for: a file
        glocalk-np wrote holds nothing else."""
        unread = sorted(set(self.arrays) - self._read - set(_RESERVED))
        if unread:
            raise self.error(f"unexpected entry {shorten(repr(unread[0]))} "
                             f"({len(unread)} in all): not a file glocalk-np wrote")

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
    meta = contents["meta"]
    if meta.ndim != 0 or meta.dtype.kind != "U":
        raise contents.error("unreadable metadata (not one text entry)")
    contents.meta = parse_json(str(meta), f"{path}: metadata", ModelFileError, constants=True)
    if not isinstance(contents.meta, dict):
        raise contents.error("unreadable metadata (not a JSON object)")
    return contents


def _read_arrays(path):
    """Every array of the npz at ``path``, read now so that a bad CRC shows
    here. The archive is checked first (_check_entries): what it declares
    must be what it holds and fit in memory, so that nothing is allocated
    on a header's word alone."""
    try:
        with open_input(path, ModelFileError) as f:
            if f.read(2) != b"PK":
                raise ModelFileError(f"{path}: not a glocalk-np file (not an npz archive)")
            _check_entry_count(path, f)
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                _check_entries(path, zf)
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
    except ModelFileError:
        raise
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror or e}") from None
    except MemoryError:
        raise ModelFileError(f"{path}: too large to load into this machine's memory") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, RuntimeError,
            NotImplementedError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated file ({shorten(e, 100)})") from None


def _check_entry_count(path, f):
    """ModelFileError when the archive's end record declares more than
    MAX_ENTRIES entries, read before zipfile builds an object per entry of
    the central directory (a crafted one declares millions). The end record
    is the last 22 bytes but a comment of up to 64 KiB; a ZIP64 archive
    (0xFFFF entries there) has the count in its own end record."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - (1 << 16) - 22))
    tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 22:
        return                        # not a zip: zipfile says so in its own words
    count = int.from_bytes(tail[end + 10:end + 12], "little")
    if count == 0xFFFF and end >= 20 and tail[end - 20:end - 16] == b"PK\x06\x07":
        offset = int.from_bytes(tail[end - 12:end - 4], "little")
        f.seek(offset)
        record = f.read(56)
        if record[:4] == b"PK\x06\x06" and len(record) == 56:
            count = int.from_bytes(record[32:40], "little")
    if count > MAX_ENTRIES:
        raise ModelFileError(f"{path}: {count} entries; a glocalk-np file has far fewer")


def _check_entries(path, zf):
    """ModelFileError for an archive that is not what np.savez writes: more
    than MAX_ENTRIES entries, names that are not words joined by '/', a name
    twice, a compressed entry (savez stores; a compressed one could inflate
    3 GiB from a few MB), an entry that is not a plain .npy array of the size
    its header declares, or arrays that would not fit in memory."""
    entries = zf.infolist()
    if len(entries) > MAX_ENTRIES:
        raise ModelFileError(f"{path}: {len(entries)} entries; a glocalk-np file has far fewer")
    names = [info.filename for info in entries]
    for info in entries:
        if not _ENTRY_NAME.fullmatch(info.filename):
            raise ModelFileError(f"{path}: unexpected entry {shorten(repr(info.filename))}")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ModelFileError(f"{path}: entry {shorten(repr(twice))} appears twice")
    total, memory = 0, physical_memory()
    for info in entries:
        name = info.filename[:-4]
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ModelFileError(f"{path}: entry {shorten(repr(name))} is compressed; "
                                 "glocalk-np stores its arrays as they are")
        if info.flag_bits & _UNSUPPORTED_FLAGS:
            raise ModelFileError(f"{path}: entry {shorten(repr(name))} is encrypted or patched; "
                                 "glocalk-np writes plain entries")
        with zf.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            header_size = member.tell()
        if dtype.hasobject or dtype.kind not in _DTYPE_KINDS or dtype.fields is not None \
                or dtype.itemsize == 0:
            raise ModelFileError(f"{path}: entry {shorten(repr(name))} has dtype {dtype}, which "
                                 "glocalk-np never writes")
        nbytes = dtype.itemsize * math.prod(shape)
        if info.file_size != header_size + nbytes:
            raise ModelFileError(f"{path}: entry {shorten(repr(name))} declares shape "
                                 f"{shorten(shape)} of {dtype} ({nbytes} bytes) but holds "
                                 f"{info.file_size - header_size}: corrupt or crafted file")
        total += nbytes
    if memory and total * LOAD_COPIES > memory:
        raise ModelFileError(f"{path}: {gib(total)} of arrays need about "
                             f"{gib(total * LOAD_COPIES)} of memory to load, more than this "
                             f"machine's {gib(memory)}")
