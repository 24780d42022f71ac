"""The operations whose host implementation is the same NumPy call on every
engine that keeps its arrays in host memory: the CPU engine's (CpuOps,
engines/cpu.py, whose other operations are Numba kernels) and the fitted
model's (NumpyOps, inference.py, whose other operations are NumPy and
SciPy). Each is network.Operations' contract; ``n_users`` is what means
over users divide by (all of them, also on a share)."""
import numpy as np

from .network import Operations


class HostLoss:
    """A float64 sum on the host."""

    def __init__(self):
        self.value = 0.0

    def add(self, value):
        self.value += value


class HostOperations(Operations):
    """The host operations of one process; a share overrides ``leader``,
    ``n_users`` and ``reduce``."""

    leader = True     # one host holds every user: it counts every term and sums nothing

    def new_loss(self):
        return HostLoss()

    def gemm(self, A, B, out, trans_a=False, trans_b=False, accumulate=False):
        a, b = (A.T if trans_a else A), (B.T if trans_b else B)
        if accumulate:
            out += a @ b
        else:
            np.matmul(a, b, out=out)

    def weight_means(self, Weff_out, WoutT, b):
        return Weff_out.sum(axis=1) / self.n_users, np.array([b.sum() / self.n_users])

    def item_means(self, H, w_mean, b_mean):
        return H @ w_mean + b_mean[0]

    def global_kernel_grad(self, mu, C, dG, dC, dmu):
        np.multiply(self.dot_scale, np.outer(mu, dG), out=dC)
        np.multiply(self.dot_scale, C @ dG, out=dmu)

    def mean_backward(self, H, dmu, w_mean, dWoutT, db_out, dH):
        dWoutT += (H.T @ dmu) / self.n_users
        db_out += dmu.sum() / self.n_users
        np.outer(dmu, w_mean, out=dH)

    @staticmethod
    def reduce(name, a):
        """One process holds every user: nothing to sum."""
        return a
