"""The ``glocalk-np`` command line.

Every problem with the input (DataError, ModelFileError, any ValueError of
the library, a usage error) ends the command with one line ``Error: ...`` on
stderr and exit status 2; a failure at run time (training diverged, out of
memory, a failed download, a disk that cannot take an output) the same way
with status 1; Ctrl-C ends it with status 130, SIGTERM with 143, and a
second signal while the first is being handled is ignored (the temporary
files are removed, one line is printed). Numbers on the command line are
read by the one strict rule of numbers in files (data.DECIMAL, PLAIN_INT).
Inputs must be regular files; every output, companions included, is checked
before any work is done, files are written atomically (safeio.py), and no
output may be an input or another output of the same command. When a data
output goes to standard output ('-'), the human-readable lines go to stderr.

The commands are here, each a click function; what they share around them
is in console/: process.py (exit statuses, signals, one-line errors),
params.py (argument types and shared options), inputs.py (models, test
files, what RATINGS stands for) and output.py (outputs, progress,
summaries); the work of the commands that train (fit, tune, demo) is in
console/fitting.py, imported by those commands alone.
"""
import contextlib
import csv
import json
import os

import click
import numpy as np

# The trainer, the engines and Numba are imported by the commands that train,
# with console/fitting.py (their work), so that the others can run without
# loading them (datasets is light, and process.py loads it anyway for
# DownloadError; tune loads the trainer in a trial).
from . import __version__, datasets
from . import tune as search
from .data import as_ids, read_ids, read_pairs, read_ratings
from .safeio import STDIN, atomic_outputs, check_distinct, shorten
from .ranking import stored
from .records import checkpoint_name
from .serve import ENDPOINTS
from .config import DEFAULT_VALIDATION, DEVICES, MAX_ENSEMBLE, SELECTIONS
from .console.inputs import load_model, ratings_inputs, read_test
from .console.output import (STAGE_LABELS, check_outputs, human_text_to_stderr, jsonable, output,
                             table_lines, write_csv_blocks, write_json)
from .console.params import (HYPER, INPUT, RANK, InFile, Number, OutFile, OutFolder, QUIET, SEED,
                             SEP, THREADS)
from .console.process import Main

# Rows of predict --all's CSV built at a time (each row costs ~300 bytes as
# Python objects; the whole of ML-1M's 22M at once took several GB)
CSV_BLOCK_ROWS = 1 << 18
# Users recommend serves at a time (their rows are held as Python objects)
RECOMMEND_BLOCK = 1 << 14


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="glocalk-np")
def cli():
    """GLocal-K matrix completion (Han et al., CIKM 2021)."""


FRACTION = Number(float, 0, 1, min_open=True, max_open=True)


@cli.command()
@click.argument("ratings")
@click.option("--test", "test_path", type=INPUT, help="Test ratings file.")
@click.option("--test-frac", type=FRACTION, help="Hold out this fraction of RATINGS as test set.")
@click.option("--val-frac", type=Number(float, 0, 1, max_open=True),
              help="Hold out this fraction of the training ratings to pick the epochs "
                   f"honestly (0: none) [default: {DEFAULT_VALIDATION} without --preset, "
                   "else 0].")
@click.option("--refit/--no-refit", default=None,
              help="After the validation set has chosen the epochs, train again on the "
                   "training and validation ratings together for those epochs [default: on "
                   "when the validation set picks the epoch and no --preset is given].")
@click.option("--blend/--no-blend", default=None,
              help="Shrink the network's predictions toward the baseline predictor's by the "
                   "weight that fits the validation ratings best [default: on with a "
                   "validation set and no --preset].")
@click.option("--save-split", "split_dir", type=OutFolder(),
              help="Write the train, validation and test ratings fit used as train.csv, "
                   "val.csv and test.csv in this folder (made if missing); one of them "
                   "that this run has no set for is removed, so that the folder holds "
                   "exactly this run's split.")
@click.option("--select", type=click.Choice(SELECTIONS),
              help="Which fine-tuning epoch to keep: best val RMSE, best TEST RMSE (the "
                   "paper's protocol; optimistic) or the last [default: val with a validation "
                   "set, else test for a benchmark named by RATINGS, else last].")
@HYPER
@SEED
@THREADS
@SEP
@click.option("--config", "config_file", type=INPUT,
              help="Settings file written by `glocalk-np tune` (its 'config' object); the "
                   "options given here override it, --seed always (give tune's to reproduce "
                   "its splits).")
@click.option("--out", type=OutFile(), default="model.npz", show_default=True,
              help="Model file to write.")
@click.option("--metrics-json", type=OutFile(dash=True),
              help="Write config, summary, per-epoch history (of a refit, and of the fit "
                   "that chose its epochs), unseen counts and seconds here "
                   "('-': standard output).")
@click.option("--checkpoint-dir", type=OutFolder(),
              help="Save a checkpoint after every epoch in this folder.")
@click.option("--resume", is_flag=True, help="Go on from the checkpoint in --checkpoint-dir.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the loss and gradient are computed (cuda: pip install "
                   "'glocalk-np[cuda]'; dask: pip install 'glocalk-np[dask]', on the cluster "
                   "of --scheduler or --local-workers).")
@click.option("--scheduler", help="With --device dask: the address of a running Dask "
                                  "scheduler (tcp://HOST:8786).")
@click.option("--local-workers", type=Number(int, 1),
              help="With --device dask: a cluster of N worker processes on this machine.")
@click.option("--ensemble", type=Number(int, 1, MAX_ENSEMBLE), default=1, show_default=True,
              help="Train K models (seeds SEED, SEED+1, ...) and average their predictions.")
@QUIET
def fit(ratings, test_path, test_frac, val_frac, refit, blend, split_dir, select, preset, seed,
        sep, config_file, out, metrics_json, checkpoint_dir, resume, device, scheduler,
        local_workers, ensemble, quiet, **hyper):
    """Train GLocal-K on RATINGS and save the model.

    RATINGS is a ratings file (user, item, rating[, timestamp]; delimited text
    or Monti et al.'s .mat with its own train/test split), or ml-100k / ml-1m
    once fetched by `glocalk-np datasets download` (the paper's split and
    hyper-parameters). Datasets are looked up in $GLOCALK_NP_DATA, else
    ~/.cache/glocalk-np.
    """
    from .console import fitting
    if resume and not checkpoint_dir:
        raise click.UsageError("--resume needs --checkpoint-dir")
    if (device == "dask") != bool(scheduler or local_workers) or (scheduler and local_workers):
        raise click.UsageError("--device dask takes one of --scheduler and --local-workers, "
                               "and they serve only it")
    checkpoints = ([os.path.join(checkpoint_dir, checkpoint_name(k, phase))
                    for phase in ("", "refit") for k in range(ensemble)]
                   if checkpoint_dir else [])
    splits = fitting.split_paths(split_dir) if split_dir else []
    inputs = [*ratings_inputs(ratings), test_path, config_file]
    check_distinct(inputs, [out, metrics_json, *checkpoints, *splits])
    for folder, paths in ((checkpoint_dir, checkpoints), (split_dir, splits)):
        if folder and os.path.isdir(folder):    # else made (and checked) when written
            check_outputs(inputs, paths)
    cluster = fitting.dask_client(scheduler, local_workers) if device == "dask" else \
        contextlib.nullcontext()
    with human_text_to_stderr(metrics_json == "-"), cluster:
        est, seconds = fitting.fit_and_save(
            ratings, test_path=test_path, test_frac=test_frac, val_frac=val_frac, refit=refit,
            blend=blend, split_dir=split_dir, select=select, preset=preset, seed=seed, sep=sep,
            config_file=config_file, out=out, checkpoint_dir=checkpoint_dir, resume=resume,
            device=device, ensemble=ensemble, quiet=quiet, hyper=hyper)
    if metrics_json:
        fitting.write_metrics(metrics_json, est, seconds)


@cli.command()
@click.argument("model", type=INPUT)
@click.argument("ratings", type=INPUT)
@click.option("--out", type=OutFile(), required=True,
              help="The updated model file (never MODEL itself).")
@SEP
@click.option("--fold-in", is_flag=True,
              help="Fit the output weights of the users with new ratings, and add new users.")
def update(model, ratings, out, sep, fold_in):
    """Add RATINGS to MODEL's training matrix, without retraining.

    The network predicts an item from its row of the training ratings, so
    new ratings by the model's users, on its items or on new ones, change
    predictions and recommendations at once; the weights stay as trained.
    Ratings outside the training range are refused, and a rating of a pair
    already rated replaces it. Ratings by users the model does not know are
    skipped, unless --fold-in: then new users are added, and each user with
    ratings in RATINGS gets their own output-layer weights fitted to all
    their ratings, everything else fixed (a few milliseconds a user)."""
    check_outputs([model, ratings], [out])
    est = load_model(model)
    counts = est.update(read_ratings(ratings, sep), fold_in=fold_in)
    est.save(out)
    click.echo(f"{counts['added']} ratings added ({counts['new_items']} on new items), "
               f"{counts['replaced']} replaced, "
               + (f"{counts['new_users']} new users, {counts['folded_in']} users folded in"
                  if fold_in else f"{counts['skipped']} skipped (users the model does not "
                                  "know; --fold-in adds them)")
               + f"; model saved to {out}")


@cli.command()
@click.argument("ratings")
@click.option("--test", "test_path", type=INPUT,
              help="Test ratings file: kept out of the search (tune never scores it).")
@click.option("--test-frac", type=FRACTION, help="Hold out this fraction of RATINGS as test set "
                                                 "(kept out of the search).")
@click.option("--val-frac", type=FRACTION, default=DEFAULT_VALIDATION, show_default=True,
              help="Fraction of the training ratings every trial is scored on.")
@click.option("--budget", type=Number(float, 0, 1e7, min_open=True),
              help="Minutes the search keeps to: no trial starts that the mean trial so far "
                   "says would end after them, and a trial stops at the end of an epoch when "
                   "the next, taking as long, would (it keeps its best epoch so far; the "
                   "first epoch and the set-up before it always run) [default: 60 without "
                   "--trials].")
@click.option("--trials", type=Number(int, 1), help="Number of trials.")
@click.option("--metric", type=click.Choice(search.METRICS), default="rmse", show_default=True,
              help="What the trials are ranked by on the validation ratings: RMSE, or a "
                   "top-10 metric of the recommended lists (as evaluate computes it).")
@HYPER
@SEED
@THREADS
@SEP
@click.option("--out", type=OutFile(dash=True), default="tune.json", show_default=True,
              help="Where the best settings go (read by `fit --config`), with every trial.")
@QUIET
def tune(ratings, test_path, test_frac, val_frac, budget, trials, metric, preset, seed, sep, out,
         quiet, **hyper):
    """Search the settings for RATINGS on a validation split.

    Random settings of lambda_2, lambda_s, dot_scale, the hidden width and the
    epoch budgets (the first trial: the preset's or the defaults), each fitted
    with early stopping (--patience, default 5) and scored on the validation
    ratings; a line per epoch and per trial as they run, a ranked table at
    the end, the best settings in --out for `glocalk-np fit RATINGS --config
    FILE`. Trials that fail are recorded.
    """
    from .console import fitting
    check_outputs([*ratings_inputs(ratings), test_path], [out])
    fitting.run_tune(ratings, test_path=test_path, test_frac=test_frac, val_frac=val_frac,
                     budget=budget, trials=trials, metric=metric, preset=preset, seed=seed,
                     sep=sep, out=out, quiet=quiet, hyper=hyper)


@cli.command()
@click.argument("model", type=INPUT)
@click.option("--out", type=OutFile(), required=True, help="The PNG file to write.")
def plot(model, out):
    """A PNG of MODEL's learning curves: the RMSE after every epoch on the
    training ratings and on each held-out set fit scored, the chosen
    fine-tuning epoch marked; after a refit, the curves of the fit that
    chose the epochs (its validation curve) and the refit's, dashed (needs
    matplotlib: pip install 'glocalk-np[plot]')."""
    check_outputs([model], [out])
    from .curves import plot_history
    est = load_model(model)
    chose = est.selection_history_ or est.history_
    if not chose:
        raise click.UsageError(f"{model}: no epoch to plot (a model fitted with 0 epochs)")
    try:
        plot_history(chose, out, title=os.path.basename(model), chosen=est.best_epoch_,
                     refit=est.history_ if est.selection_history_ else None)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"learning curves of {len(chose)} epochs written to {out}")


@cli.command()
@click.argument("model", type=INPUT)
@click.option("--item", required=True, help="The item's id.")
@click.option("--top", type=Number(int, 1), default=10, show_default=True,
              help="Number of similar items.")
@RANK
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def similar(model, item, top, rank, as_json):
    """The items most like an item in MODEL's own terms. By the pick model
    (picks+rating, the default where the model has one): the items its
    pickers pick too, plus the adjusted cosine of their predicted ratings,
    each standardised; by rating: that cosine alone (1: the model expects
    the same users to like both more, and less, than their usual)."""
    found = load_model(model).similar(as_ids([item], "--item", "item")[0], top, rank)
    if as_json:
        write_json(None, [{"item": i, "similarity": s} for i, s in found])
        return
    click.echo("rank  item        similarity")
    for rank, (i, sim) in enumerate(found, 1):
        click.echo(f"{rank:>4}  {i!s:<10}  {sim:.4f}")


# serve's help names serve.ENDPOINTS' paths
_ENDPOINT_PATHS = [f"/{name}" for name in ENDPOINTS]


@cli.command(help=f"""Serve MODEL over HTTP as JSON until interrupted:
    {', '.join(_ENDPOINT_PATHS[:-1])} and {_ENDPOINT_PATHS[-1]} (GET with query
    parameters or POST with a JSON object; see the README). The file is checked
    at start; when it is replaced (e.g. by `update` or a new `fit --out`), a
    request at least a second after the last look sees it and the new one loads
    in the background, swapped in if usable. The same application runs under
    any WSGI server: glocalk_np.serve.ModelServer.""")
@click.argument("model", type=INPUT)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put a proxy in front).")
@click.option("--port", type=Number(int, 0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free one).")
def serve(model, host, port):
    from .serve import run as run_server
    try:
        run_server(model, host, port, ready=lambda url: click.echo(
            f"serving {model} on {url} (Ctrl-C to stop)"))
    except OSError as e:
        raise click.UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@cli.command()
@click.argument("model", type=INPUT)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def info(model, as_json):
    """What MODEL holds: its format version, preset and settings, the data
    it was fitted on, its network, how its epoch was chosen and the scores
    fit reported (the baseline predictor's beside them). Reads and checks
    the file; computes nothing."""
    result = load_model(model).info()
    if as_json:
        write_json(None, result)
        return
    data, net = result["data"], result["network"]
    lines = [("file", f"{result['file']} (format version {result['format_version']})"),
             ("preset", result["preset"] or "none"),
             ("settings", ", ".join(f"{k}={v}" for k, v in result["settings"].items())),
             ("data", f"{data['items']:,} items x {data['users']:,} users, "
                      f"{data['training_ratings']:,} training ratings (range "
                      f"{data['rating_range'][0]:g} to {data['rating_range'][1]:g}), "
                      f"{data['other_ratings_seen']:,} more seen (validation, test)"),
             ("network", f"{net['stage']}, epoch {net['best_epoch']}, {net['parameters']:,} "
                         f"parameters" + (f", {net['members']} members" if net["members"] > 1
                                          else "")
                         + (f", blended with the baseline by {net['blend']:.3f}"
                            if net["blend"] is not None else "")),
             ("epoch chosen by", result["protocol"] or "-"),
             ("lists ranked by", _ranking_line(result["ranking"]))]
    for name, scores in result["scores"].items():     # as much as the file holds
        base = result["baseline"].get(name, {})
        parts = [f"{k.upper()} {scores[k]:.4f}" for k in ("rmse", "mae") if k in scores]
        if "n" in scores:
            parts.append(f"on {scores['n']:,} ratings")
        if "rmse" in base:
            parts.append(f"(baseline RMSE {base['rmse']:.4f})")
        if name == "val" and result["val_model"]:
            parts.append(f"({result['val_model']})")
        lines.append((f"{name} scores", " ".join(parts) or "-"))
    for label, text in lines:
        click.echo(f"{label:<16} {text}")


def _ranking_line(ranking):
    """info's line on recommend's default order."""
    if ranking["default"] == "rating":
        return "the predicted rating (the file predates the pick model)"
    penalty = "" if ranking["penalty"] is None else f" (penalty {ranking['penalty']:g})"
    method = {"ease": "EASE", "cosine": "item-kNN (cosine)"}[ranking["pick_model"]]
    return (f"{ranking['default']}: pick model {method}{penalty}, {ranking['weights']:,} "
            f"weights; the predicted rating mixed in by {ranking['mix']:g}")


@cli.command()
@click.argument("model", type=INPUT)
@click.argument("test", type=INPUT)
@SEP
@click.option("--k", type=Number(int, 1), default=10, show_default=True,
              help="Length of the top-N lists scored by precision, recall and NDCG at k.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate(model, test, sep, k, as_json):
    """Accuracy of MODEL on the ratings in TEST.

    RMSE and MAE of the predicted ratings; NDCG as the paper computes it
    (each user's test items ranked among themselves); and precision, recall
    and NDCG at k of each test user's top-k list over all the items they did
    not rate in training, a test rating of 4 or more (on the 1-5 scale the
    model trains on) counting as relevant, as LensKit and cornac report them.
    Every rating counts: those of users or items unseen in training, or
    without training ratings, are predicted by the fallbacks (see predict)
    and counted, and the network's own ratings are scored apart. The
    baseline predictor (the training ratings' mean plus user and item
    offsets) is scored on the same ratings.
    """
    result = load_model(model).evaluate(read_test(test, sep), k=k)
    if as_json:
        write_json(None, result)
        return
    labels = {"rmse": "RMSE", "mae": "MAE", "ndcg": "NDCG (paper's: test items only)",
              f"precision@{k}": f"precision@{k}", f"recall@{k}": f"recall@{k}",
              f"ndcg@{k}": f"NDCG@{k} (all unrated items)"}
    for key, label in labels.items():
        click.echo(f"{label:<32} {result[key]:.4f}")
    click.echo(f"{'ratings':<32} {result['n']}")
    click.echo(f"{'by a fallback':<32} {result['fallback']} (user without training ratings or "
               "item without a row)")
    click.echo(f"{'  of them unseen ids':<32} {result['unseen']} (user or item unseen in "
               "training)")
    click.echo(f"{'RMSE of the network alone':<32} {result['network_rmse']:.4f} "
               f"({result['network_n']} ratings)")
    click.echo(f"{'RMSE of the baseline':<32} {result['baseline']['rmse']:.4f} (global mean + "
               "user and item offsets)")


@cli.command()
@click.argument("model", type=INPUT)
@click.argument("pairs", type=InFile(dash=True), required=False)
@click.option("--all", "all_pairs", is_flag=True, help="Every known user x item pair.")
@click.option("--out", type=OutFile(dash=True),
              help="Output file [default: stdout; also '-']. With --all, NAME.npy gets the "
                   "dense items x users matrix, and NAME.users.txt / NAME.items.txt its ids.")
@SEP
def predict(model, pairs, all_pairs, out, sep):
    """Predicted ratings for user, item pairs, as CSV.

    Writes user,item,prediction,fallback for each line of PAIRS, a file or
    '-' for standard input (further columns are ignored). The fallback says
    where the network could not be used: item_mean (the item's damped mean)
    for a user without training ratings, user_mean (the user's) for an item
    the model does not know, global_mean where neither has training ratings.

    With --all: user,item,prediction,rank,seen for every user (rows grouped
    by user, items in index order), rank being the item's place in that
    user's recommend order (rated items included) and seen whether the user
    rated it in training; or, for NAME.npy, the clipped predictions as an
    items x users matrix (row i: the i-th line of NAME.items.txt)."""
    if (pairs is None) == (not all_pairs):
        raise click.UsageError("give PAIRS or --all (exactly one)")
    as_npy = all_pairs and out is not None and out.endswith(".npy")
    id_files = [f"{out[:-len('.npy')]}.{kind}.txt" for kind in ("users", "items")
                ] if as_npy else []
    check_outputs([model, pairs], [out, *id_files])
    est = load_model(model)
    if pairs is not None:
        users, items = read_pairs(STDIN if pairs == "-" else pairs, sep)
        pred, fallback = est.predict(users, items)
        write_csv_blocks(out, ("user", "item", "prediction", "fallback"), (
            (users[k:k + CSV_BLOCK_ROWS], items[k:k + CSV_BLOCK_ROWS],
             pred[k:k + CSV_BLOCK_ROWS].round(6), fallback[k:k + CSV_BLOCK_ROWS])
            for k in range(0, users.size, CSV_BLOCK_ROWS)))
        return
    matrix, rank = est.predict_all(ranks=True)
    users, items = est.index_.users, est.index_.items
    if as_npy:          # the three files together: all of them are replaced, or none
        with atomic_outputs([out, *id_files]) as (f, *id_outputs):
            np.save(f, matrix)
            for ids, g in zip((users, items), id_outputs):
                g.write("".join(f"{i}\n" for i in ids.tolist()).encode("utf-8"))
        return
    seen = stored(est.train_matrix_).tocsc()          # a rating of 0 is seen too
    block = max(1, CSV_BLOCK_ROWS // items.size)     # users per block of rows

    def rows():
        for first in range(0, users.size, block):
            cols = slice(first, min(first + block, users.size))
            n = cols.stop - cols.start
            yield (np.repeat(users[cols], items.size), np.tile(items, n),
                   matrix[:, cols].T.ravel().round(6), rank[:, cols].T.ravel(),
                   seen[:, cols].T.toarray().ravel())
    write_csv_blocks(out, ("user", "item", "prediction", "rank", "seen"), rows())


@cli.command()
@click.argument("model", type=INPUT)
@click.option("--user", help="One user's id.")
@click.option("--users", "users_file", type=INPUT,
              help="A file of user ids, one per line (the first field of each line, read as "
                   "a ratings file's ids are; a first line 'user' or 'user_id' is a header).")
@click.option("--all-users", is_flag=True, help="Every user of the model.")
@click.option("--top", type=Number(int, 1), default=10, show_default=True,
              help="Number of items per user.")
@click.option("--include-seen", is_flag=True, help="Also list the items a user rated.")
@RANK
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]),
              help="table, csv (user,rank,item,score,fallback) or json (an object per line) "
                   "[default: table for --user, else csv].")
@click.option("--out", type=OutFile(dash=True), help="Output file [default: stdout; also '-'].")
@SEP
def recommend(model, user, users_file, all_users, top, include_seen, rank, fmt, out, sep):
    """The items a user is likeliest to pick and like, for one user or many.

    By default (picks+rating) a list is ordered by the pick model's score of
    what the user rated (who rated what in training: which items the user
    would pick) plus the predicted rating, each standardised over all
    items; --rank rating orders by the predicted rating alone
    (the order of model files from before the pick model), --rank picks by
    the pick model alone. The score column is the predicted rating.

    Many users are served from one forward pass over all items and a GEMM
    per block of users (about a second for all of ML-100K's 943 users).
    Users without training ratings get the items ranked by their damped
    mean rating, flagged in the fallback column."""
    if sum((user is not None, users_file is not None, all_users)) != 1:
        raise click.UsageError("give --user, --users or --all-users (exactly one)")
    check_outputs([model, users_file], [out])
    est = load_model(model)
    if user is not None:            # read as one id of a ratings file is
        ids = as_ids([user], "--user", "user")
    elif users_file is not None:
        ids = read_ids(users_file, sep)
    else:
        ids = est.index_.users
    fmt = fmt or ("table" if user is not None else "csv")
    columns = ("user", "rank", "item", "score", "fallback")
    unknown = []
    with output(out) as f:             # a block of users at a time: memory stays bounded
        writer = csv.writer(f, lineterminator="\n")
        if fmt == "csv":
            writer.writerow(columns)
        for first in range(0, ids.size, RECOMMEND_BLOCK):
            recs = est.recommend(ids[first:first + RECOMMEND_BLOCK], top, include_seen,
                                 rank=rank)
            unknown.extend(np.unique(recs["user"][recs["fallback"]]).tolist())
            if fmt == "csv":
                writer.writerows(zip(*(recs[c].tolist() if c != "score"
                                       else recs[c].round(6).tolist() for c in columns)))
            elif fmt == "json":
                f.writelines(json.dumps(jsonable(dict(zip(columns, row)))) + "\n"
                             for row in zip(*(recs[c].tolist() for c in columns)))
            else:
                f.writelines(line + "\n" for line in table_lines(
                    recs["rank"], recs["item"], recs["score"], None if user else recs["user"],
                    header=first == 0))
    unknown = list(dict.fromkeys(unknown))
    if unknown:
        named = f"user {shorten(repr(unknown[0]))} has" if len(unknown) == 1 else \
            f"{len(unknown)} users have"
        click.echo(f"Warning: {named} no training ratings: items are ranked by their damped "
                   "mean training rating", err=True)


@cli.command()
@click.option("--seed", type=Number(int, 0), default=0, show_default=True,
              help="Seed of the random problem.")
@click.pass_context
def gradcheck(ctx, seed):
    """Check both stages' gradients by finite differences.

    Central differences in float64 on a small random problem, drawn again
    until no kink of the local kernels or the convolution's ReLU is near
    and every gradient stands above round-off; exit status 1 if the worst
    relative error of a stage is above 1e-6."""
    from .gradcheck import TOLERANCE, check_gradients

    def started(stage, n):
        click.echo(f"{STAGE_LABELS[stage]}: {n:,} parameters, 2 losses each ...", err=True)

    worst, draws = check_gradients(seed, progress=started)
    click.echo(f"point: seed {seed}, {draws} draw{'s' if draws > 1 else ''} to be smooth "
               "and well scaled")
    for stage, err in worst.items():
        verdict = (f"ok, {TOLERANCE / err:.0f}x under {TOLERANCE:g}" if err <= TOLERANCE
                   else f"FAILED, above {TOLERANCE:g}")
        click.echo(f"{stage:<8} worst relative error {err:.2e}  {verdict}")
    if max(worst.values()) > TOLERANCE:
        ctx.exit(1)


@cli.command()
@click.option("--quick", is_flag=True, help="A smaller problem and schedule (seconds).")
@click.option("--out", type=OutFile(), help="Also save the model here.")
@SEED
@THREADS
@QUIET
def demo(quick, out, seed, quiet):
    """Fit a synthetic low-rank matrix; compare with baselines.

    The ratings (integer stars from a low-rank model plus noise) are split
    90/10 into train and test, with 10% of train held out to pick the epoch.
    """
    from .console import fitting
    fitting.run_demo(quick, out, seed, quiet)


@cli.group("datasets")
def datasets_cmd():
    """The paper's MovieLens benchmarks: download, then `fit NAME`."""


@datasets_cmd.command()
@click.argument("name", type=click.Choice(list(datasets.SOURCES)))
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Cache folder [default: $GLOCALK_NP_DATA, else ~/.cache/glocalk-np]; "
                   "fit looks in the default one.")
def download(name, directory):
    """Fetch a GroupLens zip, verify its sha256, unpack it."""
    found = datasets.locate(name, directory)
    if found is None:
        datasets.check_free(name, directory)
        click.echo(f"downloading {datasets.SOURCES[name][0]}", err=True)
        found = datasets.download(name, directory)
        click.echo(f"{name}: checksum verified, unpacked in {found}")
    else:
        click.echo(f"{name}: already downloaded in {found}")
