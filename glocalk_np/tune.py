"""Hyper-parameter search on a validation split (``glocalk-np tune``).

The presets were tuned by the paper's authors for three datasets; other
data needs its own settings. A random search over the penalties, the global
kernel's scale, the hidden width and the epoch budgets, each trial fitted
on the training ratings and scored on the validation ratings only (the test
set, if any, is never seen here). Every trial runs with early stopping
(``patience``), so a bad setting ends as soon as its validation RMSE stops
improving; the search keeps to its time budget (a trial that would run
past it stops at the end of an epoch) and its trial count. The first
trial is the base configuration itself, so the winner is never worse on
validation than the default. A trial that fails (a diverged loss, NaN) is
recorded and the search goes on.
"""
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from .config import DEFAULT_PATIENCE, Config
from .records import epochs_run

# name -> ('log', low, high): log-uniform; ('choice', values): uniform
SPACE = {
    "lambda_2": ("log", 1.0, 300.0),
    "lambda_s": ("log", 1e-3, 0.1),
    "dot_scale": ("log", 0.25, 4.0),
    "n_hidden": ("choice", (250, 500)),
    "epochs_pretrain": ("choice", (10, 20, 30, 40)),
    "epochs_finetune": ("choice", (20, 40, 60)),
}
# What a search can rank by: RMSE (lower is better) or a top-N metric of the
# lists recommend makes, on the validation ratings (higher is better). The
# trainer is imported where a trial runs, so that the CLI reads these alone.
METRICS = ("rmse", "ndcg@10", "precision@10", "recall@10")


@dataclass
class Trial:
    """One setting and what it gave on the validation set."""
    number: int
    settings: dict            # the searched Config fields
    val_rmse: float | None    # at the selected fine-tuning epoch; None if it failed
    epochs_pretrain: int      # pre-training epochs run (early stopping may end it)
    best_epoch: int | None    # the fine-tuning epoch with the best validation RMSE
    seconds: float
    config: Config            # reproduces the trial's model with fit: its settings, the
    error: str | None = None  # epochs it ran up to its best fine-tuning epoch, its patience
    score: float | None = None      # the metric the search ranks by (val RMSE by default)
    coverage: float | None = None   # share of the items in the users' top-10 lists
    stopped: bool = False           # stopped at the time budget, with its epochs up to there

    @property
    def last_epoch_best(self):
        """Whether the best fine-tuning epoch was the last of its budget (a
        larger budget might have done better)."""
        return self.best_epoch is not None and \
            self.best_epoch == self.settings.get("epochs_finetune")


def sample(rng, space=SPACE):
    """One setting drawn from ``space``."""
    out = {}
    for name, (kind, *args) in space.items():
        if kind == "log":
            out[name] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
        else:
            out[name] = args[0][int(rng.integers(len(args[0])))]
    return out


def tune(train, val, base=Config(), *, trials=None, budget_s=None, seed=0,
         patience=DEFAULT_PATIENCE, index=None, callback=None, on_epoch=None, space=SPACE,
         metric="rmse"):
    """Trials ranked by ``metric`` on the validation set (METRICS: the
    validation RMSE, lowest first, or a top-10 metric of the lists recommend
    makes, highest first; failed trials last). Each trial also records the
    share of the catalogue its users' top-10 lists use (``coverage``).

    train, val: Ratings. base: the Config whose other fields every trial
    keeps (and the first trial). space: what is searched (SPACE's form).
    trials / budget_s: stop after that many trials, or keep to budget_s
    seconds (at least one of the two is needed): no trial starts that the
    mean trial time so far says would end after it, and a trial stops at
    the end of an epoch when another, taking as long as the last, would
    (``stopped``: it keeps its best epoch up to there, and has no top-10
    score or coverage). callback(trial) after each trial; on_epoch(number,
    record, epochs) after each epoch of trial ``number`` (``epochs``: its
    stage's epoch budget)."""
    if trials is None and budget_s is None:
        raise ValueError("tune needs a trial count or a time budget")
    if trials is not None and trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    if budget_s is not None and not 0 < budget_s < math.inf:   # nan or inf: no end
        raise ValueError(f"budget_s must be a positive, finite number of seconds, got "
                         f"{budget_s!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    rng = np.random.default_rng(seed)
    searched = {name: getattr(base, name) for name in space}
    done, start = [], time.perf_counter()
    deadline = None if budget_s is None else start + budget_s
    while trials is None or len(done) < trials:
        elapsed = time.perf_counter() - start
        if done and budget_s is not None and elapsed + elapsed / len(done) > budget_s:
            break
        settings = searched if not done else sample(rng, space)
        done.append(_run(len(done) + 1, settings, base, patience, train, val, index, metric,
                         deadline, on_epoch))
        if callback is not None:
            callback(done[-1])
    sign = 1 if metric == "rmse" else -1
    return sorted(done, key=lambda t: (t.score is None or not math.isfinite(t.score),
                                       sign * (t.score or 0.0), t.number))


class _OutOfTime(Exception):
    """A trial's next epoch would end after the search's deadline."""


class _Epochs:
    """The fit callback of trial ``number`` (``model``): each epoch to
    ``report``; _OutOfTime after an epoch that another follows when, taking
    as long, it would end after ``deadline`` (time.perf_counter; None: no
    deadline). ``state`` is the fit's last TrainState."""

    def __init__(self, number, model, deadline, report):
        self.number, self.model, self.deadline, self.report = number, model, deadline, report
        self.state = None

    def __call__(self, record, state):
        from .train import stage_over
        self.state = state
        config = self.model.config_     # as fit resolved it (a large file's epochs)
        if self.report is not None:
            self.report(self.number, record, config.epochs(record.stage))
        last = stage_over(state.history, record.stage, config) and (
            record.stage == "finetune" or not config.epochs_finetune)
        if self.deadline is not None and not last \
                and time.perf_counter() + record.seconds > self.deadline:
            raise _OutOfTime


def _run(number, settings, base, patience, train, val, index, metric, deadline, on_epoch):
    """Fit one setting with early stopping; its Trial, failures and a stop
    at the deadline included."""
    from .estimator import GLocalK
    tic = time.perf_counter()
    config = replace(base, **settings, patience=patience)
    # the network alone: a blend fitted on these val ratings would pull every
    # trial toward the baseline's score and hide the differences
    model = GLocalK(config, refit=False, blend=False)
    epochs = _Epochs(number, model, deadline, on_epoch)
    coverage = None
    try:
        try:
            model.fit(train, val=val, select="val", index=index, callback=epochs)
            stopped, history, best = False, model.history_, model.best_epoch_
            rmse = model.summary_["val"]["rmse"]
        except _OutOfTime:      # what a fit up to here gives: its best epoch, or its last
            stopped, history = True, epochs.state.history
            kept = epochs.state.best.get("val")
            best = kept.epoch if kept else None
            rmse = kept.rmse if kept else history[-1].metrics["val"]["rmse"]
        if not math.isfinite(rmse):
            raise ValueError(f"validation RMSE {rmse}")
        score = rmse if metric == "rmse" else None
        if not stopped:         # a fitted model: its top-10 lists
            if metric != "rmse":
                score = model.evaluate(val, k=10)[metric]
            lists = model.recommend(model.index_.users, top=10)
            coverage = len(np.unique(lists["item"])) / model.index_.n_items
    except (ValueError, FloatingPointError, ArithmeticError) as e:
        return Trial(number, settings, None, 0, None, time.perf_counter() - tic, config,
                     " ".join(str(e).split()))
    pre = epochs_run(history, "pretrain")
    trained = model.config_      # a large file takes the ML-1M settings left at defaults
    settings = {name: getattr(trained, name) for name in settings}
    return Trial(number, settings, rmse, pre, best, time.perf_counter() - tic,
                 replace(trained, epochs_pretrain=pre, epochs_finetune=best or 0), score=score,
                 coverage=coverage, stopped=stopped)
