"""GLocal-K as an estimator: hyper-parameters, and ``fit``, which trains the
members of a seed ensemble (with an engine: engines/), chooses their epochs,
refits, blends and writes the summary. What fit leaves is a Model
(model.py), which GLocalK is: predictions, lists, files and new ratings
need none of this module.
"""
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import metrics, picks
from . import train as training
from .baseline import blend_weight
from .checkpoint import Checkpoint, fingerprints
from .config import (DEFAULT_PATIENCE, DEFAULT_VALIDATION, DEVICES, MAX_ENSEMBLE, PRESETS,
                     PROTOCOLS, Config, check_positive_for_scale, check_problem, check_select,
                     default_selection, own_file_config)
from .data import DataError, Index, concatenate, random_split
from .engines import make_engine
from .fallback import NETWORK
from .model import Model, as_ratings
from .ranking import stored
from .records import Member, checkpoint_name, epoch_line, epochs_run
from .safeio import shorten
from .scoring import EvalSet, baseline_scores

REFIT_PROTOCOL = ("then refit on the training and validation ratings together for the "
                  "epochs chosen")
CONFIG_FIELDS = tuple(f.name for f in fields(Config))
# What set_params may change on a fitted model: everything else describes it
FIT_INDEPENDENT = ("device", "verbose")


class GLocalK(Model):
    """The GLocal-K recommender (Han et al., CIKM 2021).

    The hyper-parameters are Config's fields, each a parameter here: those
    given (not None) override ``config`` if one is given, else the preset's
    values (``preset``: 'ml-100k', 'ml-1m', 'douban'), else Config's
    defaults (ValueError naming a bad parameter and its value).
    ``device`` ('cpu', 'cuda' or 'dask') chooses the engine that trains;
    predictions, lists and fold-in are computed on the CPU whatever it is
    (model.py, with inference.py's NumPy operations). ``ensemble`` = k > 1
    trains k models with seeds seed, seed + 1, ... on the same data and
    predicts with the mean of their outputs (a seed ensemble). ``verbose`` prints a line per epoch
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
        says so in words. The pick model of recommend's default order
        (picks_, picks.py) is fitted on the training pattern, its penalty
        chosen on held-out picks, and its mix with the predicted rating
        (picks.MIXES) on the validation ratings' top-10 lists (NDCG, a
        rating from metrics.RELEVANT_FROM up a hit; picks.MIX without
        validation ratings); a refit fits it again on every rating's
        pattern with the same penalty and mix. Every rating given to fit
        counts as seen: recommend leaves it out. ``callback(record, state)``
        runs after every epoch. With ``checkpoint_dir`` every epoch ends with an atomic write
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
        check_positive_for_scale(train.values, self.config.scale, train.source)
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
        # recommend's other half, fitted on the choosing fit's pattern, its mix with
        # the predicted rating chosen on the validation ratings' lists
        self.picks_ = picks.fit(self.train_matrix_, seed=config.seed)
        if "val" in first.evals:
            self.picks_.mix = self._pick_mix(first.evals["val"])
        # The model as it predicts (the members' mean, the blend) scores val before a
        # refit, which trains on val, replaces it: the same scores with a refit or without
        val_scores = self._score({"val": first.evals["val"]}) if "val" in first.evals else {}
        final = first
        if refit:
            both = concatenate(train, val)
            configs = [replace(c, epochs_pretrain=epochs_run(m.history, "pretrain"),
                               epochs_finetune=m.best_epoch or 0, patience=0)
                       for c, m in zip(configs, first.members)]
            final = self._train(both, {"test": test}, index, configs, "last", callback,
                                checkpoint_dir, resume, "refit")
        self._set_fitted(final)
        if refit:               # the chosen penalty and mix, on every rating's pattern
            self.picks_ = replace(picks.fit(self.train_matrix_, self.picks_.penalty),
                                  mix=self.picks_.mix)
        self.unseen_ = {name: e.unseen for phase in (first, final)    # val from the first
                        for name, e in phase.evals.items()}
        self.seen_ = _seen_pattern(self.index_, self.train_matrix_, train, val, test)
        chosen = first.members[0]
        self.summary_ = {"select": select,
                         "protocol": PROTOCOLS[select] + (f", {REFIT_PROTOCOL}" if refit else ""),
                         "best_epoch": chosen.best_epoch,
                         "stopped_early": training.stopped_early(chosen.history, config),
                         "epochs_run": {stage: epochs_run(chosen.history, stage)
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
        check_select(select, val, test)
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

    def _pick_mix(self, entries):
        """The mix of picks.MIXES whose 'picks+rating' lists, of the users
        with a liked rating in the EvalSet ``entries`` (from
        metrics.RELEVANT_FROM up), score the highest NDCG at picks.TOP
        against those ratings (ties to the smaller); picks.MIX if none."""
        liked = (entries.rows_known & entries.cols_known
                 & (self.scale_.to_model(entries.values) >= metrics.RELEVANT_FROM))
        users, starts = np.unique(entries.cols[liked], return_index=True)
        if not users.size:
            return picks.MIX
        relevant = np.split(entries.rows[liked], starts[1:])     # entries are user-ordered
        ndcg = []
        for mix in picks.MIXES:
            self.picks_.mix = mix
            lists, _ = self._top_items(self.index_.users[users], picks.TOP, self.train_matrix_,
                                       rank="picks+rating")
            ndcg.append(metrics.top_n([best for best, _ in lists], relevant,
                                      picks.TOP)[f"ndcg@{picks.TOP}"])
        return picks.MIXES[int(np.argmax(ndcg))]

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
        baseline = {name: baseline_scores(self.baseline_, entries, self.scale_)
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

        state = training.fit(R, config, evals=evals, callback=on_epoch, state=state,
                             engine=engine, known=(self.scale_, self._fallback))
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


    def _set_training_data(self, index, R):
        super()._set_training_data(index, R)
        self._engine = None                  # built for the old matrix

    def _model_engine(self):
        """The engine for the training matrix in model units (scale_), built
        on first use: training's (inference needs none, _member_factors)."""
        if self._engine is None:
            self._engine = make_engine(self.scale_.matrix_to_model(self.train_matrix_),
                                       self.config_, self.device)
        return self._engine


    @classmethod
    def _unfitted(cls, config, preset):
        return cls(config, preset=preset)

    @classmethod
    def load(cls, path):
        """A fitted GLocalK from a file written by save() (Model.load), its
        ``ensemble`` the file's member count."""
        model = super().load(path)
        model.ensemble = len(model.members_)
        return model


@dataclass
class _Phase:
    """One fit of every member: the members, the eval sets they were scored
    on, and the baseline predictor's scores on those."""
    members: list
    evals: dict
    baseline: dict


def _seen_pattern(index, R, *ratings):
    """The items x users pattern (CSR, bool) of the ratings given to fit that
    the training matrix ``R`` does not hold, where both ids are in the
    index: recommend leaves them out with R's own."""
    given = [r for r in ratings if r is not None]
    M = stored(index.matrix(concatenate(*given))[0]) if given else sp.csr_matrix(R.shape)
    return (M > stored(R)).tocsr()          # given, and not in R (a rating of 0 is one)



def _same(a, b):
    """Whether two parameter values are equal (1 and 1.0 are; nan is nan)."""
    try:
        return a == b or (a != a and b != b)
    except (TypeError, ValueError):
        return False
