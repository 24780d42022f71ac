"""Fold-in: one user's output-layer parameters fitted to their ratings with
everything else fixed (docs/model.md §12).

A user u is a column of the output layer: their prediction for item i is
H[i] . (w * k) + b, where H[i] is item i's last hidden activation (fixed
here: the network's forward pass on the current ratings), w is u's column of
the output layer's W, k = max(0, 1 - |U_j - v|^2) the local kernel between
the layer's rows U_j and u's kernel vector v, and b u's bias. Fold-in
minimises the model's own loss restricted to those: over u's rated items I,

    L(w, v, b) = 1/2 sum_I (H_I (w * k) + b - r)^2 + lambda_2/2 |w|^2
                 + lambda_s/2 |k|^2,

the terms of the training loss that hold u's output parameters, computed by
the network itself (Network.output_loss_and_grad on a one-user output layer,
over inference.NumpyOps), with L-BFGS-B (scipy). Cost per evaluation:
|I| h + h d.
"""
import numpy as np
import scipy.sparse as sp

from .inference import NumpyOps
from .network import Network

ITERATIONS = 50


def objective(H, r, U, lambda_2, lambda_s):
    """fg(theta) -> (L, dL/dtheta) at theta = [w (h), v (d), b] for the rated
    items' activations H (|I| x h) and ratings r (model units), U the output
    layer's kernel vectors (h x d); float64. What stays fixed while a user
    is fitted (their ratings as a matrix, the network over them) is built
    once here, not at every evaluation."""
    h, d = U.shape
    # the user's ratings as a |I| x 1 matrix: row k is the item of H's row k
    R = sp.csr_matrix((r, np.zeros(r.size, np.int64), np.arange(r.size + 1)), shape=(r.size, 1))
    network = Network(NumpyOps(R, lambda_2, lambda_s))

    def fg(theta):
        P = {"W0": theta[:h, None], "U0": U, "V0": theta[None, h:h + d], "b0": theta[h + d:]}
        G = {k: np.zeros(v.shape) for k, v in P.items()}
        loss = network.output_loss_and_grad(P, H, G)
        return loss.value, np.concatenate([G["W0"][:, 0], G["V0"][0], G["b0"]])
    return fg


def loss_and_grad(theta, H, r, U, lambda_2, lambda_s):
    """objective(H, r, U, lambda_2, lambda_s) at ``theta``."""
    return objective(H, r, U, lambda_2, lambda_s)(theta)


def fit_user(H, r, U, w, v, b, lambda_2, lambda_s, iterations=ITERATIONS):
    """(w, v, b) fitted from the start (w, v, b); see the module docstring."""
    from scipy.optimize import minimize    # here: importing it costs every command 0.5 s
    h = U.shape[0]
    theta0 = np.concatenate([w, v, [b]]).astype(np.float64)
    fg = objective(*(np.asarray(a, np.float64) for a in (H, r, U)), lambda_2, lambda_s)
    result = minimize(fg, theta0, jac=True, method="L-BFGS-B", options={"maxiter": iterations})
    theta = result.x
    return theta[:h], theta[h:-1], float(theta[-1])
