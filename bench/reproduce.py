"""Accuracy under the paper's protocols (docs/model.md §9-11), over several seeds, beside the published numbers.

Per dataset and seed, one fit with the official preset scores the test set
after every epoch. Paper protocol: the best test RMSE over the fine-tuning
epochs (the test set picks the epoch, as the paper did), with MAE and NDCG
at that epoch. With --honest a second fit trains on 95% of the training
ratings and picks the epoch by the RMSE on the other 5% (data.random_split
with the run's seed); its test RMSE there is the honest figure. A seed
ensemble averages the seeds' clipped test predictions at their last
fine-tuning epoch (an honest choice) and at their paper-protocol epochs.
"""
import glocalk_np  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import argparse
import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import common
from common import PUBLISHED, TF_RERUN
from glocalk_np import metrics
from glocalk_np.data import random_split
from glocalk_np.fallback import Fallback
from glocalk_np.scale import RatingScale
from glocalk_np.config import OPTIMIZERS, Config
from glocalk_np.engines import make_engine
from glocalk_np.scoring import EvalSet
from glocalk_np.train import fit

DEFAULT_DATASETS = ["ml-100k", "douban", "flixster", "ml-1m"]
QUICK = dict(epochs_pretrain=1, epochs_finetune=2, iters_pretrain=2, iters_finetune=2)
VAL_FRACTION = 0.05


def make_config(preset, seed, quick, epochs_scale, optimizer="scipy"):
    """The preset's Config for ``seed`` and ``optimizer``; --quick shrinks the
    schedule to a few iterations, --epochs-scale multiplies both stages' epoch
    counts."""
    config = Config.from_preset(preset, seed=seed, optimizer=optimizer,
                                **(QUICK if quick else {}))
    if epochs_scale != 1:
        config = replace(config,
                         epochs_pretrain=max(1, round(config.epochs_pretrain * epochs_scale)),
                         epochs_finetune=max(1, round(config.epochs_finetune * epochs_scale)))
    return config


def train_run(train, evals, config, engine, label, verbose):
    """One fit; returns (state, wall seconds), printing each epoch if verbose."""
    def progress(record, state):
        if verbose:
            scores = " ".join(f"{k} {v['rmse']:.4f}" for k, v in record.metrics.items())
            print(f"    {label} {record.stage} {record.epoch:3d}: train {record.train_rmse:.4f} "
                  f"{scores} ({record.seconds:.1f} s, {record.evaluations} evals)", flush=True)
    tic = time.perf_counter()
    state = fit(train, config, evals=evals, callback=progress, engine=engine)
    return state, time.perf_counter() - tic


def finetune_metrics(state, epoch, name="test"):
    """The ``name`` set's metrics after fine-tuning epoch ``epoch``."""
    return next(r.metrics[name] for r in state.history
                if r.stage == "finetune" and r.epoch == epoch)


def history(state):
    return [dict(stage=r.stage, epoch=r.epoch, train_rmse=r.train_rmse, seconds=r.seconds,
                 evaluations=r.evaluations, **r.metrics) for r in state.history]


def run_dataset(name, args):
    """Every seed of one dataset: runs, their summary and the seed ensemble."""
    problem = common.load(name, args.data_dir, args.ml1m_file)
    train, test = problem.matrix(problem.train), problem.matrix(problem.test)
    test_set = EvalSet.of_matrix(test)
    scale, fallback = RatingScale.of(train.data), Fallback(train)   # scale: identity on 1-5 data
    print(f"{name}: {train.shape[0]} items x {train.shape[1]} users, {train.nnz:,} train / "
          f"{test.nnz:,} test ratings; {problem.protocol}; preset {problem.preset}", flush=True)
    engine, runs, preds = None, [], {"last": [], "paper": []}
    for seed in args.seeds:
        config = make_config(problem.preset, seed, args.quick, args.epochs_scale, args.optimizer)
        # seeds share it: same matrix and lambdas; it trains on the mapped ratings, as fit's does
        engine = engine or make_engine(scale.matrix_to_model(train), config,
                                       "dask" if args.local_workers else "cpu")
        state, wall = train_run(train, {"test": test}, config, engine, f"seed {seed}",
                                args.verbose)
        best_epoch, best_params = state.best["test"].epoch, state.best["test"].params
        last_epoch, last_params = state.best["last"].epoch, state.best["last"].params
        for sel, params in (("paper", best_params), ("last", last_params)):
            p, _ = fallback.predict(test_set.rows, test_set.cols, lambda r, c, params=params: (
                scale.to_user(engine.predict("finetune", params, r, c).astype(np.float64))))
            preds[sel].append(metrics.clip(p, scale.low, scale.high))
        run = dict(seed=seed, wall_s=wall, config=config.as_dict(),
                   paper=dict(epoch=best_epoch, **finetune_metrics(state, best_epoch)),
                   last=dict(epoch=last_epoch, **finetune_metrics(state, last_epoch)),
                   history=history(state))
        line = (f"  seed {seed}: paper RMSE {run['paper']['rmse']:.4f} (epoch {best_epoch}), "
                f"last {run['last']['rmse']:.4f}, {wall:.0f} s")
        if args.honest:
            rest, val = random_split(problem.train, VAL_FRACTION, seed)
            hstate, hwall = train_run(problem.matrix(rest), {"test": test, "val": problem.matrix(val)},
                                      config, None, f"seed {seed} honest", args.verbose)
            epoch, val_rmse = hstate.best["val"].epoch, hstate.best["val"].rmse
            run["honest"] = dict(epoch=epoch, val_rmse=val_rmse, wall_s=hwall,
                                 **finetune_metrics(hstate, epoch), history=history(hstate))
            line += f"; honest RMSE {run['honest']['rmse']:.4f} (epoch {epoch}), {hwall:.0f} s"
        print(line, flush=True)
        runs.append(run)
    ensemble = {sel: dict(metrics.evaluate(np.mean(p, axis=0), test_set.values, test_set.cols, scale),
                          single_rmse=float(np.mean([r[sel]["rmse"] for r in runs])))
                for sel, p in preds.items()}
    return dict(protocol=problem.protocol, preset=problem.preset, shape=list(train.shape),
                train_ratings=int(train.nnz), test_ratings=int(test.nnz), runs=runs,
                summary=summarise(runs), ensemble=ensemble)


def summarise(runs):
    """Mean and sample std over seeds of each protocol's figures, and wall time."""
    def stats(values):
        values = np.asarray(values, dtype=np.float64)
        return dict(mean=float(values.mean()),
                    std=float(values.std(ddof=1)) if values.size > 1 else 0.0)
    out = {f"paper_{k}": stats([r["paper"][k] for r in runs]) for k in ("rmse", "mae", "ndcg")}
    out["last_rmse"] = stats([r["last"]["rmse"] for r in runs])
    out["wall_s"] = stats([r["wall_s"] for r in runs])
    if all("honest" in r for r in runs):
        out.update({f"honest_{k}": stats([r["honest"][k] for r in runs]) for k in ("rmse", "mae", "ndcg")})
    return out


def print_tables(results):
    def ms(s, key, digits=4):
        return f"{s[key]['mean']:.{digits}f} ± {s[key]['std']:.{digits}f}" if key in s else "-"

    def pub(name, key):
        return f"{PUBLISHED[name][key]:.4f}" if name in PUBLISHED else "-"

    print(f"\n{'dataset':<12} {'runs':>4} {'RMSE paper':>17} {'published':>9} {'TF re-run':>13} "
          f"{'RMSE honest':>17} {'MAE':>17} {'pub.':>6} {'NDCG':>17} {'pub.':>6} "
          f"{'s/run':>7} {'TF s/run':>8}")
    for name, res in results.items():
        s = res["summary"]
        tf_rmse, tf_s = TF_RERUN.get(name, ("-", None))
        print(f"{name:<12} {len(res['runs']):>4} {ms(s, 'paper_rmse'):>17} {pub(name, 'rmse'):>9} "
              f"{tf_rmse:>13} {ms(s, 'honest_rmse'):>17} {ms(s, 'paper_mae'):>17} "
              f"{pub(name, 'mae'):>6} {ms(s, 'paper_ndcg'):>17} {pub(name, 'ndcg'):>6} "
              f"{s['wall_s']['mean']:7.0f} {tf_s if tf_s else '-':>8}")
    print("RMSE paper = best test epoch (the test set picks it); honest = epoch picked on a "
          f"{VAL_FRACTION:.0%} validation split; MAE and NDCG at the paper epoch; "
          "s/run = one fit (the honest fit not counted)")

    print(f"\n{'seed ensemble':<14} {'K':>2} {'last: single':>12} {'ensemble':>9} "
          f"{'paper: single':>13} {'ensemble':>9}")
    for name, res in results.items():
        e = res["ensemble"]
        print(f"{name:<14} {len(res['runs']):>2} {e['last']['single_rmse']:12.4f} "
              f"{e['last']['rmse']:9.4f} {e['paper']['single_rmse']:13.4f} {e['paper']['rmse']:9.4f}")
    print("single = mean RMSE of the seeds' models; ensemble = RMSE of their averaged predictions; "
          "'last' = final fine-tuning epoch, 'paper' = each model's best test epoch")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=common.dataset_names(), metavar="NAME",
                    default=None, help=f"default: {' '.join(DEFAULT_DATASETS)}; "
                                       f"known: {' '.join(common.dataset_names())}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--local-workers", type=int, metavar="N",
                    help="train on the Dask engine over a LocalCluster of N worker processes "
                         "(the cores shared among them; needs the 'dask' extra)")
    ap.add_argument("--optimizer", choices=OPTIMIZERS, default="scipy",
                    help="L-BFGS-B implementation (the same steps either way)")
    ap.add_argument("--honest", action="store_true",
                    help="also fit on 95%% of the training set and select the epoch on the "
                         "other 5%% (doubles the time)")
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="multiply the preset's epoch counts (e.g. 0.5 for a faster rough run)")
    ap.add_argument("--quick", action="store_true",
                    help="1 pre-training + 2 fine-tuning epochs of 2 iterations: checks the script")
    ap.add_argument("--data-dir", default=str(common.DEFAULT_DATA_DIR))
    ap.add_argument("--ml1m-file", help="an original ML-1M ratings.dat instead of ml-1m/ratings_uir.dat")
    ap.add_argument("--json", metavar="OUT", help="write runs, per-epoch histories and summaries")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    args = ap.parse_args(argv)
    datasets = args.datasets or DEFAULT_DATASETS
    common.check_data(datasets, args.data_dir, args.ml1m_file)

    with common.local_dask(args.local_workers) if args.local_workers \
            else contextlib.nullcontext():
        results = {name: run_dataset(name, args) for name in datasets}
    print_tables(results)
    if args.json:
        settings = dict(seeds=args.seeds, honest=args.honest, quick=args.quick,
                        optimizer=args.optimizer, local_workers=args.local_workers,
                        epochs_scale=args.epochs_scale, data_dir=args.data_dir,
                        ml1m_file=args.ml1m_file)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(settings=settings, datasets=results), indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
