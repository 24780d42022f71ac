"""How a glocalk-np command ends: exit statuses, SIGINT and SIGTERM, and
every failure as one line on stderr (the group class Main)."""
import contextlib
import errno
import os
import signal
import sys
import warnings

import click

from ..datasets import DownloadError
from ..data import DataWarning
from ..safeio import shorten
from ..engines.base import EngineFailure
from ..records import TrainingDiverged

EXIT_ERROR = 2            # usage and data errors
EXIT_FAILURE = 1          # failures at run time
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
# click >= 8.2 reports a bare group as an error that carries the help text
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
# An error line longer than this is cut (a path or a quoted field of megabytes)
MAX_MESSAGE = 500
# What writing to standard output can fail with
_WRITE_ERRNOS = {errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG}


class StdoutFailed(Exception):
    """Writing to standard output failed (a closed pipe, a full disk)."""

    def __init__(self, error):
        super().__init__(error.strerror or str(error))
        self.error = error


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that every temporary file is
    removed on the way out (Python's default would end it on the spot)."""


def ignore_signals():
    """From now on SIGINT and SIGTERM are ignored: the command is ending, and
    a second signal must not cut short its cleanup or its last line. A
    handler that does nothing, not SIG_IGN: a signal already pending when the
    handler changes would make CPython report 'Signal ignored due to race
    condition' with a traceback."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore)


def _ignore(signum, frame):
    pass


_SIGNALLED = []      # the signals the command was ended by


def _terminate(signum, frame):
    ignore_signals()
    _SIGNALLED.append(signum)
    raise Terminated


def _interrupt(signum, frame):
    ignore_signals()
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def signal_behind(exc):
    """The KeyboardInterrupt or Terminated that ``exc`` stands for, else None.
    A signal that arrives while a Numba function runs is raised when it
    returns, and Python reports that as a SystemError caused by it."""
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        return exc
    if isinstance(exc, SystemError) and isinstance(exc.__cause__, (KeyboardInterrupt, Terminated)):
        return exc.__cause__
    return None


class Main(click.Group):
    """The top-level group; its main() turns every failure into one line."""

    def main(self, args=None, prog_name="glocalk-np", own_process=False, **extra):
        """Run the command; ``own_process`` (the console entry point) leaves
        SIGINT and SIGTERM ignored on the way out instead of restoring them,
        as the process ends here. A SIGINT the process inherited as ignored
        (a background job) stays ignored."""
        with warnings.catch_warnings():
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = _show_warning
            handlers = {signal.SIGTERM: _terminate}
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                handlers[signal.SIGINT] = _interrupt
            previous = {signum: signal.signal(signum, h) for signum, h in handlers.items()}
            try:
                status = self._run(args, prog_name, extra)
                status = _flush_stdout() or status
            finally:
                if own_process:
                    ignore_signals()
                else:
                    for signum, handler in previous.items():
                        signal.signal(signum, handler)
            if own_process and _SIGNALLED:
                # Ended by a signal, with its line printed and the temporary files gone:
                # leave at once. The interpreter's shutdown would put SIGINT and SIGTERM
                # back to their defaults, and a second signal then kills the process.
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(status)
            if own_process:
                # The same on a normal way out: the shutdown would reset these handlers
                # to the defaults, so a Ctrl-C as the command ends would kill it. SIG_IGN
                # is safe now: signal.signal first runs the handler of one already pending.
                for signum in handlers:
                    signal.signal(signum, signal.SIG_IGN)
            sys.exit(status)

    def invoke(self, ctx):
        """click's own: but a closed standard output (EPIPE), which click
        would end with a silent exit 1, is one line like any other failure."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise StdoutFailed(e) from None

    def _run(self, args, prog_name, extra):
        """The exit status of the command."""
        try:
            return super().main(args, prog_name, standalone_mode=False, **extra) or 0
        except _NO_ARGS_IS_HELP as e:
            e.show()
        except (click.Abort, KeyboardInterrupt):
            click.echo("Interrupted", err=True)
            return EXIT_INTERRUPTED
        except Terminated:
            click.echo("Terminated", err=True)
            return EXIT_TERMINATED
        except SystemError as e:
            signal_ = signal_behind(e)
            if signal_ is None:
                return _unexpected(e)
            interrupted = isinstance(signal_, KeyboardInterrupt)
            click.echo("Interrupted" if interrupted else "Terminated", err=True)
            return EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED
        except MemoryError:
            _error("out of memory: the data or the model is too large for this machine")
            return EXIT_FAILURE
        except (TrainingDiverged, DownloadError, EngineFailure) as e:
            _error(str(e))
            return EXIT_FAILURE
        except StdoutFailed as e:
            _stdout_failed(e.error)
            return EXIT_FAILURE
        except UnicodeEncodeError as e:
            _error(f"standard output cannot take the character {e.object[e.start:e.end]!r} "
                   f"in its encoding {e.encoding}; set PYTHONIOENCODING=utf-8")
            return EXIT_FAILURE
        except OSError as e:
            if _stdout_failed(e):
                return EXIT_FAILURE
            _error(f"{e.filename}: {e.strerror}" if e.filename else str(e))
            return EXIT_FAILURE
        except click.ClickException as e:
            _error(e.format_message())
        except ValueError as e:
            _error(str(e))
        except Exception as e:
            return _unexpected(e)
        return EXIT_ERROR


def _unexpected(error):
    """A bug: still one line and no traceback, saying so; EXIT_FAILURE."""
    _error(f"unexpected {type(error).__name__} (a bug in glocalk-np; please report it with "
           f"the command): {error}")
    return EXIT_FAILURE


def _stdout_failed(error):
    """If ``error`` came from writing to standard output (a pipe closed by
    ``| head``, a full disk, /dev/full: an OSError naming no file, as every
    file glocalk-np reads or writes is named): say so in one line, stop
    further writes to it (and the interpreter's own flush at exit) and
    return True."""
    if error.filename is not None or error.errno not in _WRITE_ERRNOS:
        return False
    reason = "was closed" if isinstance(error, BrokenPipeError) else \
        f"cannot be written ({error.strerror or error})"
    click.echo(f"Error: standard output {reason} before everything was written", err=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return True


def _flush_stdout():
    """EXIT_FAILURE, with one line, if what is buffered for standard output
    cannot be written; else None."""
    try:
        sys.stdout.flush()
    except OSError as e:
        return EXIT_FAILURE if _stdout_failed(e) else None
    return None


def _one_line(message):
    """``message`` on one line of at most MAX_MESSAGE characters."""
    return shorten(" ".join(str(message).split()), MAX_MESSAGE)


def _error(message):
    click.echo(f"Error: {_one_line(message)}", err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line on stderr: the first of the message's (Numba's
    on a bad NUMBA_* variable, raised where a command first loads it, goes
    on with the traceback of its parse)."""
    first = str(message).strip().splitlines()[:1]
    click.echo(f"Warning: {_one_line(first[0] if first else '')}", err=True)
