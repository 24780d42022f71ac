"""The first answer in a fresh install: wall seconds of `glocalk-np
recommend MODEL --user 1`, and of `glocalk-np serve MODEL` from its start to
its first /recommend answer, in a new virtual environment with an empty
Numba cache, for this tree and for an earlier revision (default: the one
before inference.py, whose predictions compiled the engine's kernels),
measured in one run, and the same again with the cache as the first left it.

    python bench/cold_start.py --json bench/results/cold_start.json

Each revision is installed (not editable) with pip into its own venv under a
temporary folder, from the package registry's wheels of numpy, scipy, numba
and click. The model: ML-100K's u1.base fitted with the ml-100k preset for
one epoch of each stage (the shapes of the real model; how long it trained
does not change what recommend computes), or --model. Data: ../shared/data
(see bench/README.md).
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "251d8b3"   # the last revision whose inference ran the Numba engine


def sh(*args, **kwargs):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          **kwargs)


def install(rev, where):
    """A venv at ``where`` with glocalk-np at git revision ``rev`` ('' = this
    tree, as it is on disk); its glocalk-np command."""
    sh(sys.executable, "-m", "venv", where)
    source = ROOT
    if rev:
        source = where / "src"
        sh("git", "-C", ROOT, "worktree", "add", "--detach", source, rev)
    try:
        sh(where / "bin" / "pip", "install", "--quiet", source)
    finally:
        if rev:
            sh("git", "-C", ROOT, "worktree", "remove", "--force", source)
    return where / "bin" / "glocalk-np"


def timed(command, model, cache):
    """Seconds of one recommend with NUMBA_CACHE_DIR=cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    tic = time.perf_counter()
    sh(command, "recommend", model, "--user", "1", env=env)
    return time.perf_counter() - tic


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_serve(command, model, cache):
    """Seconds from starting ``serve`` with NUMBA_CACHE_DIR=cache to its
    first /recommend answer (polled every 10 ms)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    port = free_port()
    tic = time.perf_counter()
    server = subprocess.Popen([str(command), "serve", str(model), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                    s.sendall(b"GET /recommend?user=1 HTTP/1.0\r\n\r\n")
                    if s.recv(12).startswith(b"HTTP/1.0 200"):
                        return time.perf_counter() - tic
            except OSError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"serve ended with status {server.returncode}")
            time.sleep(0.01)
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=BEFORE, help="the earlier revision to compare with")
    ap.add_argument("--model", help="an ML-100K model file instead of a quick fit")
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        installs = {rev or "this tree": install(rev, tmp / (rev or "head"))
                    for rev in ("", args.before)}
        model = args.model
        if model is None:
            common.check_data(["ml-100k"], args.data_dir)
            base = Path(args.data_dir) / "ml-100k" / "u1.base"
            model = tmp / "ml100k.npz"
            sh(installs["this tree"], "fit", base, "--preset", "ml-100k", "--epochs-pretrain", 1,
               "--epochs-finetune", 1, "--out", model, "--quiet")
        results = {}
        for name, command in installs.items():
            runs = {key: [] for key in ("first_s", "again_s", "serve_first_s", "serve_again_s")}
            for k in range(args.repeats):          # a fresh cache each time, then as it was left
                for how, time_it in (("", timed), ("serve_", timed_serve)):
                    cache = tmp / f"cache-{len(results)}-{how}{k}"
                    cache.mkdir()
                    runs[f"{how}first_s"].append(time_it(command, model, cache))
                    runs[f"{how}again_s"].append(time_it(command, model, cache))
            results[name] = runs
            print(f"{name:>10}: first recommend {min(runs['first_s']):.2f} s (of {args.repeats}, "
                  f"best), again {min(runs['again_s']):.2f} s; serve's first answer "
                  f"{min(runs['serve_first_s']):.2f} s, again {min(runs['serve_again_s']):.2f} s",
                  flush=True)
        head, before = results["this tree"], results[args.before]
        for what, key in (("first recommend", "first_s"), ("serve's first answer",
                                                          "serve_first_s")):
            print(f"{what}: {min(head[key]) / min(before[key]):.2f}x the time of {args.before}")
    if args.out:
        common.write_json(args.out, dict(model=str(args.model or "ml-100k u1.base, preset, "
                                                                "1+1 epochs"),
                                         before=args.before, runs=results))


if __name__ == "__main__":
    main()
