"""The NumPy/SciPy forward pass (inference.py) against the dense reference
and the CPU engine, and without Numba."""
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from dense_reference import dense_forward, rel_error
from glocalk_np import inference
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.params import STAGES, init_global_kernel, init_layers


def outputs(factors):
    H, WoutT, b = factors
    return H @ WoutT.T + b


@pytest.mark.parametrize("stage", STAGES)
def test_float64_outputs_equal_the_dense_reference(problem, stage):
    R, params, hp = problem
    got = outputs(inference.output_factors(stage, params, sp.csr_matrix(R), np.float64,
                                           hp["dot_scale"]))
    assert rel_error(got, dense_forward(stage, params, R, dot_scale=hp["dot_scale"])) < 1e-12


def ratings_problem(m=40, n=60, density=0.2, seed=0):
    """Ratings 1..5 at a MovieLens-like density, parameters as fit starts
    them, C spread so that the convolution keeps some entries and drops
    others."""
    rng = np.random.default_rng(seed)
    R = sp.random(m, n, density, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.integers(1, 6, k).astype(float))
    params = init_layers(n, n_hidden=16, n_layers=2, kernel_dim=3, seed=seed)
    params["C"] = init_global_kernel(m, 3, seed=seed) * 5
    return R, params


@pytest.mark.parametrize("stage", STAGES)
def test_float32_outputs_equal_the_engine_s_to_float32_rounding(stage):
    R, params = ratings_problem()
    engine = CpuEngine(R, lambda_2=1.0, lambda_s=0.1, dot_scale=1.0, dtype=np.float32)
    want = outputs(engine.output_factors(stage, params))
    got = outputs(inference.output_factors(stage, params, R, np.float32, 1.0))
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    if stage == "finetune":       # the problem exercises the ReLU: some kept, some dropped
        pre = engine.conv_preactivation(params)
        assert (pre > 0).any() and (pre < 0).any()


def test_the_forward_pass_loads_no_numba():
    code = ("import sys, numpy as np, scipy.sparse as sp\n"
            "from glocalk_np import inference\n"
            "from glocalk_np.params import init_global_kernel, init_layers\n"
            "p = init_layers(6, n_hidden=4); p['C'] = init_global_kernel(5)\n"
            "R = sp.random(5, 6, 0.5, format='csr', random_state=0) * 5\n"
            "inference.output_factors('finetune', p, R, np.float32, 1.0)\n"
            "assert 'numba' not in sys.modules, 'numba was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
