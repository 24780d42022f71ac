"""Writing outputs without losing anything a user had.

Every file glocalk-np writes goes through :func:`atomic_output`: a temporary
file created exclusively (O_EXCL, an unpredictable name, mode 0600) in the
target's folder, flushed and fsynced, then renamed over the target. A failure
at any point, Ctrl-C and SIGTERM included (the CLI turns SIGTERM into an
exception), removes the temporary file and leaves the target as it was.
A target that exists and is not a regular file (a folder, a device node, a
FIFO) is refused, and :func:`check_distinct` refuses an output that is one of
a command's inputs or another of its outputs. Every problem is one
:class:`OutputError` line that names the target, never the temporary file.
"""
import contextlib
import os
import stat
import tempfile


class OutputError(ValueError):
    """An output that cannot or must not be written; one line naming it."""


def check_target(path):
    """OutputError unless ``path`` can be written: a non-empty name in an
    existing, writable folder, and not an existing non-regular file."""
    path = os.fspath(path)
    if not path:
        raise OutputError("an output path is empty")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{path}: exists and is not a regular file; refusing to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: folder {folder} is not writable")


def check_distinct(inputs, outputs):
    """OutputError if an output is one of the inputs or two outputs are the
    same file; paths are compared resolved (symlinks) and, for existing files,
    by device and inode (hard links). None and '-' (standard output) are
    ignored."""
    seen = {}
    for role, path in [("input", p) for p in inputs] + [("output", p) for p in outputs]:
        if path is None or path == "-":
            continue
        path = os.fspath(path)
        keys = [os.path.realpath(path)]
        with contextlib.suppress(OSError):
            st = os.stat(path)
            keys.append((st.st_dev, st.st_ino))
        for key in keys:
            if key in seen and "output" in (role, seen[key][0]):
                first_role, first = seen[key]
                if role == "output" and first_role == "output":
                    raise OutputError(f"{path}: named for two outputs of one command")
                out, inp = (first, path) if first_role == "output" else (path, first)
                raise OutputError(f"{out}: this output would replace the input {inp}")
            seen.setdefault(key, (role, path))


def _new_file_mode(path):
    """The target's permissions if it exists, else what the umask allows, so
    that a replaced file does not end up with the temp file's 0600."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path, text=False):
    """A file object (binary, or UTF-8 text when ``text``) on a fresh
    temporary file beside ``path``, renamed over ``path`` when the block
    succeeds and removed when it fails. OSErrors name ``path``."""
    path = os.fspath(path)
    check_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                   suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    try:
        with (open(fd, "w", newline="", encoding="utf-8") if text else open(fd, "wb")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        check_target(path)      # still not a special file, just before the rename
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, path) from None
        raise
