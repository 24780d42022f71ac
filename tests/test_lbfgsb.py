"""glocalk_np.lbfgsb against scipy.optimize.minimize(method='L-BFGS-B'), the
reference it mirrors: the same iterations, evaluations and ending on each
problem, iterates equal to rounding (measured: at most 7e-12 relative within
15 iterations; 1e-10 asked), and every rule (the stopping tests, a failed
line search with and without a memory, the skipped pair) reproduced."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize, rosen, rosen_der

from glocalk_np import lbfgsb
from glocalk_np.lbfgsb import gradient_into
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.params import flatten, optimised
from glocalk_np.config import Config
from glocalk_np.train import fit
from problems import PROBLEMS, smooth_problem

AGREEMENT = 1e-10


def both(fun, x0, **options):
    """(scipy's result, ours) from x0 with the same options."""
    ref = minimize(fun, x0, jac=True, method="L-BFGS-B", options=options)
    return ref, lbfgsb.minimize(gradient_into(fun), x0, **options)


def assert_same_run(ref, ours):
    assert (ours.nit, ours.nfev, ours.status, ours.message) == \
        (ref.nit, ref.nfev, ref.status, ref.message)
    scale = max(np.abs(ref.x).max(), 1e-300)
    assert np.abs(ours.x - ref.x).max() / scale < AGREEMENT
    if ref.status != 2:   # after a failed line search SciPy reports the last trial's f, not x's
        assert ours.fun == pytest.approx(ref.fun, rel=1e-6, abs=1e-12)


def ill_conditioned_quadratic(n=200, condition=1e4, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = Q.T @ np.diag(np.logspace(0, np.log10(condition), n)) @ Q
    b = rng.standard_normal(n)
    return lambda x: (0.5 * x @ A @ x - b @ x, A @ x - b)


ROSENBROCK_X0 = np.where(np.arange(1000) % 2, 1.0, -1.2)
ROSENBROCK = (lambda x: (rosen(x), rosen_der(x)))


@pytest.mark.parametrize("maxiter", [1, 2, 3, 5, 10, 15])
@pytest.mark.parametrize("problem", ["quadratic", "rosenbrock"])
def test_same_steps_as_scipy_for_1_to_15_iterations(problem, maxiter):
    fun, x0 = ((ill_conditioned_quadratic(), np.zeros(200)) if problem == "quadratic"
               else (ROSENBROCK, ROSENBROCK_X0))
    assert_same_run(*both(fun, x0, maxiter=maxiter))


C20 = np.linspace(-1, 1, 20)


def absolute(x):
    return np.abs(x - C20).sum(), np.sign(x - C20)


def linear(x):
    return -x.sum(), -np.ones_like(x)


def uphill(x):
    """f rises as 2 |x|_1 from f(0) = 0 while the gradient claims descent
    along +1: every trial step fails the sufficient-decrease test by the sign
    of f - f(0), not by a rounding, so the line search gives up after 20
    trials on every CPU. (x @ x with the gradient -2 x, used before, ends in
    a 'RELATIVE REDUCTION' convergence or ABNORMAL depending on the last
    bits of OpenBLAS's ddot: OPENBLAS_CORETYPE=Haswell vs SkylakeX.)"""
    return 2.0 * np.abs(x).sum(), -np.ones_like(x)


# name: (fun, x0, options, what the run must show)
RULES = {
    "gtol at the start": (lambda x: (x @ x, 2 * x), np.zeros(5), {}, lambda r: r.nit == 0),
    "gtol after steps": (lambda x: (x @ x, 2 * x), np.ones(5), {}, lambda r: r.nit == 2),
    "ftol": (ROSENBROCK, ROSENBROCK_X0, {"ftol": 1e-2}, lambda r: "REDUCTION" in r.message),
    "maxfun": (ROSENBROCK, ROSENBROCK_X0, {"maxfun": 5}, lambda r: "EVALUATIONS" in r.message),
    "line search fails with an empty memory": (
        uphill, np.zeros(5), {}, lambda r: r.status == 2 and r.nit == 0 and r.nfev == 21),
    "line search fails, the memory restarts": (
        ROSENBROCK, ROSENBROCK_X0, {"maxls": 2}, lambda r: r.restarts >= 1),
    "restart then abnormal": (absolute, np.zeros(20), {"maxls": 3},
                              lambda r: r.restarts >= 1 and r.status == 2),
    "skipped pairs": (linear, np.zeros(4), {"maxiter": 3}, lambda r: r.skipped >= 1),
    "non-smooth, to convergence": (absolute, np.zeros(20), {}, lambda r: r.nit > 50),
}


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_ends_as_scipy_does(rule):
    fun, x0, options, shows = RULES[rule]
    ref, ours = both(fun, x0, **options)
    assert_same_run(ref, ours)
    assert shows(ours), ours


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
@pytest.mark.parametrize("maxiter", [1, 5, 15])
def test_same_steps_on_glocal_k_objectives(stage, maxiter):
    R, params, hp = smooth_problem(PROBLEMS[2])
    engine = CpuEngine(sp.csr_matrix(R), dtype=np.float64, **hp)
    template = optimised(stage, params)
    x0 = flatten(template)
    ref = minimize(engine.objective(stage, template), x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": maxiter, "maxcor": 10})
    ours = lbfgsb.minimize(engine.objective_into(stage, template), x0, maxiter=maxiter)
    assert_same_run(ref, ours)


def test_a_reused_workspace_gives_the_same_run():
    fun = ill_conditioned_quadratic()
    fresh = lbfgsb.minimize(gradient_into(fun), np.zeros(200), maxiter=7)
    x_fresh = fresh.x.copy()
    ws = lbfgsb.Workspace(200)
    lbfgsb.minimize(gradient_into(lambda x: (x @ x, 2 * x)), np.ones(200), maxiter=4, workspace=ws)
    again = lbfgsb.minimize(gradient_into(fun), np.zeros(200), maxiter=7, workspace=ws)
    np.testing.assert_array_equal(again.x, x_fresh)
    with pytest.raises(ValueError, match="workspace is for n=200"):
        lbfgsb.minimize(gradient_into(fun), np.zeros(10), workspace=ws)


def test_fit_takes_the_same_steps_with_either_optimizer():
    R, _, _ = smooth_problem(PROBLEMS[2])
    R = sp.csr_matrix(R)
    states = {opt: fit(R, Config(n_hidden=4, kernel_dim=3, epochs_pretrain=2, epochs_finetune=2,
                                 iters_pretrain=4, iters_finetune=4, dtype="float64",
                                 optimizer=opt)) for opt in ("scipy", "numba")}
    a, b = states["scipy"], states["numba"]
    assert [r.evaluations for r in a.history] == [r.evaluations for r in b.history]
    assert [r.train_rmse for r in a.history] == pytest.approx([r.train_rmse for r in b.history],
                                                              rel=1e-9)


def test_optimizer_must_be_known():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Config(optimizer="adam")
