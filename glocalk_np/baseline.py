"""The baseline predictor: the global mean plus regularised user and item
offsets, r(u, i) ~ mu + b_u + b_i (Koren, "Factor in the neighbors", 2010,
section 2.1; Surprise's BaselineOnly with its default ALS fit).

It serves twice: as the yardstick every fit reports beside its own scores,
so that a user sees what the network adds over a predictor that trains in
milliseconds, and as what a blend pulls the network's predictions toward
(blend_weight below). The fallbacks, where the network has nothing to go on,
do not use it: fallback.py's damped means measured better there.

Fit by alternating least squares on the training ratings (items x users,
the user's units): ``epochs`` sweeps, each solving every item's offset given
the users', b_i = sum_u (r_ui - mu - b_u) / (reg_items + |R(i)|), then every
user's given the items', each a bincount over the ratings. Surprise's
defaults: reg_items 10, reg_users 15, 10 sweeps. Cost: 4 nnz per sweep.
"""
import numpy as np

REG_ITEMS, REG_USERS, EPOCHS = 10.0, 15.0, 10


class Baseline:
    """mu + b_u + b_i fitted on the sparse items x users rating matrix ``R``.
    ``item_offsets`` (m) and ``user_offsets`` (n) are 0 for an item or user
    without training ratings."""

    def __init__(self, R, reg_items=REG_ITEMS, reg_users=REG_USERS, epochs=EPOCHS):
        m, n = R.shape
        rows = np.repeat(np.arange(m), np.diff(R.indptr))
        cols, r = R.indices, np.asarray(R.data, dtype=np.float64)
        self.global_mean = float(r.mean()) if r.size else 0.0
        item_counts = np.bincount(rows, minlength=m)
        user_counts = np.bincount(cols, minlength=n)
        b_i, b_u = np.zeros(m), np.zeros(n)
        residual = r - self.global_mean
        for _ in range(epochs):
            b_i = np.bincount(rows, residual - b_u[cols], minlength=m) / (reg_items + item_counts)
            b_u = np.bincount(cols, residual - b_i[rows], minlength=n) / (reg_users + user_counts)
        self.item_offsets, self.user_offsets = b_i, b_u

    def predict(self, rows, cols, rows_known=True, cols_known=True):
        """mu + b_i + b_u at (item position, user position) pairs; an offset
        is left out where ``rows_known`` or ``cols_known`` is False (an id
        outside the index, whose position means nothing)."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        b_i = np.where(rows_known, self.item_offsets[np.where(rows_known, rows, 0)], 0.0)
        b_u = np.where(cols_known, self.user_offsets[np.where(cols_known, cols, 0)], 0.0)
        return self.global_mean + b_i + b_u


def blend_weight(pred, base, truth):
    """The weight w in [0, 1] for which base + w (pred - base) fits ``truth``
    best in squared error: <pred - base, truth - base> / |pred - base|^2,
    clipped (1: no ratings, or predictions equal to the baseline's).

    Why: on a user's own long-tail data the network's predictions are noisy
    where it saw few ratings, and pulling them toward the baseline by a
    weight fitted on the validation ratings lowered the test RMSE on every
    data set measured (BENCHMARKS.md, issue 20). One number, fitted on
    ratings the network did not train on, cannot overfit much.
    """
    d = np.asarray(pred, dtype=np.float64) - base
    dd = float(np.dot(d, d))
    if dd == 0:
        return 1.0
    return float(np.clip(np.dot(d, np.asarray(truth, dtype=np.float64) - base) / dd, 0.0, 1.0))
