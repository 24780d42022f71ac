"""A user's own data on another scale, as issue 13 describes it: ML-100K's
u1 split with every rating x 20 (a 20-100 scale) and the training ratings
of most users and items removed, while their ids stay in the index (as a
.mat file's positions keep them). Fitted with the default settings, against
predicting the global mean and each user's (or item's) mean.

    python bench/rescaled.py --json bench/results/rescaled.json

Data: ../shared/data/ml-100k/u1.base and u1.test (or --data-dir), the
GroupLens ML-100K files.
"""
import argparse
import time
from dataclasses import replace

import numpy as np

import common
from glocalk_np.data import Ratings, subset
from glocalk_np.estimator import GLocalK
from glocalk_np.config import Config


def rescaled_problem(data_dir, factor, empty_frac, seed):
    """(train, test, index): ratings x factor; the training ratings of a
    random empty_frac of the users and of the items removed."""
    p = common.load("ml-100k", data_dir)
    rng = np.random.default_rng(seed)
    gone_users = rng.choice(p.index.users, int(empty_frac * p.index.n_users), replace=False)
    gone_items = rng.choice(p.index.items, int(empty_frac * p.index.n_items), replace=False)
    keep = ~np.isin(p.train.users, gone_users) & ~np.isin(p.train.items, gone_items)

    def times(r):
        return Ratings(r.users, r.items, r.values * factor, r.source)

    return times(subset(p.train, keep)), times(p.test), p.index


def baselines(train, test):
    """Test RMSE of the global mean, each user's mean and each item's mean
    (the global mean where the user or item has no training rating)."""
    g = train.values.mean()
    out = {"global mean": np.full(len(test), g)}
    for name, key_tr, key_te in (("user mean", train.users, test.users),
                                 ("item mean", train.items, test.items)):
        keys, inv = np.unique(key_tr, return_inverse=True)
        means = np.bincount(inv, train.values) / np.bincount(inv)
        pos = np.minimum(np.searchsorted(keys, key_te), keys.size - 1)
        found = keys[pos] == key_te
        out[name] = np.where(found, means[pos], g)
    return {k: float(np.sqrt(np.mean((v - test.values) ** 2))) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--factor", type=float, default=20.0)
    ap.add_argument("--empty-frac", type=float, default=0.6,
                    help="fraction of users and of items left without training ratings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    train, test, index = rescaled_problem(args.data_dir, args.factor, args.empty_frac, args.seed)
    print(f"{len(train):,} training ratings, {len(test):,} test; index {index.n_items} items x "
          f"{index.n_users} users; ratings {train.values.min():g}-{train.values.max():g}")
    result = {"setup": {k: str(v) if k == "data_dir" else v for k, v in vars(args).items()}
              | {"train": len(train), "test": len(test)},
              "baselines": baselines(train, test), "fits": {}}
    for label, config in (("default (scale auto)", Config()),
                          ("scale none", replace(Config(), scale="none"))):
        tic = time.perf_counter()
        model = GLocalK(config).fit(train, test=test, index=index)
        result["fits"][label] = {**model.summary_["test"],
                                 "seconds": time.perf_counter() - tic}
    for name, rmse in result["baselines"].items():
        print(f"{name:<22} test RMSE {rmse:8.3f}")
    for label, r in result["fits"].items():
        print(f"GLocal-K, {label:<12} test RMSE {r['rmse']:8.3f}  ({r['fallback']:,} of "
              f"{len(test):,} by a fallback; {r['seconds']:.0f} s)")
    if args.json:
        common.write_json(args.json, result)


if __name__ == "__main__":
    main()
