"""Top-10 lists against simple peers (issue 31): what `recommend` gives a
user, measured on held-out ratings beside a most-popular chart, item-kNN
and EASE (Steck 2019), fitted on the same training ratings.

Per dataset (and GLocal-K seed): every method ranks, for each test user
with a relevant test item, every item of the training index the user did
not rate in training, and keeps 10. Relevant: a test rating >= 4 (on every
file here: ML and Douban rate 1-5, Flixster 0.5-5 in halves, so 4 is the
top fifth of each) of an item in the training index (no method can list
another). Reported: precision, recall and NDCG at 10 (metrics.top_n, as
LensKit and cornac count them), catalogue coverage (the share of the
index's items in any list) and the share of the lists' entries among the
100 most rated items (popularity bias).

- glocalk-np: `GLocalK(seed=s).fit(train)` with a user's-own-file defaults,
  lists from `recommend` in each of its orders: 'picks+rating' (the
  default: the pick model's score plus the predicted rating, each
  standardised per user), 'picks' (the pick model alone: EASE as below,
  each item's 500 largest weights kept) and 'rating' (the predicted
  rating alone, the order before issue 31); and the default order with
  other mixes (the predicted rating's weight, --mixes); per seed, the
  penalty and mix the fit chose and the seconds the pick model takes to
  fit (its penalty search included);
- most popular: the items with the most training ratings;
- item-kNN: cosine similarity of the items' binary rating columns, each
  item's 100 nearest kept, score = sum of the user's rated items' kept
  similarities;
- ALS: implicit's AlternatingLeastSquares (64 factors, its defaults
  otherwise, seed 0) on the binary matrix, where implicit is installed
  (pip install '.[compare]'; skipped, said so, otherwise);
- EASE: B = argmin |X - X B|^2 + lambda |B|^2 with diag(B) = 0 on the binary
  users x items matrix X, in closed form from (X^T X + lambda I)^-1
  (lambda 500), score = X B. It inverts an items x items matrix: 8 m^2
  bytes (0.8 GB at 10,000 items).

    python bench/topn.py --datasets ml-100k --seeds 0 --json bench/results/topn.json

With --models DIR, each fitted model is kept in DIR (NAME_seedS.npz) and
read from there when present: a model written before the pick model
(format 3) gets one fitted as fit fits it (picks.fit on its training
matrix).

Datasets: ml-100k (u1.base / u1.test), ml-1m and douban (90/10 at random,
seed 0), flixster (Monti's split), ml-1m-610 (610 random ML-1M users, 90/10),
as bench/own_data.py splits them. Data: ../shared/data (see bench/README.md).
"""
import argparse
import os
import time

import numpy as np
import scipy.sparse as sp

import common
import own_data
from glocalk_np import metrics, picks
from glocalk_np.data import Index
from glocalk_np.estimator import GLocalK
from glocalk_np.model import Model

DATASETS = ("ml-100k",) + own_data.DATASETS
TOP = 10
RELEVANT_FROM = 4.0
EASE_LAMBDA = 500.0              # the peer; --ease-lambdas tries others
KNN_NEIGHBOURS = 100
POPULAR = 100
SEED_ONLY = ("penalty", "mix", "pick_model_seconds", "fit_seconds")   # not averaged


def split(name, data_dir):
    if name == "ml-100k":
        problem = common.load("ml-100k", data_dir)
        return problem.train, problem.test
    return own_data.split(name, data_dir)


class Task:
    """The training matrix (users x items, binary and rated), the users to
    list for and their relevant items, in the training ratings' index."""

    def __init__(self, name, train, test):
        self.name = name
        self.index = Index.from_ratings(train)
        R, _ = self.index.matrix(train)                     # items x users
        self.X = sp.csr_matrix((np.ones(R.nnz), R.indices, R.indptr), shape=R.shape).T.tocsr()
        T, _ = self.index.matrix(test)                      # ids outside the index dropped
        T = T.tocsc()
        self.users, self.relevant = [], []
        for u in range(T.shape[1]):
            rows = T.indices[T.indptr[u]:T.indptr[u + 1]]
            good = rows[T.data[T.indptr[u]:T.indptr[u + 1]] >= RELEVANT_FROM]
            if good.size:
                self.users.append(u)
                self.relevant.append(good)
        self.users = np.array(self.users)
        self.counts = np.asarray(self.X.sum(axis=0)).ravel()

    def lists(self, scores_of):
        """Top-10 item positions per user, from ``scores_of(user positions)``
        (a users x items array), rated items left out."""
        out = []
        for lo in range(0, self.users.size, 256):
            users = self.users[lo:lo + 256]
            S = np.array(scores_of(users), dtype=np.float64)
            rated = self.X[users]
            S[np.repeat(np.arange(users.size), np.diff(rated.indptr)), rated.indices] = -np.inf
            top = np.argpartition(-S, TOP, axis=1)[:, :TOP]
            order = np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
            out.extend(np.take_along_axis(top, order, axis=1))
        return out

    def score(self, lists, seconds):
        popular = np.argsort(-self.counts, kind="stable")[:POPULAR]
        entries = np.concatenate(lists)
        return {**metrics.top_n(lists, self.relevant, TOP),
                "coverage": float(np.unique(entries).size / self.X.shape[1]),
                "top100_share": float(np.isin(entries, popular).mean()),
                "seconds": seconds}


def most_popular(task):
    return lambda users: np.broadcast_to(task.counts.astype(float), (users.size, task.counts.size))


def item_knn(task):
    norms = np.sqrt(task.counts)
    S = (task.X.T @ task.X).toarray() / np.outer(np.maximum(norms, 1), np.maximum(norms, 1))
    np.fill_diagonal(S, 0)
    if S.shape[0] > KNN_NEIGHBOURS:
        weak = np.argpartition(-S, KNN_NEIGHBOURS, axis=0)[KNN_NEIGHBOURS:]
        np.put_along_axis(S, weak, 0, axis=0)
    return lambda users: task.X[users] @ S


def als(task):
    """implicit's ALS (Hu, Koren and Volinsky 2008) on the binary matrix:
    64 factors, its other defaults, seed 0; None without implicit."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with threadpool_limits(1, "blas"):       # implicit's own advice: it threads itself
        model = AlternatingLeastSquares(factors=64, random_state=0)
        model.fit(task.X.astype(np.float32), show_progress=False)
    return lambda users: model.user_factors[users] @ model.item_factors.T


def ease(task, penalty=EASE_LAMBDA):
    G = (task.X.T @ task.X).toarray()
    G[np.diag_indices_from(G)] += penalty
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0)
    return lambda users: task.X[users] @ B


def glocalk(task, train, seed, models):
    """The seed's fitted model (from ``models`` when there, else fitted, and
    kept there if ``models``) and the seconds its fit took (None if read)."""
    path = models and os.path.join(models, f"{task.name}_seed{seed}.npz")
    if path and os.path.exists(path):
        model = Model.load(path)
        if model.picks_ is None:            # written before the pick model
            model.picks_ = picks.fit(model.train_matrix_)
        return model, None
    tic = time.perf_counter()
    model = GLocalK(seed=seed, optimizer="numba").fit(train, index=task.index)
    seconds = time.perf_counter() - tic
    if path:
        model.save(path)
    return model, seconds


def model_lists(task, model, rank):
    """recommend's top-10 lists (item positions of the task's index) for the
    task's users, in the order ``rank``."""
    ids = model.index_.users[task.users]
    recs = model.recommend(ids, top=TOP, rank=rank)
    starts = np.r_[0, np.cumsum(np.bincount(np.searchsorted(ids, recs["user"]),
                                            minlength=ids.size))]
    items = np.searchsorted(model.index_.items, recs["item"])
    return [items[a:b] for a, b in zip(starts[:-1], starts[1:])]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--mixes", nargs="*", type=float, default=[0.0, 0.5, 1.0, 2.0],
                    help="other weights of the predicted rating in the default order")
    ap.add_argument("--models", help="a folder to keep the fitted models in and read them from")
    ap.add_argument("--ease-lambdas", nargs="*", type=float, default=[],
                    help="EASE with these penalties too (e.g. the best one on the test set: "
                         "a bound no fit can choose)")
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    results = {}
    for name in args.datasets:
        train, test = split(name, args.data_dir)
        task = Task(name, train, test)
        rows = {}
        peers = [("most popular", most_popular), ("item-kNN", item_knn), ("EASE", ease),
                 ("ALS (implicit)", als)]
        peers += [(f"EASE, lambda {lam:g}", lambda task, lam=lam: ease(task, lam))
                  for lam in args.ease_lambdas]
        for method, make in peers:
            tic = time.perf_counter()
            scorer = make(task)
            if scorer is None:
                print(f"{method}: skipped, not installed (pip install '.[compare]')")
                continue
            lists = task.lists(scorer)
            rows[method] = task.score(lists, time.perf_counter() - tic)
        orders = {}
        for seed in args.seeds:
            model, fit_seconds = glocalk(task, train, seed, args.models)
            tic = time.perf_counter()          # what fit spends on it (once more on a refit)
            picks.fit(model.train_matrix_, seed=seed)
            chosen = {"penalty": model.picks_.penalty, "mix": model.picks_.mix,
                      "pick_model_seconds": time.perf_counter() - tic, "fit_seconds": fit_seconds}
            for rank in ("picks+rating", "picks", "rating"):
                tic = time.perf_counter()
                lists = model_lists(task, model, rank)
                orders.setdefault(rank, []).append(
                    {**task.score(lists, time.perf_counter() - tic), **chosen})
            for mix in args.mixes:
                model.picks_.mix = mix
                orders.setdefault(f"picks+rating, mix {mix:g}", []).append(
                    task.score(model_lists(task, model, "picks+rating"), 0.0))
        for order, scores in orders.items():
            rows[f"glocalk-np {order}"] = {**common.mean_of([{k: v for k, v in s.items()
                                                       if k in scores[-1] and k not in SEED_ONLY}
                                                      for s in scores]), "seeds": scores}
        results[name] = {"users": int(task.users.size), "items": int(task.X.shape[1]),
                         "methods": rows}
        print(f"{name}: {task.users.size} users with a relevant test item, "
              f"{task.X.shape[1]} items")
        for method, r in rows.items():
            print(f"  {method:>36}: P@10 {r['precision@10']:.3f}  R@10 {r['recall@10']:.3f}  "
                  f"NDCG@10 {r['ndcg@10']:.3f}  coverage {r['coverage']:.3f}  "
                  f"top-100 share {r['top100_share']:.3f}  ({r['seconds']:.1f} s)", flush=True)
    if args.out:
        common.write_json(args.out, results)


if __name__ == "__main__":
    main()
