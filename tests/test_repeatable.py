"""Runs repeat bit for bit on one machine, thread count and engine: whether
the kernels were just compiled or loaded from Numba's cache, whatever else
the machine runs, and whatever CPU Numba was told to compile for. Each run
is a process of its own (tests/repeat_bits.py) printing digests of the loss,
every gradient and a short fit.

Why they can: no kernel uses fastmath, so no compilation may change what a
kernel computes (Numba optimises a parallel loop's body twice, once on its
own and once inside the calling kernel, and a fresh process runs the first
copy while a process that loaded the cache runs the second); the sums that
need SIMD are written as explicit vectors in a fixed order (kernels/cpu.py's
fixed_dot); and every sum has a fixed order and width (a prange loop writes
disjoint outputs or per-block partial sums added in block order; the block
count follows the thread count, not the scheduling).
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import early

SCRIPT = Path(__file__).with_name("repeat_bits.py")


def digests(cache_dir, timeout=600, prefix=(), **env):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), **env}
    done = subprocess.run([*prefix, sys.executable, str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@early.job("test_repeatable.py")
def _first_run():
    """(an empty Numba cache folder, removed at exit, filled by a first run
    that compiles every kernel it calls; that run's digests): started early."""
    folder = Path(tempfile.mkdtemp(prefix="numba-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder, digests(folder, prefix=early.LOWER)


@pytest.fixture(scope="module")
def cache():
    return early.result("test_repeatable.py")


def test_just_compiled_and_cached_kernels_give_the_same_bits(cache):
    folder, compiled = cache
    assert any(folder.rglob("*.nbc"))          # the second run loads what the first wrote
    assert digests(folder) == compiled


def test_a_busy_machine_gives_the_same_bits(cache):
    folder, quiet = cache
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]
    try:
        busy = digests(folder)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert busy == quiet


@early.job("plain_x86_64")
def _generic_digests():
    """Digests with every kernel compiled for Numba's generic target, in a
    cache folder of their own (started early: a compile of everything)."""
    with tempfile.TemporaryDirectory() as folder:
        return digests(folder, prefix=early.LOWER, NUMBA_CPU_NAME="generic")


def test_kernels_compiled_for_a_plain_x86_64_give_the_same_bits(cache):
    """Numba's generic target (SSE2 at most, no FMA, other vector widths and
    tuning) against this CPU's: a kernel whose result depended on how it was
    compiled (fastmath's reassociation or contraction) would differ here on
    any machine, where the fresh-versus-cached difference shows only on
    some CPUs."""
    folder, native = cache
    assert early.result("plain_x86_64") == native


def test_cached_kernels_call_nothing_from_the_package_s_other_modules():
    """Numba's cache is invalidated when a kernel's own file changes, not
    when a module it calls into does: a kernel cached before an edit of such
    a helper would go on running the old code, and a fresh cache folder the
    new one. So a module with cached kernels imports nothing of the package."""
    import ast

    import glocalk_np
    package = Path(glocalk_np.__file__).parent
    cached = [p for p in package.rglob("*.py") if "cache=True" in p.read_text()]
    assert {p.name for p in cached} >= {"cpu.py", "lbfgsb.py"}
    for path in cached:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and not (node.module or "").startswith("glocalk_np"), \
                    f"{path.relative_to(package)} imports {'.' * node.level}{node.module}"
