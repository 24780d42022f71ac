"""``python -m glocalk_np`` and the ``glocalk-np`` command.

Ctrl-C while NumPy and Numba load (about a second) is held until the CLI is
imported and then ends the command as Ctrl-C does later: one line, status
130. Raising it inside the import instead can land in C code that runs
Python (PyRun_String), after which the interpreter kills itself with SIGINT
however the exception was handled.
"""
import signal
import sys


def main():
    """Console entry point."""
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from .cli import EXIT_INTERRUPTED, cli
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        sys.stderr.write("Interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    cli.main()


if __name__ == "__main__":
    main()
