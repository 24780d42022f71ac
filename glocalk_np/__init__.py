"""GLocal-K (Han et al., CIKM 2021) in NumPy/SciPy with sparse Numba kernels."""
import os

# OpenBLAS's idle threads spin for about 2^28 cycles after each GEMM and take
# the cores from the Numba kernels that run next; a short spin made one ML-1M
# pre-training evaluation 1.5x faster on 2 cores. Effective only when this
# package is imported before NumPy; an explicit setting is left alone.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
