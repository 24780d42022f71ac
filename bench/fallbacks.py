"""Which fallback predicts better where one side of a pair is unknown
(glocalk_np/fallback.py's choice): on every test rating whose user and item
both have training ratings, the predictions a cold pair would get from one
side alone, against the truth.

- item side (a user without training ratings): the item's mean damped toward
  the global mean (DAMPING), the baseline predictor's mu + b_i, the plain
  item mean;
- user side (an item outside the index): the global mean, the baseline's
  mu + b_u, the user's damped mean (damping 1, 2, 5, 10 and 25).

Datasets: ML-100K's u1 split, Douban's and Flixster's Monti splits, ML-1M's
ratings split 90/10 at random (seed 0), and the ratings of 610 random ML-1M
users (seed 0) split the same way: a smaller, longer-tailed file like a
user's own.

    python bench/fallbacks.py --json bench/results/fallbacks.json

Data: ../shared/data (or --data-dir): ml-100k/u1.base, u1.test,
douban/douban_monti_dataset.mat, flixster/training_test_dataset_10_NNs.mat,
ml-1m/ratings_uir.dat (see bench/README.md).
"""
import argparse

import numpy as np

import common
from glocalk_np.baseline import Baseline
from glocalk_np.data import Index, _positions, random_split, read_ratings, subset
from glocalk_np.fallback import DAMPING, Fallback

DAMPINGS = (1, 2, 5, 10, 25)


def problems(data_dir):
    """{name: (train, test, index)} of the datasets above."""
    out = {}
    for name in ("ml-100k", "douban", "flixster"):
        p = common.load(name, data_dir)
        out[name] = (p.train, p.test, p.index)
    common.check_data(["ml-1m"], data_dir)
    ratings = read_ratings(common.data_files("ml-1m", data_dir)[0])
    train, test = random_split(ratings, 0.1, 0)
    out["ml-1m 90/10"] = (train, test, Index.from_ratings(train))
    keep = np.random.default_rng(0).choice(np.unique(ratings.users), 610, replace=False)
    train, test = random_split(subset(ratings, np.isin(ratings.users, keep)), 0.1, 0)
    out["ml-1m 610 users"] = (train, test, Index.from_ratings(train))
    return out


def measure(train, test, index):
    """RMSE of each one-sided predictor on the test ratings of rated pairs."""
    R, _ = index.matrix(train)
    baseline, fb = Baseline(R), Fallback(R)
    i, i_known = _positions(index.items, test.items)
    u, u_known = _positions(index.users, test.users)
    rated = i_known & u_known
    rated[rated] = (fb.item_counts[i[rated]] > 0) & (fb.user_counts[u[rated]] > 0)
    i, u, truth = i[rated], u[rated], test.values[rated]
    low, high = R.data.min(), R.data.max()

    def rmse(pred):
        return float(np.sqrt(np.mean((np.clip(pred, low, high) - truth) ** 2)))

    user_sums = np.bincount(R.indices, R.data, minlength=R.shape[1])
    return {"n": int(truth.size),
            "item side": {f"damped item mean ({DAMPING:g})": rmse(fb.damped_item_means[i]),
                          "mu + b_i": rmse(baseline.global_mean + baseline.item_offsets[i]),
                          "item mean": rmse(fb.item_means[i])},
            "user side": {"global mean": rmse(np.full(truth.size, fb.global_mean)),
                          "mu + b_u": rmse(baseline.global_mean + baseline.user_offsets[u]),
                          **{f"damped user mean ({d})": rmse(
                              (user_sums[u] + d * fb.global_mean) / (fb.user_counts[u] + d))
                             for d in DAMPINGS}}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(common.DEFAULT_DATA_DIR))
    ap.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    args = ap.parse_args()
    results = {name: measure(*p) for name, p in problems(args.data_dir).items()}
    for name, r in results.items():
        print(f"{name} ({r['n']:,} test ratings of rated pairs)")
        for side in ("item side", "user side"):
            print(f"  {side}: " + "  ".join(f"{k} {v:.4f}" for k, v in r[side].items()))
    if args.json:
        common.write_json(args.json, results)


if __name__ == "__main__":
    main()
