"""Central finite-difference check of the hand-written gradients (float64)."""
import numpy as np
import scipy.sparse as sp

from .model import STAGES, GLocalKLoss
from .params import flatten, init_global_kernel, init_layers, optimised, unflatten

STEP = 1e-5        # balances truncation (~STEP^2) and round-off (~1e-16 * loss / STEP)
TOLERANCE = 1e-6


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


def check_gradients(seed=0, lambda_2=0.5, lambda_s=0.2, dot_scale=3.0):
    """Worst relative error, per stage, of the analytic gradient against
    central differences, over the parameter arrays: for each array,
    max|analytic - numeric| / max(max|analytic|, max|numeric|)."""
    R, params = random_problem(seed)
    loss = GLocalKLoss(R, lambda_2=lambda_2, lambda_s=lambda_s, dot_scale=dot_scale,
                       dtype=np.float64)
    worst = {}
    for stage in STAGES:
        template = optimised(stage, params)
        _, grads = loss(stage, template)
        x = flatten(template)
        numeric = np.empty_like(x)
        for i in range(x.size):
            f = []
            for step in (STEP, -STEP):
                shifted = x.copy()
                shifted[i] += step
                f.append(loss(stage, unflatten(shifted, template))[0])
            numeric[i] = (f[0] - f[1]) / (2 * STEP)
        numeric = unflatten(numeric, template)
        worst[stage] = max(_rel_error(grads[k], numeric[k]) for k in template)
    return worst


def _rel_error(a, b):
    scale = max(np.abs(a).max(), np.abs(b).max(), np.finfo(np.float64).tiny)
    return float(np.abs(a - b).max() / scale)
