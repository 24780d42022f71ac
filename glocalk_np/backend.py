"""The one place where the (loss, gradient) engine's device is chosen.

'cpu' (the default) is GLocalKLoss; 'cuda' is CudaGLocalKLoss, which needs the
optional extra (pip install 'glocalk-np[cuda]') and an NVIDIA GPU, or Numba's
CUDA simulator (NUMBA_ENABLE_CUDASIM=1, for tests). numba.cuda is imported
only when 'cuda' is asked for, so the package never needs it otherwise.
"""
from .model import GLocalKLoss

DEVICES = ("cpu", "cuda")


def make_loss(train, config, device="cpu"):
    """The engine for the sparse items x users matrix ``train`` with the
    hyper-parameters of ``config`` (a train.Config) on ``device``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    kwargs = dict(lambda_2=config.lambda_2, lambda_s=config.lambda_s,
                  dot_scale=config.dot_scale, dtype=config.dtype)
    if device == "cpu":
        return GLocalKLoss(train, **kwargs)
    reason = cuda_unavailable()
    if reason is not None:
        raise ValueError(f"device='cuda' is unavailable: {reason}")
    from .cuda_model import CudaGLocalKLoss
    return CudaGLocalKLoss(train, **kwargs)


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
