"""What commands write: outputs checked before any work and written
atomically, JSON, CSV and recommendation tables, and the training progress
and summary lines."""
import contextlib
import csv
import json
import math
import sys

import click
import numpy as np

from ..safeio import atomic_output, check_distinct, check_target
from ..records import epoch_line, epochs_run, scores_text
from ..engines.base import EngineFailure
from .process import EXIT_INTERRUPTED, signal_behind


def check_outputs(inputs, outputs):
    """Before any work: no output is an input or another output, and each
    output (companions included) can be written; '-' and None skipped."""
    check_distinct(inputs, outputs)
    for path in outputs:
        if path is not None and path != "-":
            check_target(path)


@contextlib.contextmanager
def human_text_to_stderr(data_on_stdout):
    """Progress lines and summaries to stderr while a data output (JSON,
    CSV) claims standard output, so that the data stays parseable."""
    if not data_on_stdout:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def output(path):
    """A text stream: the file ``path`` (written atomically), or stdout for
    None or '-'."""
    if path is None or path == "-":
        yield sys.stdout
        return
    with atomic_output(path, text=True) as f:
        yield f


def jsonable(value):
    """``value`` with NumPy scalars as Python numbers and nan/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, value):
    """``value`` as JSON to ``path`` (atomically) or stdout."""
    with output(path) as f:
        json.dump(jsonable(value), f, indent=2, allow_nan=False)
        f.write("\n")


def write_csv_blocks(path, header, blocks):
    """CSV rows to ``path`` (atomically) or stdout, from ``blocks``, an
    iterable of lists of parallel columns: one block of rows is held as
    Python objects at a time."""
    with output(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for columns in blocks:
            writer.writerows(zip(*(np.asarray(c).tolist() for c in columns)))


def table_lines(ranks, items, scores, users=None, header=True):
    """Lines of a recommendation table; a user column when ``users`` is given."""
    lines = [("user        " if users is not None else "") + "rank  item        predicted"
             ][:int(header)]
    for k, (rank, item, score) in enumerate(zip(ranks, items, scores)):
        lead = f"{users[k]!s:<10}  " if users is not None else ""
        lines.append(f"{lead}{rank:>4}  {item!s:<10}  {score:.3f}")
    return lines


STAGE_LABELS = {"pretrain": "pre-training", "finetune": "fine-tuning"}
# from about this many parameters scipy's L-BFGS-B costs more than the loss
# and gradient (BENCHMARKS.md), so fit says once that --optimizer numba exists
OPTIMIZER_HINT_PARAMETERS = 1_000_000


class Progress:
    """The fit callback: one line per epoch on stdout and, on a terminal, a
    click progress bar per stage on stderr; nothing when quiet. (Off a
    terminal a bar prints only its label, so a log gets the epoch lines.)"""

    def __init__(self, config, quiet):
        self.totals = {stage: config.epochs(stage) for stage in STAGE_LABELS}
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.hint = not quiet and config.optimizer == "scipy"
        self.last = None        # the last completed epoch's record
        self.label = ""         # which model of an ensemble or refit the lines are about
        self._stage = self.bar = None
        self._bars = contextlib.ExitStack()

    def start(self, config, k, members, phase):
        """A model starts training: its epoch budgets, and a label on its
        lines when there is more than one model (an ensemble, a refit)."""
        self.totals = {stage: config.epochs(stage) for stage in STAGE_LABELS}
        self.label = " ".join(([f"seed {config.seed}"] if members > 1 else [])
                              + ([phase] if phase else []))
        if phase and k == 0 and not self.quiet:
            self.erase()
            click.echo(f"{phase}: the training and validation ratings together, "
                       f"{config.epochs_pretrain} + {config.epochs_finetune} epochs"
                       + (" for the first model" if members > 1 else ""))
        self.open("pretrain" if config.epochs_pretrain else "finetune")

    def __call__(self, record, state):
        self.last = record
        if self.quiet:
            return
        if record.stage != self._stage:
            self.open(record.stage)
        self.erase()                # the update below redraws the bar
        if self.hint:
            self.hint = False
            size = sum(a.size for a in state.params.values())
            if size >= OPTIMIZER_HINT_PARAMETERS:
                click.echo(f"Note: {size:,} parameters; --optimizer numba takes scipy's "
                           "L-BFGS-B steps at a fraction of its cost", err=True)
        click.echo((f"{self.label}  " if self.label else "")
                   + epoch_line(record, self.totals[record.stage]))
        if self.bar is not None:
            self.bar.update(record.epoch - self.bar.pos)
        if record.stage == "pretrain" and record.epoch == self.totals["pretrain"]:
            self.open("finetune")

    def open(self, stage):
        """Close the current bar and start ``stage``'s (if it has epochs)."""
        self.close()
        self._stage = stage
        if not self.quiet and self.tty and self.totals[stage]:
            label = " ".join(filter(None, (self.label, STAGE_LABELS[stage])))
            self.bar = self._bars.enter_context(click.progressbar(
                length=self.totals[stage], label=label, file=sys.stderr))

    def erase(self):
        """Clear the bar's line on a terminal."""
        if self.bar is not None:
            click.echo("\r\033[K", nl=False, err=True)

    def close(self):
        self._bars.close()
        self.bar = None


def train_model(est, train, *, test=None, val=None, select, quiet, index=None,
                checkpoint_dir=None, resume=False):
    """Fit ``est`` with progress output; Ctrl-C exits with status 130."""
    progress = Progress(est.config, quiet)
    progress.open("pretrain" if est.config.epochs_pretrain else "finetune")
    try:
        est.fit(train, test=test, val=val, select=select, callback=progress,
                checkpoint_dir=checkpoint_dir, resume=resume, index=index)
    except BaseException as e:
        signal_ = signal_behind(e)
        progress.erase()            # a terminal shows the error line, not a stale bar
        progress.close()
        saved = checkpoint_dir is not None and progress.last is not None
        if isinstance(signal_, KeyboardInterrupt):
            click.echo("Interrupted: " + (f"last completed epoch saved in {checkpoint_dir}"
                                          if saved else "nothing saved"), err=True)
            click.get_current_context().exit(EXIT_INTERRUPTED)
        if isinstance(e, EngineFailure):      # a lost worker: say where to go on from
            raise EngineFailure(f"{e}; " + (f"the last completed epoch is saved in "
                                            f"{checkpoint_dir}: --resume goes on from it"
                                            if saved else "nothing saved")) from None
        if signal_ is not None and signal_ is not e:
            raise signal_ from None
        raise
    progress.close()


def echo_summary(est):
    """The chosen epoch, its held-out scores and the baseline predictor's."""
    s = est.summary_
    if "members" in s:
        epochs = ", ".join(f"seed {m['seed']}: {m['best_epoch']}" for m in s["members"])
        click.echo(f"seed ensemble of {len(s['members'])} models; selected fine-tuning "
                   f"epochs ({s['select']}): {epochs}")
        for m in s["members"]:
            if "test" in m:
                click.echo(f"  seed {m['seed']} alone: "
                           + scores_text({"test": m["test"]}, ("rmse",)))
        click.echo("ensemble:")
    elif est.stage_ == "finetune":
        click.echo(f"selected: fine-tuning epoch {s['best_epoch']} ({s['protocol']})")
    else:
        click.echo(f"model: the pre-trained network after "
                   f"{epochs_run(est.history_, 'pretrain')} epochs (no fine-tuning)")
    for stage in s.get("stopped_early", []):     # the fit that chose (its first member's)
        whose = f"seed {s['members'][0]['seed']}'s " if "members" in s else ""
        where = " in the fit that chose the epochs" if "refit" in s else ""
        click.echo(f"stopped early: {whose}{STAGE_LABELS[stage]} after epoch "
                   f"{s['epochs_run'][stage]} of {est.config_.epochs(stage)}{where} (no better "
                   f"validation RMSE in {est.config_.patience} epochs)")
    if s.get("large_file_settings"):
        click.echo("settings for a file this large (the ML-1M preset's where not given): "
                   + ", ".join(f"{k}={v:g}" for k, v in s["large_file_settings"].items()))
    if s.get("blend") is not None:
        click.echo(f"blend: {s['blend']:.3f} x the network's prediction + "
                   f"{1 - s['blend']:.3f} x the baseline's (fitted on the validation ratings)")
    for name in ("val", "test"):
        if name in s:
            click.echo("  " + "\n    ".join(held_out_lines(
                name, s[name], s.get("val_model") if name == "val" else None)))
    for share in s.get("engine", {}).get("shares", []):
        first = share["first_evaluation_s"]
        threads = share["threads"]
        click.echo(f"  worker {share['worker']}: users {share['users'][0]:,}-"
                   f"{share['users'][1] - 1:,}, {threads} Numba thread"
                   f"{'' if threads == 1 else 's'}, first evaluation "
                   + ("-" if first is None else f"{first:.2f} s"))
    if s.get("baseline"):
        click.echo(f"  {BASELINE_LABEL}: "
                   + scores_text(s["baseline"], ("rmse", "mae")))


BASELINE_LABEL = "baseline (global mean + user and item offsets)"


def held_out_lines(name, scores, model=None):
    """A held-out set's scores over all its ratings and, where fallbacks
    predicted some, over those the network scored; ``model`` says what
    scored them (summary_['val_model'])."""
    lines = [scores_text({name: scores}, ("rmse", "mae", "ndcg"))
             + f"  (all {scores['n']:,} ratings" + (f"; {model}" if model else "") + ")"]
    if scores["fallback"]:
        lines.append(f"{scores['fallback']:,} predicted by a fallback ({scores['unseen']:,} with "
                     "a user or item unseen in training); the network's "
                     f"{scores['network_n']:,}: RMSE {scores['network_rmse']:.4f} "
                     f"MAE {scores['network_mae']:.4f}")
    return lines
