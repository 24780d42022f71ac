"""A dense NumPy GLocal-K in the compute dtype: the baseline the sparse engine is timed against.

It computes the model (docs/model.md §2-4) the way the official TensorFlow graph does: the rating
matrix, the mask, the network's output and every gradient flowing back into
it are full m x n arrays; all products are BLAS GEMMs (including R^T dZ and
the full output layer); the 'SAME' cross-correlation is nine shifted-slice
multiply-adds; the backward of the item mean broadcasts dmu / n into an
m x n matrix and runs the first pass's full backward. It is written as a
competent dense implementation would be: float32 by default, in-place
elementwise work, m x n buffers reused, no Python loop over entries.
Memory: 3 m x n arrays for pre-training, 7 for fine-tuning.
"""
import glocalk_np  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from glocalk_np.params import STAGES, flatten, layer, layer_count, unflatten



class DenseGLocalK:
    """(loss, gradient dict) of either stage on a dense copy of the training matrix."""

    def __init__(self, R, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        if sp.issparse(R):   # straight into the compute dtype: no float64 m x n copy
            coo = sp.coo_matrix(R)
            self.R = np.zeros(coo.shape, dtype=self.dtype)
            self.R[coo.row, coo.col] = coo.data
        else:
            self.R = np.ascontiguousarray(R, dtype=self.dtype)
        self.M = (self.R > 1e-12).astype(self.dtype)
        self.lambda_2, self.lambda_s, self.dot_scale = lambda_2, lambda_s, dot_scale

    def __call__(self, stage, params):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        layers = [self._layer(*layer(params, l)) for l in range(layer_count(params))]
        reg = sum(0.5 * (self.lambda_s * _sumsq(K) + self.lambda_2 * _sumsq(W))
                  for W, _, _, _, K, _ in layers)
        dWeff = [None] * len(layers)
        db = [None] * len(layers)
        R = self.R
        if stage == "pretrain":
            acts = _forward(R, layers)
            loss = self._residual(acts[-1])
            _backward(R, acts, layers, dWeff, db)
            grads = self._layer_grads(layers, dWeff, db)
            return loss + reg, grads

        C = np.asarray(params["C"], dtype=self.dtype)
        gk = int(round(np.sqrt(C.shape[1])))
        acts1 = _forward(R, layers)
        buf = acts1.pop()                           # first-pass output: only its item means are used
        mu = buf.mean(axis=1)
        G = (self.dot_scale * (mu @ C)).reshape(gk, gk)
        S, Rg = np.empty_like(R), np.empty_like(R)
        _xcorr_same(R, G, out=S, scratch=Rg)
        np.maximum(S, 0, out=Rg)
        acts2 = _forward(Rg, layers)
        loss = self._residual(acts2[-1])
        dS = _backward(Rg, acts2, layers, dWeff, db, want_dx=True)
        del acts2, Rg
        dS *= S > 0
        del S
        dg = _xcorr_kernel_grad(R, dS, gk)
        del dS
        dmu = self.dot_scale * (C @ dg)
        buf[...] = (dmu / R.shape[1])[:, None]      # d mean / d Y1, materialised as the graph does
        acts1.append(buf)
        _backward(R, acts1, layers, dWeff, db)
        grads = self._layer_grads(layers, dWeff, db)
        grads["C"] = self.dot_scale * np.outer(mu, dg)
        return loss + reg, grads

    def objective(self, stage, template):
        """flat float64 x (laid out like ``template``) -> (loss, flat float64
        gradient): the function scipy minimises, as the sparse engine's."""
        def fun(x):
            loss, grads = self(stage, unflatten(x, template))
            return loss, flatten(grads)
        return fun

    def _layer(self, W, U, V, b):
        """(W, U, V, b, K, W_eff) in compute dtype; K = max(0, 1 - |U_i - V_j|^2)
        through one GEMM: |U_i - V_j|^2 = |U_i|^2 + |V_j|^2 - 2 U_i.V_j."""
        W, U, V, b = (np.asarray(a, dtype=self.dtype) for a in (W, U, V, b))
        K = U @ V.T
        K *= 2
        K -= np.einsum("ij,ij->i", U, U)[:, None]
        K -= np.einsum("ij,ij->i", V, V)[None, :]
        K += 1
        np.maximum(K, 0, out=K)
        return W, U, V, b, K, W * K

    def _residual(self, out):
        """Turn the network output into the masked residual M (P - R) in place
        (it is dloss/dP); return the data term 1/2 |M (P - R)|^2."""
        out -= self.R
        out *= self.M
        return 0.5 * _sumsq(out)

    def _layer_grads(self, layers, dWeff, db):
        """dW, dU, dV, db per layer from dloss/dW_eff, with the regulariser."""
        grads = {}
        for l, ((W, U, V, _, K, _), g) in enumerate(zip(layers, dWeff)):
            dW = g * K
            dW += self.lambda_2 * W
            dK = g                                       # reuses dW_eff's storage
            dK *= W
            dK += self.lambda_s * K
            dK *= K > 0                                  # dloss/dK, through max(0, .)
            # K = 1 - |U_i - V_j|^2 where active: dU = 2 (dK V - U rowsum dK)
            dU = dK @ V
            dU -= U * dK.sum(axis=1)[:, None]
            dV = dK.T @ U
            dV -= V * dK.sum(axis=0)[:, None]
            grads[f"W{l}"], grads[f"U{l}"], grads[f"V{l}"], grads[f"b{l}"] = dW, 2 * dU, 2 * dV, db[l]
        return grads


def _sumsq(a):
    """Sum of squares of a 2-D array: row sums in the array's dtype, added in float64."""
    return float(np.einsum("ij,ij->i", a, a).sum(dtype=np.float64))


def _forward(X, layers):
    """Activations of every layer for the input X: sigmoid hidden layers, identity output."""
    acts = []
    for l, (_, _, _, b, _, Weff) in enumerate(layers):
        Z = X @ Weff
        Z += b
        if l < len(layers) - 1:
            expit(Z, out=Z)
        acts.append(Z)
        X = Z
    return acts


def _backward(X, acts, layers, dWeff, db, want_dx=False):
    """Back through one pass from dloss/d(output), held in acts[-1] (consumed);
    adds into dWeff and db; returns dloss/dX when asked."""
    dZ = acts[-1]
    for l in range(len(layers) - 1, -1, -1):
        if l < len(layers) - 1:                     # sigmoid: dZ = dY * Y * (1 - Y)
            Y = acts[l]
            dY, dZ = dZ, np.subtract(1, Y)
            dZ *= Y
            dZ *= dY
        inp = acts[l - 1] if l > 0 else X
        _accumulate(dWeff, l, inp.T @ dZ)
        _accumulate(db, l, dZ.sum(axis=0))
        if l > 0 or want_dx:
            dZ = dZ @ layers[l][5].T
    return dZ if want_dx else None


def _accumulate(acc, l, value):
    if acc[l] is None:
        acc[l] = value
    else:
        acc[l] += value


def _shifts(offset, size):
    """(output slice, input slice) of out[i] += x[i + offset] within [0, size)."""
    return (slice(max(0, -offset), size - max(0, offset)),
            slice(max(0, offset), size - max(0, -offset)))


def _xcorr_same(X, G, out, scratch):
    """out = TF conv2d 'SAME' cross-correlation of the image X with the odd
    square kernel G: out[i, j] = sum_ab G[a, b] X[i + a - r, j + b - r]."""
    gk = G.shape[0]
    r = gk // 2
    m, n = X.shape
    np.multiply(X, G[r, r], out=out)
    for a in range(gk):
        for b in range(gk):
            if a == r and b == r:
                continue
            (oi, xi), (oj, xj) = _shifts(a - r, m), _shifts(b - r, n)
            o, t = out[oi, oj], scratch[oi, oj]
            np.multiply(X[xi, xj], G[a, b], out=t)
            o += t


def _xcorr_kernel_grad(X, dout, gk):
    """dloss/dG of the cross-correlation, flattened row-major (gk^2, float64 sums
    of per-row dot products)."""
    r = gk // 2
    m, n = X.shape
    dg = np.empty(gk * gk, dtype=X.dtype)
    for a in range(gk):
        for b in range(gk):
            (oi, xi), (oj, xj) = _shifts(a - r, m), _shifts(b - r, n)
            dg[a * gk + b] = np.einsum("ij,ij->i", dout[oi, oj], X[xi, xj]).sum(dtype=np.float64)
    return dg
