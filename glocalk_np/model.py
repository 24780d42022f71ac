"""A fitted GLocal-K model: predictions, top-N lists and neighbours
(ranking.py), held-out scores, new ratings and fold-in, model files.

It reads only what training left (the members' parameters, the index, the
training and seen matrices, the rating scale, the blend weight, the pick
model, the baseline and the fallbacks' statistics) and computes with
inference.py's NumPy operations: neither the trainer, nor an engine, nor Numba is loaded
to answer (``glocalk-np serve`` and the read-only commands load this
module alone). GLocalK (estimator.py) is this class with hyper-parameters
and ``fit``; ``Model.load`` reads any model file, ``GLocalK.load`` the same
as an estimator.

The network is an item-based autoencoder: the prediction for item i is
computed from row i of the TRAINING matrix R (items x users), so a fitted
model keeps R, and a model file stores it next to the parameters.
"""
import warnings
from dataclasses import asdict

import numpy as np
import scipy.sparse as sp

from . import foldin, inference, metrics, modelfile
from .baseline import Baseline
from .config import PRESETS
from .data import (DataError, DataWarning, Index, Ratings, _positions, as_ids, ids_in_kind,
                   subset, table_columns)
from .fallback import Fallback
from .params import layer_count, user_axes
from .ranking import Ranking, check_positive_int, is_pandas
from .records import summary_problem
from .safeio import shorten
from .scale import RatingScale
from .schema import (field, is_weight, pack_ids, pack_matrix, pack_params, pack_pattern,
                     pack_picks, read_config, read_history, read_members, unpack_ids,
                     unpack_matrix, unpack_pattern, unpack_picks)
from .scoring import EvalSet, baseline_scores, held_out_scores

PAIR_BLOCK = 8192             # (item, user) pairs whose factors are gathered at once


class Model(Ranking):
    """A fitted GLocal-K model (see the module docstring): ``Model.load(path)``,
    or a GLocalK after ``fit``. Its attributes, each ending in '_', are
    those GLocalK documents."""

    def _score(self, evals):
        """train.held_out_scores of the (ensemble's) predictions on each
        EvalSet of ``evals``."""
        out = {}
        for name, entries in evals.items():
            pred, kinds = self._fallback.predict(entries.rows, entries.cols, self._network,
                                                 entries.rows_known, entries.cols_known)
            out[name] = held_out_scores(pred, kinds, entries, self.scale_)
        return out

    def _set_training_data(self, index, R):
        """The index, training matrix (the user's units), the rating scale the
        network works in and the statistics the fallbacks use."""
        self.index_, self.train_matrix_ = index, R
        self._factors, self._space = None, None
        self.scale_ = RatingScale.of(R.data, self.config_.scale,   # a loaded file names itself
                                     getattr(self, "source_", "the training ratings"))
        self.rating_range_ = (self.scale_.low, self.scale_.high)
        self._fallback = Fallback(R)
        self.baseline_ = Baseline(R)
        fb = self._fallback
        self.item_counts_, self.user_counts_ = fb.item_counts, fb.user_counts
        self.item_means_, self.global_mean_ = fb.item_means, fb.global_mean
        self.damped_item_means_ = fb.damped_item_means


    def _check_fitted(self):
        if not hasattr(self, "params_"):
            name = type(self).__name__
            raise RuntimeError(f"this {name} is not fitted: call fit() or {name}.load() first")

    def _network(self, rows, cols):
        """Unclipped network outputs at (item position, user position) pairs,
        in the ratings' units; the mean over the members of a seed ensemble,
        blended with the baseline (blend_). Cost: h per pair, in blocks of
        PAIR_BLOCK pairs."""
        out = np.zeros(rows.size)
        for H, WoutT, b in self._member_factors():
            for lo in range(0, rows.size, PAIR_BLOCK):
                r, c = rows[lo:lo + PAIR_BLOCK], cols[lo:lo + PAIR_BLOCK]
                with np.errstate(over="ignore", invalid="ignore"):  # checked by _in_user_units
                    out[lo:lo + PAIR_BLOCK] += np.einsum("ij,ij->i", H[r], WoutT[c]) + b[c]
        return self._blended(self._in_user_units(out / len(self.members_)), rows, cols)

    def _member_factors(self):
        """Each member's output factors (H, WoutT, b) for the training matrix,
        computed on first use by inference.py's forward pass: no Numba
        kernel to compile, and the same numbers after fit as after load."""
        if self._factors is None:
            R = self.scale_.matrix_to_model(self.train_matrix_)
            self._factors = [inference.output_factors(m.stage, m.params, R, self.config_.dtype,
                                                      self.config_.dot_scale)
                             for m in self.members_]
        return self._factors

    def _blended(self, out, rows, cols):
        """b + w (out - b) for the baseline's predictions b at (item
        position, user position) pairs, broadcast like ``out``, and w =
        blend_ (none: ``out``)."""
        if self.blend_ is None:
            return out
        b = self.baseline_.predict(rows, cols)
        return b + self.blend_ * (out - b)


    def _in_user_units(self, out):
        """Network outputs in the ratings' units; ValueError if not finite."""
        if not np.isfinite(out).all():
            where = getattr(self, "source_", None)
            raise ValueError((f"{where}: " if where else "") + "the network's outputs are not "
                             "finite: its parameters are too large for float arithmetic (a "
                             "corrupt or crafted model?)")
        return self.scale_.to_user(out)

    def predict(self, users, items=None):
        """(predictions, fallback) for parallel arrays of user and item ids;
        or, for a table (a pandas DataFrame, a mapping) with columns user and
        item given alone, the table's pairs: a pandas DataFrame in returns a
        DataFrame (user, item, rating, fallback).

        Predictions are float64, clipped to ``rating_range_``. ``fallback``
        says where the network could not be used (fallback.py): '' for a
        user with training ratings and an item of the index (the network's
        prediction; for an item without ratings, its learned per-user
        baseline); 'item_mean' when the user has none (or is unknown) but
        the item has: the item's mean training rating damped toward the
        global mean; 'global_mean' otherwise (e.g. an unknown item): the mean
        of all training ratings.
        """
        table = None
        if items is None:
            table = users
            users, items = table_columns(table, {"user": "user", "item": "item"},
                                         f"the {type(table).__name__} of pairs")
        pred, fallback = self._predict_unclipped(users, items)
        pred = metrics.clip(pred, *self.rating_range_)
        if is_pandas(table):
            import pandas as pd
            return pd.DataFrame({"user": np.asarray(users), "item": np.asarray(items),
                                 "rating": pred, "fallback": fallback})
        return pred, fallback

    def _predict_unclipped(self, users, items):
        """predict() before clipping: ranking by it keeps the order of items
        whose predictions all clip to the top rating."""
        self._check_fitted()
        users, items = (as_ids(ids, "predict", what, warn=False)
                        for ids, what in ((users, "user"), (items, "item")))
        if users.size != items.size:
            raise ValueError(f"{users.size} users but {items.size} items")
        u, u_known = _positions(self.index_.users, users)
        i, i_known = _positions(self.index_.items, items)
        return self._fallback.predict(i, u, self._network, i_known, u_known)

    def evaluate(self, test, k=10, relevant_from=metrics.RELEVANT_FROM, rank="auto"):
        """Scores of the model on the Ratings ``test``, every rating counted:
        - rmse, mae, and ndcg, the paper's NDCG (docs/model.md §10: each
          user's test items ranked among themselves), over all ``n`` test
          ratings; ``fallback`` of them were predicted by a fallback (their
          user has no training rating or their item none in the index, see
          predict), ``unseen`` of those have an id outside the index;
          network_rmse, network_mae over the network_n others. These are the
          numbers fit() reports for a test set.
        - ``baseline``: rmse, mae and ndcg of the baseline predictor
          (baseline.py: global mean plus user and item offsets fitted on the
          training ratings) on the same ratings.
        - precision@k, recall@k and ndcg@k of the top-k lists (recommend's,
          in the order ``rank``) over
          every item each test user of the index did not rate in training, a
          test item of the index counting as relevant when its rating is at
          least ``relevant_from`` on the 1-5 scale the model trains on
          (scale.py), as LensKit and cornac report top-N accuracy
          (metrics.top_n)."""
        self._check_fitted()
        check_positive_int(k, "k")
        test = as_ratings(test, "test")
        entries = EvalSet.of_ratings(test, self.index_)
        if not len(entries):
            raise ValueError(f"{test.source}: no ratings")
        by_user = self.index_.matrix(test)[0].tocsc()
        users = np.flatnonzero(np.diff(by_user.indptr))
        lists, _ = self._top_items(self.index_.users[users], int(k), self.train_matrix_,
                                   rank=rank)
        relevant = []
        for u in users:
            rows = by_user.indices[by_user.indptr[u]:by_user.indptr[u + 1]]
            ratings = by_user.data[by_user.indptr[u]:by_user.indptr[u + 1]]
            relevant.append(rows[self.scale_.to_model(ratings) >= relevant_from])
        return {**self._score({"test": entries})["test"],
                "baseline": baseline_scores(self.baseline_, entries, self.scale_),
                **metrics.top_n([best for best, _ in lists], relevant, int(k))}

    # ------------------------------------------------------------ new ratings
    def update(self, ratings, fold_in=False):
        """Add ``ratings`` to the training matrix the network reads, without
        retraining: the network predicts item i from row i of that matrix, so
        new ratings by known users, on known items or on items it has never
        seen, change the predictions, recommendations and fallbacks at once.
        A rating of a pair already rated replaces it (the last one wins).
        It does not accept ratings outside the training range (the network
        was trained on that range). A new item gets a zero row in the global
        kernel's C, so the kernel G the old items shape stays as it was.

        The pick model (picks_) keeps its weights too: a user's new
        ratings change their pick scores at once, and a new item gets none
        (it is listed by its predicted rating; a refit learns its weights).

        Without ``fold_in`` the weights stay as trained, and ratings by users
        the model does not know are skipped with a DataWarning (each user is
        a column of the weights). With ``fold_in``, new users are added (a
        zero row of the input layer, so that the other users' predictions
        keep their inputs, and the average user's output column to start
        from), and every user with ratings here gets their output-layer
        column, kernel vector and bias fitted to all their ratings with
        everything else fixed (foldin.py), in each member of an ensemble.
        Returns {'added', 'replaced', 'new_items', 'skipped', 'new_users',
        'folded_in'} counts."""
        self._check_fitted()
        ratings = as_ratings(ratings, "update")
        if ratings is None or not len(ratings):
            raise DataError(f"{getattr(ratings, 'source', 'update')}: no ratings to add")
        low, high = self.rating_range_
        outside = np.flatnonzero((ratings.values < low) | (ratings.values > high))
        if outside.size:
            raise DataError(f"{ratings.where(outside[0])}: rating "
                            f"{ratings.values[outside[0]]:g} is outside the model's training "
                            f"range [{low:g}, {high:g}]; refit to use it")
        items, _ = ids_in_kind(self.index_.items, ratings, "item")   # as the model has them
        # the last check before the model changes
        new_users = self._add_users(ratings) if fold_in else 0
        u, user_known = _positions(self.index_.users, ratings.users)
        if not user_known.all():
            first = np.flatnonzero(~user_known)[0]
            warnings.warn(f"{ratings.where(first)}: {np.count_nonzero(~user_known)} ratings by "
                          "users the model does not know were skipped (first: "
                          f"{shorten(repr(ratings.users[first]))}); new "
                          "users need a refit or update's fold-in", DataWarning)
        # held ids from here on (Ratings.checked): as the model has them
        ratings = subset(Ratings.checked(self.index_.users[u], items, ratings.values,
                                         ratings.source), user_known)
        index = Index(self.index_.users, np.union1d(self.index_.items, ratings.items))
        old = self.train_matrix_.tocoo()
        R, _ = index.matrix(Ratings.checked(
            np.r_[self.index_.users[old.col], ratings.users],
            np.r_[self.index_.items[old.row], ratings.items],
            np.r_[old.data, ratings.values], ratings.source))
        old_rows = np.searchsorted(index.items, self.index_.items)   # old item -> new row
        n = index.n_users
        pairs = np.unique(np.searchsorted(index.items, ratings.items) * n
                          + np.searchsorted(index.users, ratings.users))
        replaced = int(np.isin(pairs, old_rows[old.row] * n + old.col).sum())
        for m in self.members_:
            if "C" in m.params:
                C = np.zeros((index.n_items, m.params["C"].shape[1]), m.params["C"].dtype)
                C[old_rows] = m.params["C"]
                m.params["C"] = C
        self.params_ = self.members_[0].params
        if self.picks_ is not None:
            self.picks_ = self.picks_.grown(old_rows, index.n_items)
        seen = self.seen_.tocoo()
        self.seen_ = sp.csr_matrix((np.ones(seen.nnz, dtype=bool),
                                    (old_rows[seen.row], seen.col)), shape=R.shape)
        counts = {"added": int(R.nnz - old.nnz), "replaced": replaced,
                  "new_items": index.n_items - self.index_.n_items,
                  "skipped": int(np.count_nonzero(~user_known)),
                  "new_users": new_users, "folded_in": 0}
        self._set_training_data(index, R)
        if fold_in:
            counts["folded_in"] = self._fold_in(np.unique(np.searchsorted(index.users,
                                                                          ratings.users)))
        return counts

    def _add_users(self, ratings):
        """Add the users of ``ratings`` the index lacks, in every member: a
        zero row of the input layer's W (and the mean row of its U), the mean
        output column, kernel vector and bias of the known users; the index,
        the training matrix and seen_ get their columns (update then sets the
        training data). Returns how many."""
        users, known = ids_in_kind(self.index_.users, ratings, "user")
        fresh = np.unique(users[~known])
        if not fresh.size:
            return 0
        ids = np.union1d(self.index_.users, fresh)
        old = np.searchsorted(ids, self.index_.users)          # old user -> new position
        for m in self.members_:
            for name, axis in user_axes(m.params).items():
                a = np.moveaxis(m.params[name], axis, 0)
                grown = np.empty((ids.size,) + a.shape[1:], a.dtype)
                grown[:] = 0 if name == "W0" else a.mean(axis=0)
                grown[old] = a
                m.params[name] = np.ascontiguousarray(np.moveaxis(grown, 0, axis))
        self.params_ = self.members_[0].params
        R, seen = self.train_matrix_.tocoo(), self.seen_.tocoo()
        shape = (self.index_.n_items, ids.size)
        self.seen_ = sp.csr_matrix((seen.data, (seen.row, old[seen.col])), shape=shape)
        # the index and matrix only: update sets the training data (statistics,
        # caches) once, with the new ratings, before anything reads them
        self.index_ = Index(ids, self.index_.items)
        self.train_matrix_ = sp.csr_matrix((R.data, (R.row, old[R.col])), shape=shape)
        return int(fresh.size)

    def _fold_in(self, users):
        """Fit the output-layer parameters of the users at positions
        ``users`` to all their training ratings (foldin.fit_user), in every
        member; returns how many."""
        R = self.train_matrix_.tocsc()
        lambdas = float(self.config_.lambda_2), float(self.config_.lambda_s)
        for m, (H, _, _) in zip(self.members_, self._member_factors()):
            last = layer_count(m.params) - 1
            W, U, V, b = (m.params[f"{k}{last}"] for k in "WUVb")
            for j in users:
                rows = R.indices[R.indptr[j]:R.indptr[j + 1]]
                if not rows.size:
                    continue
                r = self.scale_.to_model(R.data[R.indptr[j]:R.indptr[j + 1]])
                W[:, j], V[j], b[j] = foldin.fit_user(H[rows], r, U, W[:, j], V[j], b[j],
                                                      *lambdas)
        self._factors, self._space = None, None
        return int(np.count_nonzero(np.diff(R.indptr)[users]))

    # ------------------------------------------------------------ model files
    def save(self, path):
        """Write the fitted model to ``path`` (npz, atomically: a failure
        leaves an existing file untouched)."""
        self._check_fitted()
        others = self.members_[1:]
        arrays = {**pack_params("param/", self.params_),
                  **{k: v for j, m in enumerate(others, 1)
                     for k, v in pack_params(f"member{j}/", m.params).items()},
                  **pack_ids("index/users", self.index_.users),
                  **pack_ids("index/items", self.index_.items),
                  **pack_matrix("train/", self.train_matrix_),
                  **pack_pattern("seen/", self.seen_)}
        meta = {"config": self.config_.as_dict(), "preset": self.preset,
                "params": list(self.params_),
                "stage": self.stage_, "best_epoch": self.best_epoch_,
                "blend": self.blend_, "summary": self.summary_, "unseen": self.unseen_,
                "history": [asdict(r) for r in self.history_],
                "members": [{"seed": m.seed, "params": list(m.params), "stage": m.stage,
                             "best_epoch": m.best_epoch} for m in others]}
        if self.picks_ is not None:
            picks, meta["picks"] = pack_picks("picks/", self.picks_)
            arrays.update(picks)
        if getattr(self, "selection_history_", None):     # plot shows the choosing curves
            meta["selection_history"] = [asdict(r) for r in self.selection_history_]
        modelfile.write(path, modelfile.MODEL, arrays, meta)

    @classmethod
    def _unfitted(cls, config, preset):
        """An instance for load() to fill, for a model of ``config`` and
        ``preset`` (GLocalK makes one with those hyper-parameters)."""
        model = cls()
        model.preset = preset
        return model

    @classmethod
    def load(cls, path):
        """A fitted model of this class from a file written by save(); ModelFileError
        (a ValueError) with a one-line message if the file is unusable.
        Every array and metadata field is checked (schema.py) before any
        kernel can see it."""
        f = modelfile.read(path, modelfile.MODEL)
        config = read_config(f)
        preset = f.meta.get("preset")
        if preset is not None and (not isinstance(preset, str)
                                   or preset not in PRESETS):
            raise f.error("metadata field 'preset' is not a preset name")
        model = cls._unfitted(config, preset)
        model.config_, model.source_ = config, str(path)
        index = Index(unpack_ids(f, "index/users"), unpack_ids(f, "index/items"))
        shape = (index.n_items, index.n_users)
        model._set_training_data(index, unpack_matrix(f, "train/", shape))
        model.seen_ = unpack_pattern(f, "seen/", shape)
        model.history_ = read_history(f, config)
        model.members_ = read_members(f, config, shape)
        first = model.members_[0]
        first.history = model.history_
        model.params_, model.stage_, model.best_epoch_ = first.params, first.stage, first.best_epoch
        model.selection_history_ = read_history(f, config, "selection_history") \
            if "selection_history" in f.meta else None     # a refit's choosing fit
        model.summary_ = field(f, "summary", lambda v: isinstance(v, dict), "an object")
        problem = summary_problem(model.summary_)
        if problem:                                     # info and plot would stumble on it
            raise f.error(f"metadata {problem}")
        model.blend_ = field(f, "blend", is_weight, "null or a number in [0, 1]") \
            if "blend" in f.meta else None                # format 2: no blend
        counts = "unseen" if "unseen" in f.meta else "dropped"    # format 2 before 0.2: dropped
        model.unseen_ = field(f, counts, lambda v: isinstance(v, dict) and all(
            isinstance(n, int) for n in v.values()), "a map of set names to counts")
        model.picks_ = unpack_picks(f, "picks/", index.n_items)     # None before format 4
        model.format_version_ = int(f["format_version"])
        f.check_all_read()
        return model

    def info(self):
        """What the model holds, as a JSON-able dict: its file and format
        version (when loaded), preset and settings, the data it was fitted
        on, its network (stage, epoch, members, blend weight, parameter
        count), how the epoch was chosen and the scores fit reported (what
        scored val in words: val_model), and how recommend ranks (the
        default order, the pick model's method, penalty, mix and weights).
        Older files hold fewer scores, and fields they lack are None or
        empty."""
        self._check_fitted()
        R = self.train_matrix_
        s = self.summary_
        return {
            "file": getattr(self, "source_", None),
            "format_version": getattr(self, "format_version_", modelfile.FORMAT_VERSION),
            "preset": self.preset, "settings": self.config_.as_dict(),
            "data": {"items": R.shape[0], "users": R.shape[1], "training_ratings": int(R.nnz),
                     "other_ratings_seen": int(self.seen_.nnz),
                     "rating_range": list(self.rating_range_)},
            "network": {"stage": self.stage_, "best_epoch": self.best_epoch_,
                        "members": len(self.members_), "blend": self.blend_,
                        "parameters": int(sum(np.size(v) for v in self.params_.values()))},
            "protocol": s.get("protocol"), "epochs_run": s.get("epochs_run"),
            "scores": {name: s[name] for name in ("val", "test") if name in s},
            "val_model": s.get("val_model"), "baseline": s.get("baseline", {}),
            "ranking": {"default": self._rank("auto"),
                        **({} if self.picks_ is None else {
                            "pick_model": self.picks_.method, "penalty": self.picks_.penalty,
                            "mix": self.picks_.mix, "weights": int(self.picks_.weights.nnz)})},
        }


def as_ratings(ratings, what):
    """Ratings as they are, None as None, any column mapping (a pandas or
    polars DataFrame, a dict of arrays) with columns user, item and rating
    through Ratings.from_columns, checked like a file."""
    if ratings is None or isinstance(ratings, Ratings):
        return ratings
    return Ratings.from_columns(ratings, source=f"the {what} table")
