"""Engines compute GLocal-K's loss, gradient and predictions for one
training matrix; this is the one place where an engine's device is chosen.

'cpu' (the default) is CpuEngine; 'cuda' is CudaEngine, which needs the
optional extra (pip install 'glocalk-np[cuda]') and an NVIDIA GPU, or Numba's
CUDA simulator (NUMBA_ENABLE_CUDASIM=1, for tests). numba.cuda is imported
only when 'cuda' is asked for, so the package never needs it otherwise.

What every engine provides (the trainer, the estimator, gradcheck and the
benchmarks use nothing else):
- ``settings``: the dict settings(config) it was built with, and ``shape``,
  the training matrix's (n_items, n_users);
- ``engine(stage, params) -> (loss, gradients)``: ``params`` a dict of
  arrays (params.py's layout), the gradients a dict of the arrays that
  params.optimised(stage, params) names, in compute dtype;
- ``engine.objective(stage, template) -> fun``, where ``fun(x)`` takes the
  flat float64 vector laid out like ``template`` and returns (loss, flat
  float64 gradient): what scipy.optimize.minimize calls;
- ``engine.objective_into(stage, template) -> fg``, where ``fg(x, g)``
  writes that gradient into the float64 array ``g`` and returns the loss:
  what lbfgsb.minimize calls, with x and g host arrays or, for the vectors
  of ``engine.workspace(n, maxcor)`` (where the engine keeps lbfgsb's
  vectors: host memory, or the GPU's), that workspace's arrays;
- ``engine.predict(stage, params, rows, cols)``: the network's outputs at
  (item position, user position) pairs;
- ``engine.output_factors(stage, params) -> (H, WoutT, b)``: float64 host
  arrays with output (i, j) = H[i] . WoutT[j] + b[j], for every pair at once.
Bad shapes raise ValueError naming the array (params.check_for_matrix).
"""
import numpy as np

from .cpu import CpuEngine

DEVICES = ("cpu", "cuda")


def settings(config):
    """What an engine is built with, from a train.Config: the loss's
    penalties and scale, and the compute dtype."""
    return dict(lambda_2=float(config.lambda_2), lambda_s=float(config.lambda_s),
                dot_scale=float(config.dot_scale), dtype=np.dtype(config.dtype))


def make_engine(train, config, device="cpu"):
    """The engine for the sparse items x users matrix ``train`` with the
    hyper-parameters of ``config`` (a train.Config) on ``device``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    kwargs = settings(config)
    if device == "cpu":
        return CpuEngine(train, **kwargs)
    reason = cuda_unavailable()
    if reason is not None:
        raise ValueError(f"device='cuda' is unavailable: {reason}")
    from .cuda import CudaEngine
    return CudaEngine(train, **kwargs)


def cuda_unavailable():
    """None when the CUDA engine can run in this process (a GPU, or the
    simulator), else a one-line reason that says what to do."""
    extra = "install the CUDA extra: pip install 'glocalk-np[cuda]'"
    try:
        from numba import cuda
    except Exception as exc:  # numba-cuda without cuda-bindings raises ImportError
        return f"numba.cuda cannot be imported ({exc}); {extra}"
    if cuda.is_available():
        return None
    why = " ".join(str(cuda.cuda_error() or "").split())
    hint = "" if getattr(cuda, "implementation", "") == "NVIDIA" else f"; {extra}"
    return f"no CUDA GPU found ({why or 'no device'}){hint}"
