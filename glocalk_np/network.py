"""GLocal-K's network, loss and hand-written gradient, written once
(docs/model.md explains every step) over the operations an engine provides.

An engine (engines/cpu.py, engines/cuda.py) supplies ``ops``, an
Operations (below; a ForwardOperations suffices for ``forward`` and
``predict``), each method with one contract on every engine: the arrays it
reads, the arrays it writes (given by the caller, allocated with
``ops.empty``) and what it computes. What stays with an engine is how:
its kernels, where arrays live, how the loss is summed, and the flat vector
the optimiser sees.

Shapes: R is m items x n users with nnz ratings, h the hidden width, L the
number of kernel layers (hidden layers + the output layer). ``P`` holds the
parameters in compute dtype, ``G`` the gradient arrays to fill: the bias
arrays arrive zeroed and are added into, every other one is overwritten.

Shares. An engine over several processes splits the users: each share holds
its users' columns of R (``ops.R``, ``ops.values``: all of them on one
process), their rows of W0 and U0, and their columns of the output layer
(its W and V, and b). The hidden layers, C, the hidden activations (m x h)
and everything computed from them are replicated: every share computes them
alike from the same reduced inputs. So an exchange moves m x h floats (the
activations grow with the items), where splitting the items would move
every parameter (they grow with the users). Every sum across shares is a
call ``ops.reduce(name, a)`` below, one per entry of REDUCTIONS; on one
process each is a no-op. Means over users (the item means, mean_backward)
divide by all n users. The convolution reads the gk // 2 users on either
side of a share's columns: a share keeps that halo of R from set-up on.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .params import STAGES, layer_count


class ForwardOperations(ABC):
    """The operations of the forward pass (Network.forward, Network.predict):
    each method's docstring is its contract, one on every engine.

    Attributes: ``R``, the pattern of a share's ratings (its users' columns
    of the matrix, all of it on one process; ``nnz``, ``shape``);
    ``values``, the ratings at R's entries in the compute dtype; ``leader``,
    True on the one share that adds the replicated layers' regulariser to
    the loss (always on one process); ``own``, the names of the public
    methods a class has beyond the contract, which only its engine calls
    (tests/test_network.py holds every class to the contract and these)."""

    leader: bool
    own = ()

    @abstractmethod
    def empty(self, name, shape):
        """-> a work array of the compute dtype, contents undefined (an
        engine may keep it between evaluations under its name; None: never)."""

    @abstractmethod
    def zeros(self, name, shape):
        """-> a work array of the compute dtype holding zeros."""

    @abstractmethod
    def new_loss(self):
        """-> a loss accumulator holding 0."""

    @abstractmethod
    def local_kernel(self, W, U, V, K, Weff, loss):
        """K = max(0, 1 - |U_i - V_j|^2), Weff = W * K; loss += lambda_s/2
        sum K^2 + lambda_2/2 sum W^2 (when ``loss`` is not None)."""

    @abstractmethod
    def transpose(self, A, out):
        """out = A^T."""

    @abstractmethod
    def spmm(self, X, x, B, out):
        """out = X @ B for the sparse X with values x."""

    @abstractmethod
    def gemm(self, A, B, out, trans_a=False, trans_b=False, accumulate=False):
        """out (+)= op(A) @ op(B), op = transpose when asked."""

    @abstractmethod
    def bias_sigmoid(self, H, b):
        """H = sigmoid(H + b) in place."""

    @abstractmethod
    def weight_means(self, Weff_out, WoutT, b):
        """-> (w_mean, b_mean): Weff_out and b_out averaged over the users,
        b_mean an array of one."""

    @abstractmethod
    def item_means(self, H, w_mean, b_mean):
        """-> mu = H w_mean + b_mean."""

    @abstractmethod
    def convolve(self, mu, C):
        """-> conv: the ReLU'd 'SAME' cross-correlation of R with G =
        dot_scale reshape(C^T mu); conv.X, conv.x: the second pass's input."""

    @abstractmethod
    def reduce(self, name, a):
        """-> a (an array, or the loss accumulator) summed over the shares,
        in place (REDUCTIONS[name]); on one process a no-op returning a."""

    @abstractmethod
    def pair_outputs(self, rows, cols, H, WoutT, b, out):
        """out = (H WoutT^T + b) at (rows, cols)."""


class Operations(ForwardOperations):
    """The operations of the loss and its gradient (Network.loss_and_grad):
    the forward ones and those of the backward pass."""

    @abstractmethod
    def spmm_t(self, X, x, B, out, accumulate=False):
        """out (+)= X^T @ B."""

    @abstractmethod
    def sddmm(self, X, A, B, out):
        """out = (A @ B^T) at X's entries."""

    @abstractmethod
    def sigmoid_backward(self, dH, H, db):
        """dH = dH * H * (1 - H) in place (dloss/d pre-activation); db +=
        its column sums."""

    @abstractmethod
    def output_layer(self, H, WoutT, b, resid, dH, loss):
        """resid = (H WoutT^T + b - R) at R's entries; dH = resid @ WoutT;
        loss += 1/2 sum resid^2."""

    @abstractmethod
    def user_sums(self, X, x, out):
        """out += the sum of x over each user's entries of X."""

    @abstractmethod
    def conv_backward(self, conv, dx):
        """-> dG (gk^2) from dloss/dconv.x, through the ReLU."""

    @abstractmethod
    def global_kernel_grad(self, mu, C, dG, dC, dmu):
        """dC = dot_scale mu dG^T; dmu = dot_scale C dG."""

    @abstractmethod
    def mean_backward(self, H, dmu, w_mean, dWoutT, db_out, dH):
        """Back through mu: dWoutT += H^T dmu / n (every row; n all users),
        db_out += sum(dmu) / n, dH = dmu w_mean^T."""

    @abstractmethod
    def layer_grad(self, dWeff, W, U, V, K, dW, dU, dV):
        """dW, dU, dV from dloss/dWeff and the regulariser."""


REDUCTIONS = {
    "loss": "the loss: each share's squared errors and the regulariser of its parameter "
            "rows, the replicated layers' regulariser counted on one share only",
    "input": "the first layer's product X Weff0 (m x h) of a pass: each share has its "
             "users' columns of X and rows of Weff0",
    "dH": "dloss/dH of the output layer, resid WoutT (m x h): a sum over users",
    "w_mean": "the output layer's weights averaged over users (h), for the item means",
    "b_mean": "the output layer's biases averaged over users (1), for the item means",
    "dG": "dloss/dG (gk^2), a sum over the ratings",
    "dV0": "the first layer's dV (h x d), a sum over its n input rows (users)",
    "dU_out": "the output layer's dU (h x d), a sum over its n output columns (users)",
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

    One evaluation is a sequence of phases; each says what in it is a share's
    own (its users) and where the shares' sums (REDUCTIONS) come in."""

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
        return self.ops.reduce("loss", loss)

    def output_loss_and_grad(self, P, H, G):
        """The loss accumulator of the output layer alone, ``P`` holding it
        as layer 0 (W0, U0, V0, b0), fed the fixed last hidden activations
        ``H`` (ops.R's rows): the terms of the training loss that hold its
        parameters (squared errors and its regulariser), the gradient into
        ``G``. What fold-in fits one user's column with (foldin.py)."""
        loss = self.ops.new_loss()
        fwd = self.weights(P, loss)
        fwd.hidden = [H]
        self.layer_grads(P, G, fwd, self.output_layer(P, G, fwd, loss))
        return self.ops.reduce("loss", loss)

    # ----- the phases -------------------------------------------------------
    def weights(self, P, loss):
        """Each layer's local kernel and effective weight, and the output
        layer's transposed, with the regulariser into ``loss``: a share's
        rows of the first and last layers, the hidden ones whole. Cost: the
        layers' n_in * n_out * d."""
        ops, L = self.ops, layer_count(P)
        K, Weff = [], []
        for l in range(L):
            W = P[f"W{l}"]
            K.append(ops.empty(f"K{l}", W.shape))
            Weff.append(ops.empty(f"Weff{l}", W.shape))
            counted = l in (0, L - 1) or ops.leader   # a replicated layer's penalty: once
            ops.local_kernel(W, P[f"U{l}"], P[f"V{l}"], K[l], Weff[l], loss if counted else None)
        WoutT = ops.empty("WoutT", Weff[-1].shape[::-1])
        ops.transpose(Weff[-1], WoutT)
        return Forward(K, Weff, WoutT, None)

    def global_kernel(self, P, fwd):
        """The item means mu of the first pass (through the users' average
        output weights: reductions w_mean and b_mean), the global kernel and
        the ReLU'd convolution of a share's columns (reading the halo)."""
        ops, L = self.ops, len(fwd.Weff)
        fwd.first = fwd.hidden
        w_mean, b_mean = ops.weight_means(fwd.Weff[-1], fwd.WoutT, P[f"b{L - 1}"])
        fwd.w_mean = ops.reduce("w_mean", w_mean)
        fwd.mu = ops.item_means(fwd.first[-1], fwd.w_mean, ops.reduce("b_mean", b_mean))
        fwd.conv = ops.convolve(fwd.mu, P["C"])

    def output_layer(self, P, G, fwd, loss):
        """The output layer at a share's ratings: its loss, dH (reduction
        dH), and its weight and bias gradients (a share's own users)."""
        ops, L = self.ops, len(fwd.Weff)
        H = fwd.hidden[-1]
        resid, dH = ops.empty("resid", (ops.R.nnz,)), ops.empty("dH.out", H.shape)
        ops.output_layer(H, fwd.WoutT, P[f"b{L - 1}"], resid, dH, loss)
        dH = ops.reduce("dH", dH)
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
        """Back through the second pass, the convolution and the global
        kernel (reduction dG), and through the item means into the first
        pass (its dH is replicated: dmu times the reduced w_mean)."""
        ops, L = self.ops, len(fwd.Weff)
        dx = self._encode_backward(fwd.conv.X, fwd.conv.x, fwd.hidden, back.dH, fwd.Weff,
                                   back.dWeff, G, want_dx=True)
        dG = ops.reduce("dG", ops.conv_backward(fwd.conv, dx))
        dmu = ops.empty("dmu", fwd.mu.shape)
        ops.global_kernel_grad(fwd.mu, P["C"], dG, G["C"], dmu)
        dH1 = ops.empty("dH.first", fwd.first[-1].shape)
        ops.mean_backward(fwd.first[-1], dmu, fwd.w_mean, back.dWoutT, G[f"b{L - 1}"], dH1)
        self._encode_backward(ops.R, ops.values, fwd.first, dH1, fwd.Weff, back.dWeff, G)

    def layer_grads(self, P, G, fwd, back):
        """Every layer's dW, dU and dV, the regulariser included: a share's
        rows of the first and last layers; the replicated kernel vectors
        that meet the users sum over them (reductions dV0, dU_out)."""
        ops, L = self.ops, len(fwd.Weff)
        ops.transpose(back.dWoutT, back.dWeff[-1])
        for l in range(L):
            ops.layer_grad(back.dWeff[l], P[f"W{l}"], P[f"U{l}"], P[f"V{l}"], fwd.K[l],
                           G[f"W{l}"], G[f"U{l}"], G[f"V{l}"])
        ops.reduce("dV0", G["V0"])
        ops.reduce("dU_out", G[f"U{L - 1}"])

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
        hidden[0] = ops.reduce("input", hidden[0])
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
