"""Similar items (GLocalK.similar) against a co-rating baseline, on pairs
of items the same user liked in the test set.

ML-100K's u1 split. The model: u1.base with the ml-100k preset (last
epoch), or --model. The baseline: the adjusted cosine of the items'
training ratings (each user's ratings centred on that user's mean, cosine
over the users who rated both, as item-based collaborative filtering
computes it). For every test user, every item they rated >= 4 in u1.test
(and that has training ratings)
asks each method for its top --top similar items; a hit is one of that
user's other liked test items among them. Reported: the hit rate (share of
queries with at least one hit) and the mean number of hits per query, for
both methods and for the most rated items (whatever the query: what
popularity alone scores), and the seconds per query.

    python bench/similar.py --json bench/results/similar.json

Data: ../shared/data/ml-100k (see bench/README.md).
"""
import argparse
import time
from pathlib import Path

import numpy as np

import common
from glocalk_np.data import _positions, read_ratings
from glocalk_np.estimator import GLocalK

LIKED = 4.0


def co_rating_similarity(R):
    """Items x items adjusted cosines of the CSR items x users matrix R."""
    R = R.tocsc().astype(np.float64)
    counts = np.diff(R.indptr)
    means = np.divide(np.add.reduceat(R.data, R.indptr[:-1]) if R.nnz else 0, counts,
                      out=np.zeros(R.shape[1]), where=counts > 0)
    C = R.copy()
    C.data -= np.repeat(means, counts)
    C = C.tocsr()
    S = (C @ C.T).toarray()
    norms = np.sqrt(np.diag(S))
    S /= np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(S, -np.inf)
    return S


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a model of u1.base instead of fitting one")
    ap.add_argument("--save", help="keep the fitted model in this file (for bench/serving.py)")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    common.check_data(["ml-100k"], args.data_dir)
    base = Path(args.data_dir) / "ml-100k"
    train, test = read_ratings(base / "u1.base"), read_ratings(base / "u1.test")
    model = GLocalK.load(args.model) if args.model else \
        GLocalK(preset="ml-100k").fit(train, select="last")
    if args.save:
        model.save(args.save)
    S = co_rating_similarity(model.train_matrix_)
    items = model.index_.items
    pos, known = _positions(items, test.items)
    rated = np.zeros(test.items.size, dtype=bool)
    rated[known] = model.item_counts_[pos[known]] > 0
    liked = (test.values >= LIKED) & rated            # queries need training ratings
    popular = items[np.argsort(-model.item_counts_, kind="stable")[:args.top + 1]].tolist()
    results = {"model": [], "co-rating": [], "popular": []}
    seconds = {"model": 0.0, "co-rating": 0.0, "popular": 0.0}
    for user in np.unique(test.users[liked]):
        mine = test.items[liked & (test.users == user)]
        if mine.size < 2:
            continue
        for item in mine:
            others = set(mine.tolist()) - {item}
            tic = time.perf_counter()
            found = {i for i, _ in model.similar(item, args.top)}
            seconds["model"] += time.perf_counter() - tic
            results["model"].append(len(others & found))
            tic = time.perf_counter()
            pos = _positions(items, np.array([item]))[0][0]
            top = np.argpartition(-S[pos], args.top)[:args.top]
            seconds["co-rating"] += time.perf_counter() - tic
            results["co-rating"].append(len(others & set(items[top].tolist())))
            results["popular"].append(len(others & set([i for i in popular
                                                        if i != item][:args.top])))
    summary = {name: dict(queries=len(hits), hit_rate=float(np.mean(np.array(hits) > 0)),
                          hits_per_query=float(np.mean(hits)),
                          ms_per_query=1e3 * seconds[name] / len(hits))
               for name, hits in results.items()}
    for name, s in summary.items():
        print(f"{name:10s} hit rate@{args.top} {s['hit_rate']:.3f}  hits per query "
              f"{s['hits_per_query']:.3f}  ({s['queries']} queries, {s['ms_per_query']:.2f} ms "
              "each)")
    if args.out:
        common.write_json(args.out, dict(top=args.top, liked_from=LIKED, results=summary))


if __name__ == "__main__":
    main()
