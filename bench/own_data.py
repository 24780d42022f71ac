"""GLocal-K with the defaults a user's own file gets (no preset: 5% held out
to choose the epochs, early stopping, a blend with the baseline fitted on
them, a refit on every rating) against the
baseline predictor and scikit-surprise's SVD and item-based KNNBaseline, on
the same splits, every test rating counted (unknown ids through each
method's fallback: Surprise's global mean, ours in fallback.py).

Splits: ML-1M's and Douban's ratings split 90/10 at random (seed 0),
Flixster's own Monti split, and a long-tail file like a user's own: the
ratings of 610 random ML-1M users (seed 0; most movies have few of their
ratings), split 90/10 at random. The same fit is also scored without its
blend (blend_ set to None) and with its lists ranked by the blended score,
for top-10 accuracy and catalogue coverage, so that the blend's effect is
measured on the same network. GLocal-K runs with seeds 0, 1, 2 (--seeds) and
the Numba optimiser (the same steps as scipy's, faster); Surprise with its
defaults (SVD: 100 factors, 20 epochs; KNNBaseline: pearson_baseline
similarity between items, k = 40), seeded the same.

    pip install '.[compare]'     # scikit-surprise, only for this script
    python bench/own_data.py --json bench/results/own_data.json

Data: ../shared/data (or --data-dir): ml-1m/ratings_uir.dat,
douban/douban_monti_dataset.mat, flixster/training_test_dataset_10_NNs.mat
(see bench/README.md). Without scikit-surprise its rows are skipped, said so.
"""
import argparse
import time

import numpy as np

import common
from glocalk_np.data import concatenate, random_split, read_monti_mat, read_ratings, subset
from glocalk_np.estimator import GLocalK

DATASETS = ("ml-1m", "douban", "flixster", "ml-1m-610")
LONG_TAIL_USERS = 610


def split(name, data_dir):
    """(train, test) of a dataset as described above."""
    source = "ml-1m" if name == "ml-1m-610" else name
    common.check_data([source], data_dir)
    path = common.data_files(source, data_dir)[0]
    if name == "ml-1m":
        return random_split(read_ratings(path), 0.1, 0)
    if name == "ml-1m-610":
        ratings = read_ratings(path)
        keep = np.random.default_rng(0).choice(np.unique(ratings.users), LONG_TAIL_USERS,
                                               replace=False)
        return random_split(subset(ratings, np.isin(ratings.users, keep)), 0.1, 0)
    train, test = read_monti_mat(path)
    if name == "douban":
        return random_split(concatenate(train, test), 0.1, 0)
    return train, test


def rmse(pred, truth):
    return float(np.sqrt(np.mean((np.asarray(pred) - truth) ** 2)))


def glocalk(train, test, seed):
    """Test RMSE over every rating, the network's own, and the baseline's;
    the same fit's scores without its blend ('unblended'), and with its
    top-N lists ranked by the blended score instead of the network's
    ('blend_ranked', the order recommend does not use): top-10 accuracy and
    catalogue coverage for each."""
    tic = time.perf_counter()
    model = GLocalK(seed=seed, optimizer="numba").fit(train, test=test)
    seconds = time.perf_counter() - tic
    s = model.summary_
    weight, network = model.blend_, model._user_scores
    items = np.arange(model.index_.n_items)[:, None]
    scores = {}
    for name in ("blended", "unblended", "blend_ranked"):
        model.blend_ = None if name == "unblended" else weight
        if name == "blend_ranked":      # a private seam: the lists' scores, blended
            model._user_scores = lambda cols: model._blended(network(cols), items, cols[None])
        ev = model.evaluate(test, k=10)
        lists = model.recommend(model.index_.users, top=10)
        scores[name] = {**{k: ev[k] for k in ("rmse", "network_rmse", "precision@10",
                                              "recall@10", "ndcg@10")},
                        "coverage@10": len(np.unique(lists["item"])) / model.index_.n_items}
    return {"rmse": s["test"]["rmse"], "network_rmse": s["test"]["network_rmse"],
            "fallback": s["test"]["fallback"], "baseline_rmse": s["baseline"]["test"]["rmse"],
            "refit": s.get("refit"), "best_epoch": s["best_epoch"], "blend": s.get("blend"),
            **scores, "seconds": seconds}


def surprise_rmse(train, test, seed):
    """{method: (test RMSE, seconds)} of Surprise's SVD and KNNBaseline, or
    None without scikit-surprise."""
    try:
        import surprise
    except ImportError:
        return None
    low, high = float(train.values.min()), float(train.values.max())
    import pandas as pd            # Surprise's Dataset.load_from_df wants a DataFrame
    frame = pd.DataFrame({"user": train.users.astype(str), "item": train.items.astype(str),
                          "rating": train.values})
    full = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(low, high))
                                         ).build_full_trainset()
    out = {}
    for name, algo in (("svd", surprise.SVD(random_state=seed)),
                       ("knn_baseline", surprise.KNNBaseline(
                           sim_options={"name": "pearson_baseline", "user_based": False},
                           verbose=False))):
        tic = time.perf_counter()
        algo.fit(full)
        pred = [algo.predict(u, i).est for u, i in zip(test.users.astype(str),
                                                       test.items.astype(str))]
        out[name] = (rmse(pred, test.values), time.perf_counter() - tic)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data-dir", default=str(common.DEFAULT_DATA_DIR))
    ap.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    args = ap.parse_args()
    results = {}
    for name in args.datasets:
        train, test = split(name, args.data_dir)
        print(f"{name}: {len(train):,} training and {len(test):,} test ratings", flush=True)
        runs = {"glocalk": [], "surprise": []}
        for seed in args.seeds:
            runs["glocalk"].append(glocalk(train, test, seed))
            runs["surprise"].append(surprise_rmse(train, test, seed))
            g = runs["glocalk"][-1]
            print(f"  seed {seed}: GLocal-K {g['rmse']:.4f} "
                  f"(network's own {g['network_rmse']:.4f}, "
                  f"{g['fallback']} by a fallback, {g['seconds']:.0f} s; blend {g['blend']:.3f}, "
                  f"unblended {g['unblended']['rmse']:.4f}; top-10 ndcg/coverage "
                  f"{g['blended']['ndcg@10']:.4f}/{g['blended']['coverage@10']:.3f}, ranked by "
                  f"the blend {g['blend_ranked']['ndcg@10']:.4f}/"
                  f"{g['blend_ranked']['coverage@10']:.3f}), baseline "
                  f"{g['baseline_rmse']:.4f}" + ("" if runs["surprise"][-1] is None else "".join(
                      f", {k} {v[0]:.4f}" for k, v in runs["surprise"][-1].items())), flush=True)
        results[name] = runs
        summary = {"glocalk": [r["rmse"] for r in runs["glocalk"]],
                   "unblended": [r["unblended"]["rmse"] for r in runs["glocalk"]],
                   "baseline": [r["baseline_rmse"] for r in runs["glocalk"]]}
        if runs["surprise"][0] is not None:
            for k in runs["surprise"][0]:
                summary[k] = [r[k][0] for r in runs["surprise"]]
        results[name]["summary"] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                                    for k, v in summary.items()}
        print("  mean: " + ", ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}"
                                     for k, v in results[name]["summary"].items()), flush=True)
    if args.json:
        common.write_json(args.json, results)


if __name__ == "__main__":
    main()
