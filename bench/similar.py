"""Similar items (GLocalK.similar, in each of its orders) against co-rating,
co-occurrence and popularity baselines, on two measures: pairs of items
the same test user liked, and genre agreement.

ML-100K's u1 split. The models: u1.base fitted with the defaults (no
preset), one per --seeds, read from --models DIR (ml-100k_seed{s}.npz;
fitted and saved there when missing; without --models fitted and kept in
memory), or the one file --model. A file written before the pick model
existed (picks_ None) gets one fitted here on its training matrix,
``m.picks_ = picks.fit(m.train_matrix_)``, exactly what fit now does.
The methods:
- model:rating, model:picks, model:picks+rating: similar(item, rank=...)
  (glocalk_np/ranking.py), per seed and the mean over seeds;
- co-rating: the adjusted cosine of the items' training ratings (each
  user's ratings centred on that user's mean, cosine over the users who
  rated both, as item-based collaborative filtering computes it);
- co-occurrence: the cosine of the items' binary training columns (who
  rated them, not how): co-rating neighbours;
- most-rated: the most rated other items, whatever the query;
- random: a uniformly random other item, computed exactly (the mean over
  all other items, or the hypergeometric chance of a hit), no sampling.

Hits (as this script measured before): for every test user, every item
they rated >= 4 in u1.test (and that has training ratings) asks each
method for its top --top similar items; a hit is one of that user's other
liked test items among them. Reported: the hit rate (share of queries with
at least one hit) and the mean hits per query, and the ms per query. This
measure rewards popularity: the most-rated items, whatever the query, beat
every model, since popular films are what test users liked.

Genre agreement: for every query item with at least --min-ratings (5)
training ratings, its top --genre-top (10) neighbours among all the
model's other items; reported: the mean Jaccard index of the query's and
the neighbour's genre sets, and the share of neighbours sharing at least
one genre with the query, with the mean training-rating count of the
neighbours (how popular what is listed is). Why genres: they are assigned
per film by editors (u.item's 18 flags; 'unknown' is left out, so a film
with only that flag has no genre), independent of how many people rated
the film, so listing popular films scores only about the base rate (the
random row) and a method scores above it only by finding films of the
query's kind.

    python bench/similar.py --models /work/models --item-info /work/data/ml-100k/u.item \\
        --json bench/results/similar_genre.json

Data: ../shared/data/ml-100k (see bench/README.md); the genres from
GroupLens' ml-100k.zip, file u.item (--item-info, by default
<data-dir>/ml-100k/u.item).
"""
import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

import common
from glocalk_np import picks
from glocalk_np.data import _positions, read_ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.model import Model

LIKED = 4.0
RANKS = ("rating", "picks", "picks+rating")
# u.item's genre flags, in the file's order; the first ('unknown') is left out
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
ITEM_INFO_SHA256 = "6dd287831559152bea892eb27694a492ff14926ac5f7a16e5f8c4968e6fe13c3"


def item_info_path(args):
    """--item-info, by default <data-dir>/ml-100k/u.item."""
    return Path(args.item_info) if args.item_info else \
        Path(args.data_dir) / "ml-100k" / "u.item"


def read_genres(path):
    """{item id: 19 0/1 genre flags} from ML-100K's u.item; exits 2 with
    where to get it when absent, warns (one line) when its sha256 differs."""
    path = Path(path)
    if not path.is_file():
        common.fail(f"missing {path}: the genres come from GroupLens' ml-100k.zip "
                    "(https://files.grouplens.org/datasets/movielens/ml-100k.zip), file u.item "
                    f"(the copy measured here: sha256 {ITEM_INFO_SHA256}); give its path with "
                    "--item-info")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != ITEM_INFO_SHA256:
        print(f"warning: {path}'s sha256 is not that of the u.item measured here "
              f"({ITEM_INFO_SHA256})", file=sys.stderr)
    genres = {}
    for line in raw.decode("latin-1").splitlines():
        if line.strip():
            fields = line.split("|")
            genres[int(fields[0])] = np.array(fields[-len(GENRES):], dtype=np.int8)
    return genres


def genre_matrix(items, genres):
    """items x 18 bool: the genres (not 'unknown') of the model's items; an
    item u.item lacks has none (warned, one line)."""
    missing = [int(i) for i in items if int(i) not in genres]
    if missing:
        print(f"warning: {len(missing)} of the model's items are not in u.item (first: "
              f"{missing[0]}); they count as having no genre", file=sys.stderr)
    none = np.zeros(len(GENRES), dtype=np.int8)
    return np.array([genres.get(int(i), none)[1:] for i in items], dtype=bool)


def load_models(args, train):
    """[(label, Model with a pick model)], one per seed (or --model)."""
    if args.model:
        paths = [(Path(args.model).stem, Path(args.model), None)]
    else:
        paths = [(f"seed{s}", Path(args.models) / f"ml-100k_seed{s}.npz" if args.models else None,
                  s) for s in args.seeds]
    models = []
    for label, path, seed in paths:
        if path is not None and path.is_file():
            m = Model.load(path)
        else:
            print(f"fitting seed {seed} (no {path})" if path else f"fitting seed {seed}",
                  flush=True)
            m = GLocalK(seed=seed, optimizer="numba").fit(train)
            if path is not None:
                m.save(path)
        if m.picks_ is None:   # a file from before the pick model: what fit now does
            m.picks_ = picks.fit(m.train_matrix_)
        models.append((label, m))
    return models


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


def co_occurrence_similarity(R):
    """Items x items cosines of the binary columns (who rated each item)."""
    P = sp.csr_matrix((np.ones(R.nnz), R.indices, R.indptr), shape=R.shape)
    S = (P @ P.T).toarray()
    norms = np.sqrt(np.diag(S))
    S /= np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(S, -np.inf)
    return S


def top_of(S, k):
    """Per row of S, the positions of its k largest entries, best first."""
    part = np.argpartition(-S, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(S, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def hit_queries(model, test):
    """[(query item position, set of the user's other liked item ids)], one per
    (test user, item rated >= LIKED with training ratings) as before."""
    items = model.index_.items
    pos, known = _positions(items, test.items)
    rated = np.zeros(test.items.size, dtype=bool)
    rated[known] = model.item_counts_[pos[known]] > 0
    liked = (test.values >= LIKED) & rated
    queries = []
    for user in np.unique(test.users[liked]):
        mine = liked & (test.users == user)
        if np.count_nonzero(mine) < 2:
            continue
        ids = set(test.items[mine].tolist())
        queries += [(p, ids - {items[p]}) for p in pos[mine]]
    return queries


def hit_scores(lists, queries, items, ms):
    """The hit measure of neighbour lists (item position -> positions)."""
    hits = np.array([len(others & set(items[lists[p]].tolist())) for p, others in queries])
    return dict(queries=len(hits), hit_rate=float(np.mean(hits > 0)),
                hits_per_query=float(hits.mean()), ms_per_query=ms)


def random_hits(queries, n_items, top):
    """The hit measure of a uniformly random list of ``top`` other items,
    exactly: hits hypergeometric over the n_items - 1 other items."""
    def log_comb(n, k):
        return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)
    n = n_items - 1
    rates, means = [], []
    for _, others in queries:
        g = len(others)    # the liked others are all in the index (they have training ratings)
        means.append(top * g / n)
        rates.append(1.0 - (np.exp(log_comb(n - g, top) - log_comb(n, top)) if n - g >= top
                            else 0.0))
    return dict(queries=len(queries), hit_rate=float(np.mean(rates)),
                hits_per_query=float(np.mean(means)), ms_per_query=0.0)


def genre_scores(lists, queries, G, counts):
    """Genre agreement of neighbour lists (query position -> positions)."""
    Gi = G.astype(np.int64)
    sizes = Gi.sum(axis=1)
    jac, share, pop = [], [], []
    for q in queries:
        nb = lists[q]
        inter = Gi[nb] @ Gi[q]
        union = sizes[nb] + sizes[q] - inter
        jac.append(np.mean(np.divide(inter, union, out=np.zeros(nb.size), where=union > 0)))
        share.append(np.mean(inter > 0))
        pop.append(counts[nb].mean())
    return dict(jaccard=float(np.mean(jac)), share_genre=float(np.mean(share)),
                neighbour_ratings=float(np.mean(pop)))


def random_genre_scores(queries, G, counts):
    """Genre agreement of a uniformly random other item: the exact mean over
    all the other items, per query, then over queries."""
    Gi = G.astype(np.int64)
    sizes = Gi.sum(axis=1)
    inter = Gi[queries] @ Gi.T                                   # queries x items
    union = sizes[queries][:, None] + sizes[None, :] - inter
    J = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    others = np.ones(inter.shape, dtype=bool)
    others[np.arange(len(queries)), queries] = False
    n = others.sum(axis=1)
    return dict(jaccard=float(np.mean((J * others).sum(axis=1) / n)),
                share_genre=float(np.mean(((inter > 0) & others).sum(axis=1) / n)),
                neighbour_ratings=float(np.mean((counts.sum() - counts[queries]) / n)))


def model_lists(model, rank, top):
    """similar's top ``top`` item positions for every item, and ms per call."""
    items = model.index_.items
    lists, tic = [], time.perf_counter()
    for item in items:
        lists.append(np.array([i for i, _ in model.similar(item, top, rank=rank)]))
    ms = 1e3 * (time.perf_counter() - tic) / items.size
    return [_positions(items, ids)[0] for ids in lists], ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="folder of ml-100k_seed{s}.npz model files of u1.base "
                    "(fitted and saved when missing); without it each seed is fitted here")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", help="one model file of u1.base instead of --models/--seeds")
    ap.add_argument("--save", help="keep the first model in this file (for bench/serving.py)")
    ap.add_argument("--top", type=int, default=20, help="list length for the hit measure")
    ap.add_argument("--genre-top", type=int, default=10,
                    help="neighbours per query for genre agreement")
    ap.add_argument("--min-ratings", type=int, default=5,
                    help="training ratings a genre query item needs")
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--item-info", help="ML-100K's u.item (default <data-dir>/ml-100k/u.item)")
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    common.check_data(["ml-100k"], args.data_dir)
    genres = read_genres(item_info_path(args))
    base = Path(args.data_dir) / "ml-100k"
    train, test = read_ratings(base / "u1.base"), read_ratings(base / "u1.test")
    models = load_models(args, train)
    if args.save:
        models[0][1].save(args.save)
    first = models[0][1]
    items, counts = first.index_.items, first.item_counts_
    G = genre_matrix(items, genres)
    long = max(args.top, args.genre_top)
    queries = hit_queries(first, test)
    genre_queries = np.flatnonzero(counts >= args.min_ratings)

    def measures(lists, ms):
        return dict(hits=hit_scores([l[:args.top] for l in lists], queries, items, ms),
                    genre=genre_scores([l[:args.genre_top] for l in lists], genre_queries,
                                       G, counts))

    per_seed = {}
    for label, m in models:
        assert np.array_equal(m.index_.items, items), "models of different item indexes"
        per_seed[label] = {}
        for rank in RANKS:
            lists, ms = model_lists(m, rank, long)
            per_seed[label][f"model:{rank}"] = measures(lists, ms)
            print(f"{label} {rank} done", flush=True)
    results = {name: {part: common.mean_of([per_seed[s][name][part] for s in per_seed])
                      for part in ("hits", "genre")} for name in per_seed[models[0][0]]}
    R = first.train_matrix_
    for name, similarity in (("co-rating", co_rating_similarity),
                             ("co-occurrence", co_occurrence_similarity)):
        tic = time.perf_counter()
        S = similarity(R)
        lists = top_of(S, long)
        results[name] = measures(list(lists), 1e3 * (time.perf_counter() - tic) / items.size)
    by_count = np.argsort(-counts, kind="stable")
    popular = [by_count[by_count != p][:long] for p in range(items.size)]
    results["most-rated"] = measures(popular, 0.0)
    results["random"] = dict(hits=random_hits(queries, items.size, args.top),
                             genre=random_genre_scores(genre_queries, G, counts))

    print(f"{len(queries)} hit queries (top {args.top}); {genre_queries.size} genre queries "
          f"(items with >= {args.min_ratings} training ratings, top {args.genre_top}); "
          f"models: {', '.join(per_seed)} (model rows: their mean)")
    print(f"{'method':20s} {'hit rate':>8s} {'hits/q':>7s} {'jaccard':>8s} {'share':>6s} "
          f"{'nb ratings':>10s} {'ms/q':>6s}")
    for name, r in results.items():
        h, g = r["hits"], r["genre"]
        print(f"{name:20s} {h['hit_rate']:8.3f} {h['hits_per_query']:7.3f} {g['jaccard']:8.3f} "
              f"{g['share_genre']:6.3f} {g['neighbour_ratings']:10.1f} {h['ms_per_query']:6.2f}")
    if args.out:
        common.write_json(args.out, dict(
            top=args.top, liked_from=LIKED, genre_top=args.genre_top,
            genre_min_ratings=args.min_ratings, genres=list(GENRES[1:]),
            hit_queries=len(queries), genre_queries=int(genre_queries.size),
            models=list(per_seed), picks_fitted_here="files without a pick model get "
            "picks.fit(train_matrix_), as fit does", results=results, per_seed=per_seed))


if __name__ == "__main__":
    main()
