import pytest

import early

from problems import PROBLEMS, smooth_problem


@pytest.fixture(params=PROBLEMS, ids=lambda p: f"m{p[0]}n{p[1]}h{p[2]}d{p[3]}L{p[4]}")
def problem(request):
    """A smooth random problem: (R dense, params, hyper-parameters)."""
    return smooth_problem(request.param)


def pytest_collection_modifyitems(session, config, items):
    """The tests that wait for an early job (early.py) run last, in their
    order: by then the job has run beside the others, where it would keep
    the suite waiting if its tests came in their place (the CUDA
    simulator's report, 80 s of waiting at test_engines.py's turn)."""
    items.sort(key=lambda item: any(part in item.nodeid for part in early.JOBS))


def pytest_collection_finish(session):
    """Start the slow subprocesses the selected tests will wait for (early.py)."""
    early.start_for([item.nodeid for item in session.items])
