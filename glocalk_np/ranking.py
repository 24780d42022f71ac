"""Top-N lists and item neighbours of a fitted model: what recommend,
``serve /recommend`` and similar rank, from the network's output factors
(Model._member_factors) one block of users at a time."""
import numpy as np
import scipy.sparse as sp

from . import metrics
from .data import _positions, as_ids
from .picks import binary
from .safeio import physical_memory, shorten

SCORE_BLOCK_BYTES = 2**26     # scores of m items x a block of users computed at once
USER_BLOCK = 64               # users per block of scores (see _user_block)
# The orders lists can take: 'rating' by predicted rating (GLocal-K's own),
# 'picks' by the pick model (picks.py), 'picks+rating' by both standardised
# and summed, 'auto' the last where the model has a pick model.
RANKS = ("auto", "picks+rating", "picks", "rating")


class Ranking:
    """The ranking half of Model (model.py), which provides the fitted state
    and _member_factors, _blended, _in_user_units and _check_fitted."""

    def predict_all(self, ranks=False, rank="auto"):
        """The dense n_items x n_users matrix of predictions, clipped, as
        predict gives them (fallbacks included; equal to predict's to
        rounding: one GEMM per block of users instead of a dot per pair), for
        export; 8 * n_items * n_users bytes. With ``ranks``, also each
        item's rank (1 = best) in its user's column in recommend's order
        ``rank`` (ties by item order, rated items included; a user without
        training ratings by damped mean)."""
        self._check_fitted()
        m, n = self.train_matrix_.shape
        need, have = 40 * m * n, physical_memory()   # outputs, keys, ranks, sorting
        if have is not None and need > have:
            raise ValueError(f"the full {m} x {n} (items x users) prediction matrix needs about "
                             f"{need / 2**30:,.0f} GiB, more than this machine's "
                             f"{have / 2**30:,.0f} GiB of memory: predict pairs instead")
        rank = self._rank(rank)
        raw, keys = np.empty((m, n)), (np.empty((m, n)) if ranks else None)
        block = self._user_block()                   # the blocks recommend scores in
        for first in range(0, n, block):
            cols = np.arange(first, min(first + block, n))
            raw[:, cols] = self._user_scores(cols)
            if ranks:
                keys[:, cols] = self._order_keys(raw[:, cols], cols, rank)
        raw[:, self.user_counts_ == 0] = self.damped_item_means_[:, None]
        known = np.flatnonzero(self.user_counts_ > 0)
        pred = raw.copy()
        pred[:, known] = self._blended(raw[:, known], np.arange(m)[:, None], known[None, :])
        pred = metrics.clip(pred, *self.rating_range_)
        if not ranks:
            return pred
        keys[:, self.user_counts_ == 0] = self.damped_item_means_[:, None]
        order = np.lexsort((np.broadcast_to(np.arange(m)[:, None], (m, n)), -keys), axis=0)
        places = np.empty((m, n), dtype=np.int64)
        np.put_along_axis(places, order, np.arange(1, m + 1)[:, None], axis=0)
        return pred, places


    def recommend(self, users, top=10, include_seen=False, items=None, filter_items=None,
                  rank="auto"):
        """The ``top`` items a user is likeliest to pick and like, best first,
        leaving out the items the user rated in any ratings given to fit or
        update (training, validation and test alike) unless
        ``include_seen``. ``rank`` (RANKS) orders them: 'picks+rating' (the
        default, 'auto', for a model with a pick model: picks_) by the pick
        model's score of the user's training pattern (picks.py) plus
        picks_.mix times the predicted rating, each standardised over all
        items (docs/model.md §13), so that candidates and exclusions never
        reorder a list; 'picks' by the first alone;
        'rating' (the default for a model file without a pick model) by the
        network's unclipped predicted rating alone (items that all clip to
        the top rating keep their order). Ties go in item order. A user without training
        ratings (or unknown) gets the items ranked by their damped mean
        rating (see predict), flagged.

        One user id: (list of (item id, predicted rating), warning), the
        warning None unless the user had no training ratings. A list or array
        of ids: a dict of parallel arrays 'user', 'rank' (1-based), 'item',
        'score' (predicted rating, clipped, as predict gives it) and
        'fallback' (True where the user's list is the damped-mean one).
        A pandas Series (or other pandas object) of ids gets a DataFrame of
        those columns. ``items``: ids the lists are drawn from (candidates), ``filter_items``:
        ids they never hold; ids the model does not know are ignored.
        The scores are predicted ratings whatever the order, so they need
        not descend; with a blend (blend_) the order uses the network's own
        rating: the baseline's item offsets would favour popular items
        (docs/model.md §10). Cost: one forward pass for all items, then per
        block of users one GEMM with the output layer, their pick scores
        (NEIGHBOURS per training rating, picks.py) and a partial sort, in
        SCORE_BLOCK_BYTES of scores at a time."""
        self._check_fitted()
        check_positive_int(top, "top")
        ids = as_ids([users] if np.ndim(users) == 0 else users, "recommend", "user",
                     warn=False)
        # each distinct user once (a list may name one user many times)
        distinct, inverse = np.unique(ids, return_inverse=True)
        lists, unknown = self._top_items(distinct, int(top),
                                         None if include_seen else self._given(),
                                         self._allowed_items(items, filter_items), rank)
        positions, _ = _positions(self.index_.users, distinct)
        scores = [metrics.clip(raw if fallback else self._blended(raw, idx, positions[k]),
                               *self.rating_range_)
                  for k, ((idx, raw), fallback) in enumerate(zip(lists, unknown))]
        inverse = inverse.ravel()
        lists, unknown = [lists[k] for k in inverse], unknown[inverse]
        scores = [scores[k] for k in inverse]
        items = self.index_.items
        if np.ndim(users) == 0:
            warning = (f"user {users!r} has no training ratings: items are ranked by their "
                       "damped mean training rating") if unknown[0] else None
            return list(zip(items[lists[0][0]].tolist(), scores[0].tolist())), warning
        counts = np.array([idx.size for idx, _ in lists], dtype=np.int64)
        u, known = _positions(self.index_.users, ids)
        if not known.all() or ids.dtype != self.index_.users.dtype:
            # known users as the model holds their ids, unknown ones as given
            ids = np.where(known, self.index_.users[u].astype(object), ids.astype(object))
        out = {"user": np.repeat(ids, counts),
               "rank": np.concatenate([np.arange(1, c + 1) for c in counts]
                                      or [np.empty(0, np.int64)]),
               "item": items[np.concatenate([idx for idx, _ in lists] or [np.empty(0, int)])],
               "score": np.concatenate(scores or [np.empty(0)]),
               "fallback": np.repeat(unknown, counts)}
        if is_pandas(users):
            import pandas as pd
            return pd.DataFrame(out)
        return out

    def similar(self, item, top=10, rank="auto"):
        """The ``top`` items most like the item ``item``, best first: a list
        of (item id, similarity), in the order ``rank`` (RANKS) names:
        - 'rating': the adjusted cosine (as in item-based collaborative
          filtering) of the two items' predicted ratings over all users,
          each user's centred on that user's mean over the items (the
          network's outputs before the baseline blend; an ensemble's members
          averaged): 1 for items the model expects the same users to like
          more, and less, than their usual. Cost: once per model
          m h^2 + h^3, then m h per query.
        - 'picks': the pick model's weight of each item for a user who
          picked this one (picks.py): what its pickers pick too.
        - 'picks+rating': both, each standardised over all items, the
          second times picks_.mix ('auto' where the model has a pick model).
        Similarity is the value ranked by."""
        self._check_fitted()
        check_positive_int(top, "top")
        rank = self._rank(rank)
        pos, known = _positions(self.index_.items, as_ids([item], "similar", "item", warn=False))
        if not known[0]:
            raise ValueError(f"item {shorten(repr(np.asarray(item).tolist()))} is not in the "
                             "model")
        if rank == "picks":
            sims = self.picks_.similar(pos[0])
        else:
            sims = np.mean([Z @ Z[pos[0]] for Z in self._item_space()], axis=0)
        if rank == "picks+rating":
            sims = (_standardised(self.picks_.similar(pos[0]))
                    + self.picks_.mix * _standardised(sims))
        sims[pos[0]] = -np.inf
        best, values = _best(sims, int(top))
        return list(zip(self.index_.items[best].tolist(), values.tolist()))

    def _item_space(self):
        """Per member, unit rows Z (m x h) whose dot products are the
        adjusted cosines of the items' outputs H WoutT^T + b: centred on each
        user's mean over items they are H_c WoutT^T with H_c = H - mean(H),
        whose Gram is H_c G H_c^T for
        G = WoutT^T WoutT = V diag(lam) V^T, so Z = H_c V sqrt(lam), scaled to
        unit rows (an item whose outputs never vary gets zeros)."""
        if self._space is None:
            self._space = []
            for H, WoutT, _ in self._member_factors():
                lam, V = np.linalg.eigh(WoutT.T @ WoutT)
                Z = (H - H.mean(axis=0)) @ (V * np.sqrt(np.maximum(lam, 0)))
                norms = np.linalg.norm(Z, axis=1, keepdims=True)
                self._space.append(np.divide(Z, norms, out=np.zeros_like(Z), where=norms > 0))
        return self._space

    def _user_block(self):
        """Users per block of scores: USER_BLOCK, fewer where m x block
        float64 would pass SCORE_BLOCK_BYTES. Small, so that one user's list
        (a served request) costs one small GEMM, m h USER_BLOCK."""
        return max(1, min(USER_BLOCK, SCORE_BLOCK_BYTES // (8 * self.train_matrix_.shape[0])))

    def _allowed_items(self, items, filter_items):
        """A mask of the item positions a list may hold (None: all), from
        candidate ids ``items`` and excluded ids ``filter_items``."""
        if items is None and filter_items is None:
            return None
        allowed = np.ones(self.index_.n_items, dtype=bool)
        for ids, keep in ((items, True), (filter_items, False)):
            if ids is not None:
                pos, known = _positions(self.index_.items,
                                        as_ids(ids, "recommend", "item", warn=False))
                if keep:
                    allowed[:] = False
                allowed[pos[known]] = keep
        return allowed

    def _top_items(self, ids, top, exclude, allowed=None, rank="auto"):
        """Per user id: (item positions best first, their unclipped predicted
        ratings), and whether the user had no training ratings. ``exclude``:
        an items x users pattern whose items a user's list leaves out, or
        None; ``allowed``: a mask of the items any list may hold, or None;
        ``rank``: the order (RANKS)."""
        rank = self._rank(rank)
        u, in_index = _positions(self.index_.users, ids)
        known = in_index & (self.user_counts_[u] > 0)
        seen = None if exclude is None else exclude.tocsc()    # a CSC one as it is

        def unseen(scores, j):
            if allowed is not None:
                scores = np.where(allowed, scores, -np.inf)
            if seen is None or not in_index[j]:
                return scores
            scores = scores.copy()
            scores[seen.indices[seen.indptr[u[j]]:seen.indptr[u[j] + 1]]] = -np.inf
            return scores
        lists = [None] * ids.size
        for j in np.flatnonzero(~known):
            lists[j] = _best(unseen(self.damped_item_means_, j), top)
        # Fixed blocks of user positions: a user's scores come from the same
        # GEMM however many users are asked for, so one user's list is
        # bit for bit what a call for all users gives.
        block = self._user_block()
        for b in np.unique(u[known] // block):
            cols = np.arange(b * block, min((b + 1) * block, self.user_counts_.size))
            S = self._user_scores(cols)
            keys = self._order_keys(S, cols, rank)
            for j in np.flatnonzero(known & (u // block == b)):
                best, _ = _best(unseen(keys[:, u[j] - cols[0]], j), top)
                lists[j] = best, S[best, u[j] - cols[0]]
        return lists, ~known

    def _rank(self, rank):
        """The order ``rank`` names (RANKS), 'auto' resolved: 'picks+rating'
        for a model with a pick model (picks_), 'rating' for one without."""
        if not isinstance(rank, str) or rank not in RANKS:
            raise ValueError(f"rank must be one of {', '.join(RANKS)}, got "
                             f"{shorten(repr(rank))}")
        if rank == "auto":
            return "rating" if self.picks_ is None else "picks+rating"
        if rank != "rating" and self.picks_ is None:
            raise ValueError(f"rank={rank!r} needs a pick model, and this model has none (its "
                             "file's format version is 3 or older): refit it, or rank by "
                             "'rating'")
        return rank

    def _order_keys(self, ratings, cols, rank):
        """What lists sort by (m x len(cols)), from the predicted ratings
        ``ratings`` of the users at positions ``cols``: the ratings
        themselves for 'rating'; else each user's pick scores (picks.py)
        from their training pattern, standardised over all items, plus, for
        'picks+rating', picks_.mix times their predicted ratings
        standardised likewise (docs/model.md §13). Over all items, so that
        a user's order is the same whatever the candidates and exclusions."""
        if rank == "rating":
            return ratings
        keys = _standardised(self.picks_.scores(self._pattern()[:, cols]))
        if rank == "picks+rating":
            keys += self.picks_.mix * _standardised(ratings)
        return keys

    def _pattern(self):
        """The training matrix's pattern (CSC, 0/1): what the pick model reads
        of a user (the network reads the same matrix)."""
        R, pattern = getattr(self, "_pattern_cache", (None, None))
        if R is not self.train_matrix_:
            R, pattern = self.train_matrix_, binary(self.train_matrix_).tocsc()
            self._pattern_cache = (R, pattern)
        return pattern

    def _given(self):
        """The pattern (CSC) of every rating given to fit (and update):
        recommend's 'seen'; kept while the training matrix and seen_ stay."""
        R, seen, given = getattr(self, "_given_cache", (None, None, None))
        if R is not self.train_matrix_ or seen is not self.seen_:
            given = (stored(self.train_matrix_) + self.seen_).tocsc()
            self._given_cache = (self.train_matrix_, self.seen_, given)
        return given

    def _user_scores(self, cols):
        """The m x len(cols) network outputs in the ratings' units (the mean
        over an ensemble's members), unblended: what lists are ranked by."""
        with np.errstate(over="ignore", invalid="ignore"):   # checked by _in_user_units
            S = np.mean([H @ WoutT[cols].T + b[cols] for H, WoutT, b in self._member_factors()],
                        axis=0)
        return self._in_user_units(S)



def stored(M):
    """The pattern of a sparse matrix's stored entries (bool CSR): a rating
    of 0 is stored, and is a rating."""
    M = sp.csr_matrix(M)
    return sp.csr_matrix((np.ones(M.nnz, dtype=bool), M.indices, M.indptr), shape=M.shape)




def check_positive_int(value, name):
    """ValueError naming ``name`` unless ``value`` is an int >= 1 (not a bool)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def is_pandas(value):
    """Whether ``value`` is a pandas object (without importing pandas)."""
    return type(value).__module__.split(".")[0] == "pandas"




def _standardised(x):
    """``x`` less its mean, divided by its standard deviation (0 where it does
    not vary), along its first axis (each column of a matrix)."""
    centred = x - x.mean(axis=0)
    sd = np.sqrt((centred ** 2).mean(axis=0))
    return centred / np.where(sd > 0, sd, 1.0)


def _best(scores, top):
    """(positions of the ``top`` highest finite scores, best first, ties by
    position; those scores). A partial sort: argpartition finds the top-th
    score, and only the scores at or above it (ties included) are sorted."""
    finite = np.isfinite(scores)
    k = min(top, int(finite.sum()))
    if k == 0:
        return np.empty(0, np.int64), np.empty(0)
    masked = np.where(finite, scores, -np.inf)
    kth = masked[np.argpartition(-masked, k - 1)[k - 1]]
    cand = np.flatnonzero(masked >= kth)
    best = cand[np.lexsort((cand, -masked[cand]))][:k]
    return best, masked[best]


