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
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT_VERSION = 1
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


def _new_file_mode(path):
    """The target's permissions if it exists, else what the umask allows, so
    that a replaced file does not end up with the temp file's 0600."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write(path, kind, arrays, meta):
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` atomically.

    The archive goes to a temp file in the target's directory, is fsynced and
    then renamed over the target, so a failure or Ctrl-C at any point leaves
    the previous file as it was (and no temp file behind).
    """
    clash = set(arrays) & set(_RESERVED)
    if clash:
        raise ValueError(f"reserved array name(s): {', '.join(sorted(clash))}")
    path = os.fspath(path)
    header = dict(kind=np.array(kind), format_version=np.int64(FORMAT_VERSION),
                  meta=np.array(json.dumps(meta, default=_json_default)))
    tmp = tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(path)),
                                      prefix=".tmp-", suffix=".npz", delete=False)
    try:
        with tmp:
            np.savez(tmp, **header, **arrays)   # a file object: no '.npz' appended
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, _new_file_mode(path))
        os.replace(tmp.name, path)
    except BaseException:
        try:
            os.unlink(tmp.name)
        except OSError:
            pass
        raise


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
    """Every array of the npz at ``path``, read now so that a bad CRC shows here."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":
                raise ModelFileError(f"{path}: not a glocalk-np file (not an npz archive)")
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror or e}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated file ({e})") from None
