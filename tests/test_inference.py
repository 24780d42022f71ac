"""inference.NumpyOps, the network's operations in NumPy and SciPy, and
the model they serve: the forward pass against the dense reference and the
CPU engine, the whole loss and gradient against the dense reference and
central differences (both stages), and a fitted model that answers without
Numba, the trainer or an engine."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

from dense_reference import dense_forward, dense_loss_grad, numerical_grad, rel_error
from glocalk_np import inference
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.network import Network
from glocalk_np.params import STAGES, init_global_kernel, init_layers, optimised
from problems import FD_EPS


def outputs(factors):
    H, WoutT, b = factors
    return H @ WoutT.T + b


def numpy_loss_grad(stage, params, R, hp):
    """(loss, gradients) of Network over NumpyOps, float64."""
    P = {k: np.asarray(v, np.float64) for k, v in optimised(stage, params).items()}
    G = {k: np.zeros_like(v) for k, v in P.items()}
    ops = inference.NumpyOps(sp.csr_matrix(R, dtype=np.float64), hp["lambda_2"],
                             hp["lambda_s"], hp["dot_scale"])
    return Network(ops).loss_and_grad(stage, P, G).value, G


@pytest.mark.parametrize("stage", STAGES)
def test_float64_outputs_equal_the_dense_reference(problem, stage):
    R, params, hp = problem
    got = outputs(inference.output_factors(stage, params, sp.csr_matrix(R), np.float64,
                                           hp["dot_scale"]))
    assert rel_error(got, dense_forward(stage, params, R, dot_scale=hp["dot_scale"])) < 1e-12


@pytest.mark.parametrize("stage", STAGES)
def test_loss_and_gradient_equal_the_dense_reference_and_central_differences(problem, stage):
    R, params, hp = problem
    loss, grads = numpy_loss_grad(stage, params, R, hp)
    want_loss, want = dense_loss_grad(stage, params, R, **hp)
    assert abs(loss - want_loss) < 1e-12 * abs(want_loss)
    assert max(rel_error(grads[k], want[k]) for k in grads) < 1e-10
    num = numerical_grad(lambda p: numpy_loss_grad(stage, p, R, hp)[0],
                         optimised(stage, params), eps=FD_EPS)
    assert max(rel_error(grads[k], num[k]) for k in grads) < 1e-6


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
    rows, cols = (a.ravel() for a in np.indices(R.shape))
    want = engine.predict(stage, params, rows, cols).astype(np.float64).reshape(R.shape)
    got = outputs(inference.output_factors(stage, params, R, np.float32, 1.0))
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    if stage == "finetune":       # the problem exercises the ReLU: some kept, some dropped
        pre = engine.conv_preactivation(params)
        assert (pre > 0).any() and (pre < 0).any()


def test_a_fitted_model_answers_without_numba_the_trainer_or_an_engine(tmp_path):
    """Model.load and its methods, the read-only commands and the server."""
    from glocalk_np.estimator import GLocalK
    from glocalk_np.synthetic import low_rank_ratings
    ratings = low_rank_ratings(30, 20, 0.3, 2, seed=0)
    GLocalK(n_hidden=6, epochs_pretrain=1, epochs_finetune=1, iters_pretrain=2,
            iters_finetune=2).fit(ratings).save(tmp_path / "m.npz")
    code = textwrap.dedent(f"""
        import sys
        from wsgiref.util import setup_testing_defaults
        from glocalk_np.cli import cli
        from glocalk_np.data import Ratings
        from glocalk_np.model import Model
        from glocalk_np.serve import ModelServer
        path = {str(tmp_path / "m.npz")!r}
        m = Model.load(path)
        m.predict([0, 1], [2, 3]); m.recommend([0, 1], top=3); m.similar(m.index_.items[0])
        m.update(Ratings([0, 10**6], [1, 2], [5.0, 4.0], "new"), fold_in=True)
        m.evaluate(Ratings([0, 1, 2], [1, 2, 3], [5.0, 4.0, 3.0], "test"))
        for args in (["info"], ["recommend", "--user", "0"], ["similar", "--item", "1"]):
            try:
                cli([args[0], path, *args[1:]])
            except SystemExit as e:
                assert e.code == 0, (args, e.code)
        env, answer = {{"PATH_INFO": "/recommend", "QUERY_STRING": "user=0"}}, []
        setup_testing_defaults(env)
        body = b"".join(ModelServer(path)(env, lambda status, headers: answer.append(status)))
        assert answer == ["200 OK"] and b"items" in body, (answer, body)
        loaded = sorted(n for n in sys.modules if n.split(".")[0] == "numba"
                        or n in ("glocalk_np.train", "glocalk_np.estimator")
                        or n.startswith("glocalk_np.kernels")
                        or (n.startswith("glocalk_np.engines.") and n != "glocalk_np.engines.base"))
        assert not loaded, loaded
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
