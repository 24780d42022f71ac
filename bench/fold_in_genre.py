"""Fold-in by genre: does a user folded in with a handful of ratings of one
genre get a list led by that genre?

ML-100K's u1 split, the models of u1.base that bench/similar.py reads
(--models DIR, ml-100k_seed{s}.npz, fitted with the defaults and saved
there when missing; --seeds). A file written before the pick model
existed (picks_ None) gets one fitted here on its training matrix,
``m.picks_ = picks.fit(m.train_matrix_)``, exactly what fit now does.

For each genre of --genres with at least --min-films films that have at
least --min-ratings training ratings (u.item's flags; a film may have
several genres), --users new users (int ids above the model's largest),
each rating --ratings such films of that genre, drawn at random (seed
--seed, the same users for every model), at 5 stars. All of them are
added at once with update(..., fold_in=True) on a fresh load of each
model (update changes the model), then recommend(..., rank=r) lists their
top 50 for each order r ('rating', 'picks', 'picks+rating';
glocalk_np/ranking.py). Reported per genre and order: the share of the
top 10 and of the top 50 in the genre, the share of users whose first item
is of the genre, against the genre's base rate (the share of the model's
items of that genre) and the most-rated unseen items (what popularity
alone lists); per model and the mean over models, and the mean over
genres. Also per model: the share of the new users' (user, item) pairs
whose network output (unclipped, what 'rating' ranks by) is at the top
rating, and the share of users for whom it is for every item: such ties
go in item order (ranking.py), so a 'rating' list made of them says
nothing of the user.

    python bench/fold_in_genre.py --models /work/models \\
        --item-info /work/data/ml-100k/u.item --json bench/results/fold_in_genre.json

Data: ../shared/data/ml-100k (see bench/README.md); the genres from
GroupLens' ml-100k.zip, file u.item (--item-info, by default
<data-dir>/ml-100k/u.item).
"""
import argparse
import time
from pathlib import Path

import numpy as np

import common
from glocalk_np.data import _positions, read_ratings
from similar import GENRES, genre_matrix, item_info_path, load_models, read_genres

RANKS = ("rating", "picks", "picks+rating")
CANDIDATES = ("Sci-Fi", "Horror", "Children's", "Romance", "War", "Western", "Documentary",
              "Musical", "Film-Noir", "Animation")
TOPS = (10, 50)


def new_users(genres_used, films, first_id, args):
    """The fold-in ratings {'user', 'item', 'rating'} and {genre: user ids}."""
    rng = np.random.default_rng(args.seed)
    users, items, ids = [], [], {}
    next_id = first_id
    for genre in genres_used:
        ids[genre] = list(range(next_id, next_id + args.users))
        for user in ids[genre]:
            picked = rng.choice(films[genre], size=args.ratings, replace=False)
            users += [user] * args.ratings
            items += picked.tolist()
        next_id += args.users
    return dict(user=np.array(users, dtype=np.int64), item=np.array(items, dtype=np.int64),
                rating=np.full(len(users), 5.0)), ids


def list_scores(lists, in_genre):
    """Genre shares of per-user lists of item positions (best first)."""
    out = {f"top{k}": float(np.mean([in_genre[l[:k]].mean() for l in lists])) for k in TOPS}
    out["first"] = float(np.mean([in_genre[l[0]] for l in lists]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="folder of ml-100k_seed{s}.npz model files of u1.base "
                    "(fitted and saved when missing); without it each seed is fitted here")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--genres", nargs="+", default=list(CANDIDATES))
    ap.add_argument("--min-films", type=int, default=20)
    ap.add_argument("--min-ratings", type=int, default=20,
                    help="training ratings a film needs to be rated by a new user")
    ap.add_argument("--users", type=int, default=20, help="new users per genre")
    ap.add_argument("--ratings", type=int, default=5, help="ratings per new user")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new users' films")
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--item-info", help="ML-100K's u.item (default <data-dir>/ml-100k/u.item)")
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    args.model = None
    common.check_data(["ml-100k"], args.data_dir)
    genres = read_genres(item_info_path(args))
    unknown = [g for g in args.genres if g not in GENRES[1:]]
    if unknown:
        common.fail(f"unknown genre(s) {', '.join(unknown)}; known: {', '.join(GENRES[1:])}")
    train = read_ratings(Path(args.data_dir) / "ml-100k" / "u1.base")

    per_seed, setup = {}, None
    for seed in args.seeds:
        (label, m), = load_models(argparse.Namespace(**{**vars(args), "seeds": [seed]}), train)
        items, counts = m.index_.items, m.item_counts_
        G = genre_matrix(items, genres)
        column = {g: GENRES.index(g) - 1 for g in args.genres}
        if setup is None:      # the genres and new users, from the first model (all share u1.base)
            eligible = {g: items[G[:, c] & (counts >= args.min_ratings)]
                        for g, c in column.items()}
            used = [g for g in args.genres if eligible[g].size >= args.min_films]
            ratings, ids = new_users(used, eligible, int(m.index_.users.max()) + 1, args)
            setup = dict(items=items, counts=counts, used=used, ratings=ratings, ids=ids,
                         films={g: int(eligible[g].size) for g in args.genres})
        assert np.array_equal(items, setup["items"]), "models of different item indexes"
        used, ids = setup["used"], setup["ids"]
        tic = time.perf_counter()
        done = m.update(setup["ratings"], fold_in=True)
        fold_s = time.perf_counter() - tic
        everyone = [u for g in used for u in ids[g]]
        # How often the network's output (unclipped, what 'rating' ranks by) sits
        # at the top rating: items tied there are listed in item order.
        raw = m._user_scores(_positions(m.index_.users, np.array(everyone))[0])
        at_top = raw >= m.rating_range_[1]
        per_seed[label] = dict(update=done, fold_in_s=fold_s,
                               items_at_top_rating=float(at_top.mean()),
                               users_all_items_at_top=float(at_top.all(axis=0).mean()),
                               genres={})
        lists = {}
        for rank in RANKS:
            out = m.recommend(everyone, top=max(TOPS), rank=rank)
            assert not out["fallback"].any()
            pos = _positions(items, out["item"])[0]
            lists[rank] = {u: pos[out["user"] == u] for u in everyone}
        # popularity alone: the most-rated items each user has not rated
        by_count = np.argsort(-counts, kind="stable")
        rated = {}
        for u, i in zip(setup["ratings"]["user"], setup["ratings"]["item"]):
            rated.setdefault(int(u), set()).add(int(i))
        for g in used:
            in_genre = G[:, column[g]]
            row = {"base_rate": float(in_genre.mean())}
            for rank in RANKS:
                row[rank] = list_scores([lists[rank][u] for u in ids[g]], in_genre)
            row["most-rated"] = list_scores(
                [np.array([p for p in by_count[:max(TOPS) + args.ratings]
                           if int(items[p]) not in rated[u]][:max(TOPS)]) for u in ids[g]],
                in_genre)
            per_seed[label]["genres"][g] = row
        print(f"{label}: {done['new_users']} users folded in in {fold_s:.1f} s; the network "
              f"predicts the top rating for {at_top.mean():.0%} of (user, item) pairs, for "
              f"every item for {at_top.all(axis=0).mean():.0%} of users", flush=True)

    labels = list(per_seed)
    methods = RANKS + ("most-rated",)
    genres_mean = {}
    for g in setup["used"]:
        rows = [per_seed[s]["genres"][g] for s in labels]
        genres_mean[g] = {"base_rate": rows[0]["base_rate"],
                          **{r: common.mean_of([row[r] for row in rows]) for r in methods}}
    overall = {"base_rate": float(np.mean([genres_mean[g]["base_rate"] for g in genres_mean])),
               **{r: common.mean_of([genres_mean[g][r] for g in genres_mean]) for r in methods}}
    skipped = [g for g in args.genres if g not in setup["used"]]
    print(f"genres with >= {args.min_films} films of >= {args.min_ratings} training ratings: "
          f"{', '.join(setup['used'])}" + (f"; too few: {', '.join(skipped)}" if skipped else ""))
    print(f"{args.users} users a genre, {args.ratings} films at 5 stars each; means over "
          f"{', '.join(labels)}")
    print(f"{'genre':12s} {'films':>5s} {'base':>5s}  " + "  ".join(
        f"{r[:12]:>12s} t10/t50/1st" for r in methods))
    for g, row in list(genres_mean.items()) + [("mean", overall)]:
        films = setup["films"].get(g, "")
        print(f"{g:12s} {films!s:>5s} {row['base_rate']:5.3f}  " + "  ".join(
            f"{row[r]['top10']:.2f}/{row[r]['top50']:.2f}/{row[r]['first']:.2f}".rjust(24)
            for r in methods))
    if args.out:
        common.write_json(args.out, dict(
            users_per_genre=args.users, ratings_per_user=args.ratings, rating=5.0,
            film_seed=args.seed, min_films=args.min_films, min_ratings=args.min_ratings,
            eligible_films=setup["films"], genres=setup["used"], skipped=skipped,
            models=labels, picks_fitted_here="files without a pick model get "
            "picks.fit(train_matrix_), as fit does", mean=overall, per_genre=genres_mean,
            per_seed=per_seed))


if __name__ == "__main__":
    main()
