"""GLocal-K's loss and gradient on a CUDA GPU: the CPU engine's algorithm
(engines/cpu.py, whose docstrings give it and its cost) with numba.cuda kernels
(kernels/cuda.py).

On the device for the whole fit: the rating matrix (values, CSR and CSC index
arrays), the convolution's neighbourhood pattern with its maps between ratings
and output entries, and for each parameter layout one set of buffers
(parameters and gradient in compute dtype, kernels, activations, residuals).
Per evaluation exactly two transfers: the flat float64 parameter vector to the
device, and the flat float64 gradient back, with the loss in one extra slot.

Two departures from the CPU engine, neither changing the result beyond
summation order:
- the second pass of fine-tuning runs over the whole neighbourhood pattern S,
  with zeros where the convolution's ReLU is off, instead of compacting the
  kept entries: no pattern that changes with the parameters, no host round
  trip, at the price of |S| instead of s entries in its three sparse products;
- the convolution is a gather over S through the inverse of
  cpu.conv_neighbours' map, so no two threads write one entry.
"""
import numpy as np
from numba import cuda

from ..kernels import cuda as kc
from ..params import STAGES, check_for_matrix, flatten, layer_count, optimised, unflatten
from .cpu import CpuEngine


class _DevicePattern:
    """A Pattern's index arrays on the device."""

    def __init__(self, pattern):
        self.shape, self.nnz = pattern.shape, pattern.nnz
        for name in ("indptr", "indices", "rows", "csc_indptr", "csc_rows", "csc_perm"):
            setattr(self, name, cuda.to_device(getattr(pattern, name)))


class _Plan:
    """Device buffers for one parameter layout (stage and shapes), made once:
    the flat vectors and their per-array views, and the work arrays."""

    def __init__(self, engine, stage, template):
        dt = engine.dtype
        m, n = engine.shape
        empty = lambda shape, dtype=dt: cuda.device_array(shape, dtype=dtype)
        size = sum(np.size(a) for a in template.values())
        self.x = empty(size, np.float64)
        self.out = empty(size + 1, np.float64)   # gradient, then the loss
        self.loss = self.out[size:]
        self.grad_out = self.out[:size]
        self.p, self.g = empty(size), empty(size)
        self.P, self.G, pos = {}, {}, 0
        for k, a in template.items():
            shape = np.shape(a)
            self.P[k] = self.p[pos:pos + np.size(a)].reshape(shape)
            self.G[k] = self.g[pos:pos + np.size(a)].reshape(shape)
            pos += np.size(a)
        self.L = layer_count(template)
        Ws = [np.shape(template[f"W{l}"]) for l in range(self.L)]
        d = np.shape(template["U0"])[1]
        self.K = [empty(s) for s in Ws]
        self.Weff = [empty(s) for s in Ws]
        self.dWeff = [empty(s) for s in Ws]
        self.dD = [empty(s) for s in Ws]
        self.ones_in = [empty((s[0], d + 1)) for s in Ws]    # [U | 1]
        self.ones_out = [empty((s[1], d + 1)) for s in Ws]   # [V | 1]
        self.T_in = [empty((s[0], d + 1)) for s in Ws]       # dD [V | 1]
        self.T_out = [empty((s[1], d + 1)) for s in Ws]      # dD^T [U | 1]
        widths = [s[1] for s in Ws[:-1]]
        passes = 1 if stage == "pretrain" else 2
        self.hidden = [[empty((m, w)) for w in widths] for _ in range(passes)]
        self.dH = [empty((m, w)) for w in widths]
        h = widths[-1]
        self.WoutT, self.dWoutT = empty((n, h)), empty((n, h))
        self.resid, self.resid_csc = empty(engine.R.nnz), empty(engine.R.nnz)
        if stage == "finetune":
            cells = np.shape(template["C"])[1]
            self.S, self.nbr, self.rnbr = engine._conv_maps(cells)
            self.w_mean, self.mu, self.dmu = empty((h, 1)), empty((m, 1)), empty((m, 1))
            self.b_mean, self.db_shift = empty(1), empty(1)
            self.gvec, self.dG = empty((cells, 1)), empty((cells, 1))
            self.partial = empty((m, cells), np.float64)
            self.v = empty((h, 1))
            self.pre, self.xs, self.xs_csc, self.dx = (empty(self.S.nnz) for _ in range(4))


def _flat(a):
    return a.reshape(a.size)


class CudaEngine:
    """(loss, gradient) of either stage for one training matrix, on the GPU;
    the interface of CpuEngine. ``objective`` is the trainer's entry point.

    The host-side set-up (validation, the rating pattern, the convolution's
    neighbourhood) is the CPU engine's, kept as ``self.host``."""

    def __init__(self, train, *, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float32):
        self.host = CpuEngine(train, lambda_2=lambda_2, lambda_s=lambda_s,
                                dot_scale=dot_scale, dtype=dtype)
        self.dtype, self.settings = self.host.dtype, self.host.settings
        self.lambda_2, self.lambda_s = self.host.lambda_2, self.host.lambda_s
        self.dot_scale = self.host.dot_scale
        self.shape = self.host.shape
        self.R = _DevicePattern(self.host.R)
        self.values = cuda.to_device(self.host.values)
        self.values_csc = cuda.to_device(self.host.values[self.host.R.csc_perm])
        self._conv = {}
        self._plans = {}

    # ----- public ---------------------------------------------------------
    def objective(self, stage, template):
        """fun(x) -> (loss, gradient) for scipy: x and the gradient are flat
        float64 vectors in ``template``'s order; one copy each way per call."""
        plan = self._plan(stage, template)

        def fun(x):
            plan.x.copy_to_device(np.ascontiguousarray(x, dtype=np.float64))
            self._evaluate(stage, plan)
            out = plan.out.copy_to_host()
            return float(out[-1]), out[:-1]
        return fun

    def __call__(self, stage, params):
        """Loss and gradient dict (host arrays in compute dtype), as CpuEngine."""
        template = self._template(stage, params)
        loss, grad = self.objective(stage, template)(flatten(template))
        return loss, unflatten(grad, template, dtype=self.dtype)

    def predict(self, stage, params, rows, cols):
        """Predictions of the stage's network output at (item, user) pairs."""
        template = self._template(stage, params)
        plan = self._plan(stage, template)
        plan.x.copy_to_device(flatten(template))
        self._upload(plan)
        hidden = self._forward(stage, plan)
        rows = cuda.to_device(np.asarray(rows, dtype=np.int64))
        cols = cuda.to_device(np.asarray(cols, dtype=np.int64))
        pred = cuda.device_array(rows.size, dtype=self.dtype)
        self._sddmm(rows, cols, hidden[-1], plan.WoutT, pred)
        kc.add_bias[kc.blocks(pred.size), kc.TPB](pred, cols, plan.P[f"b{plan.L - 1}"])
        return pred.copy_to_host()

    # ----- set-up ---------------------------------------------------------
    def _template(self, stage, params):
        """The optimised arrays of ``stage`` in params' order, checked as the
        CPU engine checks them."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        check_for_matrix(params, stage, *self.shape)
        return optimised(stage, params)

    def _plan(self, stage, template):
        key = (stage,) + tuple((k, np.shape(v)) for k, v in template.items())
        if key not in self._plans:
            self._plans[key] = _Plan(self, stage, template)
        return self._plans[key]

    def _conv_maps(self, cells):
        """Device copies of the neighbourhood pattern S of a gk x gk kernel
        (gk^2 = cells), of cpu.conv_neighbours' map nbr (rating, cell) -> entry
        of S, and of its inverse rnbr (entry of S, cell) -> rating, or -1."""
        if cells not in self._conv:
            S, nbr = self.host._neighbourhood(int(round(np.sqrt(cells))))
            index = np.int32 if max(S.nnz, self.R.nnz) < 2 ** 31 else np.int64
            rnbr = np.full((S.nnz, cells), -1, dtype=index)
            e, c = np.nonzero(nbr >= 0)
            rnbr[nbr[e, c], c] = e
            self._conv[cells] = (_DevicePattern(S), cuda.to_device(nbr.astype(index)),
                                 cuda.to_device(rnbr))
        return self._conv[cells]

    # ----- launchers --------------------------------------------------------
    def _t(self, value):
        """A scalar argument in compute dtype, so float32 kernels stay float32."""
        return self.dtype.type(value)

    def _fill(self, a, value=0):
        flat = _flat(a)
        kc.fill[kc.blocks(flat.size), kc.TPB](flat, self._t(value))

    def _gemm(self, A, B, C, trans_a=False, trans_b=False, alpha=1.0, accumulate=False):
        """C (+)= alpha op(A) op(B), split over the inner dimension when C has
        too few tiles to fill the GPU."""
        M, N = C.shape
        depth = A.shape[0] if trans_a else A.shape[1]
        tiles = (-(-N // kc.GEMM_M), -(-M // kc.GEMM_M))
        split = max(1, min(kc.SPLIT_TARGET // (tiles[0] * tiles[1]),
                           depth // (kc.GEMM_K * kc.SPLIT_MIN_STEPS)))
        if split > 1 and not accumulate:
            self._fill(C)
        kc.gemm[tiles + (split,), (kc.GEMM_T, kc.GEMM_T)](
            A, B, C, trans_a, trans_b, self._t(alpha), accumulate)

    def _transpose(self, A, out):
        rows, cols = A.shape
        kc.transpose[(-(-cols // kc.TILE), -(-rows // kc.TILE)), (kc.TILE, kc.TILE)](A, out)

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

    # ----- evaluation -------------------------------------------------------
    def _upload(self, plan):
        """The parameters in compute dtype, from the float64 vector on the device."""
        self._elementwise(kc.cast, plan.p.size, plan.x, plan.p)

    def _evaluate(self, stage, plan):
        """Loss into plan.loss and the float64 gradient into plan.grad_out."""
        self._upload(plan)
        kc.fill[1, 1](plan.loss, 0.0)
        self._fill(plan.g)
        for a in plan.dWeff:
            self._fill(a)
        hidden = self._forward(stage, plan)
        R, out = self.R, plan.L - 1
        # output layer: resid = P - R at the ratings, dH = S W^T, dW^T = S^T H
        self._sddmm(R.rows, R.indices, hidden[-1], plan.WoutT, plan.resid)
        self._elementwise(kc.add_bias, R.nnz, plan.resid, R.indices, plan.P[f"b{out}"])
        self._elementwise(kc.subtract, R.nnz, plan.resid, self.values)
        self._sum_squares(plan.resid, 0.5, plan.loss)
        self._elementwise(kc.gather, R.nnz, plan.resid, R.csc_perm, plan.resid_csc)
        self._spmm(R.csc_indptr, R.csc_rows, plan.resid_csc, hidden[-1], plan.dWoutT)
        self._elementwise(kc.segment_sums, self.shape[1], R.csc_indptr, plan.resid_csc,
                          plan.G[f"b{out}"])
        self._spmm(R.indptr, R.indices, plan.resid, plan.WoutT, plan.dH[-1])
        if stage == "pretrain":
            self._encode_backward(plan, R, self.values_csc, hidden)
        else:
            self._finetune_backward(plan, hidden)
        self._transpose(plan.dWoutT, plan.dWeff[out])
        for l in range(plan.L):
            self._layer_grads(plan, l)
        self._elementwise(kc.cast, plan.g.size, plan.g, plan.grad_out)

    def _forward(self, stage, plan):
        """Local kernels (their regulariser into plan.loss), W_eff of the output
        layer transposed, and the hidden activations that feed the output layer."""
        for l in range(plan.L):
            W, U, V = (plan.P[f"{k}{l}"] for k in "WUV")
            self._elementwise(kc.local_kernel, W.size, W, U, V, plan.K[l], plan.Weff[l])
            self._sum_squares(plan.K[l], 0.5 * self.lambda_s, plan.loss)
            self._sum_squares(W, 0.5 * self.lambda_2, plan.loss)
        self._transpose(plan.Weff[-1], plan.WoutT)
        self._encode(plan, self.R, self.values, plan.hidden[0])
        if stage == "pretrain":
            return plan.hidden[0]
        self._convolve(plan)
        self._encode(plan, plan.S, plan.xs, plan.hidden[1])
        return plan.hidden[1]

    def _encode(self, plan, X, x, hidden):
        """Sigmoid hidden activations of the sparse input X (values x)."""
        self._spmm(X.indptr, X.indices, x, plan.Weff[0], hidden[0])
        self._elementwise(kc.bias_sigmoid, hidden[0].size, hidden[0], plan.P["b0"])
        for l in range(1, plan.L - 1):
            self._gemm(hidden[l - 1], plan.Weff[l], hidden[l])
            self._elementwise(kc.bias_sigmoid, hidden[l].size, hidden[l], plan.P[f"b{l}"])

    def _encode_backward(self, plan, X, x_csc, hidden, dx=None):
        """Back through the hidden layers from plan.dH[-1]: adds into dWeff and
        the bias gradients; dloss/dX at X's entries into dx when given."""
        for l in range(plan.L - 2, -1, -1):
            dZ = plan.dH[l]
            self._elementwise(kc.sigmoid_backward, dZ.size, _flat(dZ), _flat(hidden[l]))
            self._column_sums(dZ, 1.0, plan.G[f"b{l}"])
            if l > 0:
                self._gemm(hidden[l - 1], dZ, plan.dWeff[l], trans_a=True, accumulate=True)
                self._gemm(dZ, plan.Weff[l], plan.dH[l - 1], trans_b=True)
        self._spmm(X.csc_indptr, X.csc_rows, x_csc, plan.dH[0], plan.dWeff[0], accumulate=True)
        if dx is not None:
            self._sddmm(X.rows, X.indices, plan.dH[0], plan.Weff[0], dx)

    def _convolve(self, plan):
        """Item means mu of the first pass, g = dot_scale C^T mu, and the ReLU'd
        convolution of R with G on S (SPEC 3, steps 2-4); as in the CPU engine
        mu = H (W_eff 1) / n + mean(b) needs no first-pass output layer."""
        n = self.shape[1]
        out = plan.L - 1
        self._fill(plan.w_mean)
        self._column_sums(plan.WoutT, 1.0 / n, _flat(plan.w_mean))
        self._fill(plan.b_mean)
        b = plan.P[f"b{out}"]
        self._column_sums(b.reshape(n, 1), 1.0 / n, plan.b_mean)
        self._gemm(plan.hidden[0][-1], plan.w_mean, plan.mu)
        self._elementwise(kc.add_rows, plan.mu.size, plan.mu, plan.b_mean)
        self._gemm(plan.P["C"], plan.mu, plan.gvec, trans_a=True, alpha=self.dot_scale)
        self._elementwise(kc.conv_forward, plan.S.nnz, plan.rnbr, self.values,
                          _flat(plan.gvec), plan.pre, plan.xs)
        self._elementwise(kc.gather, plan.S.nnz, plan.xs, plan.S.csc_perm, plan.xs_csc)

    def _finetune_backward(self, plan, hidden):
        """Back through the second pass, the convolution and g into C, then
        through mu into the first pass (as CpuEngine.__call__)."""
        m, n = self.shape
        self._encode_backward(plan, plan.S, plan.xs_csc, hidden, dx=plan.dx)
        self._elementwise(kc.relu_backward, plan.S.nnz, plan.dx, plan.pre)
        cells = plan.partial.shape[1]
        self._elementwise(kc.conv_kernel_grad, plan.partial.size, self.R.indptr, self.values,
                          plan.nbr, plan.dx, plan.partial)
        self._fill(plan.dG)
        self._column_sums(plan.partial, 1.0, _flat(plan.dG))
        C = plan.P["C"]
        self._elementwise(kc.outer, m * cells, _flat(plan.mu), _flat(plan.dG),
                          self._t(self.dot_scale), plan.G["C"])
        self._gemm(C, plan.dG, plan.dmu, alpha=self.dot_scale)
        # mu = H1 (W_eff 1) / n + mean(b): into dW_out^T, b_out and the first pass
        first = plan.hidden[0]
        self._gemm(first[-1], plan.dmu, plan.v, trans_a=True, alpha=1.0 / n)
        self._elementwise(kc.add_rows, plan.dWoutT.size, plan.dWoutT, _flat(plan.v))
        self._fill(plan.db_shift)
        self._column_sums(plan.dmu, 1.0 / n, plan.db_shift)
        b = plan.G[f"b{plan.L - 1}"]
        self._elementwise(kc.add_rows, n, b.reshape(n, 1), plan.db_shift)
        dH = plan.dH[-1]
        self._elementwise(kc.outer, dH.size, _flat(plan.dmu), _flat(plan.w_mean),
                          self._t(1.0), dH)
        self._encode_backward(plan, self.R, self.values_csc, first)

    def _layer_grads(self, plan, l):
        """dW, dU, dV of layer l from dloss/dW_eff, the regulariser included
        (as CpuEngine._layer_grads; D [Q | 1] gives D Q and D's row sums)."""
        W, U, V = (plan.P[f"{k}{l}"] for k in "WUV")
        self._elementwise(kc.local_kernel_grad, W.size, _flat(plan.dWeff[l]), _flat(W),
                          _flat(plan.K[l]), self._t(self.lambda_2), self._t(self.lambda_s),
                          _flat(plan.G[f"W{l}"]), _flat(plan.dD[l]))
        self._elementwise(kc.with_ones, plan.ones_out[l].size, V, plan.ones_out[l])
        self._gemm(plan.dD[l], plan.ones_out[l], plan.T_in[l])
        self._elementwise(kc.position_grad, U.size, U, plan.T_in[l], plan.G[f"U{l}"])
        self._elementwise(kc.with_ones, plan.ones_in[l].size, U, plan.ones_in[l])
        self._gemm(plan.dD[l], plan.ones_in[l], plan.T_out[l], trans_a=True)
        self._elementwise(kc.position_grad, V.size, V, plan.T_out[l], plan.G[f"V{l}"])
