"""The network's operations in NumPy and SciPy alone: network.py's Network
over them gives what predict, recommend, evaluate and fold-in need from a
saved model, with no Numba kernel to compile (a fresh install or container
answers in about a second instead of compiling for fifteen; see
BENCHMARKS.md "Inference without a compile").

The model is stated once, in network.py; NumpyOps is one more set of its
operations (the contract in network.Operations), with library calls in
place of the engines' kernels: the same arithmetic in the same dtype, summed
in other orders, so it agrees with the engines to that dtype's rounding.
Training keeps the engines; these operations are plain and unblocked, for
predictions from a fitted model and for one user's output layer (fold-in),
and complete, so that the tests hold them to the dense reference and to
central differences like every engine's.

Shapes: R is m items x n users with nnz ratings, h the hidden width, d the
kernel dimension, gk the global kernel's side.
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .hostops import HostOperations
from .network import Network
from .params import layer_count, optimised


@dataclass
class _Conv:
    """The ReLU'd convolution: X, x the entries it keeps (what the second
    pass reads), G the kernel that made it."""
    X: sp.csr_matrix
    x: np.ndarray
    G: np.ndarray


class NumpyOps(HostOperations):
    """network.Operations in NumPy and SciPy, on one process, for the items
    x users CSR matrix ``R`` (its data the ratings in model units, in the
    compute dtype)."""

    def __init__(self, R, lambda_2=0.0, lambda_s=0.0, dot_scale=1.0):
        self.R, self.values = R, R.data
        self.dtype, self.n_users = R.dtype, R.shape[1]
        self.lambda_2, self.lambda_s, self.dot_scale = lambda_2, lambda_s, dot_scale

    def empty(self, name, shape):
        return np.empty(shape, dtype=self.dtype)

    def zeros(self, name, shape):
        return np.zeros(shape, dtype=self.dtype)

    def local_kernel(self, W, U, V, K, Weff, loss):
        # Cost: n_in n_out (d + 3), one n_in x n_out array at a time.
        kernel_preactivation(U, V, out=K)
        np.maximum(K, 0, out=K)
        np.multiply(W, K, out=Weff)
        if loss is not None:
            loss.add(0.5 * (self.lambda_s * np.sum(np.square(K), dtype=np.float64)
                            + self.lambda_2 * np.sum(np.square(W), dtype=np.float64)))

    def transpose(self, A, out):
        out[...] = A.T

    def spmm(self, X, x, B, out):
        out[...] = _with_values(X, x) @ B                    # Cost: nnz(X) h

    def spmm_t(self, X, x, B, out, accumulate=False):
        product = _with_values(X, x).T @ B
        if accumulate:
            out += product
        else:
            out[...] = product

    def sddmm(self, X, A, B, out):
        rows, cols = _entries(X)
        out[...] = np.einsum("ij,ij->i", A[rows], B[cols])

    def bias_sigmoid(self, H, b):
        H += b
        # 1 / (1 + e^-z) without overflow: e^z / (1 + e^z) below 0
        e = np.exp(-np.abs(H))
        np.divide(np.where(H >= 0, 1, e).astype(H.dtype), 1 + e, out=H)

    def sigmoid_backward(self, dH, H, db):
        dH *= H * (1 - H)
        db += dH.sum(axis=0)

    def output_layer(self, H, WoutT, b, resid, dH, loss):
        # Cost: nnz h twice (the outputs at the ratings, then dH).
        rows, cols = _entries(self.R)
        resid[...] = np.einsum("ij,ij->i", H[rows], WoutT[cols]) + b[cols] - self.values
        dH[...] = _with_values(self.R, resid) @ WoutT
        loss.add(0.5 * np.dot(resid, resid))

    def user_sums(self, X, x, out):
        out += np.bincount(_entries(X)[1], weights=x, minlength=out.size).astype(out.dtype)

    def convolve(self, mu, C):
        """Summed in float64 and rounded once to the compute dtype.
        Cost: gk^2 nnz, and a sort of that many entries."""
        gk = int(round(np.sqrt(C.shape[1])))
        G = (self.dtype.type(self.dot_scale) * (mu @ C)).reshape(gk, gk)
        rows, cols, vals = [], [], []
        for (a, b), i, j, inside in _taps(self.R, gk):
            rows.append(i[inside])
            cols.append(j[inside])
            vals.append(np.float64(G[a, b]) * self.values[inside])
        conv = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=self.R.shape)
        conv.data[conv.data < 0] = 0
        conv.eliminate_zeros()
        X = conv.astype(self.dtype)
        return _Conv(X, X.data, G)

    def conv_backward(self, conv, dx):
        """dG[a, b]: the sum of dx over the kept entries, each times the
        rating its tap (a, b) read. Cost: gk^2 nnz lookups."""
        D = _with_values(conv.X, dx)
        dG = np.zeros(conv.G.shape, dtype=np.float64)
        for (a, b), i, j, inside in _taps(self.R, conv.G.shape[0]):
            dG[a, b] = np.asarray(D[i[inside], j[inside]]).ravel() @ self.values[inside]
        return dG.ravel().astype(self.dtype)

    def layer_grad(self, dWeff, W, U, V, K, dW, dU, dV):
        # K = max(0, 1 - D) for the squared distances D; dD is nil where K is.
        # Cost: n_in n_out (d + 4).
        np.multiply(dWeff, K, out=dW)
        dW += self.lambda_2 * W
        dD = -(dWeff * W + self.lambda_s * K) * (K > 0)
        np.multiply(2, U * dD.sum(axis=1)[:, None] - dD @ V, out=dU)
        np.multiply(2, V * dD.sum(axis=0)[:, None] - dD.T @ U, out=dV)

    def pair_outputs(self, rows, cols, H, WoutT, b, out):
        out[...] = np.einsum("ij,ij->i", H[rows], WoutT[cols]) + b[cols]


def kernel_preactivation(U, V, out=None):
    """1 - |U_i - V_j|^2 (n_in x n_out, into ``out`` if given): the local
    kernel before its max(0, .)."""
    out = np.empty((U.shape[0], V.shape[0]), U.dtype) if out is None else out
    out.fill(0)
    for t in range(U.shape[1]):
        out += np.square(U[:, t, None] - V[None, :, t])
    return np.subtract(1, out, out=out)


def _with_values(X, x):
    """The CSR matrix of X's pattern holding the values ``x`` (X itself
    when they are its own)."""
    return X if x is X.data else sp.csr_matrix((x, X.indices, X.indptr), shape=X.shape)


def _entries(X):
    """(rows, cols) of a CSR matrix's stored entries, in its order."""
    return np.repeat(np.arange(X.shape[0]), np.diff(X.indptr)), X.indices


def _taps(R, gk):
    """Per cell (a, b) of a gk x gk kernel: where each rating R[p, q] lands
    in the 'SAME' cross-correlation, (i, j) = (p - (a - r), q - (b - r))
    with r = gk // 2, and whether inside the matrix."""
    m, n = R.shape
    r = gk // 2
    rows, cols = _entries(R)
    for a in range(gk):
        for b in range(gk):
            i, j = rows - (a - r), cols - (b - r)
            yield (a, b), i, j, (i >= 0) & (i < m) & (j >= 0) & (j < n)


def output_factors(stage, params, R, dtype, dot_scale):
    """(H, WoutT, b), float64, such that the network's output at (item i,
    user j) is H[i] . WoutT[j] + b[j], for the ``stage`` network with
    ``params`` (checked by the caller) on the items x users CSR matrix ``R``
    of ratings in model units, computed in ``dtype`` by Network.forward.
    Cost: the engines' forward pass: L n h d + nnz h (twice when fine-tuned,
    the second on the convolution's kept entries) + (L-2) m h^2."""
    dtype = np.dtype(dtype)
    P = {k: np.asarray(v, dtype=dtype) for k, v in optimised(stage, params).items()}
    fwd = Network(NumpyOps(sp.csr_matrix(R, dtype=dtype), dot_scale=dot_scale)).forward(stage, P)
    return tuple(np.array(a, dtype=np.float64)
                 for a in (fwd.hidden[-1], fwd.WoutT, P[f"b{layer_count(P) - 1}"]))
