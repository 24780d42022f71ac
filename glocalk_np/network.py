"""GLocal-K's network, loss and hand-written gradient, written once
(docs/model.md explains every step) over the operations an engine provides.

An engine (engines/cpu.py, engines/cuda.py) supplies ``ops``, an object with
the operations listed in OPERATIONS, each with one contract on every engine:
the arrays it reads, the arrays it writes (given by the caller, allocated
with ``ops.empty``) and what it computes. What stays with an engine is how:
its kernels, where arrays live, how the loss is summed, and the flat vector
the optimiser sees.

Shapes: R is m items x n users with nnz ratings, h the hidden width, L the
number of kernel layers (hidden layers + the output layer). ``P`` holds the
parameters in compute dtype, ``G`` the gradient arrays to fill: the bias
arrays arrive zeroed and are added into, every other one is overwritten.

The evaluation falls into the phases (Network's methods) a distributed
engine over blocks of item rows needs: work per rows (every product with
the hidden activations runs item row by item row), and GLOBAL steps that
combine all items: the weights every block needs, the item means mu (G
needs every item's), the convolution (it reads neighbouring item rows), dG
(a sum over all ratings) and the weight gradients (sums over all items).
"""
from dataclasses import dataclass

from .params import STAGES, layer_count

OPERATIONS = {
    "empty": "empty(name, shape) -> a work array of the compute dtype, contents undefined "
             "(an engine may keep it between evaluations under its name; None: never)",
    "zeros": "zeros(name, shape) -> a work array of the compute dtype holding zeros",
    "new_loss": "new_loss() -> a loss accumulator holding 0",
    "local_kernel": "K = max(0, 1 - |U_i - V_j|^2), Weff = W * K; loss += "
                    "lambda_s/2 sum K^2 + lambda_2/2 sum W^2",
    "transpose": "out = A^T",
    "spmm": "out = X @ B for the sparse X with values x",
    "spmm_t": "out (+)= X^T @ B",
    "sddmm": "out = (A @ B^T) at X's entries",
    "gemm": "out (+)= op(A) @ op(B), op = transpose when asked",
    "bias_sigmoid": "H = sigmoid(H + b) in place",
    "sigmoid_backward": "dH = dH * H * (1 - H) in place (dloss/d pre-activation); "
                        "db += its column sums",
    "output_layer": "resid = (H WoutT^T + b - R) at R's entries; dH = resid @ WoutT; "
                    "loss += 1/2 sum resid^2",
    "user_sums": "out += the sum of x over each user's entries of X",
    "item_means": "-> (w_mean, mu): w_mean = Weff_out averaged over users, "
                  "mu = H w_mean + mean(b_out)",
    "convolve": "-> conv: the ReLU'd 'SAME' cross-correlation of R with "
                "G = dot_scale reshape(C^T mu); conv.X, conv.x: the second pass's input",
    "conv_backward": "-> dG (gk^2) from dloss/dconv.x, through the ReLU",
    "global_kernel_grad": "dC = dot_scale mu dG^T; dmu = dot_scale C dG",
    "mean_backward": "back through mu: dWoutT += H^T dmu / n (every row), "
                     "db_out += sum(dmu) / n, dH = dmu w_mean^T",
    "layer_grad": "dW, dU, dV from dloss/dWeff and the regulariser",
    "pair_outputs": "out = (H WoutT^T + b) at (rows, cols)",
}


@dataclass
class Forward:
    """What the forward pass leaves for the backward pass."""
    K: list                  # local kernel of each layer
    Weff: list               # effective weight W * K of each layer
    WoutT: object            # the output layer's Weff transposed (n x h)
    hidden: list             # hidden activations fed to the output layer, per layer
    first: list = None       # fine-tuning: the first pass's hidden activations
    w_mean: object = None    # fine-tuning: Weff_out averaged over users
    mu: object = None        # fine-tuning: item means of the first pass's output
    conv: object = None      # fine-tuning: the convolution (engine-specific)


@dataclass
class Backward:
    """The gradients the backward pass accumulates before the layer gradients."""
    dH: object               # dloss/d(last hidden activations of the pass that fed the output)
    dWeff: list              # dloss/dWeff of each layer, summed over passes
    dWoutT: object           # dloss/dWeff of the output layer, transposed (n x h)


class Network:
    """The GLocal-K network of an engine's ``ops`` (see the module docstring).

    One evaluation is a sequence of phases. Those marked "per rows" compute
    item rows from the same rows only, so an engine may run them block by
    block; the GLOBAL ones combine all items (a block-wise engine reduces or
    exchanges between blocks there)."""

    def __init__(self, ops):
        self.ops = ops

    def forward(self, stage, P, loss=None):
        """The forward pass of ``stage``; the regulariser goes into ``loss``
        when given."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        fwd = self.weights(P, loss)
        fwd.hidden = self._encode(self.ops.R, self.ops.values, P, fwd.Weff, "first")
        if stage == "finetune":
            self.global_kernel(P, fwd)
            fwd.hidden = self._encode(fwd.conv.X, fwd.conv.x, P, fwd.Weff, "second")
        return fwd

    def loss_and_grad(self, stage, P, G):
        """The loss accumulator of ``stage`` at ``P``, the gradient into ``G``."""
        loss = self.ops.new_loss()
        fwd = self.forward(stage, P, loss)
        back = self.output_layer(P, G, fwd, loss)
        if stage == "pretrain":
            self._encode_backward(self.ops.R, self.ops.values, fwd.hidden, back.dH, fwd.Weff,
                                  back.dWeff, G)
        else:
            self.finetune_backward(P, G, fwd, back)
        self.layer_grads(P, G, fwd, back)
        return loss

    # ----- the phases -------------------------------------------------------
    def weights(self, P, loss):
        """GLOBAL (every block needs all of them): each layer's local kernel
        and effective weight, and the output layer's transposed, with the
        regulariser into ``loss``. Cost: the layers' n_in * n_out * d."""
        ops, L = self.ops, layer_count(P)
        K, Weff = [], []
        for l in range(L):
            W = P[f"W{l}"]
            K.append(ops.empty(f"K{l}", W.shape))
            Weff.append(ops.empty(f"Weff{l}", W.shape))
            ops.local_kernel(W, P[f"U{l}"], P[f"V{l}"], K[l], Weff[l], loss)
        WoutT = ops.empty("WoutT", Weff[-1].shape[::-1])
        ops.transpose(Weff[-1], WoutT)
        return Forward(K, Weff, WoutT, None)

    def global_kernel(self, P, fwd):
        """GLOBAL: the item means mu of the first pass (G needs every item's),
        the global kernel and the ReLU'd convolution (each output row reads
        the gk // 2 item rows on either side). Per rows otherwise."""
        ops, L = self.ops, len(fwd.Weff)
        fwd.first = fwd.hidden
        fwd.w_mean, fwd.mu = ops.item_means(fwd.first[-1], fwd.Weff[-1], fwd.WoutT, P[f"b{L - 1}"])
        fwd.conv = ops.convolve(fwd.mu, P["C"])

    def output_layer(self, P, G, fwd, loss):
        """Per rows: the output layer at the ratings, its loss and dH; the
        output layer's weight and bias gradients are sums over items."""
        ops, L = self.ops, len(fwd.Weff)
        H = fwd.hidden[-1]
        resid, dH = ops.empty("resid", (ops.R.nnz,)), ops.empty("dH.out", H.shape)
        ops.output_layer(H, fwd.WoutT, P[f"b{L - 1}"], resid, dH, loss)
        # The output layer's W_eff and its transpose are dead once its products
        # are done (the backward pass needs neither): their gradients take their
        # buffers, two n x h arrays less (280 MB at ML-10M's shape).
        dWeff = [ops.zeros(f"dWeff{l}", W.shape) for l, W in enumerate(fwd.Weff[:-1])]
        dWeff.append(fwd.Weff[-1])
        back = Backward(dH, dWeff, fwd.WoutT)
        ops.spmm_t(ops.R, resid, H, back.dWoutT)
        ops.user_sums(ops.R, resid, G[f"b{L - 1}"])
        return back

    def finetune_backward(self, P, G, fwd, back):
        """Back through the second pass (per rows), the convolution and the
        global kernel (dG: GLOBAL, a sum over all ratings), and through the
        item means into the first pass (per rows)."""
        ops, L = self.ops, len(fwd.Weff)
        dx = self._encode_backward(fwd.conv.X, fwd.conv.x, fwd.hidden, back.dH, fwd.Weff,
                                   back.dWeff, G, want_dx=True)
        dG = ops.conv_backward(fwd.conv, dx)
        dmu = ops.empty("dmu", fwd.mu.shape)
        ops.global_kernel_grad(fwd.mu, P["C"], dG, G["C"], dmu)
        dH1 = ops.empty("dH.first", fwd.first[-1].shape)
        ops.mean_backward(fwd.first[-1], dmu, fwd.w_mean, back.dWoutT, G[f"b{L - 1}"], dH1)
        self._encode_backward(ops.R, ops.values, fwd.first, dH1, fwd.Weff, back.dWeff, G)

    def layer_grads(self, P, G, fwd, back):
        """GLOBAL (once dWeff is summed over all items): every layer's dW, dU
        and dV, the regulariser included."""
        ops = self.ops
        ops.transpose(back.dWoutT, back.dWeff[-1])
        for l in range(len(fwd.Weff)):
            ops.layer_grad(back.dWeff[l], P[f"W{l}"], P[f"U{l}"], P[f"V{l}"], fwd.K[l],
                           G[f"W{l}"], G[f"U{l}"], G[f"V{l}"])

    def predict(self, stage, P, rows, cols):
        """The network's outputs at (item position, user position) pairs."""
        fwd = self.forward(stage, P)
        out = self.ops.empty(None, (len(rows),))
        self.ops.pair_outputs(rows, cols, fwd.hidden[-1], fwd.WoutT,
                              P[f"b{len(fwd.Weff) - 1}"], out)
        return out

    def _encode(self, X, x, P, Weff, name):
        """Sigmoid hidden activations of the sparse input X (values x).
        Cost: nnz(X) * h + (L-2) * m * h^2."""
        ops = self.ops
        hidden = [ops.empty(f"{name}.H{l}", (X.shape[0], W.shape[1]))
                  for l, W in enumerate(Weff[:-1])]
        ops.spmm(X, x, Weff[0], hidden[0])
        ops.bias_sigmoid(hidden[0], P["b0"])
        for l in range(1, len(hidden)):
            ops.gemm(hidden[l - 1], Weff[l], hidden[l])
            ops.bias_sigmoid(hidden[l], P[f"b{l}"])
        return hidden

    def _encode_backward(self, X, x, hidden, dH, Weff, dWeff, G, want_dx=False):
        """Back through the hidden layers from dloss/d(last hidden): the
        layers' dWeff (zeroed by the caller; the first pass of fine-tuning
        adds to the second's) and bias gradients; dloss/dX at X's entries
        when asked. ``dH`` is overwritten.
        Cost: nnz(X) * h (twice with dX) + 2 (L-2) * m * h^2."""
        ops = self.ops
        for l in range(len(hidden) - 1, -1, -1):
            dZ = dH
            ops.sigmoid_backward(dZ, hidden[l], G[f"b{l}"])
            if l > 0:
                ops.gemm(hidden[l - 1], dZ, dWeff[l], trans_a=True, accumulate=True)
                dH = ops.empty(f"dH.{l - 1}", hidden[l - 1].shape)
                ops.gemm(dZ, Weff[l], dH, trans_b=True)
            else:
                ops.spmm_t(X, x, dZ, dWeff[0], accumulate=True)
                if want_dx:
                    dx = ops.empty("dx", x.shape)
                    ops.sddmm(X, dZ, Weff[0], dx)
                    return dx
