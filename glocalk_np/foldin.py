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

the terms of the training loss that hold u's output parameters, with
L-BFGS-B (scipy). Cost per evaluation: |I| h + h d.
"""
import numpy as np
from scipy.optimize import minimize

ITERATIONS = 50


def loss_and_grad(theta, H, r, U, lambda_2, lambda_s):
    """(L, dL/dtheta) at theta = [w (h), v (d), b] for the rated items'
    activations H (|I| x h) and ratings r (model units), U the output
    layer's kernel vectors (h x d); float64."""
    h, d = U.shape
    w, v, b = theta[:h], theta[h:h + d], theta[h + d]
    diff = U - v
    pre = 1.0 - np.einsum("jt,jt->j", diff, diff)
    k = np.maximum(pre, 0.0)
    e = H @ (w * k) + b - r
    loss = 0.5 * (e @ e + lambda_2 * (w @ w) + lambda_s * (k @ k))
    g = H.T @ e
    dk = (g * w + lambda_s * k) * (pre > 0)
    grad = np.concatenate([g * k + lambda_2 * w, 2.0 * (dk @ diff), [e.sum()]])
    return loss, grad


def fit_user(H, r, U, w, v, b, lambda_2, lambda_s, iterations=ITERATIONS):
    """(w, v, b) fitted from the start (w, v, b); see the module docstring."""
    h = U.shape[0]
    theta0 = np.concatenate([w, v, [b]]).astype(np.float64)
    result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                      args=(np.asarray(H, np.float64), np.asarray(r, np.float64),
                            np.asarray(U, np.float64), lambda_2, lambda_s),
                      options={"maxiter": iterations})
    theta = result.x
    return theta[:h], theta[h:-1], float(theta[-1])
