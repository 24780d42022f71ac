"""Serving an ML-100K model: top-N lists for every user, and how good the
network is for users and items with few training ratings.

    python bench/serving.py --json bench/results/serving.json

Fits ML-100K's u1 split with its preset (seed 0, lbfgsb.py's optimiser;
or loads --model), then
1. times recommend() for all 943 users at once (top 10) against 943
   single-user calls, checks that the lists are the same, and reports the
   peak resident memory of the process before and after;
2. splits the test ratings by how many training ratings their item (and
   their user) has, and compares in each group the network's RMSE with the
   damped item mean's (fallback.py), the fallback a blend would lean on.

Data: ../shared/data/ml-100k/u1.base and u1.test (or --data-dir).
"""
import argparse
import time

import numpy as np

import common
from glocalk_np.estimator import GLocalK

GROUPS = [(1, 2), (3, 5), (6, 20), (21, 10**9)]


def by_count(model, test, counts_of, label):
    """Test RMSE of the network and of the damped item mean per group of
    ``counts_of`` (training ratings of each test rating's item or user)."""
    pred, kind = model.predict(test.users, test.items)
    i = np.searchsorted(model.index_.items, test.items)
    damped = model.damped_item_means_[i]
    counts = counts_of(model, test)
    rows = []
    for low, high in GROUPS:
        sel = (counts >= low) & (counts <= high) & (kind == "")
        if sel.any():
            rmse = lambda p: float(np.sqrt(np.mean((p[sel] - test.values[sel]) ** 2)))
            rows.append({label: f"{low}-{high if high < 10**9 else ''}", "n": int(sel.sum()),
                         "network": rmse(pred), "damped item mean": rmse(damped)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--model", help="a model file to load instead of fitting")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    p = common.load("ml-100k", args.data_dir)
    if args.model:
        model = GLocalK.load(args.model)
    else:
        tic = time.perf_counter()
        model = GLocalK(preset="ml-100k", optimizer="numba").fit(p.train, test=p.test,
                                                                  index=p.index, select="test")
        print(f"fitted in {time.perf_counter() - tic:.0f} s, test RMSE "
              f"{model.summary_['test']['rmse']:.4f}")
    users = model.index_.users
    before = common.max_rss_mib()
    tic = time.perf_counter()
    many = model.recommend(users, top=args.top)
    all_s = time.perf_counter() - tic
    after = common.max_rss_mib()
    tic = time.perf_counter()
    single = [model.recommend(u, top=args.top)[0] for u in users.tolist()]
    single_s = time.perf_counter() - tic
    same = all(list(zip(many["item"][many["user"] == u].tolist(),
                        many["score"][many["user"] == u].tolist())) == s
               for u, s in zip(users.tolist(), single))
    serving = {"users": int(users.size), "top": args.top, "all_at_once_s": all_s,
               "single_calls_s": single_s, "same_lists": same,
               "peak_mib_before": before, "peak_mib_after": after}
    print(f"top-{args.top} for {users.size} users: {all_s:.2f} s at once, {single_s:.1f} s in "
          f"single calls; same lists: {same}; peak RSS {before:.0f} -> {after:.0f} MiB")
    item_count = lambda m, t: m.item_counts_[np.searchsorted(m.index_.items, t.items)]
    user_count = lambda m, t: m.user_counts_[np.searchsorted(m.index_.users, t.users)]
    groups = {"items": by_count(model, p.test, item_count, "item ratings"),
              "users": by_count(model, p.test, user_count, "user ratings")}
    for name, rows in groups.items():
        for r in rows:
            print(f"{name:<5} with {r[next(iter(r))]:>6} training ratings: n {r['n']:>6,}  "
                  f"network RMSE {r['network']:.4f}  damped item mean {r['damped item mean']:.4f}")
    if args.json:
        common.write_json(args.json, {"serving": serving, "by_count": groups})


if __name__ == "__main__":
    main()
