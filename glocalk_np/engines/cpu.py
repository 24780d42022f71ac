"""The CPU engine: network.py's operations with Numba CPU kernels
(kernels/cpu.py) and NumPy/BLAS on arrays in host memory.

Shapes: R is m items x n users with nnz observed ratings, h the hidden width,
d the kernel dimension, L kernel layers, s the number of entries the ReLU
keeps of the global convolution (at most the gk x gk neighbourhood of the
observed entries, about 27% of m x n on MovieLens for gk = 3).

Cost of one (loss, gradient) evaluation (docs/model.md §7):
- pre-training: 5 sparse products over R (input layer forward and weight
  gradient, output layer prediction and its two gradients: 5 x nnz * h), the
  L - 2 dense h x h GEMMs forward and two per such layer backward (m * h^2
  each), and the local kernels and their gradients (n_in * n_out * d per layer).
- fine-tuning: the first pass needs no output layer at all, only the item means
  of its output, so it costs the hidden layers forward and backward (the
  backward input is rank one); the convolution costs nnz * gk^2; the second
  pass costs what pre-training does, with three sparse products over the s
  kept convolution entries instead of R (compacted by Pattern.positive: two
  sweeps over the neighbourhood and one over the kept entries cost less than
  one product over the dropped entries).
Nothing dense of size m x n is ever built.
"""
from dataclasses import dataclass

import numba
import numpy as np

from ..kernels import cpu
from ..hostops import HostOperations
from ..network import Network
from ..params import check_for_matrix, optimised, unflatten
from ..sparse import Pattern
from .base import Engine, training_matrix


def _blocks(rows):
    """Blocks of rows for kernels that reduce per block: a few per thread so
    that uneven rows still balance, never more than the rows."""
    return max(1, min(rows, 4 * numba.get_num_threads()))


@dataclass
class _Conv:
    """The ReLU'd convolution: pre-activation on the neighbourhood pattern,
    and the second pass's input X, x: the entries the ReLU keeps, compacted
    (x_csc: x in X's CSC order)."""
    pre: np.ndarray
    X: Pattern
    x: np.ndarray
    x_csc: np.ndarray
    pos: np.ndarray          # entry of the neighbourhood -> its place in X, or -1
    nbr: np.ndarray          # (rating, kernel cell) -> entry of the neighbourhood, or -1


class CpuOps(HostOperations):
    """network.Operations on the host with Numba kernels (see there for each
    one's contract; hostops.py for those that are one NumPy call)."""

    # beyond the contract, for the engines: the convolution's pattern (CudaOps
    # and sharded.Share read it) and the second pass's input (ShareOps's own)
    own = ("neighbourhood", "second_input")

    def __init__(self, R, values, lambda_2, lambda_s, dot_scale):
        self.R, self.values = R, values
        self.conv_R, self.conv_values = R, values     # what the convolution reads: all of R
        self.n_users = R.shape[1]                      # what means over users divide by
        self.dtype = values.dtype
        self.lambda_2, self.lambda_s, self.dot_scale = lambda_2, lambda_s, dot_scale
        self._in_csc = [(values, values[R.csc_perm])]   # values whose CSC order is known
        self._neighbourhoods, self._buffers = {}, {}

    def empty(self, name, shape, dtype=None):
        """A work array of the compute dtype (or ``dtype``) kept under ``name``
        between evaluations (a fresh one for None): fresh m x h and n x h
        arrays every evaluation cost their page faults each time. Arrays
        whose size varies (the convolution's kept entries) reuse the largest
        buffer so far. An engine is hence not to be called from two threads
        at once."""
        dtype = np.dtype(dtype or self.dtype)
        if name is None:
            return np.empty(shape, dtype=dtype)
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, dtype=dtype)
        return buffer[:size].reshape(shape)

    def zeros(self, name, shape):
        out = self.empty(name, shape)
        out.fill(0)
        return out

    def local_kernel(self, W, U, V, K, Weff, loss):
        sq = np.empty((W.shape[0], 2))
        cpu.local_kernel(W, U, np.ascontiguousarray(V.T), K, Weff, sq)
        if loss is not None:
            loss.add(0.5 * (self.lambda_s * sq[:, 0].sum() + self.lambda_2 * sq[:, 1].sum()))

    def transpose(self, A, out):
        cpu.transpose(A, out)

    def spmm(self, X, x, B, out):
        cpu.spmm(X.indptr, X.indices, x, B, out, False)

    def spmm_t(self, X, x, B, out, accumulate=False):
        cpu.spmm(X.csc_indptr, X.csc_rows, self._csc(X, x), B, out, accumulate)

    def sddmm(self, X, A, B, out):
        cpu.sddmm(X.indptr, X.indices, A, B, out)

    def bias_sigmoid(self, H, b):
        # float64 keeps libm's exp: the checks against the dense reference need its accuracy
        (cpu.bias_sigmoid_f32 if self.dtype == np.float32 else cpu.bias_sigmoid)(H, b)

    def sigmoid_backward(self, dH, H, db):
        partial = np.empty((_blocks(dH.shape[0]), dH.shape[1]), dtype=dH.dtype)
        cpu.sigmoid_backward(dH, H, dH, partial)
        db += partial.sum(axis=0)

    def output_layer(self, H, WoutT, b, resid, dH, loss):
        sq = np.empty(H.shape[0])
        cpu.output_layer(self.R.indptr, self.R.indices, self.values, H, WoutT, b, resid, dH, sq)
        loss.add(0.5 * sq.sum())

    def user_sums(self, X, x, out):
        partial = np.empty((_blocks(X.shape[0]), out.size))
        cpu.column_sums(X.indptr, X.indices, x, partial)
        out += partial.sum(axis=0)

    def convolve(self, mu, C):
        gk = int(round(np.sqrt(C.shape[1])))   # odd, checked with the parameters
        G = (self.dot_scale * (mu @ C)).reshape(gk, gk)
        S, nbr = self.neighbourhood(gk)
        pre = self.empty("conv.pre", (S.nnz,))
        cpu.conv_forward(self.conv_R.indptr, self.conv_values, nbr, S.indptr, G, pre)
        X, x, x_csc, pos = self.second_input(S, pre)
        self._in_csc[1:] = [(x, x_csc)]
        return _Conv(pre, X, x, x_csc, pos, nbr)

    def second_input(self, S, pre):
        """The second pass's input: the entries of the convolution (on S,
        values ``pre``) that its ReLU keeps, as Pattern.positive gives them."""
        return S.positive(pre, self.empty, _blocks(S.shape[0]))

    def conv_backward(self, conv, dx):
        partial = np.empty((self.conv_R.shape[0], conv.nbr.shape[1]))
        cpu.conv_kernel_grad(self.conv_R.indptr, self.conv_values, conv.nbr, conv.pos, dx,
                             partial)
        return partial.sum(axis=0).astype(self.dtype)

    def layer_grad(self, dWeff, W, U, V, K, dW, dU, dV):
        t, d = self.dtype.type, U.shape[1]
        partial = np.empty((_blocks(W.shape[0]), d + 1, W.shape[1]))
        cpu.local_kernel_grad(dWeff, W, K, U, np.ascontiguousarray(V.T), t(self.lambda_2),
                              t(self.lambda_s), dW, dU, partial)
        sums = partial.sum(axis=0)    # rows 0..d-1: dD^T U transposed; row d: dD's column sums
        np.multiply(2, V * sums[d][:, None] - sums[:d].T, out=dV)

    def pair_outputs(self, rows, cols, H, WoutT, b, out):
        cpu.pair_dot(rows, cols, H, WoutT, out)
        out += b[cols]

    def _csc(self, X, x):
        """The values x of X (CSR order) in X's CSC order: known for R's
        ratings (gathered once) and the convolution's kept entries."""
        for known, in_csc in self._in_csc:
            if x is known:
                return in_csc
        out = self.empty("csc.x", x.shape)
        cpu.gather(x, X.csc_perm, out)
        return out

    def neighbourhood(self, gk):
        """Output pattern of the gk x gk convolution and, per rating and kernel
        cell, the output position it feeds (built once per kernel size)."""
        if gk not in self._neighbourhoods:
            R = self.conv_R
            S = R.neighbourhood(gk)
            nbr = cpu.conv_neighbours(R.indptr, R.indices, R.shape[1], S.indptr, S.indices, gk)
            self._neighbourhoods[gk] = (S, nbr)
        return self._neighbourhoods[gk]


class CpuEngine(Engine):
    """(loss, gradient) of either stage for one training matrix, and
    predictions (the contract in engines/base.py).

    Set-up that depends only on the matrix (its index arrays, and the
    convolution's neighbourhood pattern on first use) is done once here, so
    a trainer calls this object once per L-BFGS evaluation.
    """

    def __init__(self, train, *, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float32):
        R, self.settings = training_matrix(train, lambda_2, lambda_s, dot_scale, dtype)
        self.dtype = self.settings["dtype"]
        self.R = Pattern.from_csr(R)
        self.values = R.data.astype(self.dtype)
        self.shape = R.shape
        self.ops = CpuOps(self.R, self.values, float(lambda_2), float(lambda_s),
                          float(dot_scale))
        self.network = Network(self.ops)

    def __call__(self, stage, params):
        """Loss and a dict of gradients keyed like the optimised arrays
        (params.optimised), in compute dtype."""
        P = self._compute_params(stage, params)
        G = {k: (np.zeros_like if k.startswith("b") else np.empty_like)(v) for k, v in P.items()}
        return self.network.loss_and_grad(stage, P, G).value, G

    def objective_into(self, stage, template):
        """fg(x, g) -> loss, the function lbfgsb.minimize calls: ``x`` the flat
        float64 vector laid out like ``template``, the float64 gradient written
        into ``g``. The parameters and gradient live in flat compute-dtype
        buffers made once here (views of x and g themselves in float64), so
        an evaluation costs one cast in and one cast out, and no copies."""
        check_for_matrix(template, stage, *self.shape)
        size = sum(np.size(v) for v in template.values())
        cast = self.dtype != np.float64
        flat_p, flat_g = (np.empty(size, self.dtype) for _ in range(2)) if cast else (None, None)

        def fg(x, g):
            if cast:
                cpu.copy_cast(x, flat_p)
            # views of the flat vectors (unflatten copies nothing in their own dtype)
            P, G = (unflatten(flat, template, dtype=flat.dtype)
                    for flat in ((flat_p, flat_g) if cast else (x, g)))
            for k, b in G.items():
                if k.startswith("b"):
                    b[:] = 0
            loss = self.network.loss_and_grad(stage, P, G).value
            if cast:
                cpu.copy_cast(flat_g, g)
            return loss
        return fg

    def predict(self, stage, params, rows, cols):
        """Predictions of the stage's network output at (item, user) pairs."""
        return self.network.predict(stage, self._compute_params(stage, params),
                                    np.asarray(rows, dtype=np.int64),
                                    np.asarray(cols, dtype=np.int64))

    def conv_preactivation(self, params):
        """The global convolution before its ReLU, on the neighbourhood
        pattern of the ratings (where it can be non-zero): what the ReLU sees."""
        P = self._compute_params("finetune", params)
        return self.network.forward("finetune", P).conv.pre.copy()   # pre is a kept buffer

    def _compute_params(self, stage, params):
        """The arrays ``stage`` uses, checked, C-contiguous in compute dtype."""
        check_for_matrix(params, stage, *self.shape)
        return {k: np.ascontiguousarray(v, dtype=self.dtype)
                for k, v in optimised(stage, params).items()}

