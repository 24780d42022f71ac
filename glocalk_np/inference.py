"""The network's forward pass in NumPy and SciPy alone: what predict,
recommend and evaluate need from a saved model, with no Numba kernel to
compile (a fresh install or container answers in about a second instead of
compiling for fifteen; see BENCHMARKS.md "Inference without a compile").

It computes what the engines' output_factors do (network.py's forward pass,
docs/model.md §2-5), with library calls in place of the kernels: the same
arithmetic in the same dtype, summed in other orders, so it agrees with the
engines to that dtype's rounding. Training keeps the engines: this module
has no gradient.

Shapes: R is m items x n users with nnz ratings, h the hidden width, d the
kernel dimension, gk the global kernel's side.
"""
import numpy as np
import scipy.sparse as sp

from .params import layer_count, optimised


def output_factors(stage, params, R, dtype, dot_scale):
    """(H, WoutT, b), float64, such that the network's output at (item i,
    user j) is H[i] . WoutT[j] + b[j], for the ``stage`` network with
    ``params`` (checked by the caller) on the items x users CSR matrix ``R``
    of ratings in model units, computed in ``dtype``.
    Cost: the engines' forward pass: L n h d + nnz h (twice when fine-tuned,
    the second on the convolution's kept entries) + (L-2) m h^2."""
    dtype = np.dtype(dtype)
    P = {k: np.asarray(v, dtype=dtype) for k, v in optimised(stage, params).items()}
    L = layer_count(P)
    Weff = [effective_weight(P[f"W{l}"], P[f"U{l}"], P[f"V{l}"]) for l in range(L)]
    X = sp.csr_matrix(R, dtype=dtype)
    H = encode(X, P, Weff)
    if stage == "finetune":
        w_mean = Weff[-1].sum(axis=1, dtype=dtype) / dtype.type(R.shape[1])
        mu = H @ w_mean + P[f"b{L - 1}"].sum(dtype=dtype) / dtype.type(R.shape[1])
        gk = int(round(np.sqrt(P["C"].shape[1])))
        G = (dtype.type(dot_scale) * (mu @ P["C"])).reshape(gk, gk)
        H = encode(global_convolution(X, G), P, Weff)
    return tuple(np.array(a, dtype=np.float64) for a in (H, Weff[-1].T, P[f"b{L - 1}"]))


def effective_weight(W, U, V):
    """W * K with the local kernel K = max(0, 1 - |U_i - V_j|^2).
    Cost: n_in n_out (d + 3), one n_in x n_out array at a time."""
    dist = np.zeros(W.shape, dtype=W.dtype)
    for t in range(U.shape[1]):
        dist += np.square(U[:, t, None] - V[None, :, t])
    np.subtract(1, dist, out=dist)
    np.maximum(dist, 0, out=dist)
    return np.multiply(W, dist, out=dist)


def encode(X, P, Weff):
    """The last hidden layer's activations (m x h) of the sparse input X:
    sigmoid(X Weff0 + b0), then each hidden layer's GEMM."""
    H = sigmoid(X @ Weff[0] + P["b0"])
    for l in range(1, len(Weff) - 1):
        H = sigmoid(H @ Weff[l] + P[f"b{l}"])
    return H


def sigmoid(Z):
    """1 / (1 + e^-z) without overflow (e^z / (1 + e^z) below 0), in place."""
    e = np.exp(-np.abs(Z))
    return np.divide(np.where(Z >= 0, 1, e).astype(Z.dtype), 1 + e, out=Z)


def global_convolution(X, G):
    """The ReLU'd 'SAME' cross-correlation of the sparse X with the gk x gk
    kernel G, conv[i, j] = sum_ab G[a, b] X[i+a-r, j+b-r] (r = gk // 2, zero
    padding), as a sparse matrix of its positive entries: what the second
    pass reads. Summed in float64 and rounded once to X's dtype.
    Cost: gk^2 nnz, and a sort of that many entries."""
    m, n = X.shape
    r = G.shape[0] // 2
    C = X.tocoo()
    rows, cols, vals = [], [], []
    for a in range(G.shape[0]):
        for b in range(G.shape[1]):
            i, j = C.row - (a - r), C.col - (b - r)   # where X[p, q] lands for this tap
            inside = (i >= 0) & (i < m) & (j >= 0) & (j < n)
            rows.append(i[inside])
            cols.append(j[inside])
            vals.append(np.float64(G[a, b]) * C.data[inside])
    conv = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(m, n))
    conv.data[conv.data < 0] = 0
    conv.eliminate_zeros()
    return conv.astype(X.dtype)
