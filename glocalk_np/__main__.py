"""``python -m glocalk_np`` and the ``glocalk-np`` command.

Ctrl-C or SIGTERM while NumPy and Numba load (about a second) is held until
the CLI is imported and then ends the command as it does later: one line,
status 130 or 143. Raising it inside the import instead can land in C code
that runs Python (PyRun_String), after which the interpreter kills itself
with the signal however the exception was handled; and SIGTERM's default
would end the process on the spot. A SIGINT the process inherited as
ignored (a background job) stays ignored.
"""
import signal
import sys
import warnings

_EXIT = {signal.SIGINT: (130, "Interrupted"), signal.SIGTERM: (143, "Terminated")}


def _line(message):
    """The first line of ``message``, at most 300 characters."""
    return " ".join(str(message).strip().splitlines()[0].split())[:300] if str(message) else ""


def main():
    """Console entry point."""
    if sys.stderr is None:           # started with stderr closed: nowhere to say anything
        sys.exit(1)
    if sys.stdout is None:           # started with stdout closed (`>&-`)
        sys.stderr.write("Error: standard output is closed\n")
        sys.exit(1)
    held = []

    def hold(signum, frame):
        held.append(signum)

    for signum in _EXIT:        # cli.main replaces them with its own, without a gap
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, hold)
    with warnings.catch_warnings(record=True) as caught:   # e.g. Numba's on a bad NUMBA_*
        warnings.simplefilter("always")
        try:
            from .cli import cli
            from .console.process import ignore_signals
        except Exception as e:     # e.g. a broken NumPy or Numba install
            sys.stderr.write(f"Error: cannot start: {_line(e)}\n")
            sys.exit(1)
    for w in caught:
        sys.stderr.write(f"Warning: {_line(w.message)}\n")
    if held:
        ignore_signals()
        status, word = _EXIT[held[0]]
        sys.stderr.write(f"{word}\n")
        sys.exit(status)
    cli.main(own_process=True)


if __name__ == "__main__":
    main()
