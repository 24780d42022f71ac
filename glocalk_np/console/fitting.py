"""The work of the commands that train (cli.py's fit, tune and demo) once
their arguments are checked: the training data RATINGS stands for, the
split saved, a settings file read, the fit or search run with its progress
and result lines.

cli.py imports this module inside those commands only, and the trainer
(estimator.py, and with it the engines and Numba) is imported inside the
functions that train, so that the read-only commands never load it and a
command refused for its arguments does not wait for it either.
"""
import os
import time
from dataclasses import asdict

import click
import numpy as np

from .. import datasets, metrics
from .. import tune as search
from ..config import DEFAULT_PATIENCE, Config, check_select, default_selection
from ..data import DataError, concatenate, random_split, ratings_csv, read_any
from ..records import epoch_line
from ..safeio import atomic_outputs, parse_json, read_text
from .inputs import read_test
from .output import echo_summary, human_text_to_stderr, table_lines, train_model, write_json

SPLIT_FILES = ("train", "val", "test")
SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}
# Memory per byte of a JSON settings file while it is parsed (Python objects)
SETTINGS_BYTES_PER_BYTE = 20


def training_data(ratings, sep, test_path, test_frac, seed):
    """(train, test, index, preset) from fit's and tune's arguments; ``preset`` is
    the dataset name when RATINGS names a downloaded benchmark."""
    if test_path and test_frac:
        raise click.UsageError("give --test or --test-frac, not both")
    if os.path.exists(ratings):
        (train, test), index, preset = read_any(ratings, sep), None, None
    elif ratings in datasets.SOURCES:
        (train, test, index), preset = datasets.load(ratings), ratings
    else:
        raise DataError(f"{ratings}: no such file, nor a dataset name; "
                        f"`glocalk-np datasets download {'|'.join(datasets.SOURCES)}` "
                        "fetches a benchmark")
    if test is not None and (test_path or test_frac):
        raise click.UsageError(f"{ratings} has its own test set: drop --test/--test-frac")
    if test_path:
        test = read_test(test_path, sep)
    elif test_frac:
        train, test = random_split(train, test_frac, seed, "a test set")
    return train, test, index, preset


def split_paths(folder):
    """The files --save-split writes in ``folder``."""
    return [os.path.join(folder, f"{name}.csv") for name in SPLIT_FILES]


def echo_data(train, val, test):
    """One line: the ratings, users and items fit was given, and the split."""
    parts = [r for r in (train, val, test) if r is not None]
    total = sum(len(r) for r in parts)
    users = len(np.unique(concatenate(*parts).users))
    items = len(np.unique(concatenate(*parts).items))
    sizes = [f"train {len(train):,}"] + [f"{name} {len(r):,} ({len(r) / total:.0%})"
                                         for name, r in (("validation", val), ("test", test))
                                         if r is not None]
    click.echo(f"data: {total:,} ratings by {users:,} users of {items:,} items; "
               + ", ".join(sizes))


def save_split(folder, splits):
    """The ratings of each split as NAME.csv in ``folder``, written together.
    The folder then holds exactly this run's split: the NAME.csv of a split
    it does not have (an earlier run's val.csv) goes in the same step, as
    the others are renamed into place (fit has checked that none of the
    three is an input)."""
    present = {name: r for name, r in zip(SPLIT_FILES, splits) if r is not None}
    stale = [name for name in SPLIT_FILES if name not in present
             and os.path.lexists(os.path.join(folder, f"{name}.csv"))]
    with atomic_outputs([os.path.join(folder, f"{name}.csv") for name in present], text=True,
                        remove=[os.path.join(folder, f"{name}.csv") for name in stale]) as files:
        for f, ratings in zip(files, present.values()):
            f.write(ratings_csv(ratings))
    click.echo(f"split saved in {folder}: {', '.join(f'{n}.csv' for n in present)}"
               + "".join(f"; {n}.csv of an earlier run removed (no {SPLIT_WORDS[n]} set now)"
                         for n in stale))


def read_settings(path):
    """The Config fields in the 'config' object of the JSON file ``path``
    (as `tune` writes it), checked by name and value."""
    raw = read_text(path, DataError, SETTINGS_BYTES_PER_BYTE, "JSON")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    data = parse_json(text, path, DataError)
    values = data.get("config") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise DataError(f"{path}: no 'config' object of settings")
    try:
        Config.from_preset(None, **values)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {e}") from None
    return values


def dask_client(scheduler, local_workers):
    """cluster.connect's Client for --scheduler or --local-workers,
    imported here so that other commands never load the engine."""
    from ..engines.cluster import connect
    return connect(scheduler, local_workers)


def fit_and_save(ratings, *, test_path, test_frac, val_frac, refit, blend, split_dir, select,
                 preset, seed, sep, config_file, out, checkpoint_dir, resume, device, ensemble,
                 quiet, hyper):
    """fit's work after its checks, given fit's options by name: (the
    fitted estimator, seconds taken)."""
    tic = time.perf_counter()
    settings = read_settings(config_file) if config_file else {}
    train, test, index, dataset = training_data(ratings, sep, test_path, test_frac, seed)
    from ..estimator import GLocalK      # after the inputs: a bad one is refused at once
    given = {k: v for k, v in hyper.items() if v is not None}
    est = GLocalK(preset=preset or dataset, device=device, ensemble=ensemble,
                  validation_fraction="auto" if val_frac is None else val_frac,
                  refit="auto" if refit is None else refit,
                  blend="auto" if blend is None else blend,
                  **{**settings, **given, "seed": seed})   # --seed also drew the splits
    train, val = est.validation_split(train)
    select = select or default_selection(val, test, benchmark=dataset is not None)
    try:
        check_select(select, val, test)
    except ValueError:      # --select is one of SELECTIONS: its set is missing, said in options
        raise click.UsageError(f"--select {select} needs a {select} set "
                               f"({'--val-frac' if select == 'val' else '--test or --test-frac'})"
                               ) from None
    echo_data(train, val, test)
    if split_dir:
        os.makedirs(split_dir, exist_ok=True)
        save_split(split_dir, (train, val, test))
    train_model(est, train, test=test, val=val, select=select, quiet=quiet, index=index,
                checkpoint_dir=checkpoint_dir, resume=resume)
    est.save(out)
    echo_summary(est)
    click.echo(f"model saved to {out}")
    return est, time.perf_counter() - tic


def write_metrics(path, est, seconds):
    """fit's --metrics-json: the config, summary, history (and a refit's
    choosing fit's), unseen counts and seconds."""
    chosen = getattr(est, "selection_history_", None)      # a refit: the choosing fit's
    write_json(path, {"config": est.config_.as_dict(), "summary": est.summary_,
                      "history": [asdict(r) for r in est.history_],
                      **({"selection_history": [asdict(r) for r in chosen]} if chosen else {}),
                      "unseen": est.unseen_, "seconds": seconds})


def run_tune(ratings, *, test_path, test_frac, val_frac, budget, trials, metric, preset, seed,
             sep, out, quiet, hyper):
    """tune's work after its checks, given tune's options by name: the
    search, its lines and its --out file."""
    with human_text_to_stderr(out == "-"):
        train, test, index, dataset = training_data(ratings, sep, test_path, test_frac, seed)
        train, val = random_split(train, val_frac, seed + 1, "a validation set")
        echo_data(train, val, test)       # before the first trial's first epoch, which may be long
        patience = hyper.pop("patience")
        base = Config.from_preset(preset or dataset, seed=seed, **hyper)
        budget_s = 60 * budget if budget is not None else None if trials else 3600

        def report(t):
            if not quiet:
                click.echo(trial_line(t, metric))

        def epoch(number, record, epochs):
            if not quiet:
                click.echo(f"trial {number:3d}  {epoch_line(record, epochs)}")

        ranked = search.tune(train, val, base, trials=trials, budget_s=budget_s, seed=seed,
                             patience=DEFAULT_PATIENCE if patience is None else patience,
                             index=index, callback=report, on_epoch=epoch, metric=metric)
        label = "validation RMSE" if metric == "rmse" else f"validation {metric}"
        click.echo(f"\n{len(ranked)} trials, ranked by {label}:")
        for t in ranked[:10]:
            click.echo(trial_line(t, metric))
        best = ranked[0]
        if best.val_rmse is None:
            raise ValueError("every trial failed; nothing to write")
        if best.score is None:
            raise ValueError(f"no trial ran to its end within the budget of {budget_s / 60:g} "
                             f"minutes to be scored by {metric}: give more --budget")
        if best.last_epoch_best:
            click.echo(f"Warning: the best trial's best fine-tuning epoch is the last of its "
                       f"budget ({best.best_epoch}): a larger --epochs-finetune may do better",
                       err=True)
    write_json(out, {"config": best.config.as_dict(), "val_rmse": best.val_rmse,
                     "metric": metric, "score": best.score, "coverage": best.coverage,
                     "trials": [asdict(t) for t in ranked]})
    click.echo(f"best settings (trial {best.number}, {label} {best.score:.4f}) "
               f"written to {out}: glocalk-np fit {ratings} --config {out}",
               err=out == "-")


def trial_line(t, metric="rmse"):
    """One line of tune's: a trial's settings, scores and seconds."""
    s = t.settings
    what = (f"lambda_2 {s['lambda_2']:8.3f}  lambda_s {s['lambda_s']:.4f}  dot_scale "
            f"{s['dot_scale']:6.3f}  hidden {s['n_hidden']:3d}  epochs {s['epochs_pretrain']:2d}/"
            f"{s['epochs_finetune']:2d}")
    result = (f"val RMSE {t.val_rmse:.4f}"
              + (f" {metric} {t.score:.4f}" if metric != "rmse" and t.score is not None else "")
              + f" (pre {t.epochs_pretrain}, fine best {t.best_epoch}"
              + ("=last" if t.last_epoch_best else "") + ")"
              + ("  stopped at the budget" if t.stopped else
                 f"  top-10 coverage {t.coverage:.0%}")
              if t.val_rmse is not None else f"failed: {t.error}")
    return f"trial {t.number:3d}  {what}  {result}  {t.seconds:.0f}s"


# The demo's problem and schedule (--quick: for tests). lambda_2 is below
# the ML-100K value because the penalty is a sum over a smaller network.
DEMO = {
    "full": dict(data=dict(n_users=600, n_items=400, density=0.1, rank=4),
                 hyper=dict(n_hidden=100, lambda_2=5.0, epochs_pretrain=10,
                            iters_pretrain=10, epochs_finetune=5, iters_finetune=5)),
    "quick": dict(data=dict(n_users=150, n_items=100, density=0.15, rank=3),
                  hyper=dict(n_hidden=20, lambda_2=5.0, epochs_pretrain=2, iters_pretrain=5,
                             epochs_finetune=2, iters_finetune=3)),
}


def run_demo(quick, out, seed, quiet):
    """demo's work: the synthetic problem fitted, the scores beside the
    baselines', one user's top 5, the model saved to ``out`` if given."""
    from ..estimator import GLocalK
    from ..synthetic import low_rank_ratings
    setup = DEMO["quick" if quick else "full"]
    ratings = low_rank_ratings(**setup["data"], seed=seed)
    train, test = random_split(ratings, 0.1, seed)
    train, val = random_split(train, 0.1, seed + 1)
    click.echo(f"synthetic ratings: {len(ratings)} by {setup['data']['n_users']} users of "
               f"{setup['data']['n_items']} items; {len(train)} train, {len(val)} val, "
               f"{len(test)} test")
    est = GLocalK(seed=seed, **setup["hyper"])
    train_model(est, train, test=test, val=val, select="val", quiet=quiet)
    echo_summary(est)
    result = est.evaluate(test)
    mean = np.full(len(test), est.global_mean_)
    table = {"global mean": (metrics.rmse(mean, test.values), metrics.mae(mean, test.values)),
             "baseline": (result["baseline"]["rmse"], result["baseline"]["mae"]),
             "GLocal-K": (result["rmse"], result["mae"])}
    click.echo(f"\nmethod        test RMSE  test MAE   (all {len(test)} test ratings; baseline: "
               "global mean + user and item offsets)")
    for method, (rmse, mae) in table.items():
        click.echo(f"{method:<12}  {rmse:9.4f}  {mae:8.4f}")
    user = test.users[0]
    click.echo(f"\ntop 5 items for user {user} (likeliest to be picked and liked; "
               "predicted rating beside):")
    ranked = est.recommend(user, top=5)[0]
    click.echo("\n".join(table_lines(range(1, len(ranked) + 1), *zip(*ranked))))
    if out:
        est.save(out)
        click.echo(f"model saved to {out}")
