"""A synthetic rating matrix with low-rank structure, for the demo and tests."""
import numpy as np

from .data import Ratings


def low_rank_ratings(n_users, n_items, density, rank, seed, noise=0.3):
    """Integer stars 1-5 on a uniformly random ``density`` fraction of the
    n_users x n_items matrix, from a reproducible ``seed``.

    A rating is round(3.5 + user bias + item bias + <u, v> + noise), clipped
    to [1, 5]: biases ~ N(0, 0.4), a rank-``rank`` interaction of unit-ish
    scale and Gaussian ``noise``. Ids are 1-based integers, as in MovieLens.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    rng = np.random.default_rng(seed)
    n_ratings = max(1, int(round(density * n_users * n_items)))
    cells = rng.choice(n_users * n_items, size=n_ratings, replace=False)
    users, items = np.divmod(cells, n_items)
    U = rng.normal(0.0, 1.0, (n_users, rank))
    V = rng.normal(0.0, 0.8 / np.sqrt(rank), (n_items, rank))
    b_user = rng.normal(0.0, 0.4, n_users)
    b_item = rng.normal(0.0, 0.4, n_items)
    score = (3.5 + b_user[users] + b_item[items] + np.einsum("ij,ij->i", U[users], V[items])
             + rng.normal(0.0, noise, n_ratings))
    stars = np.clip(np.rint(score), 1, 5)
    return Ratings(users.astype(np.int64) + 1, items.astype(np.int64) + 1, stars,
                   f"synthetic(seed={seed})")
