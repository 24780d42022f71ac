"""Engines compute GLocal-K's loss, gradient and predictions for one
training matrix; this is the one place where an engine's device is chosen.

'cpu' (the default) is CpuEngine; 'cuda' is CudaEngine, which needs the
optional extra (pip install 'glocalk-np[cuda]') and an NVIDIA GPU, or Numba's
CUDA simulator (NUMBA_ENABLE_CUDASIM=1, for tests); 'dask' is DaskEngine
(cluster.py), which needs the 'dask' extra and a running dask.distributed
Client (the current one: distributed.default_client()). Every engine is
imported only when asked for: the package never needs numba.cuda or dask
otherwise, and importing it (or base.py, for EngineFailure) loads no Numba.

What every engine provides, and all that the library calls on one, is the
abstract base class Engine in base.py.
"""
from ..config import DEVICES
from .base import Engine, EngineFailure, engine_settings

__all__ = ["DEVICES", "Engine", "EngineFailure", "cuda_unavailable", "make_engine", "settings"]


def settings(config):
    """What an engine is built with, from a config.Config (engine_settings)."""
    return engine_settings(config.lambda_2, config.lambda_s, config.dot_scale, config.dtype)


def make_engine(train, config, device="cpu"):
    """The engine for the sparse items x users matrix ``train`` with the
    hyper-parameters of ``config`` (a config.Config) on ``device``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    kwargs = settings(config)
    if device == "cpu":
        from .cpu import CpuEngine
        return CpuEngine(train, **kwargs)
    if device == "dask":
        return _dask_engine(train, config, kwargs)
    reason = cuda_unavailable()
    if reason is not None:
        raise ValueError(f"device='cuda' is unavailable: {reason}")
    from .cuda import CudaEngine
    return CudaEngine(train, **kwargs)


def _dask_engine(train, config, kwargs):
    """The DaskEngine on the current dask.distributed Client."""
    try:
        from distributed import default_client
    except ImportError as exc:
        raise ValueError(f"device='dask' needs dask.distributed ({exc}): "
                         "pip install 'glocalk-np[dask]'") from None
    try:
        client = default_client()
    except ValueError:
        raise ValueError("device='dask' needs a running dask.distributed Client: "
                         "distributed.Client('tcp://HOST:8786') (or Client(LocalCluster())) "
                         "before fit, or --scheduler / --local-workers on the command "
                         "line") from None
    from .cluster import DaskEngine
    return DaskEngine(train, client=client, halo=config.gk_size // 2, **kwargs)


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
