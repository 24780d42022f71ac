"""The CUDA engine: network.py's operations with numba.cuda kernels
(kernels/cuda.py) on arrays in GPU memory.

On the device for the whole fit: the rating matrix (values, CSR and CSC index
arrays), the convolution's neighbourhood pattern with its maps between ratings
and output entries, the work arrays (made on first use, one per name and
shape, kept between evaluations) and for each parameter layout the flat
vectors. Per evaluation exactly two transfers: the flat float64 parameter
vector to the device, and the flat float64 gradient back, with the loss in
one extra slot.

Two departures from the CPU engine, neither changing the result beyond
summation order:
- the second pass of fine-tuning runs over the whole neighbourhood pattern S,
  with zeros where the convolution's ReLU is off, instead of compacting the
  kept entries: no pattern that changes with the parameters, no host round
  trip, at the price of |S| instead of s entries in its three sparse products;
- the convolution is a gather over S through the inverse of
  cpu.conv_neighbours' map, so no two threads write one entry.
"""
from dataclasses import dataclass

import numpy as np
from numba import cuda

from ..kernels import cuda as kc
from .. import lbfgsb
from ..lbfgsb import gradient_into
from ..network import Network, Operations
from .base import Engine
from ..params import check_for_matrix, flatten, optimised, unflatten
from .cpu import CpuEngine


class _DevicePattern:
    """A Pattern's index arrays on the device; ``name`` keys its work arrays."""

    def __init__(self, pattern, name):
        self.shape, self.nnz, self.name = pattern.shape, pattern.nnz, name
        for k in ("indptr", "indices", "rows", "csc_indptr", "csc_rows", "csc_perm"):
            setattr(self, k, cuda.to_device(getattr(pattern, k)))


@dataclass
class _Conv:
    """The ReLU'd convolution on the whole neighbourhood S: pre-activation,
    and x = relu(pre), the second pass's input on X = S."""
    pre: object
    X: _DevicePattern
    x: object
    nbr: object              # (rating, kernel cell) -> entry of S, or -1


def _flat(a):
    return a.reshape(a.size)


class CudaOps(Operations):
    """network.Operations on the GPU (see there for each one's contract)."""

    leader = True     # one GPU holds every user: it counts every term and sums nothing
    own = ("fill", "cast")       # CudaEngine's, on its flat vectors

    def __init__(self, host):
        self.host, self.dtype = host, host.dtype
        self.lambda_2, self.lambda_s = host.ops.lambda_2, host.ops.lambda_s
        self.dot_scale = host.ops.dot_scale
        self.R = _DevicePattern(host.R, "R")
        self.values = cuda.to_device(host.values)
        self._values_csc = cuda.to_device(host.values[host.R.csc_perm])
        self._arrays, self._conv_maps = {}, {}

    # ----- arrays -----------------------------------------------------------
    def empty(self, name, shape, dtype=None):
        """A device array kept under (name, dtype) between evaluations; a
        fresh one for name None (e.g. a prediction's output). Arrays whose
        size varies (the convolution's kept entries) reuse the largest buffer
        so far instead of one buffer per size."""
        dtype = np.dtype(dtype or self.dtype)
        if name is None:
            return cuda.device_array(shape, dtype=dtype)
        size, key = int(np.prod(shape)), (name, dtype)
        if key not in self._arrays or self._arrays[key].size < size:
            self._arrays[key] = cuda.device_array(size, dtype=dtype)
        return self._arrays[key][:size].reshape(shape)

    def zeros(self, name, shape):
        a = self.empty(name, shape)
        self.fill(a)
        return a

    def new_loss(self):
        loss = self.empty("loss", (1,), np.float64)
        kc.fill[1, 1](loss, 0.0)
        return loss

    # ----- operations -------------------------------------------------------
    def local_kernel(self, W, U, V, K, Weff, loss):
        self._elementwise(kc.local_kernel, W.size, W, U, V, K, Weff)
        if loss is not None:
            self._sum_squares(K, 0.5 * self.lambda_s, loss)
            self._sum_squares(W, 0.5 * self.lambda_2, loss)

    def transpose(self, A, out):
        rows, cols = A.shape
        kc.transpose[(-(-cols // kc.TILE), -(-rows // kc.TILE)), (kc.TILE, kc.TILE)](A, out)

    def spmm(self, X, x, B, out):
        self._spmm(X.indptr, X.indices, x, B, out)

    def spmm_t(self, X, x, B, out, accumulate=False):
        self._spmm(X.csc_indptr, X.csc_rows, self._csc(X, x), B, out, accumulate)

    def sddmm(self, X, A, B, out):
        self._sddmm(X.rows, X.indices, A, B, out)

    def gemm(self, A, B, out, trans_a=False, trans_b=False, accumulate=False, alpha=1.0):
        """out (+)= alpha op(A) op(B), split over the inner dimension when out
        has too few tiles to fill the GPU."""
        M, N = out.shape
        depth = A.shape[0] if trans_a else A.shape[1]
        tiles = (-(-N // kc.GEMM_M), -(-M // kc.GEMM_M))
        split = max(1, min(kc.SPLIT_TARGET // (tiles[0] * tiles[1]),
                           depth // (kc.GEMM_K * kc.SPLIT_MIN_STEPS)))
        if split > 1 and not accumulate:
            self.fill(out)
        kc.gemm[tiles + (split,), (kc.GEMM_T, kc.GEMM_T)](
            A, B, out, trans_a, trans_b, self._t(alpha), accumulate)

    def bias_sigmoid(self, H, b):
        self._elementwise(kc.bias_sigmoid, H.size, H, b)

    def sigmoid_backward(self, dH, H, db):
        self._elementwise(kc.sigmoid_backward, dH.size, _flat(dH), _flat(H))
        self._column_sums(dH, 1.0, db)

    def output_layer(self, H, WoutT, b, resid, dH, loss):
        R = self.R
        self._sddmm(R.rows, R.indices, H, WoutT, resid)
        self._elementwise(kc.add_bias, R.nnz, resid, R.indices, b)
        self._elementwise(kc.subtract, R.nnz, resid, self.values)
        self._sum_squares(resid, 0.5, loss)
        self._spmm(R.indptr, R.indices, resid, WoutT, dH)

    def user_sums(self, X, x, out):
        self._elementwise(kc.segment_sums, X.shape[1], X.csc_indptr, self._csc(X, x), out)

    def weight_means(self, Weff_out, WoutT, b):
        n, h = WoutT.shape
        w_mean, b_mean = self.zeros("w_mean", (h, 1)), self.zeros("b_mean", (1,))
        self._column_sums(WoutT, 1.0 / n, _flat(w_mean))
        self._column_sums(b.reshape(n, 1), 1.0 / n, b_mean)
        return w_mean, b_mean

    def item_means(self, H, w_mean, b_mean):
        mu = self.empty("mu", (H.shape[0], 1))
        self.gemm(H, w_mean, mu)
        self._elementwise(kc.add_rows, mu.size, mu, b_mean)
        return mu

    def convolve(self, mu, C):
        cells = C.shape[1]
        S, nbr, rnbr = self._maps(cells)
        g = self.empty("g", (cells, 1))
        self.gemm(C, mu, g, trans_a=True, alpha=self.dot_scale)
        pre, x = self.empty("pre", (S.nnz,)), self.empty("xs", (S.nnz,))
        self._elementwise(kc.conv_forward, S.nnz, rnbr, self.values, _flat(g), pre, x)
        return _Conv(pre, S, x, nbr)

    def conv_backward(self, conv, dx):
        self._elementwise(kc.relu_backward, dx.size, dx, conv.pre)
        partial = self.empty("dG.partial", (self.R.shape[0], conv.nbr.shape[1]), np.float64)
        self._elementwise(kc.conv_kernel_grad, partial.size, self.R.indptr, self.values,
                          conv.nbr, dx, partial)
        dG = self.zeros("dG", (partial.shape[1], 1))
        self._column_sums(partial, 1.0, _flat(dG))
        return dG

    def global_kernel_grad(self, mu, C, dG, dC, dmu):
        self._elementwise(kc.outer, dC.size, _flat(mu), _flat(dG), self._t(self.dot_scale), dC)
        self.gemm(C, dG, dmu, alpha=self.dot_scale)

    def mean_backward(self, H, dmu, w_mean, dWoutT, db_out, dH):
        n = dWoutT.shape[0]
        v = self.empty("mean_backward.v", (H.shape[1], 1))
        self.gemm(H, dmu, v, trans_a=True, alpha=1.0 / n)
        self._elementwise(kc.add_rows, dWoutT.size, dWoutT, _flat(v))
        shift = self.zeros("mean_backward.db", (1,))
        self._column_sums(dmu, 1.0 / n, shift)
        self._elementwise(kc.add_rows, n, db_out.reshape(n, 1), shift)
        self._elementwise(kc.outer, dH.size, _flat(dmu), _flat(w_mean), self._t(1.0), dH)

    def layer_grad(self, dWeff, W, U, V, K, dW, dU, dV):
        """dD = dloss/d|U_i - V_j|^2 from the element-wise chain rule; then
        D [Q | 1] gives D Q and D's row sums in one GEMM (position_grad)."""
        d = U.shape[1]
        dD = self.empty("dD", W.shape)
        self._elementwise(kc.local_kernel_grad, W.size, _flat(dWeff), _flat(W), _flat(K),
                          self._t(self.lambda_2), self._t(self.lambda_s), _flat(dW), _flat(dD))
        for P, Q, out, trans in ((U, V, dU, False), (V, U, dV, True)):
            Q1, T = self.empty("Q1", (Q.shape[0], d + 1)), self.empty("T", (P.shape[0], d + 1))
            self._elementwise(kc.with_ones, Q1.size, Q, Q1)
            self.gemm(dD, Q1, T, trans_a=trans)
            self._elementwise(kc.position_grad, P.size, P, T, out)

    def pair_outputs(self, rows, cols, H, WoutT, b, out):
        rows, cols = cuda.to_device(rows), cuda.to_device(cols)
        self._sddmm(rows, cols, H, WoutT, out)
        self._elementwise(kc.add_bias, out.size, out, cols, b)

    # ----- launchers --------------------------------------------------------
    @staticmethod
    def reduce(name, a):
        """One GPU holds every user: nothing to sum."""
        return a

    def fill(self, a, value=0):
        flat = _flat(a)
        kc.fill[kc.blocks(flat.size), kc.TPB](flat, self._t(value))

    def cast(self, src, dst):
        self._elementwise(kc.cast, dst.size, src, dst)

    def _t(self, value):
        """A scalar argument in compute dtype, so float32 kernels stay float32."""
        return self.dtype.type(value)

    def _csc(self, X, x):
        """The values x of X (CSR order) in X's CSC order; R's ratings are kept."""
        if x is self.values:
            return self._values_csc
        out = self.empty(f"csc.{X.name}", x.shape)
        self._elementwise(kc.gather, X.nnz, x, X.csc_perm, out)
        return out

    def _maps(self, cells):
        """Device copies of the neighbourhood pattern S of a gk x gk kernel
        (gk^2 = cells), of cpu.conv_neighbours' map nbr (rating, cell) -> entry
        of S, and of its inverse rnbr (entry of S, cell) -> rating, or -1."""
        if cells not in self._conv_maps:
            S, nbr = self.host.ops.neighbourhood(int(round(np.sqrt(cells))))
            index = np.int32 if max(S.nnz, self.R.nnz) < 2 ** 31 else np.int64
            rnbr = np.full((S.nnz, cells), -1, dtype=index)
            e, c = np.nonzero(nbr >= 0)
            rnbr[nbr[e, c], c] = e
            self._conv_maps[cells] = (_DevicePattern(S, "S"), cuda.to_device(nbr.astype(index)),
                                      cuda.to_device(rnbr))
        return self._conv_maps[cells]

    def _spmm(self, indptr, indices, data, B, out, accumulate=False):
        kc.spmm[kc.blocks(indptr.size - 1, 1), kc.TPB](indptr, indices, data, B, out, accumulate)

    def _sddmm(self, rows, cols, A, B, out):
        kc.sddmm[kc.blocks(out.size, kc.ENTRIES), (kc.LANES, kc.ENTRIES)](rows, cols, A, B, out)

    def _column_sums(self, A, alpha, out):
        """out += alpha * (column sums of the 2-D A)."""
        rows, cols = A.shape
        grid = (-(-cols // kc.TPB), kc.blocks(rows, kc.CHUNK))
        kc.column_sums[grid, (kc.TPB, 1)](A, self._t(alpha), out)

    def _sum_squares(self, a, alpha, acc):
        flat = _flat(a)
        kc.sum_squares[kc.blocks(flat.size), kc.TPB](flat, float(alpha), acc)

    def _elementwise(self, kernel, size, *args):
        kernel[kc.blocks(size), kc.TPB](*args)


class CudaVectors:
    """lbfgsb's O(n) steps on device vectors (lbfgsb.HostVectors' interface):
    the optimiser's float64 vectors stay in GPU memory and only the dot
    products and norms, a few floats per iteration, reach the host."""

    def empty(self, shape):
        return cuda.device_array(shape, dtype=np.float64)

    def assign(self, dst, host_src):
        dst.copy_to_device(np.ascontiguousarray(host_src, dtype=np.float64))

    def to_host(self, a):
        return a.copy_to_host()

    def copy(self, src, dst):
        self._launch(kc.cast, dst.size, src, dst)

    def scale(self, src, alpha, dst):
        self._launch(kc.scale, dst.size, src, float(alpha), dst)

    def history_dots(self, S, Y, slots, u, v=None, w=None):
        vectors = [a for a in (u, v, w) if a is not None]
        acc = cuda.to_device(np.zeros(6 * slots.size))
        for j, slot in enumerate(slots):
            for k, vec in enumerate(vectors):
                for row, M in enumerate((S, Y)):
                    self._launch(kc.dot, vec.size, M[slot], vec, acc,
                                 (2 * k + row) * slots.size + j)
        return acc.copy_to_host().reshape(6, slots.size)

    def direction(self, S, Y, slots, cs, cy, gamma, g, d):
        self.scale(g, -gamma, d)
        for j, slot in enumerate(slots):
            self._launch(kc.axpy, d.size, -float(cs[j]), S[slot], d)
            self._launch(kc.axpy, d.size, float(cy[j]), Y[slot], d)

    def trial_point(self, t, stp, d, x, first):
        changed = cuda.to_device(np.zeros(1, dtype=np.int32))
        self._launch(kc.trial_point, x.size, t, float(stp), d, x, bool(first), changed)
        return bool(changed.copy_to_host()[0])

    def dot_and_abs_max(self, g, d):
        acc = cuda.to_device(np.zeros(2))
        self._launch(kc.dot, g.size, g, d, acc, 0)
        self._launch(kc.abs_max, g.size, g, acc)
        dot, gmax = acc.copy_to_host()
        return float(dot), float(gmax)

    def squared_distance(self, a, b):
        acc = cuda.to_device(np.zeros(1))
        self._launch(kc.squared_distance, a.size, a, b, acc)
        return float(acc.copy_to_host()[0])

    def store_pair(self, g, r, stp, d, s, y):
        self._launch(kc.store_pair, g.size, g, r, float(stp), d, s, y)

    @staticmethod
    def _launch(kernel, size, *args):
        kernel[kc.blocks(size), kc.TPB](*args)


class _Plan:
    """The flat vectors of one parameter layout, made once: the float64
    parameters, the float64 gradient with the loss in its last slot, and
    their compute-dtype copies with per-array views (P, G)."""

    def __init__(self, ops, template):
        size = sum(np.size(a) for a in template.values())
        self.x = cuda.device_array(size, dtype=np.float64)
        self.out = cuda.device_array(size + 1, dtype=np.float64)
        self.grad_out, self.loss = self.out[:size], self.out[size:]
        self.p = cuda.device_array(size, dtype=ops.dtype)
        self.g = cuda.device_array(size, dtype=ops.dtype)
        self.P, self.G, pos = {}, {}, 0
        for k, a in template.items():
            self.P[k] = self.p[pos:pos + np.size(a)].reshape(np.shape(a))
            self.G[k] = self.g[pos:pos + np.size(a)].reshape(np.shape(a))
            pos += np.size(a)


class CudaEngine(Engine):
    """(loss, gradient) of either stage for one training matrix, and
    predictions, on the GPU (the contract in engines/base.py).

    The host-side set-up (validation, the rating pattern, the convolution's
    neighbourhood) is the CPU engine's, kept as ``self.host``."""

    def __init__(self, train, *, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float32):
        self.host = CpuEngine(train, lambda_2=lambda_2, lambda_s=lambda_s,
                              dot_scale=dot_scale, dtype=dtype)
        self.dtype, self.settings, self.shape = self.host.dtype, self.host.settings, self.host.shape
        self.ops = CudaOps(self.host)
        self.network = Network(self.ops)
        self._plans = {}

    def objective(self, stage, template):
        """fun(x) -> (loss, gradient) for scipy: x and the gradient are flat
        float64 vectors in ``template``'s order; one copy each way per call."""
        plan = self._plan(stage, template)

        def fun(x):
            plan.x.copy_to_device(np.ascontiguousarray(x, dtype=np.float64))
            loss = self._evaluate(stage, plan, plan.x)
            self.ops.cast(plan.g, plan.grad_out)
            plan.loss.copy_to_device(loss)
            out = plan.out.copy_to_host()
            return float(out[-1]), out[:-1]
        return fun

    def _evaluate(self, stage, plan, x):
        """The loss (a device scalar) at the device float64 vector ``x``, and
        the gradient in compute dtype in plan.g."""
        self.ops.cast(x, plan.p)
        self.ops.fill(plan.g)
        return self.network.loss_and_grad(stage, plan.P, plan.G)

    def workspace(self, n, maxcor):
        """lbfgsb's vectors for n parameters, in GPU memory (CudaVectors)."""
        return lbfgsb.Workspace(n, maxcor, vectors=CudaVectors())

    def objective_into(self, stage, template):
        """fg(x, g) -> loss for lbfgsb.minimize. With device vectors (the
        workspace of self.workspace) nothing but the loss leaves the GPU; with
        host arrays, objective's two transfers."""
        plan, host = self._plan(stage, template), gradient_into(self.objective(stage, template))

        def fg(x, g):
            if isinstance(x, np.ndarray):
                return host(x, g)
            loss = self._evaluate(stage, plan, x)
            self.ops.cast(plan.g, g)
            return float(loss.copy_to_host()[0])
        return fg

    def __call__(self, stage, params):
        """Loss and gradient dict (host arrays in compute dtype), as CpuEngine."""
        template = self._template(stage, params)
        loss, grad = self.objective(stage, template)(flatten(template))
        return loss, unflatten(grad, template, dtype=self.dtype)

    def predict(self, stage, params, rows, cols):
        """Predictions of the stage's network output at (item, user) pairs."""
        return self.network.predict(stage, self._on_device(stage, params),
                                    np.asarray(rows, dtype=np.int64),
                                    np.asarray(cols, dtype=np.int64)).copy_to_host()

    def conv_preactivation(self, params):
        """The convolution before its ReLU on the neighbourhood pattern,
        computed on the GPU, copied to the host."""
        P = self._on_device("finetune", params)
        return self.network.forward("finetune", P).conv.pre.copy_to_host()

    def _on_device(self, stage, params):
        """The device arrays (in compute dtype) of ``stage``'s parameters."""
        template = self._template(stage, params)
        plan = self._plan(stage, template)
        plan.x.copy_to_device(flatten(template))
        self.ops.cast(plan.x, plan.p)
        return plan.P

    def _template(self, stage, params):
        """The optimised arrays of ``stage`` in params' order, checked."""
        check_for_matrix(params, stage, *self.shape)
        return optimised(stage, params)

    def _plan(self, stage, template):
        key = (stage,) + tuple((k, np.shape(v)) for k, v in template.items())
        if key not in self._plans:
            self._plans[key] = _Plan(self.ops, template)
        return self._plans[key]
