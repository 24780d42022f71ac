"""GLocal-K as an estimator: ratings with user and item ids in, predictions,
recommendations, model files and resumable training out.

The network is an item-based autoencoder: the prediction for item i is
computed from row i of the TRAINING matrix R (items x users), so a fitted
model keeps R, and a model file stores it next to the parameters.
"""
import hashlib
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from . import foldin, inference, metrics, modelfile
from . import train as training
from .engines import DEVICES, make_engine
from .data import (DataError, DataWarning, Index, Ratings, _positions, as_ids, concatenate,
                   ids_in_kind, random_split, subset, table_columns)
from .baseline import Baseline, blend_weight
from .fallback import NETWORK, Fallback
from .scale import RatingScale
from .safeio import OutputError, check_target, physical_memory, shorten
from .schema import (field, is_fingerprint, is_weight, pack_ids, pack_matrix, pack_params,
                     pack_pattern, read_best, read_config, read_history, read_members,
                     unpack_ids, unpack_matrix, unpack_params, unpack_pattern)
from .params import layer_count, user_axes
from .config import (DEFAULT_PATIENCE, DEFAULT_VALIDATION, PRESETS, PROTOCOLS, SELECTIONS,
                     Config, check_problem, default_selection, own_file_config)
from .records import Member, TrainState, epoch_line, summary_problem
from .train import EvalSet


SCORE_BLOCK_BYTES = 2**26     # scores of m items x a block of users computed at once
USER_BLOCK = 64               # users per block of scores (see _user_block)
PAIR_BLOCK = 8192             # (item, user) pairs whose factors are gathered at once
# The most members a seed ensemble may have (each is a whole model in memory)
MAX_ENSEMBLE = 1000
REFIT_PROTOCOL = ("then refit on the training and validation ratings together for the "
                  "epochs chosen")
CONFIG_FIELDS = tuple(f.name for f in fields(Config))
# What set_params may change on a fitted model: everything else describes it
FIT_INDEPENDENT = ("device", "verbose")


def checkpoint_name(k, phase=""):
    """The checkpoint file of the k-th member of a seed ensemble, in the
    first fit or (``phase`` 'refit') the refit."""
    stem = "-".join(["checkpoint"] + ([phase] if phase else []) + ([str(k)] if k else []))
    return f"{stem}.npz"


class GLocalK:
    """The GLocal-K recommender (Han et al., CIKM 2021).

    The hyper-parameters are Config's fields, each a parameter here: those
    given (not None) override ``config`` if one is given, else the preset's
    values (``preset``: 'ml-100k', 'ml-1m', 'douban'), else Config's
    defaults (ValueError naming a bad parameter and its value).
    ``device`` ('cpu' or 'cuda') chooses the engine that trains and predicts;
    a loaded model predicts on the CPU. ``ensemble`` = k > 1 trains k models
    with seeds seed, seed + 1, ... on the same data and predicts with the mean
    of their outputs (a seed ensemble). ``verbose`` prints a line per epoch
    (stage, epoch, train and held-out RMSE, seconds) as the CLI does.

    The defaults for a user's own data, which the CLI shares: without a
    ``preset``, fit holds out ``validation_fraction`` ('auto': 5%; 0: none)
    of the training ratings when it is given no validation set, keeps the
    fine-tuning epoch with the best validation RMSE, ends a stage after
    ``patience`` epochs without a better one (None: 5 when there is a
    validation set and no preset, else none), with ``blend`` ('auto': when
    there is a validation set and no preset) shrinks the network's
    predictions toward the baseline predictor's by the weight that fits the
    validation ratings best (blend_), and, with ``refit`` ('auto': when the
    validation set chose the epoch, no preset), trains again on the training
    and validation ratings together for the epoch counts chosen. With a
    preset, the paper's protocol and model: none of it unless asked.
    """

    def __init__(self, config=None, *, preset=None, n_hidden=None, n_layers=None,
                 kernel_dim=None, gk_size=None, lambda_2=None, lambda_s=None, dot_scale=None,
                 epochs_pretrain=None, epochs_finetune=None, iters_pretrain=None,
                 iters_finetune=None, dtype=None, seed=None, optimizer=None, scale=None,
                 patience=None, device="cpu", ensemble=1, verbose=False,
                 validation_fraction="auto", refit="auto", blend="auto"):
        # Each Config field is a parameter of its own (scikit-learn's rule):
        # None leaves it to ``config``, else to the preset, else to Config.
        given = {name: value for name, value in locals().items()
                 if name in CONFIG_FIELDS and value is not None}
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got "
                             f"{shorten(repr(preset))}")
        self.config = (Config.from_preset(preset, **given) if config is None
                       else replace(config, **given) if given else config)
        if not (validation_fraction == "auto" or (
                isinstance(validation_fraction, (int, float, np.floating))
                and not isinstance(validation_fraction, bool) and 0 <= validation_fraction < 1)):
            raise ValueError("validation_fraction must be 'auto' or a number in [0, 1), got "
                             f"{shorten(repr(validation_fraction))}")
        for name, value in (("refit", refit), ("blend", blend)):
            if not (value == "auto" or isinstance(value, (bool, np.bool_))):
                raise ValueError(f"{name} must be 'auto', True or False, got "
                                 f"{shorten(repr(value))}")
        self.preset = preset
        self.validation_fraction = validation_fraction
        self.refit = refit if refit == "auto" else bool(refit)
        self.blend = blend if blend == "auto" else bool(blend)
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if not isinstance(ensemble, (int, np.integer)) or isinstance(ensemble, bool) \
                or not 1 <= ensemble <= MAX_ENSEMBLE:
            raise ValueError(f"ensemble must be an integer in [1, {MAX_ENSEMBLE}], got "
                             f"{shorten(repr(ensemble))}")
        self.device = device
        self.ensemble = int(ensemble)
        self.verbose = bool(verbose)

    # ------------------------------------------------------------ parameters
    def get_params(self, deep=True):
        """The parameters, as scikit-learn names them (so that
        ``sklearn.base.clone`` and parameter searches work): every Config
        field, ``preset``, ``device``, ``ensemble``, ``verbose``,
        ``validation_fraction``, ``refit`` and ``blend``. ``deep`` is accepted and
        ignored (no parameter is itself an estimator)."""
        return {**self.config.as_dict(), "preset": self.preset, "device": self.device,
                "ensemble": self.ensemble, "verbose": self.verbose,
                "validation_fraction": self.validation_fraction, "refit": self.refit,
                "blend": self.blend}

    def set_params(self, **params):
        """Change parameters named as get_params names them; returns self.
        All or nothing: ValueError, with nothing changed, for an unknown
        name, a bad value, or, on a fitted model, a change of anything but
        FIT_INDEPENDENT (the model's file would describe another network
        than it holds, or settings it was not trained with): set those on an
        unfitted copy (sklearn.base.clone(model)) and fit it."""
        current = self.get_params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(f"unknown parameter(s) for GLocalK: {', '.join(unknown)}; "
                             f"known: {', '.join(current)}")
        if hasattr(self, "params_"):
            changed = [k for k, v in params.items()
                       if k not in FIT_INDEPENDENT and not _same(v, current[k])]
            if changed:
                k = changed[0]
                raise ValueError(f"{k}={shorten(repr(params[k]))}: this model was fitted with "
                                 f"{k}={current[k]!r}; set it on an unfitted copy "
                                 "(sklearn.base.clone(model).set_params(...)) and fit that")
        new = GLocalK(**{**current, **params})       # checks every value before any is set
        for name in ("config", "preset", "device", "ensemble", "verbose", "validation_fraction",
                     "refit", "blend"):
            setattr(self, name, getattr(new, name))
        return self

    def __repr__(self):
        """GLocalK(...) with the parameters that differ from the defaults."""
        defaults = GLocalK().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"GLocalK({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # ------------------------------------------------------------ training
    def fit(self, train, *, test=None, val=None, select=None, callback=None,
            checkpoint_dir=None, resume=False, index=None):
        """Train on the Ratings ``train``; score ``test`` and ``val`` after every epoch.

        Each may also be a table with columns user, item and rating (a
        pandas DataFrame, a dict of arrays; Ratings.from_columns for other
        column names), checked as a file is. Without ``val``, one is held
        out of ``train`` as validation_fraction says (validation_split).

        The index (``index``, else the ids of ``train``) fixes the matrix.
        Every test and val rating counts: those of users or items outside the
        index, or without training ratings, are predicted by the fallbacks
        (fallback.py) and counted ('fallback', 'unseen' in each set's scores;
        ``unseen_`` per set); 'network_rmse' scores the others alone, and
        summary_['baseline'] scores the baseline predictor (baseline.py) on
        the same ratings. ``select`` picks the fine-tuning epoch whose
        parameters are kept: 'val' (lowest validation RMSE; the default when
        there is a validation set), 'last' (the default otherwise) or 'test'
        (lowest test RMSE, the paper's protocol, optimistic); summary_
        ['protocol'] says which in words. With patience (see the class) a
        stage ends early when the validation RMSE stops improving (summary_
        ['stopped_early'] names the stages, ['epochs_run'] counts them). With
        refit, each model is then trained again, from its initialisation, on
        the training and validation ratings together for the epochs chosen
        (summary_['refit'], and selection_history_ the choosing fit's
        history); its test scores are the refit model's, its val scores the
        choosing fit's. Either way the val scores are those of the model as
        it predicts (an ensemble's mean, blended), and summary_['val_model']
        says so in words. Every rating given to fit counts as seen:
        recommend leaves it out. ``callback(record, state)`` runs after every
        epoch. With ``checkpoint_dir`` every epoch ends with an atomic write
        of ``checkpoint.npz`` there (``checkpoint-k.npz`` for the k-th member
        of a seed ensemble; ``checkpoint-refit[-k].npz`` in the refit);
        ``resume=True`` goes on from them when present, with a result
        identical to an uninterrupted run. A callback with a method
        ``start(config, k, members, phase)`` hears of each model before it
        trains (phase '' or 'refit'). The attributes params_, stage_,
        best_epoch_ and history_ are the first member's; summary_ scores the
        ensemble and lists its members.
        """
        train, test, val = (as_ratings(r, name) for r, name in
                            ((train, "training"), (test, "test"), (val, "validation")))
        if train is None or not len(train):
            raise DataError(f"{getattr(train, 'source', 'fit')}: no training ratings")
        if self.config.scale == "none" and train.values.min() <= 0:
            raise DataError(f"{train.source}: ratings must be > 0 with scale='none' (the "
                            "network reads 0 as a missing rating; the smallest is "
                            f"{train.values.min():g}): use scale='auto', which maps any "
                            "ratings onto 1-5")
        train, val = self.validation_split(train, val)
        config, select, refit, blend = self._fit_settings(val, select, test, len(train))
        self.config_ = replace(config, seed=self.config.seed)   # what the engine is built with
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        configs = [replace(config, seed=config.seed + k) for k in range(self.ensemble)]
        self.blend_ = None
        first = self._train(train, {"test": test, "val": val}, index, configs, select, callback,
                            checkpoint_dir, resume, "")
        self._set_fitted(first)
        if blend:             # fitted on the choosing fit's validation predictions
            self.blend_ = self._blend_weight(first.evals["val"])
        # The model as it predicts (the members' mean, the blend) scores val before a
        # refit, which trains on val, replaces it: the same scores with a refit or without
        val_scores = self._score({"val": first.evals["val"]}) if "val" in first.evals else {}
        final = first
        if refit:
            both = concatenate(train, val)
            configs = [replace(c, epochs_pretrain=_epochs_run(m.history, "pretrain"),
                               epochs_finetune=m.best_epoch or 0, patience=0)
                       for c, m in zip(configs, first.members)]
            final = self._train(both, {"test": test}, index, configs, "last", callback,
                                checkpoint_dir, resume, "refit")
        self._set_fitted(final)
        self.unseen_ = {name: e.unseen for phase in (first, final)    # val from the first
                        for name, e in phase.evals.items()}
        self.seen_ = _seen_pattern(self.index_, self.train_matrix_, train, val, test)
        chosen = first.members[0]
        self.summary_ = {"select": select,
                         "protocol": PROTOCOLS[select] + (f", {REFIT_PROTOCOL}" if refit else ""),
                         "best_epoch": chosen.best_epoch,
                         "stopped_early": training.stopped_early(chosen.history, config),
                         "epochs_run": {stage: _epochs_run(chosen.history, stage)
                                        for stage in ("pretrain", "finetune")},
                         # The held-out scores of the model as it predicts, evaluate's
                         # numbers bit for bit: the epochs were scored by the engine, whose
                         # sums run in another order, and a blend or an ensemble changes
                         # the predictions.
                         **val_scores,
                         **self._score({k: v for k, v in final.evals.items() if k == "test"})}
        if refit:
            self.summary_["refit"] = {"ratings": len(both),
                                      "epochs_pretrain": configs[0].epochs_pretrain,
                                      "epochs_finetune": configs[0].epochs_finetune}
        self.selection_history_ = chosen.history if refit else None   # the refit's is history_
        if "val" in self.summary_:
            self.summary_["val_model"] = (
                ("the members' mean" if self.ensemble > 1 else "the network")
                + (" blended with the baseline" if blend else " alone")
                + (", before the refit" if refit else ""))
        if blend:
            self.summary_["blend"] = self.blend_
        large = {k: getattr(config, k) for k in PRESETS["ml-1m"]
                 if getattr(config, k) != getattr(self.config, k)}
        if large:                         # own_file_config's choice for a large file
            self.summary_["large_file_settings"] = large
        if self.ensemble > 1:
            self.summary_["members"] = [
                {"seed": m.seed, "best_epoch": c.best_epoch,
                 **{k: v for k, v in c.metrics.items() if k == "val"},
                 **{k: v for k, v in m.metrics.items() if k != "val"}}
                for m, c in zip(final.members, first.members)]
        self.summary_["baseline"] = {**first.baseline, **final.baseline}
        report = self._model_engine().report()
        if report is not None:
            self.summary_["engine"] = report
        return self

    def validation_split(self, train, val=None):
        """(train, val): ``val`` if given, else the validation_fraction of
        ``train`` ('auto': 5% without a preset, none with one) held out at
        random (data.random_split, seed config.seed + 1), else None."""
        if val is not None:
            return train, val
        frac = self.validation_fraction
        if frac == "auto":
            frac = DEFAULT_VALIDATION if self.preset is None else 0.0
        if frac == 0:
            return train, None
        return random_split(train, frac, self.config.seed + 1, "a validation set")

    def _fit_settings(self, val, select, test, n_ratings):
        """(the Config to train with, the selection rule, whether to refit,
        whether to blend) with the 'auto' settings resolved (see the class)
        for ``n_ratings`` training ratings."""
        own = self.preset is None
        config = own_file_config(self.config, n_ratings) if own else self.config
        patience = config.patience
        if patience is None:
            patience = DEFAULT_PATIENCE if own and val is not None else 0
        select = select or default_selection(val, test)
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if {"test": test, "val": val}.get(select, True) is None:
            raise ValueError(f"select={select!r} needs a {select} set")
        refit = self.refit
        if refit == "auto":
            refit = own and select == "val"
        elif refit and select != "val":
            raise ValueError("refit=True chooses the epochs on the validation set: it needs "
                             f"select='val' and a validation set, got select={select!r}")
        blend = self.blend
        if blend == "auto":
            blend = own and val is not None
        elif blend and val is None:
            raise ValueError("blend=True fits its weight on the validation set: it needs one "
                             "(validation_fraction > 0 or val=...)")
        return replace(config, patience=patience), select, refit, blend

    def _blend_weight(self, entries):
        """baseline.blend_weight of the fitted network's predictions on the
        EvalSet ``entries`` that it scores."""
        kinds = self._fallback.kinds(entries.rows, entries.cols, entries.rows_known,
                                     entries.cols_known)
        net = kinds == NETWORK
        rows, cols = entries.rows[net], entries.cols[net]
        return blend_weight(self._network(rows, cols), self.baseline_.predict(rows, cols),
                            entries.values[net])

    def _train(self, train, sets, index, configs, select, callback, checkpoint_dir, resume,
               phase):
        """One fit of every member on ``train``: a _Phase (members, eval sets
        and the baseline's scores on them). ``configs`` are the members';
        ``phase`` names the checkpoints ('' or 'refit')."""
        index = index if index is not None else Index.from_ratings(train)
        R, lost = index.matrix(train)
        if lost:
            raise ValueError(f"{train.source}: {lost} training ratings have a user or item "
                             "outside the given index")
        evals = {name: EvalSet.of_ratings(ratings, index)
                 for name, ratings in sets.items() if ratings is not None}
        for name, entries in evals.items():
            if not len(entries):
                raise ValueError(f"{sets[name].source}: no {name} ratings")
        check_problem(configs[0], R, len(configs))
        checkpoints = [None] * len(configs)
        if checkpoint_dir is not None:
            digests = fingerprints(index, R, evals)
            checkpoints = [Checkpoint(Path(checkpoint_dir) / checkpoint_name(k, phase), c,
                                      digests, R.shape) for k, c in enumerate(configs)]
            for checkpoint in checkpoints:
                checkpoint.check_writable()
        # every resumed state is read and checked before any training time is spent
        states = [c.load() if resume else None for c in checkpoints]
        self._set_training_data(index, R)
        members = []
        for k, (config, checkpoint, state) in enumerate(zip(configs, checkpoints, states)):
            if hasattr(callback, "start"):       # e.g. the CLI's progress: a new model starts
                callback.start(config, k, len(configs), phase)
            members.append(self._fit_member(config, R, evals, select, callback, checkpoint,
                                            state))
        baseline = {name: training.baseline_scores(self.baseline_, entries, self.scale_)
                    for name, entries in evals.items()}
        return _Phase(members, evals, baseline)

    def _set_fitted(self, phase):
        """The fitted attributes from the final phase's members."""
        self.members_ = phase.members
        first = phase.members[0]
        self.params_, self.stage_ = first.params, first.stage
        self.best_epoch_, self.history_ = first.best_epoch, first.history

    def _fit_member(self, config, R, evals, select, callback, checkpoint, state):
        """Train the model of ``config`` from ``state`` (None: afresh; else
        ``checkpoint``'s) and keep the epoch ``select`` picks."""
        engine = self._model_engine()
        if state is not None:
            checkpoint.check_spread(engine.spread())

        def on_epoch(record, state):
            if self.verbose:
                print(("" if self.ensemble == 1 else f"seed {config.seed}  ")
                      + epoch_line(record, config.epochs(record.stage)), flush=True)
            if checkpoint is not None:
                checkpoint.save(state, engine.spread())
            if callback is not None:
                callback(record, state)

        state = training.fit(R, config, evals=evals, callback=on_epoch,
                             state=state, engine=engine)
        if "last" in state.best:
            best_epoch, params = training.selected(state, select)
            stage = "finetune"
            record = next(r for r in state.history
                          if r.stage == "finetune" and r.epoch == best_epoch)
        else:   # no fine-tuning epoch: the pre-trained network is the model
            best_epoch, params, stage = None, state.params, "pretrain"
            record = state.history[-1] if state.history else None
        return Member(config.seed, dict(params), stage, best_epoch, state.history,
                      {k: dict(v) for k, v in (record.metrics if record else {}).items()})

    def _score(self, evals):
        """train.held_out_scores of the (ensemble's) predictions on each
        EvalSet of ``evals``."""
        out = {}
        for name, entries in evals.items():
            pred, kinds = self._fallback.predict(entries.rows, entries.cols, self._network,
                                                 entries.rows_known, entries.cols_known)
            out[name] = training.held_out_scores(pred, kinds, entries, self.scale_)
        return out

    def _set_training_data(self, index, R):
        """The index, training matrix (the user's units), the rating scale the
        network works in and the statistics the fallbacks use."""
        self.index_, self.train_matrix_ = index, R
        self._engine, self._factors, self._space = None, None, None
        self.scale_ = RatingScale.of(R.data, self.config.scale)
        self.rating_range_ = (self.scale_.low, self.scale_.high)
        self._fallback = Fallback(R)
        self.baseline_ = Baseline(R)
        fb = self._fallback
        self.item_counts_, self.user_counts_ = fb.item_counts, fb.user_counts
        self.item_means_, self.global_mean_ = fb.item_means, fb.global_mean
        self.damped_item_means_ = fb.damped_item_means

    # ------------------------------------------------------------ prediction
    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise RuntimeError("this GLocalK is not fitted: call fit() or GLocalK.load() first")

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

    def _model_engine(self):
        """The engine for the training matrix in model units (scale_), built
        on first use: training's (inference needs none, _member_factors)."""
        if self._engine is None:
            self._engine = make_engine(self.scale_.matrix_to_model(self.train_matrix_),
                                       self.config_, self.device)
        return self._engine

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
        if _is_pandas(table):
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

    def predict_all(self, ranks=False):
        """The dense n_items x n_users matrix of predictions, clipped, as
        predict gives them (fallbacks included; equal to predict's to
        rounding: one GEMM per block of users instead of a dot per pair), for
        export; 8 * n_items * n_users bytes. With ``ranks``, also each
        item's rank (1 = best) in its user's column in recommend's order
        (unclipped score, ties by item order, rated items included)."""
        self._check_fitted()
        m, n = self.train_matrix_.shape
        need, have = 32 * m * n, physical_memory()   # outputs, ranks, sorting
        if have is not None and need > have:
            raise ValueError(f"the full {m} x {n} (items x users) prediction matrix needs about "
                             f"{need / 2**30:,.0f} GiB, more than this machine's "
                             f"{have / 2**30:,.0f} GiB of memory: predict pairs instead")
        raw = np.empty((m, n))
        block = self._user_block()                   # the blocks recommend scores in
        for first in range(0, n, block):
            raw[:, first:first + block] = self._user_scores(np.arange(first, min(first + block, n)))
        raw[:, self.user_counts_ == 0] = self.damped_item_means_[:, None]
        known = np.flatnonzero(self.user_counts_ > 0)
        pred = raw.copy()
        pred[:, known] = self._blended(raw[:, known], np.arange(m)[:, None], known[None, :])
        pred = metrics.clip(pred, *self.rating_range_)
        if not ranks:
            return pred
        order = np.lexsort((np.broadcast_to(np.arange(m)[:, None], (m, n)), -raw), axis=0)
        rank = np.empty((m, n), dtype=np.int64)
        np.put_along_axis(rank, order, np.arange(1, m + 1)[:, None], axis=0)
        return pred, rank

    def recommend(self, users, top=10, include_seen=False, items=None, filter_items=None):
        """The ``top`` items with the highest predicted ratings, best first by
        the network's unclipped output (items that all clip to the top rating
        keep their order), ties in item order, leaving out the items the user
        rated in any ratings given to fit or update (training, validation
        and test alike) unless ``include_seen``. A user without training
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
        With a blend (blend_) the order stays the network's own: the
        baseline's item offsets would favour popular items (docs/model.md
        §10), so scores need not descend strictly. Cost: one forward pass for all
        items, then per block of users one GEMM with the output layer and a
        partial sort, in SCORE_BLOCK_BYTES of scores at a time."""
        self._check_fitted()
        _check_positive_int(top, "top")
        ids = as_ids([users] if np.ndim(users) == 0 else users, "recommend", "user",
                     warn=False)
        # each distinct user once (a list may name one user many times)
        distinct, inverse = np.unique(ids, return_inverse=True)
        lists, unknown = self._top_items(distinct, int(top),
                                         None if include_seen else self._given(),
                                         self._allowed_items(items, filter_items))
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
        if _is_pandas(users):
            import pandas as pd
            return pd.DataFrame(out)
        return out

    def similar(self, item, top=10):
        """The ``top`` items most like the item ``item``, best first: a list
        of (item id, similarity). Similarity is the adjusted cosine (as in
        item-based collaborative filtering) of the two items' predicted
        ratings over all users, each user's centred on that user's mean over
        the items (the network's outputs before the baseline blend; an
        ensemble's members averaged): 1 for items the model expects the same
        users to like more, and less, than their usual.
        Cost: once per model m h^2 + h^3, then m h per query."""
        self._check_fitted()
        _check_positive_int(top, "top")
        pos, known = _positions(self.index_.items, as_ids([item], "similar", "item", warn=False))
        if not known[0]:
            raise ValueError(f"item {shorten(repr(np.asarray(item).tolist()))} is not in the "
                             "model")
        sims = np.mean([Z @ Z[pos[0]] for Z in self._item_space()], axis=0)
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

    def _top_items(self, ids, top, exclude, allowed=None):
        """Per user id: (item positions best first, their unclipped scores),
        and whether the user had no training ratings. ``exclude``: an items x
        users pattern whose items a user's list leaves out, or None;
        ``allowed``: a mask of the items any list may hold, or None."""
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
            first = b * block
            S = self._user_scores(np.arange(first, min(first + block, self.user_counts_.size)))
            for j in np.flatnonzero(known & (u // block == b)):
                lists[j] = _best(unseen(S[:, u[j] - first], j), top)
        return lists, ~known

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

    def evaluate(self, test, k=10, relevant_from=4.0):
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
        - precision@k, recall@k and ndcg@k of the top-k lists (recommend) over
          every item each test user of the index did not rate in training, a
          test item of the index counting as relevant when its rating is at
          least ``relevant_from`` on the 1-5 scale the model trains on
          (scale.py), as LensKit and cornac report top-N accuracy
          (metrics.top_n)."""
        self._check_fitted()
        _check_positive_int(k, "k")
        test = as_ratings(test, "test")
        entries = EvalSet.of_ratings(test, self.index_)
        if not len(entries):
            raise ValueError(f"{test.source}: no ratings")
        by_user = self.index_.matrix(test)[0].tocsc()
        users = np.flatnonzero(np.diff(by_user.indptr))
        lists, _ = self._top_items(self.index_.users[users], int(k), self.train_matrix_)
        relevant = []
        for u in users:
            rows = by_user.indices[by_user.indptr[u]:by_user.indptr[u + 1]]
            ratings = by_user.data[by_user.indptr[u]:by_user.indptr[u + 1]]
            relevant.append(rows[self.scale_.to_model(ratings) >= relevant_from])
        return {**self._score({"test": entries})["test"],
                "baseline": training.baseline_scores(self.baseline_, entries, self.scale_),
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
        if getattr(self, "selection_history_", None):     # plot shows the choosing curves
            meta["selection_history"] = [asdict(r) for r in self.selection_history_]
        modelfile.write(path, modelfile.MODEL, arrays, meta)

    @classmethod
    def load(cls, path):
        """A fitted GLocalK from a file written by save(); ModelFileError
        (a ValueError) with a one-line message if the file is unusable.
        Every array and metadata field is checked (schema.py) before any
        kernel can see it."""
        f = modelfile.read(path, modelfile.MODEL)
        config = read_config(f)
        preset = f.meta.get("preset")
        if preset is not None and (not isinstance(preset, str)
                                   or preset not in PRESETS):
            raise f.error("metadata field 'preset' is not a preset name")
        model = cls(config, preset=preset)
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
        model.ensemble = len(model.members_)
        model.format_version_ = int(f["format_version"])
        f.check_all_read()
        return model

    def info(self):
        """What the model holds, as a JSON-able dict: its file and format
        version (when loaded), preset and settings, the data it was fitted
        on, its network (stage, epoch, members, blend weight, parameter
        count), how the epoch was chosen and the scores fit reported (what
        scored val in words: val_model). Older files hold fewer scores, and
        fields they lack are None or empty."""
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
        }


@dataclass
class _Phase:
    """One fit of every member: the members, the eval sets they were scored
    on, and the baseline predictor's scores on those."""
    members: list
    evals: dict
    baseline: dict


def _epochs_run(history, stage):
    return sum(r.stage == stage for r in history)


def _seen_pattern(index, R, *ratings):
    """The items x users pattern (CSR, bool) of the ratings given to fit that
    the training matrix ``R`` does not hold, where both ids are in the
    index: recommend leaves them out with R's own."""
    given = [r for r in ratings if r is not None]
    M = stored(index.matrix(concatenate(*given))[0]) if given else sp.csr_matrix(R.shape)
    return (M > stored(R)).tocsr()          # given, and not in R (a rating of 0 is one)


def stored(M):
    """The pattern of a sparse matrix's stored entries (bool CSR): a rating
    of 0 is stored, and is a rating."""
    M = sp.csr_matrix(M)
    return sp.csr_matrix((np.ones(M.nnz, dtype=bool), M.indices, M.indptr), shape=M.shape)


def _same(a, b):
    """Whether two parameter values are equal (1 and 1.0 are; nan is nan)."""
    try:
        return a == b or (a != a and b != b)
    except (TypeError, ValueError):
        return False


def _check_positive_int(value, name):
    """ValueError naming ``name`` unless ``value`` is an int >= 1 (not a bool)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _is_pandas(value):
    """Whether ``value`` is a pandas object (without importing pandas)."""
    return type(value).__module__.split(".")[0] == "pandas"


def as_ratings(ratings, what):
    """Ratings as they are, None as None, any column mapping (a pandas or
    polars DataFrame, a dict of arrays) with columns user, item and rating
    through Ratings.from_columns, checked like a file."""
    if ratings is None or isinstance(ratings, Ratings):
        return ratings
    return Ratings.from_columns(ratings, source=f"the {what} table")


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


# ---------------------------------------------------------------- checkpoints

def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        # string ids by their UTF-8 text and offsets, as a model file holds them
        parts = pack_ids("", a).values() if a.dtype == object else [a]
        for part in parts:
            part = np.ascontiguousarray(part)
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(part.tobytes())
    return h.hexdigest()


def fingerprints(index, R, evals):
    """sha256 digests of the training data (ids and matrix) and of each
    EvalSet of ``evals``."""
    out = {"train": _digest(index.users, index.items, R.indptr, R.indices, R.data)}
    out.update({name: _digest(e.rows, e.cols, e.groups, e.values) for name, e in evals.items()})
    return out


class Checkpoint:
    """A TrainState on disk, tied to the config and data that produced it:
    ``shape`` is the training matrix's (n_items, n_users)."""

    def __init__(self, path, config, fingerprint, shape):
        self.path, self.config, self.fingerprint = Path(path), config, fingerprint
        self.shape = tuple(shape)
        self.spread = None          # the loaded checkpoint's (load, check_spread)

    def check_writable(self):
        """ValueError now, before any training, if the checkpoint could not
        be written after the first epoch; creates its folder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.path.parent}: cannot create the checkpoint folder: "
                              f"{e.strerror}") from None
        check_target(self.path)

    def save(self, state, spread=None):
        """Write ``state`` atomically: an interruption keeps the previous epoch's
        file. The Numba thread count and the engine's ``spread`` (Engine.spread)
        are recorded: the order of the sums depends on them."""
        arrays = pack_params("param/", state.params)
        best = {}
        for sel, pick in state.best.items():
            best[sel] = {"epoch": pick.epoch, "rmse": pick.rmse}
            if sel != "last":   # 'last' is the current parameters
                best[sel]["params"] = list(pick.params)
                arrays.update(pack_params(f"best/{sel}/", pick.params))
        meta = {"config": self.config.as_dict(), "fingerprint": self.fingerprint,
                "params": list(state.params), "best": best, "threads": numba.get_num_threads(),
                "history": [asdict(r) for r in state.history],
                **({"spread": spread} if spread else {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        modelfile.write(self.path, modelfile.CHECKPOINT, arrays, meta)

    def load(self):
        """The saved TrainState, or None (with a DataWarning) if there is no
        checkpoint yet. ValueError if it was made with another config or
        other data, or if any entry is malformed (schema.py); a DataWarning
        if it was written with another Numba thread count."""
        if not self.path.exists():
            warnings.warn(f"{self.path}: no checkpoint yet; starting afresh", DataWarning)
            return None
        f = modelfile.read(self.path, modelfile.CHECKPOINT)
        saved = read_config(f).as_dict()
        diffs = [f"{k}={v!r} (checkpoint: {saved[k]!r})"
                 for k, v in self.config.as_dict().items() if saved[k] != v]
        if diffs:
            raise ValueError(f"{self.path}: cannot resume, the config differs: {', '.join(diffs)}")
        theirs, ours = field(f, "fingerprint", is_fingerprint, "a map of digests"), self.fingerprint
        for name in [*ours, *(n for n in theirs if n not in ours)]:   # 'train' first
            what = "training data" if name == "train" else f"{name} set"
            if name not in ours or name not in theirs:
                made = "with" if name in theirs else "without"
                raise ValueError(f"{self.path}: cannot resume, the checkpoint was made {made} "
                                 f"a {what}")
            if theirs[name] != ours[name]:
                raise ValueError(f"{self.path}: cannot resume, the {what} differs from "
                                 "the checkpoint's")
        history = read_history(f, self.config)
        fine_done = sum(r.stage == "finetune" for r in history)
        params = unpack_params(f, "param/", f.field("params"), self.config, self.shape,
                               "finetune" if fine_done else "pretrain")
        best = read_best(f, self.config, self.shape)
        fine_over = self.config.epochs_finetune > 0 and training.stage_over(
            history, "finetune", self.config)
        if ("last" in best) != fine_over \
                or any(pick.epoch > fine_done for pick in best.values()):
            raise f.error("metadata field 'best' does not match the history")
        if "last" in best:
            best["last"].params = params
        threads = f.meta.get("threads")
        if isinstance(threads, int) and threads != numba.get_num_threads():
            warnings.warn(f"{self.path}: written with {threads} Numba threads, resumed with "
                          f"{numba.get_num_threads()} (--threads): parallel sums round "
                          "differently, so the result will differ slightly from an "
                          "uninterrupted run", DataWarning)
        spread = f.meta.get("spread")
        self.spread = spread if isinstance(spread, str) else None
        f.check_all_read()
        return TrainState(params, history, best)

    def check_spread(self, spread):
        """A DataWarning if the loaded checkpoint was written on another
        spread of the sums than ``spread`` (Engine.spread)."""
        if spread != self.spread:
            warnings.warn(f"{self.path}: written on {self.spread or 'one process'}, resumed on "
                          f"{spread or 'one process'}: the sums are split by worker and "
                          "added in worker order, so the result will differ slightly from an "
                          "uninterrupted run", DataWarning)
