"""The CUDA engine against the CPU engine, under Numba's CUDA simulator; and
the backend switch.

The simulator must be on before numba.cuda is first imported, so the
comparisons run in a fresh interpreter (this file run as a script, with
NUMBA_ENABLE_CUDASIM=1) that prints the relative errors as one JSON line.
The problems are tiny (the simulator runs every thread as a Python thread)
and drawn away from the kinks of max(0, .) and relu (tests/problems.py).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from glocalk_np.engines import cuda_unavailable, make_engine
from glocalk_np.params import STAGES
from glocalk_np.train import Config

# (m, n, n_hidden, d, n_layers, density, lambda_2, lambda_s, dot_scale, seed), as in problems.py
SPECS = {"L1": (7, 9, 4, 3, 1, 0.3, 0.5, 0.2, 4.0, 0),
         "L2": (8, 7, 4, 3, 2, 0.4, 0.5, 0.2, 3.0, 4)}
# float64 measured 2e-15 at most (summation order); float32 4e-7
FLOAT64_AGREEMENT = 1e-12
SKIP = 77  # the script's exit status when the simulator itself cannot be imported


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == SKIP:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("problem", SPECS)
def test_loss_and_gradient_match_cpu(report, problem, stage):
    r = report[f"{problem}/float64/{stage}"]
    assert r["keys_match"]
    assert r["loss"] < FLOAT64_AGREEMENT
    for k, err in r["grads"].items():
        assert err < FLOAT64_AGREEMENT, k


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("problem", SPECS)
def test_objective_is_flat_float64(report, problem, stage):
    r = report[f"{problem}/float64/{stage}"]
    assert r["objective_types"] == ["float", "float64", 1]
    assert r["objective_loss"] < FLOAT64_AGREEMENT
    assert r["objective_grad"] < FLOAT64_AGREEMENT


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("problem", SPECS)
def test_predict_matches_cpu(report, problem, stage):
    assert report[f"{problem}/float64/{stage}"]["predict"] < FLOAT64_AGREEMENT


@pytest.mark.parametrize("stage", STAGES)
def test_float32_close_to_cpu_float32(report, stage):
    r = report[f"L2/float32/{stage}"]
    assert r["grad_dtype"] == "float32"
    assert r["loss"] < 1e-7
    assert max(r["grads"].values()) < 1e-5


def test_backend_builds_the_cuda_engine_under_the_simulator(report):
    assert report["backend"] == "CudaEngine"


def test_fit_on_cuda_follows_fit_on_cpu(report):
    r = report["fit"]
    assert r["history_cpu"] == pytest.approx(r["history_cuda"], rel=FLOAT64_AGREEMENT)
    assert r["params"] < FLOAT64_AGREEMENT


def test_unknown_device_is_a_value_error():
    with pytest.raises(ValueError, match="device must be one of"):
        make_engine(sp.csr_matrix(np.eye(3) + 1), Config(), device="gpu")


def test_missing_cuda_is_a_clear_error():
    if cuda_unavailable() is None:
        pytest.skip("CUDA is available in this process")
    with pytest.raises(ValueError, match=r"glocalk-np\[cuda\]|no CUDA GPU found"):
        make_engine(sp.csr_matrix(np.eye(3) + 1), Config(), device="cuda")


# ----- the script run under the simulator ------------------------------------
def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300))


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


def _compare(cpu, gpu, stage, params, R):
    """Relative errors of ``gpu`` against ``cpu`` at ``params``."""
    from glocalk_np.params import flatten, optimised

    loss, grads = cpu(stage, params)
    g_loss, g_grads = gpu(stage, params)
    template = optimised(stage, params)
    o_loss, o_grad = gpu.objective(stage, template)(flatten(template))
    rows, cols = np.divmod(np.arange(R.size), R.shape[1])
    return {
        "loss": abs(g_loss - loss) / abs(loss),
        "keys_match": list(g_grads) == list(grads),
        "grads": {k: _rel(g_grads[k], grads[k]) for k in grads},
        "grad_dtype": str(next(iter(g_grads.values())).dtype),
        "objective_types": [type(o_loss).__name__, str(o_grad.dtype), o_grad.ndim],
        "objective_loss": abs(o_loss - loss) / abs(loss),
        "objective_grad": _rel(o_grad, flatten(grads)),
        "predict": _rel(gpu.predict(stage, params, rows, cols),
                        cpu.predict(stage, params, rows, cols)),
    }


def main():
    try:
        _patch_simulator()
    except Exception as exc:
        print(f"Numba's CUDA simulator cannot be imported or set up: {exc!r}")
        sys.exit(SKIP)
    from problems import smooth_problem

    from glocalk_np.engines.cuda import CudaEngine
    from glocalk_np.engines.cpu import CpuEngine

    report = {}
    for name, spec in SPECS.items():
        R, params, hp = smooth_problem(spec)
        for dtype in (np.float64, np.float32) if name == "L2" else (np.float64,):
            cpu = CpuEngine(sp.csr_matrix(R), dtype=dtype, **hp)
            gpu = CudaEngine(sp.csr_matrix(R), dtype=dtype, **hp)
            for stage in STAGES:
                report[f"{name}/{np.dtype(dtype).name}/{stage}"] = _compare(cpu, gpu, stage, params, R)
    config = Config(lambda_2=hp["lambda_2"], lambda_s=hp["lambda_s"], dot_scale=hp["dot_scale"])
    report["backend"] = type(make_engine(sp.csr_matrix(R), config, device="cuda")).__name__
    report["fit"] = _fit_both(R, hp)
    print(json.dumps(report))


def _fit_both(R, hp):
    """One short epoch of each stage through the trainer on either engine."""
    from glocalk_np.train import fit

    config = Config(n_hidden=4, n_layers=1, kernel_dim=3, epochs_pretrain=1, epochs_finetune=1,
                    iters_pretrain=3, iters_finetune=3, dtype="float64", **hp)
    R = sp.csr_matrix(R)
    states = {dev: fit(R, config, engine=make_engine(R, config, device=dev)) for dev in ("cpu", "cuda")}
    out = {f"history_{dev}": [r.train_rmse for r in s.history] for dev, s in states.items()}
    out["params"] = max(_rel(states["cuda"].params[k], v) for k, v in states["cpu"].params.items())
    return out


if __name__ == "__main__":
    main()
