"""GLocal-K's loss and hand-written gradient on a sparse rating matrix (SPEC 2-3).

Shapes: R is m items x n users with nnz observed ratings, h the hidden width,
d the kernel dimension, L = n_layers hidden layers, s the number of entries
the ReLU keeps of the global convolution (at most the 3 x 3 neighbourhood of
the observed entries, about 27% of m x n on MovieLens).

Cost of one (loss, gradient) evaluation:
- pre-training: 4 sparse products over R (input layer forward and weight
  gradient, output layer prediction and its two gradients: 5 x nnz * h), 2(L-1)
  dense h x h GEMMs forward and 2 per layer backward (m * h^2 each), and the
  local kernels and their gradients (n_in * n_out * d per layer).
- fine-tuning: the first pass needs no output layer at all, only the item means
  of its output, mean_j(H W_eff + b) = H (W_eff 1) / n + mean(b), so it costs
  the hidden layers forward and backward (the backward input is rank one); the
  convolution costs nnz * gk^2; the second pass costs what pre-training does,
  with three sparse products over the s convolution entries instead of R.
Nothing dense of size m x n is ever built.
"""
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from ..kernels import cpu
from ..params import STAGES, check_for_matrix, flatten, layer, layer_count, unflatten
from ..sparse import Pattern

@dataclass
class _Layer:
    """One kernel layer in compute dtype, with its kernel and effective weight."""
    W: np.ndarray
    U: np.ndarray
    V: np.ndarray
    VT: np.ndarray          # V transposed, contiguous: the kernels' inner loops run over j
    b: np.ndarray
    K: np.ndarray
    Weff: np.ndarray


@dataclass
class _Conv:
    """The fine-tuning stage's first pass and global convolution."""
    hidden: list           # first-pass hidden activations, one m x h per layer
    w_mean: np.ndarray     # W_eff of the output layer averaged over users (h)
    mu: np.ndarray         # item means of the first pass's output (m)
    pre: np.ndarray        # convolution before the ReLU, on the neighbourhood pattern
    keep: np.ndarray       # pre > 0
    X: Pattern             # the kept entries: the second pass's sparse input
    x: np.ndarray          # their values


class CpuEngine:
    """(loss, gradient) of either stage for one training matrix.

    Set-up that depends only on the matrix (its index arrays, and the
    convolution's neighbourhood pattern on first use) is done once here, so
    a trainer calls this object once per L-BFGS evaluation.
    """

    def __init__(self, train, *, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float32):
        R = sp.csr_matrix(train)
        R.sum_duplicates()
        R.sort_indices()
        R.eliminate_zeros()
        if R.nnz == 0:
            raise ValueError("training matrix has no ratings")
        if not np.all(np.isfinite(R.data)) or R.data.min() <= 0:
            raise ValueError("ratings must be finite and > 0 (0 means missing)")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.R = Pattern.from_csr(R)
        self.values = R.data.astype(self.dtype)
        self.shape = R.shape
        self.lambda_2 = float(lambda_2)
        self.lambda_s = float(lambda_s)
        self.dot_scale = float(dot_scale)
        self._conv_pattern = {}
        self.settings = dict(lambda_2=self.lambda_2, lambda_s=self.lambda_s,
                             dot_scale=self.dot_scale, dtype=self.dtype)

    # ----- public ---------------------------------------------------------
    def __call__(self, stage, params):
        """Loss and a dict of gradients keyed like the optimised arrays: the
        layer parameters, and C for 'finetune'. Gradients are in compute dtype."""
        layers, reg = self._layers(params, stage)
        hidden, conv, C = self._forward(stage, params, layers)
        out = layers[-1]
        # output layer at the observed entries: residual S, dH = S W^T, dW^T = S^T H
        resid = np.empty(self.R.nnz, dtype=self.dtype)
        dH = np.empty_like(hidden[-1])
        cpu.output_layer(self.R.indptr, self.R.indices, self.values, hidden[-1],
                         _transposed(out.Weff), out.b, resid, dH)
        loss = 0.5 * float(np.dot(resid.astype(np.float64), resid)) + reg
        dWeff = [np.zeros_like(l.W) for l in layers[:-1]]
        db = [np.zeros_like(l.b) for l in layers]
        dWoutT = self.R.rmatmul(resid, hidden[-1])
        db[-1] += np.bincount(self.R.indices, resid, minlength=out.b.size)
        if stage == "pretrain":
            self._encode_backward(self.R, self.values, hidden, dH, layers, dWeff, db)
            grads = self._layer_grads(layers, dWeff + [_transposed(dWoutT)], db)
            return loss, grads

        dx = self._encode_backward(conv.X, conv.x, hidden, dH, layers, dWeff, db, want_dx=True)
        dpre = np.zeros_like(conv.pre)
        dpre[conv.keep] = dx
        dG = self._conv_kernel_grad(dpre, C.shape[1])
        dC = self.dot_scale * np.outer(conv.mu, dG)
        dmu = self.dot_scale * (C @ dG)
        # back through mu = H1 (W_eff 1) / n + mean(b) into the first pass
        n = out.b.size
        dWoutT += (conv.hidden[-1].T @ dmu) / n
        db[-1] += dmu.sum() / n
        self._encode_backward(self.R, self.values, conv.hidden, np.outer(dmu, conv.w_mean),
                              layers, dWeff, db)
        grads = self._layer_grads(layers, dWeff + [_transposed(dWoutT)], db)
        grads["C"] = dC
        return loss, grads

    def objective(self, stage, template):
        """The function scipy minimises: flat float64 x, laid out like
        ``template``, to (loss, flat float64 gradient)."""
        def fun(x):
            loss, grads = self(stage, unflatten(x, template))
            return loss, flatten(grads)
        return fun

    def predict(self, stage, params, rows, cols):
        """Predictions of the stage's network output at (item, user) pairs."""
        layers, _ = self._layers(params, stage)
        hidden, _, _ = self._forward(stage, params, layers)
        out = layers[-1]
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        pred = np.empty(rows.size, dtype=self.dtype)
        cpu.pair_dot(rows, cols, hidden[-1], _transposed(out.Weff), pred)
        return pred + out.b[cols]

    def conv_preactivation(self, params):
        """The global convolution before its ReLU, on the neighbourhood
        pattern of the ratings (where it can be non-zero): what the ReLU sees."""
        layers, _ = self._layers(params, "finetune")
        return self._convolve(layers, np.asarray(params["C"], dtype=self.dtype)).pre

    def _forward(self, stage, params, layers):
        """(hidden activations of the network's input, the convolution, C):
        the input is R for 'pretrain', the ReLU'd convolution of R for
        'finetune' (then with its first pass; else None, None)."""
        if stage == "pretrain":
            return self._encode(self.R, self.values, layers), None, None
        C = np.asarray(params["C"], dtype=self.dtype)
        conv = self._convolve(layers, C)
        return self._encode(conv.X, conv.x, layers), conv, C

    # ----- layers ---------------------------------------------------------
    def _layers(self, params, stage):
        """Each layer's arrays in compute dtype with K and W_eff, and the total
        regulariser lambda_s/2 sum K^2 + lambda_2/2 sum W^2 (float64 sums)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        check_for_matrix(params, stage, *self.R.shape)
        n_layers = layer_count(params)
        layers, reg = [], 0.0
        for l in range(n_layers):
            W, U, V, b = (np.ascontiguousarray(a, dtype=self.dtype) for a in layer(params, l))
            K, Weff = np.empty_like(W), np.empty_like(W)
            sq = np.empty((W.shape[0], 2))
            VT = np.ascontiguousarray(V.T)
            cpu.local_kernel(W, U, VT, K, Weff, sq)
            reg += 0.5 * (self.lambda_s * sq[:, 0].sum() + self.lambda_2 * sq[:, 1].sum())
            layers.append(_Layer(W, U, V, VT, b, K, Weff))
        return layers, reg

    def _layer_grads(self, layers, dWeff, db):
        """Gradients of W, U, V, b of every layer from dloss/dW_eff and dloss/db,
        the regulariser included. With dD = dloss/d|U_i - V_j|^2:
        dU = 2 (U * rowsum(dD) - dD V) (in the kernel), dV = 2 (V * colsum(dD) - dD^T U)."""
        t = self.dtype.type
        grads = {}
        for l, (lay, g) in enumerate(zip(layers, dWeff)):
            dW, dD, dU = np.empty_like(lay.W), np.empty_like(lay.W), np.empty_like(lay.U)
            cpu.local_kernel_grad(np.ascontiguousarray(g), lay.W, lay.K, lay.U, lay.VT,
                                  t(self.lambda_2), t(self.lambda_s), dW, dD, dU)
            grads[f"W{l}"] = dW
            grads[f"U{l}"] = dU
            grads[f"V{l}"] = 2 * (lay.V * dD.sum(axis=0)[:, None] - dD.T @ lay.U)
            grads[f"b{l}"] = db[l]
        return grads

    # ----- hidden layers --------------------------------------------------
    @staticmethod
    def _encode(X, x, layers):
        """Sigmoid hidden activations of the sparse input X (values x).
        Cost: nnz(X) * h + (L-1) * m * h^2."""
        H = X.matmul(x, layers[0].Weff)
        cpu.bias_sigmoid(H, layers[0].b)
        hidden = [H]
        for lay in layers[1:-1]:
            H = hidden[-1] @ lay.Weff
            cpu.bias_sigmoid(H, lay.b)
            hidden.append(H)
        return hidden

    @staticmethod
    def _encode_backward(X, x, hidden, dH, layers, dWeff, db, want_dx=False):
        """Back through the hidden layers from dloss/d(last hidden): adds into
        dWeff and db; returns dloss/dX at X's stored entries when asked.
        Cost: 2 nnz(X) * h (3 with dX) + 2 (L-1) * m * h^2."""
        partial = np.empty((numba.get_num_threads() * 4, dH.shape[1]), dtype=dH.dtype)
        for l in range(len(hidden) - 1, -1, -1):
            dZ = np.empty_like(dH)
            cpu.sigmoid_backward(dH, hidden[l], dZ, partial)
            db[l] += partial.sum(axis=0)
            if l > 0:
                dWeff[l] += hidden[l - 1].T @ dZ
                dH = dZ @ layers[l].Weff.T
            else:
                dWeff[0] += X.rmatmul(x, dZ)
                return X.sample(dZ, layers[0].Weff) if want_dx else None

    # ----- global kernel and convolution ------------------------------------
    def _neighbourhood(self, gk):
        """Output pattern of the gk x gk convolution and, per rating and kernel
        cell, the output position it feeds (built once per kernel size)."""
        if gk not in self._conv_pattern:
            S = self.R.neighbourhood(gk)
            nbr = cpu.conv_neighbours(self.R.indptr, self.R.indices, self.R.shape[1],
                                      S.indptr, S.indices, gk)
            self._conv_pattern[gk] = (S, nbr)
        return self._conv_pattern[gk]

    def _convolve(self, layers, C):
        """First pass, average pooling, global kernel G and the ReLU'd
        convolution of R with G, kept sparse (SPEC 3, steps 1-4)."""
        gk = int(round(np.sqrt(C.shape[1])))   # odd, checked by _layers
        hidden = self._encode(self.R, self.values, layers)
        out = layers[-1]
        w_mean = out.Weff.mean(axis=1)
        mu = hidden[-1] @ w_mean + out.b.mean()
        G = (self.dot_scale * (mu @ C)).reshape(gk, gk)
        S, nbr = self._neighbourhood(gk)
        pre = np.empty(S.nnz, dtype=self.dtype)
        cpu.conv_forward(self.R.indptr, self.values, nbr, S.indptr, G, pre)
        keep = pre > 0
        return _Conv(hidden, w_mean, mu, pre, keep, S.subset(keep), pre[keep])

    def _conv_kernel_grad(self, dpre, cells):
        """dloss/dG, flattened row-major (gk^2), from dloss/d(convolution)."""
        _, nbr = self._neighbourhood(int(round(np.sqrt(cells))))
        partial = np.empty((self.R.shape[0], cells))
        cpu.conv_kernel_grad(self.R.indptr, self.values, nbr, dpre, partial)
        return partial.sum(axis=0).astype(self.dtype)


def _transposed(A):
    """A.T as a C-contiguous array (the output layer reads W_eff by user)."""
    out = np.empty(A.shape[::-1], dtype=A.dtype)
    cpu.transpose(A, out)
    return out


def loss_and_grad(stage, params, train, *, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float32):
    """(loss, gradient dict) of ``stage`` ('pretrain' or 'finetune') at
    ``params`` for the sparse m x n training matrix ``train`` (items x users).
    For repeated calls build a CpuEngine once instead."""
    f = CpuEngine(train, lambda_2=lambda_2, lambda_s=lambda_s, dot_scale=dot_scale, dtype=dtype)
    return f(stage, params)
