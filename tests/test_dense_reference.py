"""The dense reference is itself right: finite differences and loop formulas.

Everything else is checked against tests/dense_reference.py, so its gradient is
verified here against central differences for every parameter group of both
stages, at points chosen away from the kinks of max(0, .) and relu.
"""
import numpy as np
import pytest

from dense_reference import (dense_forward, dense_loss_grad, numerical_grad, rel_error,
                             xcorr2d_same)
from glocalk_np.params import layer_count, optimised
from problems import FD_EPS, draw

@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_gradient_matches_finite_differences(problem, stage):
    R, params, hp = problem
    loss, grads = dense_loss_grad(stage, params, R, **hp)
    expected_keys = list(optimised(stage, params))
    assert list(grads) == expected_keys
    num = numerical_grad(lambda p: dense_loss_grad(stage, p, R, **hp)[0], params,
                         keys=expected_keys, eps=FD_EPS)
    for k in expected_keys:
        assert grads[k].shape == params[k].shape
        assert rel_error(grads[k], num[k]) < 1e-6, k


def test_finetune_gradient_through_first_pass_is_significant(problem):
    """The first-pass path (mu -> g -> G) carries a real share of the layer gradient.

    Guards the power of the finite-difference test: with the first pass frozen
    the gradient must differ by far more than the 1e-6 tolerance.
    """
    R, params, hp = problem
    _, grads = dense_loss_grad("finetune", params, R, **hp)
    frozen_mu = dense_forward("pretrain", params, R).mean(axis=1)

    def frozen_loss(p):
        G = (hp["dot_scale"] * (frozen_mu @ p["C"])).reshape(3, 3)
        Rg = np.maximum(xcorr2d_same(R, G), 0.0)
        no_C = {k: v for k, v in p.items() if k != "C"}
        F = dense_forward("pretrain", no_C, Rg)
        # With an all-missing R the data term vanishes and the loss is the regulariser.
        reg, _ = dense_loss_grad("pretrain", no_C, np.zeros_like(R),
                                 lambda_2=hp["lambda_2"], lambda_s=hp["lambda_s"])
        return 0.5 * (((R > 0) * (R - F)) ** 2).sum() + reg

    frozen = numerical_grad(frozen_loss, params, keys=["W0", "b0"], eps=FD_EPS)
    assert max(rel_error(grads[k], frozen[k]) for k in ("W0", "b0")) > 1e-4


def test_loss_is_float_and_inputs_are_not_modified():
    R, params = draw(6, 7, 3, 2, 1, 0.4, 5)
    R32 = R.astype(np.float32)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    before = {k: v.copy() for k, v in p32.items()}
    loss, grads = dense_loss_grad("finetune", p32, R32, lambda_2=1.0, lambda_s=0.1)
    assert isinstance(loss, float)
    assert all(g.dtype == np.float64 for g in grads.values())
    assert all(np.array_equal(before[k], p32[k]) for k in p32)


def test_xcorr_matches_loop_formula():
    rng = np.random.default_rng(7)
    R = np.where(rng.random((4, 5)) < 0.6, rng.integers(1, 6, (4, 5)), 0).astype(float)
    G = rng.normal(size=(3, 3))
    m, n = R.shape
    expected = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            s = 0.0
            for a in range(3):
                for b in range(3):
                    ii, jj = i + a - 1, j + b - 1
                    if 0 <= ii < m and 0 <= jj < n:
                        s += G[a, b] * R[ii, jj]
            expected[i, j] = max(s, 0.0)
    np.testing.assert_allclose(np.maximum(xcorr2d_same(R, G), 0.0), expected, rtol=1e-13, atol=1e-13)
    assert (expected == 0).any() and (expected > 0).any()


def test_xcorr_is_not_flipped():
    """A single off-centre tap G[0, 2] reads R[i - 1, j + 1], as TF conv2d does."""
    R = np.arange(1.0, 13.0).reshape(3, 4)
    G = np.zeros((3, 3))
    G[0, 2] = 1.0
    out = xcorr2d_same(R, G)
    assert out[1, 1] == R[0, 2]
    assert out[0, 0] == 0.0 and out[2, 3] == 0.0


def test_finetune_forward_uses_loop_conv():
    """dense_forward('finetune') equals AE applied to the loop-built relu(xcorr(R, G))."""
    R, params = draw(5, 6, 3, 2, 1, 0.5, 11)
    mu = dense_forward("pretrain", params, R).mean(axis=1)
    G = (3.0 * (mu @ params["C"])).reshape(3, 3)
    Rp = np.pad(R, 1)
    Rg = np.array([[max((G * Rp[i:i + 3, j:j + 3]).sum(), 0.0) for j in range(6)]
                   for i in range(5)])
    no_C = {k: v for k, v in params.items() if k != "C"}
    np.testing.assert_allclose(dense_forward("finetune", params, R, dot_scale=3.0),
                               dense_forward("pretrain", no_C, Rg), rtol=1e-12)


def test_pretrain_loss_matches_loop_computation():
    R, params = draw(4, 5, 3, 2, 1, 0.5, 13)
    lambda_2, lambda_s = 0.7, 0.3
    m, n = R.shape
    L = layer_count(params) - 1

    # Forward pass one item row at a time with explicit sums.
    P = np.zeros((m, n))
    for i in range(m):
        x = list(R[i])
        for l in range(L + 1):
            W, U, V, b = (params[f"{k}{l}"] for k in "WUVb")
            y = []
            for j in range(W.shape[1]):
                z = b[j]
                for q in range(W.shape[0]):
                    k_qj = max(0.0, 1.0 - sum((U[q, t] - V[j, t]) ** 2 for t in range(U.shape[1])))
                    z += x[q] * W[q, j] * k_qj
                y.append(1.0 / (1.0 + np.exp(-z)) if l < L else z)
            x = y
        P[i] = x

    expected = 0.0
    for i in range(m):
        for j in range(n):
            if R[i, j] > 0:
                expected += 0.5 * (R[i, j] - P[i, j]) ** 2
    for l in range(L + 1):
        W, U, V, _ = (params[f"{k}{l}"] for k in "WUVb")
        for q in range(W.shape[0]):
            for j in range(W.shape[1]):
                k_qj = max(0.0, 1.0 - sum((U[q, t] - V[j, t]) ** 2 for t in range(U.shape[1])))
                expected += lambda_s / 2 * k_qj ** 2 + lambda_2 / 2 * W[q, j] ** 2

    np.testing.assert_allclose(dense_forward("pretrain", params, R), P, rtol=1e-12)
    loss, _ = dense_loss_grad("pretrain", params, R, lambda_2=lambda_2, lambda_s=lambda_s)
    assert loss == pytest.approx(expected, rel=1e-12)


def test_unknown_stage_rejected():
    R, params = draw(4, 5, 3, 2, 1, 0.5, 17)
    with pytest.raises(ValueError):
        dense_forward("train", params, R)
    with pytest.raises(ValueError):
        dense_loss_grad("train", params, R, lambda_2=1.0, lambda_s=1.0)
