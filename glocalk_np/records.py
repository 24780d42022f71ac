"""What training records and reports: each epoch's record, the epoch a
selection rule picks, a checkpoint's state, an ensemble member, and the
progress lines that show them."""
from dataclasses import dataclass, field


@dataclass
class EpochRecord:
    """What the trainer reports after each epoch."""
    stage: str
    epoch: int                  # 1-based within the stage
    train_rmse: float
    seconds: float
    evaluations: int            # (loss, gradient) calls in this epoch
    metrics: dict = field(default_factory=dict)  # {'test': {'rmse', 'mae', 'ndcg'}, 'val': ...}


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
        pre = sum(r.stage == "pretrain" for r in self.history)
        return pre, len(self.history) - pre


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
