"""Central finite-difference check of the hand-written gradients (float64),
behind ``glocalk-np gradcheck``.

Central differences measure a gradient only where the loss is smooth and the
gradient stands well above round-off, so the random point is screened as the
tests screen theirs (tests/problems.py): no local kernel's max(0, .) and no
convolution ReLU within KINK of its kink, and every array's gradient at least
MIN_GRADIENT; a point that fails is redrawn.
"""
import numpy as np
import scipy.sparse as sp

from .engines.cpu import CpuEngine
from .inference import kernel_preactivation
from .params import (STAGES, flatten, init_global_kernel, init_layers, layer_count, optimised,
                     unflatten)

STEP = 1e-5        # balances truncation (~STEP^2) and round-off (~1e-16 * loss / STEP)
TOLERANCE = 1e-6
KINK = 1e-4        # the smallest distance to a kink of max(0, .) or the ReLU
MIN_GRADIENT = 0.03
DRAWS = 20


def random_problem(seed=0, m=10, n=9, n_hidden=4, kernel_dim=3, density=0.4):
    """(R, params): ratings 1-5 on a random m x n pattern; U, V ~ N(0, 0.3) so
    that the local kernels hold both zeros and values in (0, 1)."""
    rng = np.random.default_rng(seed)
    R = np.where(rng.random((m, n)) < density, rng.integers(1, 6, (m, n)), 0)
    params = init_layers(n, n_hidden=n_hidden, kernel_dim=kernel_dim, seed=seed)
    for k in params:
        if k[0] in "UV":
            params[k] = rng.normal(0.0, 0.3, params[k].shape)
    params["C"] = init_global_kernel(m, seed=seed)
    return sp.csr_matrix(R.astype(np.float64)), params


def screened_problem(seed, **hyper):
    """(engine, params, draws): the first of the problems random_problem(seed),
    random_problem(seed + 1000), ... whose point is smooth and well scaled
    (see the module docstring), with a float64 engine for it; ``draws`` is
    how many were drawn."""
    for draw in range(DRAWS):
        R, params = random_problem(seed + 1000 * draw)
        engine = CpuEngine(R, dtype=np.float64, **hyper)
        if _is_smooth(engine, params) and _is_well_scaled(engine, params):
            return engine, params, draw + 1
    raise RuntimeError(f"no smooth, well-scaled point in {DRAWS} draws from seed {seed}")


def _is_smooth(engine, params):
    for l in range(layer_count(params)):
        if (np.abs(kernel_preactivation(params[f"U{l}"], params[f"V{l}"])) < KINK).any():
            return False
    return not (np.abs(engine.conv_preactivation(params)) < KINK).any()


def _is_well_scaled(engine, params):
    _, grads = engine("finetune", params)
    return min(np.abs(g).max() for g in grads.values()) > MIN_GRADIENT


def check_gradients(seed=0, lambda_2=0.5, lambda_s=0.2, dot_scale=3.0, progress=None):
    """(worst, draws): the worst relative error, per stage, of the analytic
    gradient against central differences over the parameter arrays (for each
    array max|analytic - numeric| / max(max|analytic|, max|numeric|)), at the
    screened point of ``seed``, and the number of points drawn to find it.
    progress(stage, n_parameters) is called as each stage starts."""
    engine, params, draws = screened_problem(seed, lambda_2=lambda_2, lambda_s=lambda_s,
                                             dot_scale=dot_scale)
    worst = {}
    for stage in STAGES:
        template = optimised(stage, params)
        if progress is not None:
            progress(stage, sum(v.size for v in template.values()))
        _, grads = engine(stage, template)
        x = flatten(template)
        numeric = np.empty_like(x)
        for i in range(x.size):
            f = []
            for step in (STEP, -STEP):
                shifted = x.copy()
                shifted[i] += step
                f.append(engine(stage, unflatten(shifted, template))[0])
            numeric[i] = (f[0] - f[1]) / (2 * STEP)
        numeric = unflatten(numeric, template)
        worst[stage] = max(_rel_error(grads[k], numeric[k]) for k in template)
    return worst, draws


def _rel_error(a, b):
    scale = max(np.abs(a).max(), np.abs(b).max(), np.finfo(np.float64).tiny)
    return float(np.abs(a - b).max() / scale)
