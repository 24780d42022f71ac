"""GLocal-K (Han et al., CIKM 2021) in NumPy/SciPy with sparse Numba kernels."""
import os

# OpenBLAS's idle threads spin for about 2^28 cycles after each GEMM and take
# the cores from the Numba kernels that run next; a short spin made one ML-1M
# pre-training evaluation 1.5x faster on 2 cores. Effective only when this
# package is imported before NumPy; an explicit setting is left alone.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# The other way round, the OpenMP threads of Numba's parallel kernels spin
# after each kernel and slow the BLAS GEMM that follows (three h x h GEMMs
# took 39 ms after a kernel instead of 31): sleeping threads made an ML-1M
# pre-training evaluation 1.08x and an ML-100K one 1.25x faster on 2 cores.
# Read when Numba first loads its OpenMP layer, i.e. at the first kernel.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def __getattr__(name):
    """``from glocalk_np import GLocalK`` without loading NumPy, SciPy and
    Numba at ``import glocalk_np`` (the settings above must come first), and
    ``__version__`` without importlib.metadata (30 ms the command's signal
    handlers would wait for)."""
    if name == "GLocalK":
        from .estimator import GLocalK
        return GLocalK
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("glocalk-np")
        except PackageNotFoundError:     # run from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'glocalk_np' has no attribute {name!r}")
