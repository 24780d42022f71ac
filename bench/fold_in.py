"""Fold-in of new users (GLocalK.update(..., fold_in=True)) against a refit
with them and against the fallback, on users the model never saw.

ML-100K's ratings (u1.base and u1.test together); 10% of the users (seed 0)
are held out. Each held-out user's ratings are split at random in half: the
first half is what they tell the model, the second is scored. Three models
of the held-out users, one fit each with the ml-100k preset (last epoch):
- fallback: fitted without them; their predictions are the damped item
  means, their lists the items by damped mean rating;
- fold-in: the same model, then update(first halves, fold_in=True);
- refit: fitted again with the first halves in the training ratings.
Scored on the second halves: RMSE, and recall@10 / precision@10 of each
user's top 10 among the items they did not tell (relevant: rated >= 4).

    python bench/fold_in.py --json bench/results/fold_in.json

Data: ../shared/data/ml-100k (see bench/README.md).
"""
import argparse
import time
from pathlib import Path

import numpy as np

import common
from glocalk_np.data import concatenate, read_ratings, subset
from glocalk_np.estimator import GLocalK

HELD_OUT = 0.1
RELEVANT = 4.0


def scores(model, told, scored, top=10):
    """RMSE on ``scored`` and mean recall/precision@top of the held-out
    users' lists (the items they told left out)."""
    pred, _ = model.predict(scored.users, scored.items)
    rmse = float(np.sqrt(np.mean((pred - scored.values) ** 2)))
    recall, precision = [], []
    for user in np.unique(scored.users):
        mine = scored.users == user
        relevant = set(scored.items[mine & (scored.values >= RELEVANT)].tolist())
        if not relevant:
            continue
        listed, _ = model.recommend(user, top, filter_items=told.items[told.users == user])
        hits = len(relevant & {i for i, _ in listed})
        recall.append(hits / len(relevant))
        precision.append(hits / top)
    return dict(rmse=rmse, recall=float(np.mean(recall)), precision=float(np.mean(precision)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    common.check_data(["ml-100k"], args.data_dir)
    base = Path(args.data_dir) / "ml-100k"
    ratings = concatenate(read_ratings(base / "u1.base"), read_ratings(base / "u1.test"))
    rng = np.random.default_rng(args.seed)
    users = np.unique(ratings.users)
    held = rng.choice(users, int(HELD_OUT * users.size), replace=False)
    is_held = np.isin(ratings.users, held)
    train = subset(ratings, ~is_held)
    theirs = subset(ratings, is_held)
    half = rng.random(len(theirs)) < 0.5
    told, scored = subset(theirs, half), subset(theirs, ~half)
    print(f"{users.size - held.size} users trained on ({len(train):,} ratings); {held.size} "
          f"held out: {len(told):,} ratings told, {len(scored):,} scored")

    def fit(data):
        tic = time.perf_counter()
        model = GLocalK(preset="ml-100k", seed=args.seed).fit(data, select="last")
        return model, time.perf_counter() - tic

    model, fit_s = fit(train)
    results = {"fallback": scores(model, told, scored)}
    tic = time.perf_counter()
    counts = model.update(told, fold_in=True)
    fold_s = time.perf_counter() - tic
    results["fold-in"] = dict(scores(model, told, scored), seconds=fold_s,
                              seconds_per_user=fold_s / counts["folded_in"], **counts)
    refit, refit_s = fit(concatenate(train, told))
    results["refit"] = dict(scores(refit, told, scored), seconds=refit_s)
    results["fallback"]["seconds"] = 0.0
    print(f"first fit {fit_s:.0f} s")
    for name, r in results.items():
        print(f"{name:9s} RMSE {r['rmse']:.4f}  recall@10 {r['recall']:.4f}  precision@10 "
              f"{r['precision']:.4f}  ({r['seconds']:.2f} s)")
    print(f"fold-in: {results['fold-in']['seconds_per_user'] * 1e3:.1f} ms per user "
          f"({counts['folded_in']} users, one forward pass included)")
    if args.out:
        common.write_json(args.out, dict(seed=args.seed, held_out_users=int(held.size),
                                         told=len(told), scored=len(scored), results=results))


if __name__ == "__main__":
    main()
