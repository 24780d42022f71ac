"""The contract every engine is held to (glocalk_np/engines/base.py), one
suite for all of them: the CPU engine in float64 and float32, the CUDA
engine under Numba's CUDA simulator in both, the sharded engine on three
shares in threads of this process (tests/thread_transport.py) in both, and
the dense reference (tests/dense_reference.py) wrapped as an engine.

Each engine is measured on the same small problems (tests/problems.py: drawn
away from the kinks of max(0, .) and the ReLU) by ``measure``, against the
dense float64 reference: loss, gradient and predictions at every pair;
directional central differences of its own loss; the objective scipy sees;
the arrays it refuses; the parameters it hands the trainer. The simulator must be on before numba.cuda is first
imported, so the CUDA engine is measured in a fresh interpreter (this file
run as a script with NUMBA_ENABLE_CUDASIM=1) that prints one JSON report.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import early
from dense_reference import (_ae_forward, _as64, _global_kernel, dense_forward, dense_loss_grad,
                             xcorr2d_same)
from engine_contract import operations_problems, parameters_problems
from glocalk_np import lbfgsb
from glocalk_np.engines import Engine, cuda_unavailable, make_engine, settings
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.engines.sharded import ShardedEngine
from glocalk_np.lbfgsb import gradient_into
from glocalk_np.params import STAGES, check_for_matrix, flatten, optimised
from glocalk_np.sparse import Pattern
from glocalk_np.config import Config
from problems import PROBLEMS, smooth_problem
from thread_transport import thread_engine

# float64 engines agree with the reference to round-off (measured: 7e-16 CPU,
# 2e-15 CUDA); float32 ones to float32's precision (measured: 4e-7)
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
FD_TOLERANCE = 1e-6      # directional central differences, float64 only
FD_STEP = 1e-5
DIRECTIONS = 3
SKIP = 77                # the script's exit status when the simulator is not there
# the problems each engine is measured on: all of them, or two for the simulator
SIM_PROBLEMS = PROBLEMS[:2]
ENGINES = ["cpu/float64", "cpu/float32", "dense/float64", "sharded/float64", "sharded/float32",
           "cuda-sim/float64", "cuda-sim/float32"]


class DenseEngine(Engine):
    """tests/dense_reference.py behind the engine contract."""

    def __init__(self, train, *, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float64):
        self.R = sp.csr_matrix(train).toarray()
        self.hp = dict(lambda_2=lambda_2, lambda_s=lambda_s, dot_scale=dot_scale)
        self.shape, self.dtype = self.R.shape, np.dtype(dtype)
        self.settings = dict(**{k: float(v) for k, v in self.hp.items()}, dtype=self.dtype)

    def __call__(self, stage, params):
        check_for_matrix(params, stage, *self.shape)
        return dense_loss_grad(stage, params, self.R, **self.hp)

    def objective_into(self, stage, template):
        return gradient_into(self.objective(stage, template))

    def predict(self, stage, params, rows, cols):
        check_for_matrix(params, stage, *self.shape)
        return dense_forward(stage, params, self.R, dot_scale=self.hp["dot_scale"])[rows, cols]

    def conv_preactivation(self, params):
        check_for_matrix(params, "finetune", *self.shape)
        p = _as64(params)
        _, G = _global_kernel(p, _ae_forward(p, self.R)[0], self.hp["dot_scale"])
        pre = xcorr2d_same(self.R, G)
        S = Pattern.from_csr(self.R).neighbourhood(int(round(np.sqrt(params["C"].shape[1]))))
        return pre[np.repeat(np.arange(S.shape[0]), np.diff(S.indptr)), S.indices]


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300))


def _refusals(engine, params, stage):
    """For each deliberately misshaped array: whether the engine refuses it
    with a ValueError that names it."""
    bad = {"V0": np.zeros((1, params["V0"].shape[1])), "b1": params["b1"][:-1],
           "W0": np.zeros((params["W0"].shape[0] + 1, params["W0"].shape[1]))}
    if stage == "finetune":
        bad["C"] = np.zeros((params["C"].shape[0], 8))
    out = {}
    for key, value in bad.items():
        try:
            engine(stage, {**params, key: value})
            out[key] = False
        except ValueError as e:
            out[key] = (f"{key} must be" if key == "C" else f"{key} has shape") in str(e)
    return out


def _workspace(engine, stage, template, iterations=2, maxcor=3):
    """[a Workspace of the size asked, error of the loss after ``iterations``
    L-BFGS-B steps in it against the same steps in host memory]."""
    x = flatten(template)
    ws = engine.workspace(x.size, maxcor)
    fg = engine.objective_into(stage, template)
    there = lbfgsb.minimize(fg, x, maxiter=iterations, maxcor=maxcor, workspace=ws)
    here = lbfgsb.minimize(fg, x, maxiter=iterations, maxcor=maxcor)
    return [isinstance(ws, lbfgsb.Workspace) and (ws.n, ws.m) == (x.size, maxcor),
            abs(there.fun - here.fun) / abs(here.fun)]


def measure(make, dtype, problems):
    """{problem/stage: measurements} of the engine ``make(R, dtype=..., **hp)``."""
    report = {}
    for i, spec in enumerate(problems):
        R, params, hp = smooth_problem(spec)
        engine = make(sp.csr_matrix(R), dtype=dtype, **hp)
        m, n = R.shape
        rows, cols = np.divmod(np.arange(m * n), n)
        rng = np.random.default_rng(i)
        for stage in STAGES:
            loss, grads = engine(stage, params)
            want_loss, want = dense_loss_grad(stage, params, R, **hp)
            template = optimised(stage, params)
            x = flatten(template)
            fun = engine.objective(stage, template)
            o_loss, o_grad = fun(x)
            g_into = np.full_like(x, np.nan)
            loss_into = engine.objective_into(stage, template)(x.copy(), g_into)
            r = {"keys": list(grads) == list(want),
                 "dtypes": sorted({str(g.dtype) for g in grads.values()}),
                 "loss": abs(loss - want_loss) / abs(want_loss),
                 "grad": max(_rel(grads[k], w) for k, w in want.items()),
                 "predict": _rel(engine.predict(stage, params, rows, cols),
                                 dense_forward(stage, params, R, dot_scale=hp["dot_scale"])
                                 [rows, cols]),
                 "objective": [isinstance(o_loss, float), str(o_grad.dtype), o_grad.shape == x.shape,
                               abs(o_loss - loss) / abs(loss), _rel(o_grad, flatten(grads))],
                 "objective_into": [float(loss_into) == float(o_loss),
                                    bool(np.array_equal(g_into, o_grad))],
                 "refusals": _refusals(engine, params, stage),
                 "parameters": parameters_problems(engine, stage, params, rows, cols),
                 "workspace": _workspace(engine, stage, template),
                 "settings": engine.settings == settings(Config(dtype=np.dtype(dtype).name, **hp)),
                 "shape": list(engine.shape) == [m, n]}
            if stage == "finetune":
                r["conv_preactivation"] = _rel(engine.conv_preactivation(params),
                                               DenseEngine(R, **hp).conv_preactivation(params))
            if np.dtype(dtype) == np.float64:
                errors = []
                for _ in range(DIRECTIONS):
                    v = rng.standard_normal(x.size)
                    v /= np.linalg.norm(v)
                    numeric = (fun(x + FD_STEP * v)[0] - fun(x - FD_STEP * v)[0]) / (2 * FD_STEP)
                    errors.append(abs(numeric - o_grad @ v) / max(abs(o_grad @ v), 1e-300))
                r["fd"] = max(errors)
            report[f"{i}/{stage}"] = r
    return report


@early.job("cuda-sim")
def _run_simulator():
    """This file as a script under Numba's CUDA simulator (started early)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    return subprocess.run([*early.LOWER, sys.executable, os.path.abspath(__file__)], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cuda_sim_report():
    proc = early.result("cuda-sim")
    if proc.returncode == SKIP:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


IN_PROCESS = {"cpu": CpuEngine, "dense": DenseEngine,
              "sharded": lambda R, **kwargs: thread_engine(R, shares=3, **kwargs)}


@pytest.fixture(scope="module", params=ENGINES)
def engine_report(request):
    """(engine name, dtype, report) for each engine of ENGINES."""
    name, dtype = request.param.split("/")
    if name == "cuda-sim":
        return name, dtype, request.getfixturevalue("cuda_sim_report")[dtype]
    return name, dtype, measure(IN_PROCESS[name], np.dtype(dtype), PROBLEMS)


def test_loss_gradient_and_predictions_match_the_dense_reference(engine_report):
    name, dtype, report = engine_report
    for case, r in report.items():
        assert r["keys"] and r["dtypes"] == [dtype], case
        for what in ("loss", "grad", "predict"):
            assert r[what] < TOLERANCE[dtype], (case, what, r[what])


def test_gradient_matches_central_differences(engine_report):
    name, dtype, report = engine_report
    if dtype != "float64":
        pytest.skip("finite differences need float64")
    for case, r in report.items():
        assert r["fd"] < FD_TOLERANCE, (case, r["fd"])


def test_objective_is_what_scipy_needs(engine_report):
    name, dtype, report = engine_report
    for case, r in report.items():
        is_float, grad_dtype, same_shape, loss_err, grad_err = r["objective"]
        assert (is_float, grad_dtype, same_shape) == (True, "float64", True), case
        assert loss_err < TOLERANCE[dtype] and grad_err < TOLERANCE[dtype], case


def test_objective_into_writes_the_same_gradient_into_the_callers_vector(engine_report):
    name, dtype, report = engine_report
    for case, r in report.items():
        assert r["objective_into"] == [True, True], case


def test_misshaped_arrays_are_refused_by_name(engine_report):
    name, dtype, report = engine_report
    for case, r in report.items():
        assert all(r["refusals"].values()), (case, r["refusals"])


def test_the_parameters_handed_to_the_trainer_are_a_dict_or_the_whole_protocol(engine_report):
    """What parameters_in gives the trainer is a plain dict of the arrays
    placed, or base.RemoteParams that serve every use train.py makes of them."""
    name, dtype, report = engine_report
    for case, r in report.items():
        assert r["parameters"] == [], (case, r["parameters"])


def test_the_engine_s_workspace_runs_the_optimiser(engine_report):
    name, dtype, report = engine_report
    for case, r in report.items():
        is_workspace, error = r["workspace"]
        assert is_workspace and error < TOLERANCE[dtype], (case, r["workspace"])


def test_conv_preactivation_is_the_convolution_before_its_relu(engine_report):
    name, dtype, report = engine_report
    for case, r in report.items():
        if case.endswith("finetune"):
            assert r["conv_preactivation"] < TOLERANCE[dtype], (case, r["conv_preactivation"])


def test_every_engine_implements_the_whole_contract(cuda_sim_report):
    """Engine names every method the library calls, and each engine has all."""
    assert set(Engine.__abstractmethods__) == {"__call__", "objective_into", "predict",
                                               "conv_preactivation"}
    for cls in (CpuEngine, DenseEngine, ShardedEngine):
        assert issubclass(cls, Engine) and not cls.__abstractmethods__, cls
    assert cuda_sim_report["missing"] == []
    assert cuda_sim_report["ops"] == []           # CudaOps against network.Operations


@pytest.mark.parametrize("missing", ["__call__", "objective_into", "predict",
                                     "conv_preactivation"])
def test_an_engine_lacking_a_method_cannot_be_built(missing):
    methods = {name: lambda self, *args: None
               for name in Engine.__abstractmethods__ if name != missing}
    with pytest.raises(TypeError, match=missing):
        type("Partial", (Engine,), methods)()


def test_settings_and_shape(engine_report):
    name, dtype, report = engine_report
    assert all(r["settings"] and r["shape"] for r in report.values())


@pytest.mark.parametrize("optimizer", ["scipy", "numba"])
def test_fit_on_cuda_follows_fit_on_cpu(cuda_sim_report, optimizer):
    r = cuda_sim_report["fit"][optimizer]
    assert r["history_cpu"] == pytest.approx(r["history_cuda"], rel=TOLERANCE["float64"])
    assert r["params"] < TOLERANCE["float64"]


def test_make_engine_builds_the_cuda_engine_under_the_simulator(cuda_sim_report):
    assert cuda_sim_report["engine"] == "CudaEngine"


def test_unknown_device_is_a_value_error():
    with pytest.raises(ValueError, match="device must be one of"):
        make_engine(sp.csr_matrix(np.eye(3) + 1), Config(), device="gpu")


def test_missing_cuda_is_a_clear_error():
    if cuda_unavailable() is None:
        pytest.skip("CUDA is available in this process")
    with pytest.raises(ValueError, match=r"glocalk-np\[cuda\]|no CUDA GPU found"):
        make_engine(sp.csr_matrix(np.eye(3) + 1), Config(), device="cuda")


def test_fit_refuses_an_engine_built_with_other_settings():
    from glocalk_np.train import fit
    R = sp.csr_matrix(np.eye(4) + 1)
    config = Config(n_hidden=3, epochs_pretrain=1, epochs_finetune=0)
    with pytest.raises(ValueError, match="the engine was built with"):
        fit(R, config, engine=make_engine(R, Config(lambda_2=1.0)))


# ----- the script run under the simulator ------------------------------------
def _patch_simulator():
    """Two properties of the simulator, not of the kernels, worked around here.
    Its block manager busy-polls for threads waiting in syncthreads, so a short
    thread switch interval makes it far faster. Its cuda.shared.array looks up
    the block's array for the calling line and then stores a new one without a
    lock, so a thread switch in between gives threads of one block different
    arrays: replace it by the same lookup (per launch and call site) under a lock."""
    import threading

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    sys.setswitchinterval(1e-4)
    lock = threading.Lock()

    def array(self, shape, dtype):
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        with lock:
            arrays = self.__dict__.setdefault("_locked_arrays", {})
            if site not in arrays:
                arrays[site] = np.empty(shape, dtype)
            return arrays[site]
    kernelapi.FakeCUDAShared.array = array


def _fit_both():
    """One short epoch of each stage through the trainer on either engine,
    with either optimiser (numba on the CUDA engine: the vectors on the device)."""
    from glocalk_np.train import fit

    R, _, hp = smooth_problem(SIM_PROBLEMS[0])
    R = sp.csr_matrix(R)
    out = {}
    for optimizer in ("scipy", "numba"):
        config = Config(n_hidden=4, n_layers=1, kernel_dim=3, epochs_pretrain=1,
                        epochs_finetune=1, iters_pretrain=3, iters_finetune=3, dtype="float64",
                        optimizer=optimizer, **hp)
        states = {dev: fit(R, config, engine=make_engine(R, config, device=dev))
                  for dev in ("cpu", "cuda")}
        out[optimizer] = {f"history_{dev}": [r.train_rmse for r in s.history]
                          for dev, s in states.items()}
        out[optimizer]["params"] = max(_rel(states["cuda"].params[k], v)
                                       for k, v in states["cpu"].params.items())
    return out


def main():
    try:
        _patch_simulator()
    except Exception as exc:
        print(f"Numba's CUDA simulator cannot be imported or set up: {exc!r}")
        sys.exit(SKIP)
    from glocalk_np.engines.cuda import CudaEngine, CudaOps

    report = {dtype: measure(CudaEngine, np.dtype(dtype), SIM_PROBLEMS)
              for dtype in ("float64", "float32")}
    R = sp.csr_matrix(smooth_problem(SIM_PROBLEMS[0])[0])
    report["engine"] = type(make_engine(R, Config(), device="cuda")).__name__
    report["missing"] = sorted(CudaEngine.__abstractmethods__) if issubclass(
        CudaEngine, Engine) else ["not an Engine"]
    report["ops"] = operations_problems(CudaOps)
    report["fit"] = _fit_both()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
