"""Held-out ratings and their scores: the entries of a test or validation
set positioned in a model's index (ids outside it included, for the
fallbacks), and the scores fit, evaluate and tune report on them."""
import numpy as np
import scipy.sparse as sp

from . import metrics
from .data import _positions
from .fallback import NETWORK


class EvalSet:
    """Held-out ratings as entries: item and user positions (``rows``,
    ``cols``; -1 for an id outside the index, which only the fallbacks can
    predict), the ratings, and each entry's user group for NDCG (the user's
    position, or n + k for the k-th user outside the index), in user-then-
    item order, the order in which the official NDCG walks each user's items.
    Build one with of_matrix (a matrix over the index) or of_ratings (every
    rating, whatever its ids)."""

    def __init__(self, rows, cols, values, groups=None, item_codes=None):
        """``groups`` default to ``cols``; ``item_codes`` (default ``rows``)
        order each user's items, with codes after the index's for items
        outside it."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        groups = cols if groups is None else np.asarray(groups, dtype=np.int64)
        order = np.lexsort((rows if item_codes is None else item_codes, groups))
        self.rows, self.cols, self.groups = rows[order], cols[order], groups[order]
        self.values = np.asarray(values, dtype=np.float64)[order]
        self.rows_known, self.cols_known = self.rows >= 0, self.cols >= 0

    @classmethod
    def of_matrix(cls, matrix):
        """The stored entries of an items x users sparse matrix."""
        coo = sp.coo_matrix(matrix)
        return cls(coo.row, coo.col, coo.data)

    @classmethod
    def of_ratings(cls, ratings, index):
        """Every rating of ``ratings`` (data.Ratings), positioned in
        ``index``; a repeated (user, item) pair keeps its last rating, as
        Index.matrix does."""
        i, i_known = _positions(index.items, ratings.items)
        u, u_known = _positions(index.users, ratings.users)
        rows = np.where(i_known, i, -1)
        cols = np.where(u_known, u, -1)
        # distinct codes for ids outside the index, after the index's own
        n_items, n_users = index.n_items, index.n_users
        item_code = np.where(i_known, i, n_items + _codes(ratings.items, ~i_known))
        user_code = np.where(u_known, u, n_users + _codes(ratings.users, ~u_known))
        key = item_code * (int(user_code.max(initial=0)) + 1) + user_code
        _, last = np.unique(key[::-1], return_index=True)
        keep = np.sort(len(key) - 1 - last)
        return cls(rows[keep], cols[keep], ratings.values[keep], user_code[keep], item_code[keep])

    def __len__(self):
        return self.values.size

    @property
    def unseen(self):
        """How many entries have an id outside the index."""
        return int(np.count_nonzero(~(self.rows_known & self.cols_known)))


def _codes(ids, mask):
    """0, 1, ... for the distinct ids where ``mask`` (0 elsewhere)."""
    codes = np.zeros(len(ids), dtype=np.int64)
    if mask.any():
        codes[mask] = np.unique(ids[mask], return_inverse=True)[1].ravel()
    return codes


def held_out_scores(pred, kinds, eval_set, scale):
    """Scores of predictions on an EvalSet: RMSE, MAE and NDCG over every
    rating (metrics.evaluate), their number ``n``, how many a fallback made
    (``kinds`` from Fallback.predict) and how many of those have an id
    outside the index (``unseen``), and network_rmse, network_mae and
    network_n over the ratings the network scored."""
    net = kinds == NETWORK
    network = (metrics.evaluate(pred[net], eval_set.values[net], eval_set.groups[net], scale)
               if net.any() else {"rmse": float("nan"), "mae": float("nan")})
    return {**metrics.evaluate(pred, eval_set.values, eval_set.groups, scale),
            "n": len(eval_set), "fallback": int(np.count_nonzero(~net)),
            "unseen": eval_set.unseen, "network_rmse": network["rmse"],
            "network_mae": network["mae"], "network_n": int(np.count_nonzero(net))}


def baseline_scores(baseline, eval_set, scale):
    """RMSE, MAE and NDCG of the baseline predictor (baseline.py) on an
    EvalSet, every rating counted: what the network is measured against."""
    pred = baseline.predict(eval_set.rows, eval_set.cols, eval_set.rows_known,
                            eval_set.cols_known)
    return metrics.evaluate(pred, eval_set.values, eval_set.groups, scale)
