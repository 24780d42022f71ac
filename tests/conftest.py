import pytest

import early

from problems import PROBLEMS, smooth_problem


@pytest.fixture(params=PROBLEMS, ids=lambda p: f"m{p[0]}n{p[1]}h{p[2]}d{p[3]}L{p[4]}")
def problem(request):
    """A smooth random problem: (R dense, params, hyper-parameters)."""
    return smooth_problem(request.param)


def pytest_collection_finish(session):
    """Start the slow subprocesses the selected tests will wait for (early.py)."""
    early.start_for([item.nodeid for item in session.items])
