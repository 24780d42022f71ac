"""Dense NumPy reference of the GLocal-K model (docs/model.md §2-5).

A direct, unoptimised transcription of docs/model.md with dense m x n arrays and a
hand-written backward pass, in float64. It is the independent yardstick the
sparse engine is tested (and benchmarked) against, so it stays simple: every
line should be checkable against docs/model.md by eye. Its own correctness is proved by
finite differences in test_dense_reference.py.
"""
import numpy as np

from glocalk_np.params import layer_count, optimised


def _as64(params):
    return {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def local_kernel(U, V):
    """K = max(0, 1 - ||U_i - V_j||^2) and the mask where it is > 0 (docs/model.md §2)."""
    dist2 = ((U[:, None, :] - V[None, :, :]) ** 2).sum(axis=2)
    pre = 1.0 - dist2
    return np.maximum(pre, 0.0), pre > 0.0


def xcorr2d_same(X, G):
    """TF conv2d 'SAME' (cross-correlation, zero padding) of image X with odd square G."""
    gk = G.shape[0]
    p = gk // 2
    m, n = X.shape
    Xp = np.pad(X, p)
    out = np.zeros((m, n))
    for a in range(gk):
        for b in range(gk):
            out += G[a, b] * Xp[a:a + m, b:b + n]
    return out


def _ae_forward(params, X):
    """AE(X); returns the output and per-layer caches for the backward pass."""
    L = layer_count(params) - 1
    caches = []
    for l in range(L + 1):
        W, U, V, b = (params[f"{k}{l}"] for k in "WUVb")
        K, active = local_kernel(U, V)
        Z = X @ (W * K) + b
        Y = _sigmoid(Z) if l < L else Z
        caches.append((X, K, active, Y))
        X = Y
    return X, caches


def _ae_backward(params, caches, dOut, grads):
    """Add the data-term gradients of one AE pass to ``grads``; return dLoss/dInput."""
    L = len(caches) - 1
    dY = dOut
    for l in range(L, -1, -1):
        W, U, V, _ = (params[f"{k}{l}"] for k in "WUVb")
        X, K, active, Y = caches[l]
        dZ = dY * Y * (1.0 - Y) if l < L else dY
        dWeff = X.T @ dZ
        dK = dWeff * W
        grads[f"W{l}"] += dWeff * K
        grads[f"b{l}"] += dZ.sum(axis=0)
        _add_kernel_grad(U, V, active, dK, l, grads)
        dY = dZ @ (W * K).T
    return dY


def _add_kernel_grad(U, V, active, dK, l, grads):
    """Chain dLoss/dK through K = max(0, 1 - ||U_i - V_j||^2) into U and V."""
    dPre = dK * active                       # d(max(0, t))/dt = 1 where t > 0 else 0
    # pre[i, j] = 1 - sum_k (U[i, k] - V[j, k])^2
    diff = U[:, None, :] - V[None, :, :]     # n_in x n_out x d
    grads[f"U{l}"] += (-2.0 * dPre[:, :, None] * diff).sum(axis=1)
    grads[f"V{l}"] += (2.0 * dPre[:, :, None] * diff).sum(axis=0)


def _regulariser(params, lambda_2, lambda_s, grads):
    """Sum over layers of lambda_s/2 sum(K^2) + lambda_2/2 sum(W^2); adds its gradient."""
    total = 0.0
    for l in range(layer_count(params)):
        W, U, V, _ = (params[f"{k}{l}"] for k in "WUVb")
        K, active = local_kernel(U, V)
        total += lambda_s / 2.0 * (K ** 2).sum() + lambda_2 / 2.0 * (W ** 2).sum()
        grads[f"W{l}"] += lambda_2 * W
        _add_kernel_grad(U, V, active, lambda_s * K, l, grads)
    return total


def _global_kernel(params, Y1, dot_scale):
    """G (gk x gk) from the first-pass output: mean-pool items, times C, reshaped (docs/model.md §4)."""
    mu = Y1.mean(axis=1)
    g = dot_scale * (mu @ params["C"])
    gk = int(round(np.sqrt(g.size)))
    return mu, g.reshape(gk, gk)


def dense_forward(stage, params, R, *, dot_scale=1.0):
    """Full m x n prediction: AE(R) for 'pretrain', AE(relu(xcorr(R, G))) for 'finetune'."""
    params = _as64(params)
    R = np.asarray(R, dtype=np.float64)
    Y1, _ = _ae_forward(params, R)
    if stage == "pretrain":
        return Y1
    if stage != "finetune":
        raise ValueError(f"unknown stage {stage!r}")
    _, G = _global_kernel(params, Y1, dot_scale)
    F, _ = _ae_forward(params, np.maximum(xcorr2d_same(R, G), 0.0))
    return F


def dense_loss_grad(stage, params, R, *, lambda_2, lambda_s, dot_scale=1.0):
    """(loss, grads) of docs/model.md §3-4 for ``stage``; grads cover the stage's optimised variables."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"unknown stage {stage!r}")
    params = _as64(params)
    R = np.asarray(R, dtype=np.float64)
    M = (R > 1e-12).astype(np.float64)
    keys = list(optimised(stage, params))
    grads = {k: np.zeros_like(params[k]) for k in keys}

    Y1, caches1 = _ae_forward(params, R)
    if stage == "pretrain":
        out = Y1
    else:
        mu, G = _global_kernel(params, Y1, dot_scale)
        S = xcorr2d_same(R, G)
        Rg = np.maximum(S, 0.0)
        out, caches2 = _ae_forward(params, Rg)

    err = M * (R - out)
    loss = 0.5 * (err ** 2).sum()
    dOut = -M * err

    if stage == "pretrain":
        _ae_backward(params, caches1, dOut, grads)
    else:
        dRg = _ae_backward(params, caches2, dOut, grads)
        dS = dRg * (S > 0.0)
        gk = G.shape[0]
        p = gk // 2
        m, n = R.shape
        Rp = np.pad(R, p)
        dG = np.array([[(dS * Rp[a:a + m, b:b + n]).sum() for b in range(gk)]
                       for a in range(gk)])
        dg = dG.ravel()                               # g[gk*a + b] = G[a, b]
        grads["C"] += dot_scale * np.outer(mu, dg)
        dmu = dot_scale * (params["C"] @ dg)
        dY1 = np.repeat(dmu[:, None] / n, n, axis=1)  # mu = row mean over all n columns
        _ae_backward(params, caches1, dY1, grads)

    loss += _regulariser(params, lambda_2, lambda_s, grads)
    return float(loss), grads


def numerical_grad(f, params, keys=None, eps=1e-6):
    """Central finite differences of the scalar f(params), entry by entry, in float64."""
    params = _as64(params)
    out = {}
    for k in (keys if keys is not None else list(params)):
        base = params[k]
        g = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            vals = []
            for step in (eps, -eps):
                pert = base.copy()
                pert[idx] += step
                vals.append(f({**params, k: pert}))
            g[idx] = (vals[0] - vals[1]) / (2.0 * eps)
        out[k] = g
    return out


def rel_error(a, b):
    """max|a - b| relative to the larger of max|a| and max|b|."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), np.finfo(np.float64).tiny)
    return float(np.abs(a - b).max(initial=0.0) / scale)
