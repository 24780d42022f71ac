"""Ratings split in two: at random, or by the official ML-1M recipe."""
import numpy as np

from .parsing import DataError
from .ratings import subset


def random_split(ratings, frac, seed, name="a random part"):
    """(rest, held_out): a uniformly random ``frac`` of the ratings held out
    (``numpy.random.default_rng(seed)``); both sides keep file order.
    ``name`` names the held-out set in the DataError for a side left empty
    (e.g. 'a validation set')."""
    n = len(ratings)
    n_out = int(round(frac * n)) if 0 < frac < 1 else 0
    _check_split(ratings, frac, n_out, name)
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed).permutation(n)[:n_out]] = True
    return subset(ratings, ~held), subset(ratings, held)


def ml1m_split(ratings, frac=0.1, seed=1234):
    """(train, test) by the official ML-1M recipe (docs/model.md §11).

    The legacy code runs ``np.random.seed(seed); idx = np.arange(n);
    np.random.shuffle(idx)`` and takes the first ``int(frac * n)`` shuffled
    ratings as test. ``np.random.RandomState(seed).shuffle`` draws the same
    stream without touching numpy's global state. Both sides keep file order.
    """
    n = len(ratings)
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    n_test = int(frac * n)
    _check_split(ratings, frac, n_test, "a test set")
    return subset(ratings, np.sort(idx[n_test:])), subset(ratings, np.sort(idx[:n_test]))


def _check_split(ratings, frac, n_out, name):
    """DataError unless holding out ``n_out`` of the ratings (``frac`` of
    them) as the set ``name`` leaves both sides some, said in the terms of
    the data (the file, its count, the set): the fraction may be a default
    the user never gave."""
    n = len(ratings)
    them = "1 rating" if n == 1 else f"{n} ratings"
    if not 0 < frac < 1:
        raise DataError(f"{ratings.source}: cannot hold out {name} from {them}: the "
                        f"fraction {frac} is not in (0, 1)")
    if not 0 < n_out < n:
        raise DataError(f"{ratings.source}: too few ratings to hold out {name}: {frac:g} of "
                        f"{them} rounds to " + ("none" if n_out == 0 else
                                                f"all {n}, leaving none to train on"))
