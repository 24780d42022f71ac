"""The sparse engine: gradients against central differences and the dense
reference, float32 against float64, initialisation, sparse patterns."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from dense_reference import dense_loss_grad, numerical_grad, rel_error
from glocalk_np.kernels import cpu
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.params import (STAGES, flatten, init_global_kernel, init_layers, optimised,
                               unflatten)
from glocalk_np.sparse import Pattern
from problems import FD_EPS, draw



def engine(R, hp, dtype=np.float64):
    return CpuEngine(sp.csr_matrix(R), dtype=dtype, **hp)


@pytest.mark.parametrize("stage", STAGES)
def test_gradient_matches_finite_differences(problem, stage):
    R, params, hp = problem
    f = engine(R, hp)
    loss, grads = f(stage, params)
    keys = list(optimised(stage, params))
    assert list(grads) == keys
    num = numerical_grad(lambda p: f(stage, p)[0], params, keys=keys, eps=FD_EPS)
    for k in keys:
        assert rel_error(grads[k], num[k]) < 1e-6, k


def test_second_pass_on_the_kept_entries_as_their_number_changes(problem):
    """Fine-tuning's second pass runs on the compacted entries the ReLU
    keeps, in work buffers kept between evaluations: evaluations whose kept
    count grows, shrinks, grows again and reaches the whole neighbourhood
    (every weight of G > 0) each give the dense reference's loss and gradient."""
    R, params, hp = problem
    f = engine(R, hp)
    C = params["C"]
    mu = f.network.forward("finetune", f._compute_params("finetune", params)).mu
    positive_G = np.sign(mu)[:, None] * np.abs(C)      # G = mu^T C = sum |mu_i| |C_i| > 0
    for C_now in (C, -C, C, positive_G):                # flipping C flips what the ReLU keeps
        p = dict(params, C=C_now)
        conv = f.network.forward("finetune", f._compute_params("finetune", p)).conv
        kept = np.count_nonzero(conv.pre > 0)
        assert 0 < kept <= conv.pre.size
        assert (kept < conv.pre.size) == (C_now is not positive_G)
        assert conv.X.nnz == kept
        loss, grads = f("finetune", p)
        ref_loss, ref = dense_loss_grad("finetune", p, R, **hp)
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        for k, g in ref.items():
            assert rel_error(grads[k], g) < 1e-10, k


@pytest.mark.parametrize("stage", STAGES)
def test_float32_agrees_with_float64(stage):
    rng = np.random.default_rng(5)
    m, n = 60, 45
    R = sp.random(m, n, density=0.1, random_state=5, format="csr",
                  data_rvs=lambda k: rng.integers(1, 6, k).astype(float))
    params = init_layers(n, n_hidden=20, n_layers=2, kernel_dim=5, seed=1)
    params["C"] = init_global_kernel(m, seed=1)
    hp = dict(lambda_2=20.0, lambda_s=0.006, dot_scale=1.0)
    l64, g64 = CpuEngine(R, dtype=np.float64, **hp)(stage, params)
    l32, g32 = CpuEngine(R, dtype=np.float32, **hp)(stage, params)
    assert all(g.dtype == np.float32 for g in g32.values())
    assert l32 == pytest.approx(l64, rel=1e-4)
    for k in g64:
        assert rel_error(g32[k].astype(np.float64), g64[k]) < 1e-4, k


def test_float32_sigmoid_is_the_sigmoid_to_float32_rounding():
    """bias_sigmoid_f32's own exp against float64 at the same float32 inputs,
    across the whole range (saturation and the clamped tail included), and
    against the libm-based kernel it replaces for float32."""
    rng = np.random.default_rng(7)
    Z = np.concatenate([np.linspace(-120, 120, 4001), 6 * rng.standard_normal(4001 * 7)])
    Z = Z.astype(np.float32).reshape(8, 4001)
    b = rng.standard_normal(4001).astype(np.float32)
    fast, libm = Z.copy(), Z.copy()
    cpu.bias_sigmoid_f32(fast, b)
    cpu.bias_sigmoid(libm, b)
    z = (Z + b).astype(np.float64)                  # the float32 sums both kernels see
    exact = np.where(z >= 0, 1 / (1 + np.exp(-z)), np.exp(z) / (1 + np.exp(z)))
    normal = exact > 1e-30
    assert np.all((fast >= 0) & (fast <= 1))
    assert np.max(np.abs(fast - exact)[normal] / exact[normal]) < 5e-7   # a few float32 ulps
    assert np.max(np.abs(fast - libm)[normal] / exact[normal]) < 5e-7
    # below 1e-30: the exact value, or e^-87 where the argument was clamped
    assert np.all(fast[~normal] <= np.maximum(exact[~normal] * (1 + 1e-6), 1.7e-38))


def test_loss_is_half_squared_error_plus_regulariser():
    """With lambda = 0 the loss is 1/2 the squared residual at observed entries only."""
    R, params = draw(6, 7, 3, 2, 1, 0.4, 9)
    f = engine(R, dict(lambda_2=0.0, lambda_s=0.0))
    m, n = R.shape
    rows, cols = np.divmod(np.arange(m * n), n)
    P = f.predict("pretrain", params, rows, cols).reshape(m, n)
    mask = R > 0
    assert f("pretrain", params)[0] == pytest.approx(0.5 * ((R - P)[mask] ** 2).sum(), rel=1e-12)


def test_initialisation_matches_spec_section_4():
    n, h = 400, 300
    p = init_layers(n, n_hidden=h, n_layers=2, kernel_dim=5, seed=0)
    a = np.sqrt(6 / (n + h))
    W0 = p["W0"]
    assert W0.shape == (n, h) and np.abs(W0).max() <= a
    assert W0.var() == pytest.approx(a * a / 3, rel=0.02)
    assert stats.kstest(W0.ravel() / a, "uniform", args=(-1, 2)).pvalue > 1e-3
    a_b = np.sqrt(3 / h)
    assert np.abs(p["b0"]).max() <= a_b and p["b0"].max() > 0.8 * a_b  # Glorot, not zeros
    assert p["W2"].shape == (h, n) and p["b2"].shape == (n,)
    # truncated normal at 2 sigma: std = sigma * 0.8796
    trunc_std = np.sqrt(1 - 2 * 2 * stats.norm.pdf(2) / (stats.norm.cdf(2) - stats.norm.cdf(-2)))
    for key, rows in (("U0", n), ("V0", h), ("U2", h), ("V2", n)):
        assert p[key].shape == (rows, 5)
        assert np.abs(p[key]).max() <= 2e-3
        assert p[key].std() == pytest.approx(1e-3 * trunc_std, rel=0.05)
    C = init_global_kernel(500, gk_size=3, seed=0)
    assert C.shape == (500, 9) and np.abs(C).max() <= 0.2
    assert C.std() == pytest.approx(0.1 * trunc_std, rel=0.05)
    again = init_layers(n, n_hidden=h, n_layers=2, kernel_dim=5, seed=0)
    assert all(np.array_equal(p[k], again[k]) for k in p)


def test_flatten_round_trip():
    p = init_layers(7, n_hidden=4, n_layers=2, kernel_dim=3, seed=2)
    x = flatten(p)
    assert x.dtype == np.float64 and x.size == sum(v.size for v in p.values())
    back = unflatten(x, p)
    assert list(back) == list(p) and all(np.array_equal(back[k], p[k]) for k in p)
    with pytest.raises(ValueError, match="flat vector"):
        unflatten(x[:-1], p)


def _random_csr(m, n, density, seed):
    rng = np.random.default_rng(seed)
    return sp.random(m, n, density=density, random_state=seed, format="csr",
                     data_rvs=lambda k: rng.uniform(1, 5, k))


def spmm_t(P, x, A):
    """X^T @ A for the pattern P with values x (CSR order), by the kernel."""
    out = np.empty((P.shape[1], A.shape[1]))
    cpu.spmm(P.csc_indptr, P.csc_rows, x[P.csc_perm], A, out, False)
    return out


def test_sparse_kernels_match_scipy():
    X = _random_csr(37, 23, 0.2, 0)
    P = Pattern.from_csr(X)
    rng = np.random.default_rng(0)
    B, A = rng.normal(size=(23, 9)), rng.normal(size=(37, 9))
    out = np.empty((37, 9))
    cpu.spmm(P.indptr, P.indices, X.data, B, out, False)
    np.testing.assert_allclose(out, X @ B, rtol=1e-12)
    np.testing.assert_allclose(spmm_t(P, X.data, A), X.T @ A, rtol=1e-12)
    coo = X.tocoo()
    sampled = np.empty(P.nnz)
    cpu.sddmm(P.indptr, P.indices, A, B, sampled)
    np.testing.assert_allclose(sampled, (A @ B.T)[coo.row, coo.col], rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (31, 33), (64, 32), (65, 7), (3, 200), (72, 136), (130, 71)])
def test_transpose_kernel_at_tile_edges(shape):
    A = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = np.full(shape[::-1], np.nan, dtype=np.float32)
    cpu.transpose(A, out)
    assert np.array_equal(out, A.T)


def test_pattern_neighbourhood_and_positive_part():
    X = _random_csr(30, 40, 0.05, 1)
    P = Pattern.from_csr(X)
    S = P.neighbourhood(3)
    dense = (X.toarray() > 0).astype(float)
    padded = np.pad(dense, 1)
    box = sum(padded[a:a + 30, b:b + 40] for a in range(3) for b in range(3))
    expected = np.argwhere(box > 0)
    np.testing.assert_array_equal(np.c_[S.rows, S.indices], expected)
    values = np.random.default_rng(1).normal(size=S.nnz)
    keep = values > 0
    sub, x, x_csc, pos = S.positive(values)
    np.testing.assert_array_equal(np.c_[sub.rows, sub.indices], expected[keep])
    np.testing.assert_array_equal(x, values[keep])
    np.testing.assert_array_equal(pos[keep], np.arange(keep.sum()))
    assert (pos[~keep] == -1).all()
    Xsub = sp.csr_matrix((x, (sub.rows, sub.indices)), shape=(30, 40)).tocsc()
    np.testing.assert_array_equal(sub.csc_indptr, Xsub.indptr)
    np.testing.assert_array_equal(sub.csc_rows, Xsub.indices)
    np.testing.assert_array_equal(x_csc, Xsub.data)
    np.testing.assert_array_equal(x[sub.csc_perm], x_csc)
    A = np.random.default_rng(2).normal(size=(30, 4))
    np.testing.assert_allclose(spmm_t(sub, x, A), Xsub.T @ A, rtol=1e-12)
    whole, x, x_csc, pos = S.positive(np.abs(values) + 1)    # nothing dropped: S itself
    assert whole is S
    np.testing.assert_array_equal(x_csc, x[S.csc_perm])
    np.testing.assert_array_equal(pos, np.arange(S.nnz))


def test_rejects_bad_inputs():
    R, params = draw(5, 6, 3, 2, 1, 0.5, 3)
    with pytest.raises(ValueError, match="> 0"):
        CpuEngine(sp.csr_matrix(-R), lambda_2=1, lambda_s=1)
    with pytest.raises(ValueError, match="no ratings"):
        CpuEngine(sp.csr_matrix((5, 6)), lambda_2=1, lambda_s=1)
    f = engine(R, dict(lambda_2=1.0, lambda_s=1.0))
    with pytest.raises(ValueError, match="stage"):
        f("pre-train", params)
    with pytest.raises(ValueError, match="users"):
        engine(R[:, :5], dict(lambda_2=1.0, lambda_s=1.0))("pretrain", params)
    with pytest.raises(ValueError, match="dtype"):
        CpuEngine(sp.csr_matrix(R), lambda_2=1, lambda_s=1, dtype=np.int32)


def test_global_kernel_wider_than_the_matrix_matches_dense_reference():
    """A gk x gk kernel larger than the matrix (here 9 on 5 x 6): the cells
    that fall outside see the zero padding, as in TF's 'SAME' convolution."""
    R, params = draw(5, 6, 3, 2, 1, 0.5, 3)
    params["C"] = init_global_kernel(5, gk_size=9, seed=3)
    hp = dict(lambda_2=0.5, lambda_s=0.2, dot_scale=3.0)
    loss, grads = engine(R, hp)("finetune", params)
    ref_loss, ref_grads = dense_loss_grad("finetune", params, R, **hp)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k, g in ref_grads.items():
        assert rel_error(grads[k], g) < 1e-10, k


def test_engine_names_the_array_whose_shape_is_wrong():
    R, params = draw(5, 6, 3, 2, 1, 0.5, 3)
    f = engine(R, dict(lambda_2=1.0, lambda_s=1.0))
    for key, shape in (("V0", (1, 2)), ("U1", (3, 5)), ("b1", (5,)), ("W1", (3, 7))):
        bad = {**params, key: np.zeros(shape)}
        with pytest.raises(ValueError, match=rf"{key} has shape \({shape[0]},"):
            f("pretrain", bad)
    with pytest.raises(ValueError, match="missing C"):
        f("finetune", {k: v for k, v in params.items() if k != "C"})
    with pytest.raises(ValueError, match="gk\\^2 columns"):
        f("finetune", {**params, "C": np.zeros((5, 8))})


def test_each_stage_optimises_its_arrays_in_the_flat_order():
    _, params = draw(5, 6, 3, 2, 1, 0.5, 3)
    layers = [k for k in params if k != "C"]
    assert list(optimised("pretrain", params)) == layers
    assert list(optimised("finetune", params)) == layers + ["C"]
