"""The paper's presets under an honest protocol: the test set never picks the
epoch. 5% of the training ratings are held out, the fine-tuning epoch with
the best validation RMSE is chosen, and the model is refit on all the
training ratings for the epochs chosen (--no-refit: the choosing fit itself;
--warm K: and that fit continued for K epochs on all training ratings).
Every test rating is counted. --bound: also the refit's own test curve, a
fit on all the training ratings run to the preset's last epoch; its best
test epoch bounds what any choice of the refit's epoch count can score.
Seeds 0, 1, 2 by default, and the ensemble of the seeds (the mean of their
predictions).

    python bench/honest.py --json bench/results/honest.json

Data: ../shared/data (or --data-dir), each dataset under its paper protocol
(bench/common.py): ml-100k (u1.base / u1.test), douban (Monti's split),
ml-1m (ratings_uir.dat, data.ml1m_split); see bench/README.md.
"""
import argparse
import time
from dataclasses import replace

import numpy as np

import common
from glocalk_np import train as training
from glocalk_np.estimator import GLocalK
from glocalk_np.records import TrainState
from glocalk_np.scoring import EvalSet

DATASETS = ("ml-100k", "douban", "ml-1m")
# the paper's single-model test RMSE (best test epoch), bench/common.PUBLISHED
PAPER = {name: common.PUBLISHED[name]["rmse"] for name in DATASETS}


def run(problem, seed, refit, validation_fraction=0.05):
    """(the fitted model, its test RMSE over every rating, seconds)."""
    tic = time.perf_counter()
    model = GLocalK(preset=problem.preset, seed=seed, optimizer="numba",
                    validation_fraction=validation_fraction, refit=refit)
    model.fit(problem.train, test=problem.test, index=problem.index)
    return model, model.summary_["test"]["rmse"], time.perf_counter() - tic


def test_curve(problem, seed):
    """The test RMSE after each fine-tuning epoch of a fit on all the
    training ratings with the preset's epoch counts: the refit, run on past
    the epoch chosen for it (the same seed, so the same numbers up to it)."""
    model = run(problem, seed, refit=False, validation_fraction=0)[0]
    return [r.metrics["test"]["rmse"] for r in model.members_[0].history
            if r.stage == "finetune"]


def warm_refit(model, problem, epochs):
    """The test RMSE after each of ``epochs`` more fine-tuning epochs of the
    chosen model (a fit without refit) on all the training ratings: a refit
    that goes on from the chosen epoch instead of starting afresh."""
    member, chosen = model.members_[0], model.summary_["best_epoch"]
    done = [r for r in member.history if r.stage == "pretrain" or r.epoch <= chosen]
    state = TrainState({k: v.copy() for k, v in member.params.items()}, done)
    scores = []
    training.fit(problem.matrix(problem.train),
                 replace(model.config_, epochs_finetune=chosen + epochs, patience=0),
                 evals={"test": EvalSet.of_ratings(problem.test, problem.index)},
                 state=state, callback=lambda r, _: scores.append(r.metrics["test"]["rmse"]))
    return scores


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-refit", dest="refit", action="store_false")
    ap.add_argument("--warm", type=int, metavar="K", default=0,
                    help="with --no-refit: also go on from each chosen model for K "
                         "fine-tuning epochs on all training ratings (warm_refit)")
    ap.add_argument("--bound", action="store_true",
                    help="with the refit: also the refit's test curve to the preset's last "
                         "epoch, and its best test epoch (test_curve)")
    ap.add_argument("--data-dir", default=str(common.DEFAULT_DATA_DIR))
    ap.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    args = ap.parse_args()
    results = {}
    for name in args.datasets:
        problem = common.load(name, args.data_dir)
        test = problem.test
        print(f"{name}: {problem.protocol}; preset {problem.preset}; "
              f"{'refit' if args.refit else 'no refit'}", flush=True)
        runs, preds = [], []
        for seed in args.seeds:
            model, rmse, seconds = run(problem, seed, args.refit)
            preds.append(model.predict(test.users, test.items)[0])
            s = model.summary_
            runs.append({"seed": seed, "rmse": rmse, "seconds": seconds,
                         "best_epoch": s["best_epoch"], "val_rmse": s["val"]["rmse"],
                         "refit": s.get("refit")})
            if args.warm and not args.refit:
                runs[-1]["warm"] = warm_refit(model, problem, args.warm)
                print("  warm refit, test RMSE after each epoch: "
                      + " ".join(f"{v:.4f}" for v in runs[-1]["warm"]), flush=True)
            print(f"  seed {seed}: test RMSE {rmse:.4f} (fine-tuning epoch {s['best_epoch']} "
                  f"chosen on validation RMSE {s['val']['rmse']:.4f}; {seconds:.0f} s)",
                  flush=True)
            if args.bound and args.refit:
                curve = runs[-1]["curve"] = test_curve(problem, seed)
                best, at_chosen = int(np.argmin(curve)), curve[s["best_epoch"] - 1]
                runs[-1]["bound"] = {"epoch": best + 1, "rmse": curve[best],
                                     "refit_on_curve": at_chosen == rmse}
                print(f"    the refit run on: best test epoch {best + 1} ({curve[best]:.4f}); "
                      f"at the chosen epoch {at_chosen:.4f}", flush=True)
        rmses = [r["rmse"] for r in runs]
        ensemble = float(np.sqrt(np.mean((np.mean(preds, axis=0) - test.values) ** 2)))
        results[name] = {"runs": runs, "mean": float(np.mean(rmses)),
                         "std": float(np.std(rmses)), "ensemble": ensemble,
                         "paper": PAPER[name], "refit": args.refit}
        if "bound" in runs[0]:
            results[name]["bound"] = float(np.mean([r["bound"]["rmse"] for r in runs]))
            print(f"  bound (the refits' best test epochs): mean {results[name]['bound']:.4f}",
                  flush=True)
        print(f"  mean {np.mean(rmses):.4f} ± {np.std(rmses):.4f}; ensemble of "
              f"{len(preds)}: {ensemble:.4f}; the paper (test-picked epoch): {PAPER[name]}",
              flush=True)
    if args.json:
        common.write_json(args.json, results)


if __name__ == "__main__":
    main()
