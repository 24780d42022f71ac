"""Slow subprocesses that a test waits for, started as soon as the tests are
collected (conftest.py) so that they run beside the rest of the suite
instead of before the test that needs them: the CUDA simulator's report
(about 100 s) and a compile of every kernel for a plain x86-64 (30 s).

A test module registers a job under a part of its tests' node ids; the job
is started when a selected test's id holds that part, and ``result`` waits
for it (or runs it then, when nothing started it). Their subprocesses run
at a lower priority (LOWER before their command), so that the tests in the
foreground, some of which time their own subprocesses out, keep the cores.
"""
import shutil
from concurrent.futures import ThreadPoolExecutor

JOBS = {}          # part of a node id -> a function of no arguments
LOWER = ["nice", "-n", "10"] if shutil.which("nice") else []   # a command's prefix
_running = {}
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="early")


def job(node_id_part):
    """Register the decorated function as the job of tests whose ids hold
    ``node_id_part``."""
    def register(function):
        JOBS[node_id_part] = function
        return function
    return register


def start_for(node_ids):
    """Start the job of every registered part that one of ``node_ids`` holds."""
    for part, function in JOBS.items():
        if part not in _running and any(part in node_id for node_id in node_ids):
            _running[part] = _pool.submit(function)


def result(part):
    """What the job registered under ``part`` returned (raised)."""
    if part not in _running:
        start_for([part])
    return _running[part].result()
