"""What training records and reports: each epoch's record and the epochs
a stage ran, the epoch a selection rule picks, a checkpoint's state, an
ensemble member, a fit that diverged, the progress lines that show them,
and the check of a stored summary."""
from dataclasses import dataclass, field

from .params import STAGES


@dataclass
class EpochRecord:
    """What the trainer reports after each epoch."""
    stage: str
    epoch: int                  # 1-based within the stage
    train_rmse: float
    seconds: float
    evaluations: int            # (loss, gradient) calls in this epoch
    metrics: dict = field(default_factory=dict)  # {'test': {'rmse', 'mae', 'ndcg'}, 'val': ...}


def epochs_run(history, stage):
    """The number of epochs of ``stage`` that ``history`` (EpochRecords) holds."""
    return sum(r.stage == stage for r in history)


class TrainingDiverged(ValueError):
    """The loss or the parameters left the finite numbers."""


@dataclass
class Best:
    """What a selection rule picks: a fine-tuning epoch, its RMSE on the
    rule's set (None for 'last') and the parameters after it."""
    epoch: int
    rmse: float | None
    params: dict


@dataclass
class TrainState:
    """Everything needed to go on from the end of an epoch: a checkpoint."""
    params: dict
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)   # selection rule -> Best

    @property
    def done(self):
        """(pre-training epochs, fine-tuning epochs) completed."""
        return epochs_run(self.history, "pretrain"), epochs_run(self.history, "finetune")


@dataclass
class Member:
    """One trained model of a (seed) ensemble: the parameters of the epoch
    its selection rule picked (``best_epoch``; None and stage 'pretrain'
    when no fine-tuning ran), its per-epoch history and that epoch's
    held-out metrics."""
    seed: int
    params: dict
    stage: str
    best_epoch: int | None
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def scores_text(by_set, keys=("rmse", "mae")):
    """'val RMSE .. MAE ..  test RMSE .. MAE ..' for the held-out sets present."""
    return "  ".join(f"{name} " + " ".join(f"{k.upper()} {by_set[name][k]:.4f}" for k in keys)
                     for name in ("val", "test") if name in by_set)


def epoch_line(record, total):
    """One epoch's progress line: stage, epoch of ``total``, RMSEs, seconds."""
    return (f"{record.stage:<8} {record.epoch:>3}/{total:<3}  train RMSE "
            f"{record.train_rmse:.4f}  {scores_text(record.metrics)}  {record.seconds:.1f}s")


# ---------------------------------------------------------------- stored summaries

def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# The counts among a held-out set's scores (train.held_out_scores); the
# others are numbers (NaN where nothing was scored)
_SCORE_COUNTS = ("n", "fallback", "unseen", "network_n")


def _is_scores(v):
    return isinstance(v, dict) and all(_is_count(x) if k in _SCORE_COUNTS else _is_number(x)
                                       for k, x in v.items())


# What the readers of a loaded model (GLocalK.info, the info command) take
# from its summary, with the check of each. None is required, as files of
# older versions hold fewer (format 2: no protocol, counts or baseline), and
# the readers print what is there: whatever passes here, they can print.
SUMMARY_FIELDS = {
    "protocol": (lambda v: isinstance(v, str), "a text"),
    "val_model": (lambda v: isinstance(v, str), "a text"),
    "epochs_run": (lambda v: isinstance(v, dict) and all(
        k in STAGES and _is_count(n) for k, n in v.items()), "a map of stages to epoch counts"),
    "val": (_is_scores, "a map of score names to numbers"),
    "test": (_is_scores, "a map of score names to numbers"),
    "baseline": (lambda v: isinstance(v, dict) and all(
        k in ("val", "test") and _is_scores(x) for k, x in v.items()),
                 "a map of held-out sets to scores"),
}


def summary_problem(summary):
    """What is wrong with a stored summary (a dict), naming its first field
    that the readers could not use, or None."""
    for name, (ok, expected) in SUMMARY_FIELDS.items():
        if name in summary and not ok(summary[name]):
            return f"summary field {name!r} is not {expected}"
    return None


def checkpoint_name(k, phase=""):
    """The checkpoint file of the k-th member of a seed ensemble, in the
    first fit or (``phase`` 'refit') the refit."""
    stem = "-".join(["checkpoint"] + ([phase] if phase else []) + ([str(k)] if k else []))
    return f"{stem}.npz"
