"""``glocalk-np`` in a process of its own, started as a user's shell starts it.

A shell runs a background job (``cmd &``, nohup, some CI runners) with
SIGINT ignored, and a program that starts with SIGINT ignored rightly keeps
ignoring it; the tests that press Ctrl-C would then wait for nothing. So the
command is started through a two-line launcher that restores SIGINT's
default disposition before it execs ``python -m glocalk_np``.
"""
import os
import subprocess
import sys

_LAUNCH = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
           "os.execv(sys.executable, [sys.executable, '-m', 'glocalk_np', *sys.argv[1:]])")


def command(*args):
    """The argv that runs ``glocalk-np args``."""
    return [sys.executable, "-c", _LAUNCH, *map(str, args)]


def run(*args, cwd=None, timeout=180, **kwargs):
    """``glocalk-np args`` to completion: a CompletedProcess with text output."""
    return subprocess.run(command(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def start(*args, cwd=None, **kwargs):
    """``glocalk-np args`` running, its stdout and stderr piped, unbuffered."""
    return subprocess.Popen(command(*args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)


# Measures the command from a small parent: a process forked from pytest
# (hundreds of MiB) and then exec'd keeps pytest's peak in its ru_maxrss.
_MEASURE = ("import os, signal, subprocess, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "p = subprocess.Popen([sys.executable, '-m', 'glocalk_np', *sys.argv[2:]]); "
            "_, status, usage = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
            "os.WIFSIGNALED(status) and os.kill(os.getpid(), os.WTERMSIG(status)); "
            "sys.exit(os.waitstatus_to_exitcode(status))")


def run_measured(*args, cwd=None, timeout=180):
    """``glocalk-np args`` to completion: (CompletedProcess with text output,
    the command's peak resident memory in MiB)."""
    import tempfile
    with tempfile.NamedTemporaryFile("r") as peak:
        done = subprocess.run([sys.executable, "-c", _MEASURE, peak.name, *map(str, args)],
                              cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        text = peak.read()
    return done, int(text) / 1024 if text else float("nan")
