"""Files in and out: nothing a user names can hang a command, exhaust its
memory, or cost the user a file they had.

Inputs (:func:`open_input`, :func:`read_text`): only regular files are read.
They are opened non-blocking, so that a FIFO does not wait for a writer
forever, and the check is made on the opened descriptor (no race between a
check and the open); a file's size is weighed against this machine's memory
before it is read, and text is read in chunks that stop at the first NUL
byte (a binary or sparse file), so /dev/zero, a named pipe or a 2 GB hole
ends in one line, not in a hang or an out-of-memory kill. Every problem is
one line of the caller's error class that names the file.

Outputs (:func:`atomic_output`, :func:`atomic_outputs`): each file is
written to a temporary file created exclusively (O_EXCL, an unpredictable
name, mode 0600) in its target's folder, flushed and fsynced, then renamed
over the target; a failure at any point, Ctrl-C and SIGTERM included,
removes the temporary files and leaves every target as it was. A command's
outputs are all checked (:func:`check_target`) before any is written, so a
bad companion output never leaves the others half replaced. What a signal
must not cut in two runs with SIGINT and SIGTERM held (:func:`held_signals`):
a temporary file's creation and registration, the renames that put a
command's outputs in place (all or none), and the removal of the temporary
files, so that a second Ctrl-C leaves none behind. A target that
is a symbolic link is written through it (the link stays a link), a target
that exists and is not a regular file (a folder, a device, a FIFO, a
terminal) is refused, and :func:`check_distinct` refuses an output that is
one of a command's inputs or another of its outputs. Every problem is one
:class:`OutputError` line that names the target, never the temporary file.
"""
import contextlib
import errno
import json
import os
import signal
import stat
import sys
import tempfile
import threading


class OutputError(ValueError):
    """An output that cannot or must not be written; one line naming it."""


def physical_memory():
    """Bytes of RAM, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def gib(n_bytes):
    """'12.3 GiB' (or MiB below 1 GiB), for messages about memory."""
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def shorten(text, limit=60):
    """``text`` cut to ``limit`` characters with '...' where cut, so that a
    message quoting a user's field or id stays one short line."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- inputs

_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))
_CHUNK = 1 << 24


def _kind(mode):
    return next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")


def open_input(path, error):
    """A binary file object on the regular file ``path``; ``error`` (an
    exception class) with one line naming it otherwise."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is {_kind(mode)}, not a regular file")
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# The path read_text takes for standard input (a command's '-'): the name
# its messages give it
STDIN = "<stdin>"


def _standard_input(error):
    """A binary file object on a copy of standard input's descriptor (closing
    it leaves standard input open); ``error`` if there is none."""
    try:
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    except (AttributeError, ValueError, OSError):    # None, closed, or no descriptor
        raise error(f"{STDIN}: standard input is closed") from None


def check_input(path, error):
    """``error`` unless ``path`` is a regular file that can be opened."""
    open_input(path, error).close()


def read_text(path, error, bytes_per_byte, what="text"):
    """The bytes of the regular file ``path`` (or, for STDIN, of standard
    input, a pipe included), to be parsed as text whose parsing needs about
    ``bytes_per_byte`` bytes of memory per byte read: refused before reading
    when that exceeds this machine's memory (a pipe: once what it gave
    does), and read in chunks that stop at a NUL byte (no text file holds
    one)."""
    path = os.fspath(path)
    memory = physical_memory()
    limit = memory // bytes_per_byte if memory else None
    with (_standard_input(error) if path == STDIN else open_input(path, error)) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise error(f"{path}: {gib(size)} of {what} would need about "
                        f"{gib(size * bytes_per_byte)} of memory to read, more than this "
                        f"machine's {gib(memory)}")
        chunks, lines = [], 0
        try:
            while chunk := f.read(_CHUNK):
                nul = chunk.find(b"\0")
                if nul >= 0:
                    line = lines + chunk.count(b"\n", 0, nul) + 1
                    raise error(f"{path}:{line}: a NUL byte; expected {what}, not a binary file")
                lines += chunk.count(b"\n")
                chunks.append(chunk)
                if limit is not None and len(chunks) * _CHUNK > limit:   # a file that grows
                    raise error(f"{path}: larger than the {gib(limit)} of {what} this machine's "
                                "memory can parse")
        except OSError as e:
            raise error(f"{path}: cannot read: {e.strerror or e}") from None
    return b"".join(chunks)


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text, source, error, constants=False):
    """The JSON document ``text``; ``error`` naming ``source`` for anything
    that is not JSON, including nesting too deep for Python's parser and
    integers of thousands of digits. NaN and Infinity, which JSON does not
    have, only with ``constants`` (Python's json writes them)."""
    try:
        return json.loads(text, **({} if constants else {"parse_constant": _reject_constant}))
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply") from None
    except ValueError as e:
        raise error(f"{source}: not valid JSON ({shorten(e, 100)})") from None


# ---------------------------------------------------------------- outputs

def _name_max(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_target(path):
    """The path a file named ``path`` is written to: ``path`` itself or, for
    a symbolic link, the file it points to. OutputError unless it can be
    written: a file name (not a folder's, not too long) in an existing
    folder where a file can be created, and not an existing non-regular file."""
    path = os.fspath(path)
    if not path:
        raise OutputError("an output path is empty")
    name = os.path.basename(path)
    if not name or name in (".", "..") or (os.altsep and path.endswith(os.altsep)):
        raise OutputError(f"{shorten(path, 200)}: names a folder, not a file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{shorten(path, 200)}: cannot write: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{shorten(path, 200)}: exists and is {_kind(st.st_mode)}; refusing "
                          "to replace it")
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    if st is not None:
        try:
            same = os.stat(target)
        except OSError:
            same = None
        if same is None or (same.st_dev, same.st_ino) != (st.st_dev, st.st_ino):
            raise OutputError(f"{shorten(path, 200)}: a link to a file that cannot be named "
                              "(deleted or on a pseudo file system)")
    folder, name = os.path.split(target)
    if not os.path.isdir(folder):
        raise OutputError(f"{shorten(path, 200)}: folder {shorten(folder, 200)} does not exist")
    if len(os.fsencode(name)) > _name_max(folder):
        raise OutputError(f"{shorten(path, 200)}: file name too long ({len(os.fsencode(name))} "
                          f"bytes; at most {_name_max(folder)})")
    try:      # can a file be created there? (read-only file systems, /proc, permissions)
        with held_signals():
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".glocalk-np-probe.")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{shorten(path, 200)}: cannot write in {shorten(folder, 200)}: "
                          f"{e.strerror}") from None
    return target


def check_folder(path):
    """OutputError unless ``path`` is a folder where outputs can go, or names
    none yet and can be made (its nearest existing ancestor a folder that
    can be written): not a file, nor a symbolic link to nothing, which
    os.makedirs would only answer with 'File exists'."""
    path = os.fspath(path)
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    which = "" if existing == os.path.abspath(path) else f"{shorten(existing, 200)} is "
    if os.path.islink(existing) and not os.path.exists(existing):
        raise OutputError(f"{shorten(path, 200)}: {which}a symbolic link to "
                          f"{shorten(os.readlink(existing), 200)}, which does not exist")
    if not os.path.isdir(existing):
        raise OutputError(f"{shorten(path, 200)}: {which}not a folder")
    if which and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{shorten(path, 200)}: cannot be made: {shorten(existing, 200)} is "
                          "not writable")


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


# The signals a command ends by (console/process.py), held by held_signals
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held_signals():
    """SIGINT and SIGTERM held back while the block runs: a handler that
    notes them stands in for theirs, and on the way out the first one noted
    goes to the handler it replaced (Python's raises KeyboardInterrupt, the
    command's its own exceptions; SIG_DFL ends the process). Yields the list
    of the signals noted so far. Blocks nest. Only the main thread sets
    handlers, and only it runs them: elsewhere the block just runs."""
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def note(signum, frame):
        caught.append(signum)

    previous = {}
    try:
        for signum in _SIGNALS:
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                previous[signum] = signal.signal(signum, note)
        yield caught
    finally:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is note:     # else a handler inside chose another
                signal.signal(signum, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


class _DroppedOnceSignalled:
    """A file object whose writes are dropped once a signal was held
    (``caught``): its output is going to be removed, so that the writer
    may as well run to its end at once."""

    def __init__(self, f, caught):
        self._f, self._caught = f, caught

    def write(self, data):
        return len(data) if self._caught else self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


@contextlib.contextmanager
def atomic_outputs(paths, text=False, remove=(), hold=False):
    """File objects (binary, or UTF-8 text when ``text``) on fresh temporary
    files, one beside each of ``paths``' targets (all checked first), renamed
    over them when the block succeeds and removed when it fails. ``remove``:
    files (checked as outputs are) that go when the outputs are renamed into
    place, as one step: an output of a command that this run does not have.
    ``hold``: the block runs with SIGINT and SIGTERM held (held_signals),
    for a writer whose own state a signal must not cut (np.savez's zip
    archive then cannot be closed, and says so with a traceback when it is
    collected); once one has come, further writes are dropped so that the
    block ends soon, and the signal acts when it has. OSErrors name the
    path, not the temporary file."""
    paths = [os.fspath(p) for p in paths]
    remove = [os.fspath(p) for p in remove]
    targets = [check_target(p) for p in paths]
    for path in remove:
        check_target(path)
    temps, files = [], []
    try:
        with held_signals():         # a temporary file is registered as soon as it exists
            for path, target in zip(paths, targets):
                folder, name = os.path.split(target)
                try:
                    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name[:40]}.",
                                               suffix=".tmp")
                except OSError as e:
                    raise OSError(e.errno, e.strerror, path) from None
                temps.append(tmp)
                files.append(open(fd, "w", newline="", encoding="utf-8") if text
                             else open(fd, "wb"))
        if hold:
            with held_signals() as caught:
                yield [_DroppedOnceSignalled(f, caught) for f in files]
        else:
            yield files
        # a signal stops this before the first rename, or acts after the last
        with held_signals() as caught:
            for f in files:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            for path, target, tmp in zip(paths, targets, temps):
                os.chmod(tmp, _new_file_mode(target))
                if check_target(path) != target:      # replaced by something else meanwhile
                    raise OutputError(f"{path}: changed while it was being written")
            if not caught:
                for target, tmp in zip(targets, temps):
                    os.replace(tmp, target)
                for path in remove:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
    except BaseException as e:
        with held_signals():       # a second signal must not leave a temporary file behind
            for f in files:
                with contextlib.suppress(OSError):
                    f.close()
            for tmp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename is None or e.filename in temps):
            path = paths[temps.index(e.filename)] if e.filename in temps else paths[0]
            # NumPy's writers raise OSError('N requested and M written') without an errno
            raise OSError(e.errno or errno.EIO, e.strerror or f"cannot write ({e})",
                          path) from None
        raise


@contextlib.contextmanager
def atomic_output(path, text=False, hold=False):
    """:func:`atomic_outputs` for one file: its file object."""
    with atomic_outputs([path], text, hold=hold) as (f,):
        yield f
