"""The trainer mirrors the official optimiser schedule and keeps its books."""
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import OptimizeResult

import glocalk_np.train as train
from glocalk_np.config import PRESETS, Config
from glocalk_np.train import fit, selected

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_problem(seed=0, m=30, n=25):
    """A low-rank 1..5 rating matrix split into train and test."""
    rng = np.random.default_rng(seed)
    full = np.clip(np.rint(3 + rng.normal(size=(m, 2)) @ rng.normal(size=(2, n))), 1, 5)
    mask = rng.random((m, n))
    return sp.csr_matrix(np.where(mask < 0.3, full, 0)), sp.csr_matrix(np.where(mask > 0.9, full, 0))


TINY = dict(n_hidden=6, kernel_dim=3, epochs_pretrain=2, epochs_finetune=3,
            iters_pretrain=4, iters_finetune=3, dtype="float64")


def test_one_minimize_call_per_epoch_with_official_options(monkeypatch):
    calls = []

    def fake_minimize(fun, x0, jac, method, options):
        loss, grad = fun(x0)
        calls.append(dict(size=x0.size, dtype=x0.dtype, jac=jac, method=method,
                          options=dict(options), grad_ok=grad.dtype == np.float64 and grad.shape == x0.shape))
        return OptimizeResult(x=x0 - 1e-3 * grad, fun=loss, nfev=1)

    monkeypatch.setattr(train, "minimize", fake_minimize)
    R, _ = small_problem()
    cfg = Config(**{**TINY, "iters_pretrain": 7, "iters_finetune": 4})
    state = fit(R, cfg)
    m, n = R.shape
    layer_size = sum(v.size for k, v in state.params.items() if k != "C")
    assert len(calls) == cfg.epochs_pretrain + cfg.epochs_finetune
    pre, fine = calls[:cfg.epochs_pretrain], calls[cfg.epochs_pretrain:]
    assert all(c["options"] == {"maxiter": 7, "maxcor": 10} for c in pre)
    assert all(c["options"] == {"maxiter": 4, "maxcor": 10} for c in fine)
    assert all(c["method"] == "L-BFGS-B" and c["jac"] is True and c["grad_ok"] for c in calls)
    assert all(c["dtype"] == np.float64 for c in calls)
    assert {c["size"] for c in pre} == {layer_size}
    assert {c["size"] for c in fine} == {layer_size + m * cfg.gk_size ** 2}
    assert [(r.stage, r.epoch) for r in state.history] == (
        [("pretrain", e) for e in (1, 2)] + [("finetune", e) for e in (1, 2, 3)])


def test_fit_lowers_loss_and_tracks_best_epochs():
    R, T = small_problem()
    state = fit(R, Config(**TINY), evals={"test": T, "val": T})
    rmse = [r.train_rmse for r in state.history]
    assert rmse[-1] < rmse[0]
    fine = [r for r in state.history if r.stage == "finetune"]
    test_rmse = [r.metrics["test"]["rmse"] for r in fine]
    epoch, params = selected(state, "test")
    assert epoch == 1 + int(np.argmin(test_rmse))
    assert selected(state, "val")[0] == epoch  # same set, same pick
    assert selected(state, "last")[0] == 3
    assert set(fine[0].metrics["test"]) == {"rmse", "mae", "ndcg", "n", "fallback", "unseen",
                                            "network_rmse", "network_mae", "network_n"}
    assert "C" in params


def test_selection_errors():
    R, _ = small_problem()
    state = fit(R, Config(**{**TINY, "epochs_finetune": 1}))
    with pytest.raises(ValueError, match="test set"):
        selected(state, "test")
    with pytest.raises(ValueError, match="select"):
        selected(state, "best")


def test_presets_and_validation():
    cfg = Config.from_preset("ml-1m", epochs_finetune=3, lambda_2=None)
    assert (cfg.lambda_2, cfg.iters_pretrain, cfg.epochs_finetune, cfg.dot_scale) == (70.0, 50, 3, 0.5)
    assert Config() == Config.from_preset("ml-100k")
    assert Config.from_preset("douban").lambda_s == 0.022
    assert set(PRESETS) == {"ml-100k", "ml-1m", "douban"}
    for bad, match in [(dict(n_hidden=0), "n_hidden must be a positive integer, got 0"),
                       (dict(lambda_2=-1.0), r"lambda_2 must be a number in \[0, 1e\+06\], got -1.0"),
                       (dict(gk_size=4), "gk_size must be odd"),
                       (dict(dtype="float16"), "dtype"),
                       (dict(epochs_finetune=1.5), "epochs_finetune")]:
        with pytest.raises(ValueError, match=match):
            Config(**bad)
    with pytest.raises(ValueError, match="preset"):
        Config.from_preset("netflix")
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        Config.from_preset(None, hidden=3)


@pytest.mark.skipif(not (DATA / "ml-100k" / "u1.base").exists(),
                    reason="needs ../shared/data/ml-100k (the benchmark data beside the repo)")
def test_short_real_run_on_ml100k():
    from glocalk_np.data import Index, read_ratings
    tr = read_ratings(DATA / "ml-100k" / "u1.base")
    te = read_ratings(DATA / "ml-100k" / "u1.test")
    index = Index.from_ratings(tr, te)
    R, _ = index.matrix(tr)
    T, _ = index.matrix(te)
    assert R.shape == (1682, 943)
    cfg = Config.from_preset("ml-100k", epochs_pretrain=2, epochs_finetune=2)
    state = fit(R, cfg, evals={"test": T})
    assert state.history[-1].train_rmse < 1.0
    assert state.history[-1].metrics["test"]["rmse"] < 1.1


def _expected_stop(curve, patience):
    """Epochs an early-stopped stage runs, from a full run's validation curve."""
    for k in range(1, len(curve) + 1):
        if k - 1 - int(np.argmin(curve[:k])) >= patience:
            return k
    return len(curve)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_stops_where_the_validation_curve_says(patience):
    """Each stage ends at the first epoch after which ``patience`` epochs
    brought no better validation RMSE; up to there pre-training is the full
    run's, epoch for epoch, and fine-tuning (from wherever pre-training
    ended) stops by the same rule on its own curve."""
    R, T = small_problem(seed=3)
    cfg = Config(**{**TINY, "epochs_pretrain": 8, "epochs_finetune": 8, "lambda_2": 0.01,
                    "lambda_s": 0.001})
    early_cfg = Config(**{**cfg.as_dict(), "patience": patience})
    full = fit(R, cfg, evals={"val": T})
    early = fit(R, early_cfg, evals={"val": T})

    def curve(state, stage):
        return [r.metrics["val"]["rmse"] for r in state.history if r.stage == stage]

    pre = _expected_stop(curve(full, "pretrain"), patience)
    assert curve(early, "pretrain") == curve(full, "pretrain")[:pre]
    fine = curve(early, "finetune")
    assert len(fine) == _expected_stop(fine, patience)
    stopped = [s for s, n in (("pretrain", pre), ("finetune", len(fine))) if n < 8]
    assert stopped                                      # the data make it stop somewhere
    assert train.stopped_early(early.history, early_cfg) == stopped
    assert early.best["last"].epoch == len(fine)
    assert selected(early, "val")[0] == 1 + int(np.argmin(fine))


def test_early_stopping_needs_a_validation_set():
    R, T = small_problem()
    with pytest.raises(ValueError, match="patience=3 .*needs a validation set"):
        fit(R, Config(**TINY, patience=3), evals={"test": T})
