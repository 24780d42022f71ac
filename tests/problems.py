"""Small random GLocal-K problems for the gradient checks, shared by the tests.

Each is drawn away from the kinks of max(0, .) and relu, with the local
kernel partly 0 and partly in (0, 1) and the convolution of both signs, so
that central differences test every branch of the hand-written gradients.
"""
import numpy as np

from dense_reference import dense_forward, dense_loss_grad, local_kernel, xcorr2d_same
from glocalk_np.params import init_global_kernel, init_layers, layer_count

KINK = 1e-4    # keep this far from the kinks of max(0, .) and relu
FD_EPS = 1e-5  # balances truncation (~eps^2) and round-off (~1e-16 * loss / eps)

# (m, n, n_hidden, d, n_layers, density, lambda_2, lambda_s, dot_scale, seed)
PROBLEMS = [
    (7, 9, 4, 3, 1, 0.3, 0.5, 0.2, 4.0, 0),
    (10, 6, 5, 2, 2, 0.5, 0.0, 0.0, 3.0, 1),
    (12, 11, 3, 5, 2, 0.2, 2.0, 0.7, 5.0, 2),
    (5, 8, 6, 4, 1, 0.4, 0.1, 1.5, 2.0, 3),
]


def draw(m, n, n_hidden, d, n_layers, density, seed):
    """Random ratings 1..5 and parameters; U, V spread so K is partly 0, partly in (0, 1)."""
    rng = np.random.default_rng(seed)
    R = np.where(rng.random((m, n)) < density, rng.integers(1, 6, (m, n)), 0).astype(float)
    params = init_layers(n, n_hidden=n_hidden, n_layers=n_layers, kernel_dim=d, seed=seed)
    for k in params:
        if k[0] in "UV":
            params[k] = rng.normal(0.0, 0.3, params[k].shape)
    params["C"] = init_global_kernel(m, seed=seed)
    return R, params


def conv_pre(R, params, dot_scale):
    """Pre-activation of the global-kernel convolution, xcorr(R, G) (docs/model.md §4)."""
    mu = dense_forward("pretrain", params, R).mean(axis=1)
    return xcorr2d_same(R, (dot_scale * (mu @ params["C"])).reshape(3, 3))


def is_smooth_point(R, params, dot_scale):
    """True when no K entry sits near its max(0, .) corner and no live conv output near 0."""
    for l in range(layer_count(params)):
        U, V = params[f"U{l}"], params[f"V{l}"]
        pre = 1.0 - ((U[:, None, :] - V[None, :, :]) ** 2).sum(axis=2)
        if (np.abs(pre) < KINK).any():
            return False
    S = conv_pre(R, params, dot_scale)
    # Where the 3x3 neighbourhood holds no rating S is identically 0 for every G: no kink.
    live = xcorr2d_same((R > 0).astype(float), np.ones((3, 3))) > 0
    return not (np.abs(S[live]) < KINK).any()


def well_scaled(R, params, hp):
    """True when every finetune gradient group is far above finite-difference round-off.

    A saturated sigmoid can make a group's gradient ~1e-3 while the loss is ~1e2;
    central differences then lose ~1e-6 of it to round-off, which would make the
    1e-6 check flaky without testing anything.
    """
    _, grads = dense_loss_grad("finetune", params, R, **hp)
    return min(np.abs(g).max() for g in grads.values()) > 0.03


def smooth_problem(spec):
    """(R dense, params, hyper-parameters) for one PROBLEMS row, redrawn until
    the point is smooth and well scaled; asserts both regimes are exercised."""
    m, n, h, d, L, density, lambda_2, lambda_s, dot_scale, seed = spec
    hp = dict(lambda_2=lambda_2, lambda_s=lambda_s, dot_scale=dot_scale)
    for attempt in range(20):
        R, params = draw(m, n, h, d, L, density, seed + 1000 * attempt)
        if is_smooth_point(R, params, dot_scale) and well_scaled(R, params, hp):
            break
    else:
        raise RuntimeError("no smooth, well-scaled draw found")
    S = conv_pre(R, params, dot_scale)
    assert (S > KINK).any() and (S < -KINK).any(), "conv should have both signs"
    Ks = [local_kernel(params[f"U{l}"], params[f"V{l}"])[0] for l in range(L + 1)]
    K = np.concatenate([k.ravel() for k in Ks])
    assert (K == 0).any() and ((K > 0) & (K < 1)).any(), "K should hit both regimes"
    return R, params, hp
