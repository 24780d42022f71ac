"""Training: the L-BFGS-B schedule of both stages, held-out scores after
every epoch and the selection of the epoch (docs/model.md §9-10); the
hyper-parameters and presets are in config.py, the records in records.py.

The optimiser sees one flat float64 vector and a function returning
(loss, flat gradient), nothing else. One epoch is one call of
scipy.optimize.minimize(method='L-BFGS-B', options={'maxiter', 'maxcor': 10}),
so the L-BFGS memory restarts every epoch, as in the official code; or,
with optimizer='numba', one run of lbfgsb.minimize, which takes the same
steps with the engine writing its gradient straight into the optimiser's
vector and the vectors allocated once per stage.
"""
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from . import lbfgsb, metrics
from .engines import make_engine, settings
from .engines.base import RemoteParams
from .fallback import Fallback
from .config import Config, check_problem, check_select
from .params import (STAGES, flatten, init_global_kernel, init_layers, optimised,
                     placeholders, unflatten)
from .records import Best, EpochRecord, TrainingDiverged, TrainState, epochs_run
from .scoring import EvalSet, held_out_scores
from .scale import RatingScale

MAXCOR = 10          # L-BFGS-B's memory, as the official code sets it


def minimize_epoch(engine, stage, template, maxiter, optimizer="scipy", workspace=None,
                   start=None):
    """One epoch: one L-BFGS-B run of at most ``maxiter`` iterations, as
    tf.contrib.opt.ScipyOptimizerInterface made it ('scipy', from the arrays
    ``template``), or the same steps by lbfgsb.minimize ('numba', in
    ``workspace``, from its vector ``start``, where the result is put back:
    the parameters stay where the engine keeps its vectors between epochs,
    and ``template`` gives only their layout; without a workspace, in one
    of its own from the arrays ``template``). Returns (the parameters
    after it, a mapping as engine.parameters_in gives, the loss, the
    evaluations, whether every parameter is finite)."""
    if optimizer == "scipy":
        r = minimize(engine.objective(stage, template), flatten(template), jac=True,
                     method="L-BFGS-B", options={"maxiter": maxiter, "maxcor": MAXCOR})
        return unflatten(r.x, template), r.fun, int(r.nfev), bool(np.isfinite(r.x).all())
    if workspace is None:            # an epoch on its own: a workspace of its own
        workspace, start = holding(engine, template)
    r = lbfgsb.minimize(engine.objective_into(stage, template), start, maxiter=maxiter,
                        maxcor=MAXCOR, workspace=workspace)
    ops = workspace.vectors
    ops.copy(r.x, start)
    squares, largest = ops.dot_and_abs_max(start, start)     # NaN and inf reach the sum
    return (engine.parameters_in(workspace, start, template), r.fun, r.nfev,
            bool(np.isfinite(squares) and np.isfinite(largest)))


def holding(engine, params):
    """(the engine's workspace for the parameters ``params``, a vector of it
    that holds them): where lbfgsb.minimize's epochs start and end."""
    n = sum(a.size for a in placeholders(params).values())
    workspace = engine.workspace(n, MAXCOR)
    start = workspace.vectors.empty(n)
    engine.place(workspace, start, params)
    return workspace, start


def initial_state(train, config):
    """Fresh layer parameters for ``train``'s shape (docs/model.md §8)."""
    return TrainState(init_layers(train.shape[1], config.n_hidden, config.n_layers,
                                  config.kernel_dim, seed=config.seed))


def fit(train, config=Config(), *, evals=None, callback=None, state=None, engine=None,
        known=None):
    """Train GLocal-K on the sparse items x users matrix ``train``.

    The network trains on the ratings mapped by ``config.scale``
    (scale.py); predictions and metrics are in the ratings' own units.
    evals: optional {'test': matrix, 'val': matrix} of held-out ratings, scored
    after every epoch (RMSE, MAE, NDCG with clipped predictions; pairs
    whose item or user has no training rating get fallback.py's
    predictions, counted as 'fallback').
    callback(record, state): called after every epoch, e.g. to print or to
    checkpoint; ``state`` then holds everything needed to resume.
    state: a TrainState to resume from (its completed epochs are skipped).
    With ``config.patience`` = N > 0 (it needs evals['val']) a stage ends
    once N epochs in a row brought no lower validation RMSE than its best
    (stage_over); fine-tuning goes on from the last pre-training epoch.
    engine: the (loss, gradient) engine, e.g. engines.make_engine(
    RatingScale.of(train.data, config.scale).matrix_to_model(train), config,
    device='cuda'), to share one among fits; the CPU engine by default. It
    must have been built for the mapped ``train`` with ``config``'s settings,
    and its caller checked the problem's size (config.check_problem).
    known: (RatingScale, Fallback) of ``train``, when the caller has them
    (the estimator keeps both for its predictions); else built here.
    Returns the final TrainState; ``state.best[sel]`` holds the fine-tuning epoch
    and parameters picked by each available selection ('test': best test RMSE,
    the paper's protocol; 'val': best validation RMSE; 'last').
    """
    train = sp.csr_matrix(train)
    if engine is None:      # a caller with an engine checked the problem it built it for
        check_problem(config, train)
    if config.patience and "val" not in (evals or {}):
        raise ValueError(f"patience={config.patience} (early stopping) needs a validation set")
    scale, fallback = known or (RatingScale.of(train.data, config.scale), Fallback(train))
    engine = engine or make_engine(scale.matrix_to_model(train), config)
    if engine.settings != settings(config) or engine.shape != train.shape:
        raise ValueError(f"the engine was built with {engine.settings} for a matrix of "
                         f"{engine.shape}; the config says {settings(config)} for {train.shape}")
    state = state or initial_state(train, config)
    evals = {name: m if isinstance(m, EvalSet) else EvalSet.of_matrix(m)
             for name, m in (evals or {}).items()}
    low, high = scale.low, scale.high
    train_set = EvalSet.of_matrix(train)
    done_pre, done_fine = state.done
    schedule = [("pretrain", config.epochs_pretrain, config.iters_pretrain, done_pre),
                ("finetune", config.epochs_finetune, config.iters_finetune, done_fine)]
    for stage, epochs, iters, done in schedule:
        if stage_over(state.history, stage, config):
            continue
        if stage == "finetune" and "C" not in state.params:
            state.params = _with_arrays(state.params, {"C": init_global_kernel(
                train.shape[0], config.gk_size, config.seed)})
        workspace = start = None
        if config.optimizer == "numba":     # the parameters live in the workspace's ``start``
            template = optimised(stage, placeholders(state.params))
            # state.params holds just the stage's arrays: C joins where fine-tuning begins
            workspace, start = holding(engine, state.params)
        else:
            template = optimised(stage, state.params)
        for epoch in range(done + 1, epochs + 1):
            tic = time.perf_counter()
            params, loss, evaluations, finite = minimize_epoch(
                engine, stage, template, iters, config.optimizer, workspace, start)
            if not (np.isfinite(loss) and finite):
                raise TrainingDiverged(
                    f"training diverged: the loss is {loss} after {stage} epoch {epoch} "
                    f"(ratings {low:g} to {high:g}, lambda_2={config.lambda_2:g}, "
                    f"lambda_s={config.lambda_s:g}, dot_scale={config.dot_scale:g}): "
                    "smaller ratings or penalties are needed")
            if workspace is None:
                template = params
            state.params = params
            scores = score(engine, stage, state.params, train_set, evals, scale, fallback)
            record = EpochRecord(stage, epoch, scores.pop("train")["rmse"],
                                 time.perf_counter() - tic, evaluations, scores)
            state.history.append(record)
            over = stage_over(state.history, stage, config)
            if stage == "finetune":
                _update_best(state, record, evals, over)
            if callback is not None:
                callback(record, state)
            if over:
                break
    return state


def stage_over(history, stage, config):
    """Whether ``stage`` has no epoch left: all of its epochs ran, or, with
    config.patience = N > 0, the last N epochs brought no validation RMSE
    below the stage's best (early stopping)."""
    val = [r.metrics["val"]["rmse"] for r in history if r.stage == stage and "val" in r.metrics]
    if epochs_run(history, stage) >= config.epochs(stage):
        return True
    patience = config.patience or 0       # None (unresolved): no early stopping here
    return patience > 0 and len(val) > 0 and len(val) - 1 - int(np.argmin(val)) >= patience


def stopped_early(history, config):
    """The stages that early stopping ended before their last epoch."""
    return [stage for stage in STAGES
            if stage_over(history, stage, config)
            and epochs_run(history, stage) < config.epochs(stage)]


def score(engine, stage, params, train_set, evals, scale, fallback):
    """RMSE (and for held-out sets MAE, NDCG and the number of ratings
    predicted by a fallback) of the stage's predictions in the ratings'
    units, clipped to their training range, from one forward pass."""
    sets = {"train": train_set, **evals}

    def network(rows, cols):
        return scale.to_user(engine.predict(stage, params, rows, cols).astype(np.float64))

    pred, kinds = fallback.predict(*(np.concatenate([getattr(s, a) for s in sets.values()])
                                     for a in ("rows", "cols")), network,
                                   *(np.concatenate([getattr(s, a) for s in sets.values()])
                                     for a in ("rows_known", "cols_known")))
    out, pos = {}, 0
    for name, s in sets.items():
        p, k = pred[pos:pos + len(s)], kinds[pos:pos + len(s)]
        pos += len(s)
        out[name] = ({"rmse": metrics.rmse(metrics.clip(p, scale.low, scale.high), s.values)}
                     if name == "train" else held_out_scores(p, k, s, scale))
    return out


def _update_best(state, record, evals, last):
    """Keep, per selection rule, the epoch and a copy of the parameters it picks."""
    for sel in ("test", "val"):
        if sel in evals:
            rmse = record.metrics[sel]["rmse"]
            best = state.best.get(sel)
            if best is None or rmse < best.rmse:
                state.best[sel] = Best(record.epoch, rmse, _kept(state.params, sel))
    if last:
        state.best["last"] = Best(record.epoch, None, state.params)


def _with_arrays(params, arrays):
    """The parameters and the host arrays ``arrays``, as a dict, or for
    parameters an engine keeps where its vectors live, as their own kind
    (engines.base.RemoteParams), still kept there."""
    if isinstance(params, RemoteParams):
        return params.with_arrays(arrays)
    return {**params, **arrays}


def _kept(params, slot):
    """A copy of the parameters that later epochs leave alone: of each host
    array, or, for parameters an engine keeps where its vectors live, one
    made there in the place named ``slot`` (engines.base.RemoteParams)."""
    if isinstance(params, RemoteParams):
        return params.kept(slot)
    return {k: v.copy() for k, v in params.items()}


def selected(state, select):
    """(epoch, parameters) chosen by ``select`` ('test', 'val' or 'last')."""
    if select not in state.best:
        check_select(select, None, None)    # an unknown rule, or a set fit was not given
        raise ValueError("no fine-tuning epoch has run")
    return state.best[select].epoch, state.best[select].params

