"""The estimator: ids in and out, fallbacks, epoch selection, model files,
atomic writes and bit-identical resumption, on a tiny float64 problem."""
import json
import subprocess
import sys
import os
import re
import stat
from dataclasses import replace

import numpy as np
import pytest

from glocalk_np import modelfile
from glocalk_np.baseline import blend_weight
from glocalk_np.console.process import Terminated
from glocalk_np.data import DataError, DataWarning, Index, Ratings, random_split
from glocalk_np.estimator import GLocalK, checkpoint_name
from glocalk_np.fallback import DAMPING
from glocalk_np.modelfile import ModelFileError
from glocalk_np.ranking import RANKS
from glocalk_np.config import Config

CONFIG = Config(n_hidden=8, kernel_dim=3, epochs_pretrain=2, epochs_finetune=2,
                iters_pretrain=3, iters_finetune=3, dtype="float64")
# On the data below this one's test RMSE is lowest at fine-tuning epoch 2 of 4
# and its val RMSE at epoch 4, so the three selection rules pick differently.
SELECT_CONFIG = replace(CONFIG, lambda_2=0.1, lambda_s=0.01, epochs_finetune=4)


def plain(config=CONFIG, **kwargs):
    """A GLocalK that fits as told: no validation split of its own, no blend
    and no refit (the defaults for a user's own data have tests of their own)."""
    return GLocalK(config, **{"validation_fraction": 0, "refit": False, "blend": False,
                              **kwargs})


def low_rank_ratings(seed=0, n_users=30, n_items=40, density=0.25, str_ids=False):
    """Integer ratings 1..5 from a rank-2 model; ids are not matrix positions."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    values = np.clip(np.round(3 + (P @ Q.T)[u, i]), 1, 5)
    users, items = (u + 100).astype(np.int64), (i + 500).astype(np.int64)
    if str_ids:
        users, items = np.char.add("u", users.astype(str)), np.char.add("i", items.astype(str))
    return Ratings(users, items, values, "mem")


def three_way(ratings):
    """(train, test, val): 20% test, then 20% of the rest for validation."""
    rest, test = random_split(ratings, 0.2, 0)
    train, val = random_split(rest, 0.2, 1)
    return train, test, val


@pytest.fixture(scope="module")
def data():
    return three_way(low_rank_ratings())


def same_scores(model_scores, epoch_scores):
    """A model's held-out scores (summary_, evaluate) against an epoch's
    record: the epochs are scored by the engine's kernels, the model by
    inference.py, two float64 computations summed in different orders, so
    they agree to rounding (on some CPUs to the last bit, on others not);
    counts exactly. Another epoch's parameters differ by far more."""
    assert model_scores.keys() == epoch_scores.keys()
    for k, v in epoch_scores.items():
        assert model_scores[k] == (v if isinstance(v, int) else pytest.approx(v, rel=1e-12)), k
    return True


@pytest.fixture(scope="module")
def fitted(data):
    train, test, _ = data
    return plain(CONFIG).fit(train, test=test)


def known_pairs(model, ratings):
    """The (users, items) of ``ratings`` whose user and item both were trained on."""
    users, items = set(model.index_.users.tolist()), set(model.index_.items.tolist())
    keep = np.array([u in users and i in items for u, i in zip(ratings.users, ratings.items)])
    return ratings.users[keep], ratings.items[keep]


def equal_fits(a, b):
    """Same parameters bit for bit, same per-epoch numbers, same selection."""
    assert list(a.params_) == list(b.params_)
    for k in a.params_:
        np.testing.assert_array_equal(a.params_[k], b.params_[k], err_msg=k)
    strip = lambda h: [(r.stage, r.epoch, r.train_rmse, r.evaluations, r.metrics) for r in h]
    assert strip(a.history_) == strip(b.history_)
    assert (a.stage_, a.best_epoch_, a.summary_) == (b.stage_, b.best_epoch_, b.summary_)


# ------------------------------------------------------------ construction and fit

def test_config_from_preset_and_validation():
    assert GLocalK(preset="ml-1m", n_hidden=8).config == replace(
        Config.from_preset("ml-1m"), n_hidden=8)
    assert GLocalK(CONFIG, preset="ml-1m").config is CONFIG
    with pytest.raises(ValueError, match="lambda_2.*-1"):
        GLocalK(lambda_2=-1.0)
    with pytest.raises(ValueError, match="preset"):
        GLocalK(preset="netflix")


def test_fit_builds_items_by_users_matrix_and_statistics(fitted, data):
    train = data[0]
    m = fitted
    R = m.train_matrix_
    assert R.shape == (m.index_.n_items, m.index_.n_users) and R.nnz == len(train)
    i = np.searchsorted(m.index_.items, train.items)
    u = np.searchsorted(m.index_.users, train.users)
    np.testing.assert_array_equal(R[i, u].A1, train.values)
    np.testing.assert_array_equal(m.item_counts_, np.bincount(i, minlength=R.shape[0]))
    np.testing.assert_array_equal(m.user_counts_, np.bincount(u, minlength=R.shape[1]))
    np.testing.assert_allclose(m.item_means_, np.bincount(i, train.values) / m.item_counts_)
    assert m.global_mean_ == pytest.approx(train.values.mean())
    damped = (np.bincount(i, train.values) + DAMPING * m.global_mean_) / (m.item_counts_ + DAMPING)
    np.testing.assert_allclose(m.damped_item_means_, damped)
    assert m.rating_range_ == (train.values.min(), train.values.max())
    assert m.stage_ == "finetune" and m.best_epoch_ == 2 and len(m.history_) == 4
    assert same_scores(m.summary_["test"], m.history_[-1].metrics["test"])
    assert {k: v for k, v in m.summary_.items() if k != "test"} == {
        "select": "last", "protocol": "last fine-tuning epoch", "best_epoch": 2,
        "stopped_early": [], "epochs_run": {"pretrain": 2, "finetune": 2},
        "baseline": {"test": m.evaluate(data[1])["baseline"]}}
    assert m.summary_["baseline"]["test"]["rmse"] < 2


def test_evaluate_reproduces_the_training_report_and_counts_every_rating(fitted, data):
    _, test, _ = data
    scores = fitted.evaluate(test)
    assert {k: v for k, v in scores.items() if k in fitted.summary_["test"]} == \
        fitted.summary_["test"]
    assert scores["baseline"] == fitted.summary_["baseline"]["test"]
    known = test.users[0]
    unseen = Ratings(np.array([999, known, 999]), np.array([500, 9999, 9999]),
                     np.array([3.0, 4.0, 5.0]), "extra")
    both = Ratings(np.r_[test.users, unseen.users], np.r_[test.items, unseen.items],
                   np.r_[test.values, unseen.values], "test+extra")
    scores = fitted.evaluate(both)
    before = fitted.unseen_["test"]
    assert scores["n"] == len(test) + 3 and scores["unseen"] == 3 + before
    assert scores["network_n"] == scores["n"] - scores["fallback"]
    refit = plain(CONFIG).fit(data[0], test=both)
    assert refit.unseen_ == {"test": scores["unseen"]}
    only = fitted.evaluate(unseen)        # no id known: all by the fallbacks, still scored
    assert only["n"] == only["fallback"] == 3 and only["network_n"] == 0
    assert np.isnan(only["network_rmse"])
    pred, kinds = fitted.predict(unseen.users, unseen.items)      # as predict has them
    assert kinds.tolist()[1:] == ["user_mean", "global_mean"]
    assert only["rmse"] == pytest.approx(np.sqrt(np.mean((pred - unseen.values) ** 2)))


def test_pretrain_only_model_is_the_pretrained_network(data):
    train, test, _ = data
    m = plain(replace(CONFIG, epochs_finetune=0)).fit(train, test=test, select="test")
    assert m.stage_ == "pretrain" and m.best_epoch_ is None and "C" not in m.params_
    assert m.summary_["test"] == {k: v for k, v in m.evaluate(test).items()
                                  if k in m.summary_["test"]}
    assert same_scores(m.summary_["test"], m.history_[-1].metrics["test"])


# ------------------------------------------------------------ epoch selection

@pytest.fixture(scope="module")
def selections(data):
    train, test, val = data
    return {s: plain(SELECT_CONFIG).fit(train, test=test, val=val, select=s)
            for s in ("test", "val", "last")}


def test_selection_rules_pick_their_epoch_and_its_parameters(selections, data):
    _, test, val = data
    fine = [r for r in selections["last"].history_ if r.stage == "finetune"]
    best = {s: 1 + int(np.argmin([r.metrics[s]["rmse"] for r in fine])) for s in ("test", "val")}
    best["last"] = len(fine)
    assert len(set(best.values())) == 2, "the data should make test and last disagree"
    for sel, m in selections.items():
        assert m.best_epoch_ == best[sel] and m.summary_["best_epoch"] == best[sel]
        at = fine[best[sel] - 1].metrics
        assert same_scores(m.summary_["test"], at["test"])
        assert same_scores(m.summary_["val"], at["val"])
        assert m.evaluate(test)["rmse"] == m.summary_["test"]["rmse"]
        assert m.evaluate(val)["rmse"] == m.summary_["val"]["rmse"]


@pytest.mark.parametrize("select, given, match", [
    ("test", {}, "select='test' needs a test set"),
    ("val", {"test": True}, "select='val' needs a val set"),
    ("best", {}, "select must be one of"),
])
def test_selection_errors_come_before_training(data, select, given, match):
    train, test, _ = data
    epochs = []
    with pytest.raises(ValueError, match=match):
        plain(CONFIG).fit(train, select=select, test=test if given else None,
                            callback=lambda record, state: epochs.append(record))
    assert epochs == []


# ------------------------------------------------------------ ids and fallbacks

@pytest.mark.parametrize("str_ids", [False, True])
def test_ids_of_either_kind_survive_save_and_load(tmp_path, str_ids):
    train, test, _ = three_way(low_rank_ratings(seed=1, str_ids=str_ids))
    m = plain(CONFIG).fit(train, test=test)
    m.save(tmp_path / "m.npz")
    loaded = GLocalK.load(tmp_path / "m.npz")
    kind = "O" if str_ids else "i"
    assert loaded.index_.users.dtype.kind == kind and loaded.index_.items.dtype.kind == kind
    np.testing.assert_array_equal(loaded.index_.users, m.index_.users)
    users, items = known_pairs(m, test)
    pred, fallback = loaded.predict(users, items)
    assert (fallback == "").all()
    np.testing.assert_array_equal(pred, m.predict(users, items)[0])
    recs, _ = loaded.recommend(train.users[0], top=3)
    assert all(isinstance(item, str if str_ids else int) for item, _ in recs)


def test_fallbacks_for_users_and_items_without_training_ratings(data):
    train, _, _ = data
    # An index with one more user and item than the training data has ratings for.
    extra = Ratings(np.array([7777]), np.array([8888]), np.array([1.0]), "extra")
    m = plain(CONFIG).fit(train, index=Index.from_ratings(train, extra))
    user, item = train.users[0], train.items[0]
    rated = train.values[train.items == item]
    item_mean = (rated.sum() + DAMPING * train.values.mean()) / (rated.size + DAMPING)
    users = np.array([user, 7777, 123456, user, user, 7777, 7777])
    items = np.array([item, item, item, 8888, 654321, 654321, 8888])
    pred, fallback = m.predict(users, items)
    # a user without ratings (7777) or unknown (123456): the damped item mean;
    # an item without ratings (8888) for a user with some: the network's baseline;
    # an unknown item (654321) for a user with ratings: the damped user mean
    assert fallback.tolist() == ["", "item_mean", "item_mean", "", "user_mean",
                                 "global_mean", "global_mean"]
    assert pred[1] == pred[2] == pytest.approx(item_mean)
    own = train.values[train.users == user]
    user_mean = (own.sum() + DAMPING * train.values.mean()) / (own.size + DAMPING)
    assert pred[4] == pytest.approx(np.clip(user_mean, *m.rating_range_))
    assert pred[5:].tolist() == pytest.approx([train.values.mean()] * 2)
    i = np.searchsorted(m.index_.items, [item, 8888])
    u = np.searchsorted(m.index_.users, [user, user])
    np.testing.assert_array_equal(pred[[0, 3]], m._network(i, u).clip(*m.rating_range_))
    low, high = m.rating_range_
    assert pred.dtype == np.float64 and ((pred >= low) & (pred <= high)).all()


def test_an_index_must_cover_the_training_ratings(data):
    train, test, _ = data
    with pytest.raises(ValueError, match="training ratings have a user or item outside"):
        plain(CONFIG).fit(train, index=Index.from_ratings(test))


def test_predict_all_is_predict_at_every_pair(fitted, data):
    full, rank = fitted.predict_all(ranks=True)
    assert full.shape == rank.shape == fitted.train_matrix_.shape
    users, items = known_pairs(fitted, data[1])
    pred, _ = fitted.predict(users, items)
    i = np.searchsorted(fitted.index_.items, items)
    u = np.searchsorted(fitted.index_.users, users)
    np.testing.assert_allclose(full[i, u], pred, rtol=1e-12)    # a GEMM, not a dot per pair
    assert (np.sort(rank, axis=0) == np.arange(1, rank.shape[0] + 1)[:, None]).all()
    np.testing.assert_array_equal(fitted.predict_all(), full)


def test_recommend_ranks_unseen_items_unless_asked(fitted, data):
    train, test = data[0], data[1]          # every rating given to fit counts as seen
    user = train.users[0]
    seen = set(train.items[train.users == user].tolist() + test.items[test.users == user].tolist())
    items = fitted.index_.items
    scores, _ = fitted.predict(np.full(items.size, user), items)
    ranked = [items[k].item() for k in np.argsort(-scores, kind="stable")]

    recs, warning = fitted.recommend(user, top=5, rank="rating")
    assert warning is None
    assert [item for item, _ in recs] == [k for k in ranked if k not in seen][:5]
    assert [s for _, s in recs] == sorted((s for _, s in recs), reverse=True)
    everything, _ = fitted.recommend(user, top=len(items), include_seen=True, rank="rating")
    assert [item for item, _ in everything] == ranked
    for rank in RANKS:
        listed = [item for item, _ in fitted.recommend(user, top=len(items), rank=rank)[0]]
        assert len(listed) == len(items) - len(seen) and not seen & set(listed)


def test_recommend_for_an_unknown_user_ranks_by_damped_item_mean_and_warns(fitted):
    recs, warning = fitted.recommend(424242, top=4)
    assert "424242" in warning and "damped mean" in warning
    means = fitted.damped_item_means_
    order = np.argsort(-means, kind="stable")[:4]
    assert recs == [(fitted.index_.items[k].item(), means[k]) for k in order]
    with pytest.raises(ValueError, match="top"):
        fitted.recommend(424242, top=0)


# ------------------------------------------------------------ model files

def test_save_load_round_trip_predicts_identically(tmp_path, fitted, data):
    path = tmp_path / "model.bin"   # no .npz suffix: must be written as named
    fitted.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
    loaded = GLocalK.load(path)
    equal_fits(loaded, fitted)
    assert loaded.config == loaded.config_ == fitted.config_ and loaded.unseen_ == fitted.unseen_
    assert fitted.config_ == replace(fitted.config, patience=0)     # what it trained with
    assert (loaded.seen_ != fitted.seen_).nnz == 0 and loaded.seen_.nnz > 0
    assert loaded.rating_range_ == fitted.rating_range_
    np.testing.assert_array_equal(loaded.item_means_, fitted.item_means_)
    assert (loaded.train_matrix_ != fitted.train_matrix_).nnz == 0
    users = np.r_[data[1].users, 999]
    items = np.r_[data[1].items, 500]
    for a, b in zip(loaded.predict(users, items), fitted.predict(users, items)):
        np.testing.assert_array_equal(a, b)
    assert loaded.evaluate(data[1]) == fitted.evaluate(data[1])
    assert loaded.recommend(data[0].users[3]) == fitted.recommend(data[0].users[3])


@pytest.mark.parametrize("failure", [KeyboardInterrupt, Terminated, OSError])
def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch, fitted, failure):
    path = tmp_path / "m.npz"
    fitted.save(path)
    before = path.read_bytes()

    def half_written(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise failure("interrupted")

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(failure):
        fitted.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_saved_files_get_normal_permissions_not_the_temp_files(tmp_path, fitted):
    path = tmp_path / "m.npz"
    umask = os.umask(0o022)
    try:
        fitted.save(path)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o640)
    fitted.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def rewrite(src, dst, drop=(), **changes):
    """Copy the npz ``src`` to ``dst`` without ``drop`` and with ``changes``."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    arrays.update(changes)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def flip_byte_in(path, array):
    """Corrupt one byte inside ``array``'s stored data (the zip CRC catches it)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(array.tobytes()[:64]) + 32
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "missing": (lambda good, bad: None, "cannot read: No such file or directory"),
    "truncated": (lambda good, bad: bad.write_bytes(good.read_bytes()[:good.stat().st_size // 2]),
                  "corrupt or truncated"),
    "random bytes": (lambda good, bad: bad.write_bytes(np.random.default_rng(0).bytes(4096)),
                     "not an npz archive"),
    "bad crc": (lambda good, bad: (bad.write_bytes(good.read_bytes()),
                                   flip_byte_in(bad, GLocalK.load(good).params_["W1"])),
                "Bad CRC"),
    "foreign npz": (lambda good, bad: np.savez(bad, weights=np.ones(3)), "without a 'kind'"),
    "newer version": (lambda good, bad: rewrite(
        good, bad, format_version=np.int64(modelfile.FORMAT_VERSION + 1)),
        f"format version {modelfile.FORMAT_VERSION + 1} is newer"),
    "missing entry": (lambda good, bad: rewrite(good, bad, drop=("param/W0",)),
                      "missing entry 'param/W0'"),
    "bad metadata": (lambda good, bad: rewrite(good, bad, meta=np.array("{not json")),
                     "metadata: not valid JSON"),
    "a checkpoint": (lambda good, bad: rewrite(good, bad, kind=np.array(modelfile.CHECKPOINT)),
                     "is a glocalk-np checkpoint, not a model"),
    "a directory": (lambda good, bad: bad.mkdir(), "is a folder"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_unusable_model_files_raise_one_line_errors(tmp_path, fitted, case):
    make, expected = CORRUPTIONS[case]
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    fitted.save(good)
    make(good, bad)
    with pytest.raises(ModelFileError) as e:
        GLocalK.load(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ") and expected in msg and "\n" not in msg


# ------------------------------------------------------------ checkpoints

class Interrupt:
    """A callback that presses Ctrl-C after ``after`` epochs and records the
    epochs it saw."""

    def __init__(self, after=None):
        self.after, self.seen = after, []

    def __call__(self, record, state):
        self.seen.append((record.stage, record.epoch))
        if len(self.seen) == self.after:
            raise KeyboardInterrupt


EPOCHS = [("pretrain", 1), ("pretrain", 2)] + [("finetune", e) for e in range(1, 5)]


def resume(tmp_path, data, selections, done):
    """Resume from the checkpoint in ``tmp_path``, ``done`` epochs in: only the
    remaining epochs run, and the result is bitwise the uninterrupted one."""
    train, test, val = data
    rest = Interrupt()
    resumed = plain(SELECT_CONFIG).fit(train, test=test, val=val, select="test",
                                         callback=rest, checkpoint_dir=tmp_path, resume=True)
    assert rest.seen == EPOCHS[done:]
    equal_fits(resumed, selections["test"])


# After 2: C is drawn on resumption; after 5: the test-selected epoch (2 of 4)
# lies before the interruption, so its parameters come from the checkpoint.
@pytest.mark.parametrize("after", [2, 3, 5])
def test_resumed_fit_is_identical_to_an_uninterrupted_one(tmp_path, data, selections, after):
    train, test, val = data
    first = Interrupt(after)
    with pytest.raises(KeyboardInterrupt):
        plain(SELECT_CONFIG).fit(train, test=test, val=val, select="test",
                                   callback=first, checkpoint_dir=tmp_path)
    assert first.seen == EPOCHS[:after]
    resume(tmp_path, data, selections, after)


def test_ctrl_c_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch,
                                                                  data, selections):
    train, test, val = data
    savez, calls = np.savez, []

    def interrupted_fourth(file, **arrays):
        calls.append(1)
        if len(calls) == 4:
            file.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt
        savez(file, **arrays)

    monkeypatch.setattr(np, "savez", interrupted_fourth)
    with pytest.raises(KeyboardInterrupt):
        plain(SELECT_CONFIG).fit(train, test=test, val=val, select="test",
                                   checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_name(0)]
    resume(tmp_path, data, selections, 3)


def test_resume_without_a_checkpoint_says_so_and_starts_afresh(tmp_path, data, fitted):
    train, test, _ = data
    with pytest.warns(DataWarning, match="no checkpoint yet; starting afresh"):
        m = plain(CONFIG).fit(train, test=test, checkpoint_dir=tmp_path / "new", resume=True)
    equal_fits(m, fitted)
    assert (tmp_path / "new" / checkpoint_name(0)).exists()


def test_resume_refuses_another_config_or_other_data(tmp_path, data):
    train, test, val = data
    plain(CONFIG).fit(train, test=test, checkpoint_dir=tmp_path)
    attempts = [
        (replace(CONFIG, lambda_2=3.0), train, test, "config differs: lambda_2=3.0 "
                                                     "(checkpoint: 20.0)"),
        (CONFIG, val, test, "training data differs"),
        (CONFIG, train, val, "test set differs"),
        (CONFIG, train, None, "made with a test set"),
    ]
    for config, train_set, test_set, match in attempts:
        with pytest.raises(ValueError, match=re.escape(match)):
            plain(config).fit(train_set, test=test_set, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        plain(CONFIG).fit(train, resume=True)
    (tmp_path / checkpoint_name(0)).write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="not an npz archive"):
        plain(CONFIG).fit(train, test=test, checkpoint_dir=tmp_path, resume=True)


# ------------------------------------------------------------ seed ensembles

def test_seed_ensemble_averages_its_members_and_survives_save(data, fitted, tmp_path):
    train, test, _ = data
    ens = plain(CONFIG, ensemble=2).fit(train, test=test)
    second = plain(replace(CONFIG, seed=CONFIG.seed + 1)).fit(train, test=test)
    users, items = known_pairs(ens, test)
    raw = lambda m: m._network(*_positions_of(m, users, items))
    np.testing.assert_allclose(raw(ens), (raw(fitted) + raw(second)) / 2, rtol=1e-12)
    assert [m["seed"] for m in ens.summary_["members"]] == [CONFIG.seed, CONFIG.seed + 1]
    scored = ens.evaluate(test)
    assert ens.summary_["test"]["rmse"] == pytest.approx(scored["rmse"], rel=1e-12)
    ens.save(tmp_path / "ens.npz")
    back = GLocalK.load(tmp_path / "ens.npz")
    assert back.ensemble == 2
    np.testing.assert_array_equal(back.predict(users, items)[0], ens.predict(users, items)[0])


def test_ensemble_must_be_a_positive_integer():
    with pytest.raises(ValueError, match=r"ensemble must be an integer in \[1, 1000\], got 0"):
        plain(CONFIG, ensemble=0)


def _positions_of(model, users, items):
    """(item positions, user positions) of known id pairs."""
    i = np.searchsorted(model.index_.items, items)
    u = np.searchsorted(model.index_.users, users)
    return i, u


def test_an_early_stopped_fit_resumes_to_the_same_end(tmp_path, data):
    """With patience, a fit interrupted in either stage and resumed stops
    where the uninterrupted one did; resuming a finished one runs nothing."""
    train, test, val = data
    config = replace(SELECT_CONFIG, epochs_pretrain=6, epochs_finetune=8, patience=1)
    whole = Interrupt()
    reference = plain(config).fit(train, test=test, val=val, callback=whole)
    assert reference.summary_["stopped_early"]
    for after in (1, len(whole.seen) - 1):
        folder = tmp_path / str(after)
        with pytest.raises(KeyboardInterrupt):
            plain(config).fit(train, test=test, val=val, callback=Interrupt(after),
                                checkpoint_dir=folder)
        rest = Interrupt()
        resumed = plain(config).fit(train, test=test, val=val, callback=rest,
                                      checkpoint_dir=folder, resume=True)
        assert rest.seen == whole.seen[after:]
        equal_fits(resumed, reference)
    again = Interrupt()
    plain(config).fit(train, test=test, val=val, callback=again, checkpoint_dir=folder,
                        resume=True)
    assert again.seen == []


# ------------------------------------------------------------ conventions

def test_scikit_learn_parameter_conventions():
    m = GLocalK(preset="ml-1m", n_hidden=8, device="cpu")
    params = m.get_params()
    assert params["lambda_2"] == 70.0 and params["n_hidden"] == 8 and params["ensemble"] == 1
    assert GLocalK(**params).config == m.config          # what sklearn.base.clone does
    assert repr(GLocalK()) == "GLocalK()"
    assert repr(GLocalK(n_hidden=8, ensemble=2)) == "GLocalK(n_hidden=8, ensemble=2)"
    assert m.set_params(lambda_2=3.0, ensemble=2) is m
    assert (m.config.lambda_2, m.config.n_hidden, m.ensemble) == (3.0, 8, 2)
    with pytest.raises(ValueError, match="unknown parameter.*: foo"):
        m.set_params(foo=1)
    with pytest.raises(ValueError, match="n_hidden must be a positive integer, got -1"):
        m.set_params(n_hidden=-1)
    assert m.config.n_hidden == 8                          # a refused change changes nothing


def test_sklearn_clone_copies_the_parameters_not_the_fit(fitted):
    base = pytest.importorskip("sklearn.base")
    copy = base.clone(fitted)
    assert copy.get_params() == fitted.get_params() and not hasattr(copy, "params_")


def test_package_level_names():
    import glocalk_np
    assert glocalk_np.GLocalK is GLocalK
    assert glocalk_np.__version__ not in ("", None)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        glocalk_np.Nope


def test_recommend_for_many_users_gives_each_single_user_list(fitted, data):
    users = np.r_[np.unique(data[0].users), 424242]           # every user, and an unknown one
    for top, include_seen in ((5, False), (40, False), (3, True)):
        many = fitted.recommend(users, top=top, include_seen=include_seen)
        assert set(many) == {"user", "rank", "item", "score", "fallback"}
        for user in users:
            single, warning = fitted.recommend(user, top=top, include_seen=include_seen)
            mine = many["user"] == user
            assert list(zip(many["item"][mine].tolist(), many["score"][mine].tolist())) == single
            assert many["rank"][mine].tolist() == list(range(1, len(single) + 1))
            assert (many["fallback"][mine] == (warning is not None)).all()
    assert len(fitted.recommend([], top=3)["item"]) == 0


def test_top_items_break_ties_by_item_order():
    from glocalk_np.ranking import _best
    scores = np.array([1.0, 3.0, 2.0, 3.0, -np.inf, 3.0, 0.5])
    best, values = _best(scores.copy(), 2)
    assert best.tolist() == [1, 3] and values.tolist() == [3.0, 3.0]
    assert _best(scores.copy(), 10)[0].tolist() == [1, 3, 5, 2, 0, 6]    # the -inf one never
    assert _best(np.full(3, -np.inf), 2)[0].size == 0


def test_verbose_prints_a_line_per_epoch(data, capsys):
    train, test, _ = data
    plain(CONFIG, verbose=True).fit(train, test=test)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["pretrain", "1/2"], ["pretrain", "2/2"],
                                                    ["finetune", "1/2"], ["finetune", "2/2"]]
    assert all("train RMSE" in line and "test RMSE" in line for line in lines)
    plain(CONFIG).fit(train, test=test)
    assert capsys.readouterr().out == ""


def test_evaluate_scores_top_n_lists_over_unrated_items(data):
    train, test, _ = data
    fitted = plain(CONFIG).fit(train)     # fit never saw test: recommend leaves out train only
    scores = fitted.evaluate(test, k=5)
    recs = fitted.recommend(np.unique(test.users), top=5)
    hits, counted = [], 0
    scale = fitted.scale_
    for user in np.unique(test.users):
        mine = test.users == user
        rel = set(test.items[mine & (scale.to_model(test.values) >= 4)].tolist())
        if rel and user in set(fitted.index_.users.tolist()):
            listed = recs["item"][recs["user"] == user].tolist()
            hits.append(len(rel & set(listed)) / 5)
            counted += 1
    assert counted > 0 and scores["precision@5"] == pytest.approx(np.mean(hits))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        fitted.evaluate(test, k=0)


# ------------------------------------------------------------ new ratings

def _split_off_item(train):
    """(rest, first, second): the ratings of the most rated item split off in
    two halves, the rest without that item."""
    ids, counts = np.unique(train.items, return_counts=True)
    off = train.items == ids[counts.argmax()]
    held = np.flatnonzero(off)
    half = held.size // 2
    parts = [Ratings(train.users[k], train.items[k], train.values[k], "held")
             for k in (held[:half], held[half:])]
    return Ratings(train.users[~off], train.items[~off], train.values[~off], "rest"), *parts


def test_update_with_a_new_items_ratings_moves_its_predictions_toward_the_truth(tmp_path, data):
    rest, first, second = _split_off_item(data[0])
    m = plain(CONFIG).fit(rest, test=data[1])
    before, kind = m.predict(second.users, second.items)
    assert set(kind.tolist()) == {"user_mean"}                      # an item it never saw
    params_before = {k: v.copy() for k, v in m.params_.items()}
    counts = m.update(first)
    assert counts == {"added": len(first), "replaced": 0, "new_items": 1, "skipped": 0,
                      "new_users": 0, "folded_in": 0}
    after, kind = m.predict(second.users, second.items)
    assert set(kind.tolist()) == {""}                                # the network reads its row
    rmse = lambda p: np.sqrt(np.mean((p - second.values) ** 2))
    assert rmse(after) < rmse(before)
    pos = np.searchsorted(m.index_.items, first.items[0])
    for k, v in params_before.items():                             # weights as trained
        if k == "C":
            assert (m.params_["C"][pos] == 0).all()
            np.testing.assert_array_equal(np.delete(m.params_["C"], pos, axis=0), v)
        else:
            np.testing.assert_array_equal(m.params_[k], v)
    m.save(tmp_path / "updated.npz")
    loaded = GLocalK.load(tmp_path / "updated.npz")
    np.testing.assert_array_equal(loaded.predict(second.users, second.items)[0], after)


def test_update_replaces_skips_unknown_users_and_refuses_other_ranges(fitted, data):
    from copy import deepcopy
    m = deepcopy(fitted)
    train = data[0]
    again = Ratings(train.users[:3], train.items[:3], np.array([5.0, 5.0, 5.0]), "again")
    stranger = Ratings(np.array([999999]), train.items[:1], np.array([3.0]), "stranger")
    with pytest.warns(DataWarning, match="1 ratings by users the model does not know"):
        counts = m.update(Ratings(np.r_[again.users, stranger.users],
                                  np.r_[again.items, stranger.items],
                                  np.r_[again.values, stranger.values], "mixed"))
    assert counts == {"added": 0, "replaced": 3, "new_items": 0, "skipped": 1, "new_users": 0,
                      "folded_in": 0}
    i, u, _ = m.index_.lookup(again)
    assert (m.train_matrix_[i, u].A1 == 5.0).all()
    too_high = Ratings(train.users[:1], train.items[:1], np.array([50.0]), "high")
    with pytest.raises(DataError, match=r"high: row 0: rating 50 is outside the model's training"):
        m.update(too_high)


# ------------------------------------------------------------ a user's own data: the defaults

def test_own_data_defaults_hold_out_choose_and_refit(data):
    """No preset: 5% held out (seed + 1), patience 5, select val, then the
    same model trained on train + val for the epochs chosen, which is what
    a fit on train + val with those epochs gives, bit for bit."""
    train, test, _ = data
    config = replace(CONFIG, epochs_finetune=4)
    m = GLocalK(config).fit(train, test=test)
    rest, val = random_split(train, 0.05, config.seed + 1)
    pre = sum(r.stage == "pretrain" for r in m.selection_history_)
    refit = m.summary_["refit"]
    assert (refit["ratings"], refit["epochs_pretrain"]) == (len(train), pre)
    assert refit["epochs_finetune"] == m.summary_["best_epoch"] and m.summary_["select"] == "val"
    assert m.config_.patience == 5 and m.summary_["val"]["n"] == len(val)
    chosen = plain(config, blend=True).fit(rest, val=val, test=test, select="val")
    assert chosen.best_epoch_ == refit["epochs_finetune"]
    assert m.blend_ == m.summary_["blend"] == chosen.blend_ and 0 <= m.blend_ <= 1
    both = Ratings(np.r_[rest.users, val.users], np.r_[rest.items, val.items],
                   np.r_[rest.values, val.values], "both")
    again = plain(replace(config, epochs_pretrain=pre, epochs_finetune=chosen.best_epoch_,
                          patience=0)).fit(both, test=test)
    for k in again.params_:
        np.testing.assert_array_equal(m.params_[k], again.params_[k], err_msg=k)
    again.blend_ = chosen.blend_                  # the refit predicts with the chosen blend
    assert m.summary_["test"] == {k: v for k, v in again.evaluate(test).items()
                                  if k in m.summary_["test"]}
    with_preset = GLocalK(config, preset="ml-100k").fit(train, test=test)
    assert "refit" not in with_preset.summary_ and with_preset.config_.patience == 0
    assert with_preset.blend_ is None and "blend" not in with_preset.summary_
    assert with_preset.summary_["select"] == "last" and "val" not in with_preset.unseen_


def test_refit_and_validation_settings_are_checked(data):
    train, test, val = data
    with pytest.raises(ValueError, match="validation_fraction must be 'auto' or a number"):
        GLocalK(CONFIG, validation_fraction=1.0)
    with pytest.raises(ValueError, match="refit must be 'auto', True or False"):
        GLocalK(CONFIG, refit="yes")
    with pytest.raises(ValueError, match="refit=True chooses the epochs on the validation set"):
        GLocalK(CONFIG, refit=True, validation_fraction=0).fit(train, test=test)
    with pytest.raises(ValueError, match="blend must be 'auto', True or False, got 0.5"):
        GLocalK(CONFIG, blend=0.5)
    with pytest.raises(ValueError, match="blend=True fits its weight on the validation set"):
        GLocalK(CONFIG, blend=True, refit=False, validation_fraction=0).fit(train, test=test)
    params = GLocalK(CONFIG, refit=False, validation_fraction=0.1, blend=False).get_params()
    assert (params["refit"], params["validation_fraction"], params["preset"], params["blend"]) \
        == (False, 0.1, None, False)


def test_recommend_leaves_out_every_rating_given_to_fit(data):
    train, test, val = data
    m = GLocalK(CONFIG, refit=False).fit(train, test=test, val=val)
    given = {(u, i) for r in (train, test, val) for u, i in zip(r.users.tolist(), r.items.tolist())}
    recs = m.recommend(m.index_.users, top=m.index_.n_items)
    listed = set(zip(recs["user"].tolist(), recs["item"].tolist()))
    assert listed and not listed & given
    assert len(listed) == m.index_.n_users * m.index_.n_items - len(
        {p for p in given if p[0] in set(m.index_.users.tolist())
         and p[1] in set(m.index_.items.tolist())})


def test_ties_at_the_top_of_the_scale_keep_the_network_s_order(data):
    """Predictions that all clip to 5 are ranked by the unclipped scores."""
    train = data[0]
    m = plain(CONFIG).fit(train)
    user = m.index_.users[0]
    raw = m._user_scores(np.array([0]))[:, 0]
    m.rating_range_ = (m.rating_range_[0], float(np.sort(raw)[-6]))    # the top 5 clip to it
    recs, _ = m.recommend(user, top=5, include_seen=True, rank="rating")
    assert [s for _, s in recs] == [m.rating_range_[1]] * 5
    assert [i for i, _ in recs] == [m.index_.items[k].item() for k in np.argsort(-raw)[:5]]


# ------------------------------------------------------------ the blend with the baseline

def test_blend_weight_is_the_least_squares_weight_clipped_to_0_1():
    rng = np.random.default_rng(0)
    base, pred = rng.normal(size=50), rng.normal(size=50)
    truth = base + 0.3 * (pred - base) + 0.1 * rng.normal(size=50)
    w = blend_weight(pred, base, truth)
    sse = lambda v: np.sum((base + v * (pred - base) - truth) ** 2)
    assert 0.2 < w < 0.4 and sse(w) <= min(sse(w - 1e-3), sse(w + 1e-3))
    assert blend_weight(pred, base, base - (pred - base)) == 0.0      # anti-correlated: 0
    assert blend_weight(pred, base, base + 3 * (pred - base)) == 1.0  # beyond: 1
    assert blend_weight(base, base, truth) == 1.0                     # nothing to weigh


def test_blend_predicts_the_baseline_plus_w_times_the_network_s_difference(tmp_path, data):
    """Own data with a validation set: blend_ is fitted on the validation
    ratings, and predict, recommend's scores, predict_all and a saved and
    loaded model all give b + w (network - b); recommend ranks by the
    network alone."""
    train, test, val = data
    m = GLocalK(CONFIG, refit=False).fit(train, test=test, val=val)
    w = m.blend_
    assert m.summary_["blend"] == w and 0 < w < 1
    users, items = known_pairs(m, test)
    i, u = np.searchsorted(m.index_.items, items), np.searchsorted(m.index_.users, users)
    blended, _ = m._predict_unclipped(users, items)
    m.blend_ = None
    raw, _ = m._predict_unclipped(users, items)
    on_val = m.predict(val.users, val.items)[0]
    m.blend_ = w
    b = m.baseline_.predict(i, u)
    np.testing.assert_allclose(blended, b + w * (raw - b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.predict_all()[i, u], m.predict(users, items)[0], atol=1e-9)
    recs = m.recommend(users[:5], top=5)
    np.testing.assert_allclose(recs["score"], m._predict_unclipped(recs["user"], recs["item"])[0],
                               atol=1e-9)
    m.blend_ = None                        # the lists keep the network's own order
    np.testing.assert_array_equal(recs["item"], m.recommend(users[:5], top=5)["item"])
    m.blend_ = w
    # the weight fits the validation ratings better than its neighbours
    rows = np.searchsorted(m.index_.items, val.items)
    cols = np.searchsorted(m.index_.users, val.users)
    bv = m.baseline_.predict(rows, cols)
    sse = lambda v: np.sum((bv + v * (on_val - bv) - val.values) ** 2)
    assert sse(w) <= min(sse(w - 0.01), sse(w + 0.01))
    m.save(tmp_path / "m.npz")
    loaded = GLocalK.load(tmp_path / "m.npz")
    assert loaded.blend_ == w
    np.testing.assert_array_equal(loaded.predict(users, items)[0], m.predict(users, items)[0])


@pytest.mark.parametrize("blend, expected", [(1.5, "'blend' is not null or a number in [0, 1]"),
                                             ("0.5", "'blend' is not null or a number in [0, 1]"),
                                             (None, None), ("absent", None)])
def test_a_model_file_s_blend_weight_is_checked(tmp_path, fitted, blend, expected):
    """A blend outside [0, 1] is refused; null, or no field (format 2
    files), is no blend."""
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    fitted.save(good)
    with np.load(good) as z:
        meta = json.loads(str(z["meta"]))
    meta.pop("blend") if blend == "absent" else meta.update(blend=blend)
    rewrite(good, bad, meta=np.array(json.dumps(meta)))
    if expected is None:
        assert GLocalK.load(bad).blend_ is None
    else:
        with pytest.raises(ModelFileError, match=re.escape(expected)):
            GLocalK.load(bad)


def test_reading_a_model_file_needs_neither_the_trainer_nor_numba():
    """The file format (schema.py, modelfile.py) stands apart from training."""
    code = ("import sys, glocalk_np.schema, glocalk_np.modelfile; "
            "print([m for m in ('glocalk_np.train', 'glocalk_np.engines', 'numba') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_every_hyper_parameter_is_an_explicit_parameter():
    """scikit-learn's rule: __init__ names each parameter get_params returns
    (no **kwargs), and a field given beside a Config overrides it."""
    import inspect
    signature = inspect.signature(GLocalK.__init__).parameters
    assert all(p.kind != p.VAR_KEYWORD for p in signature.values())
    assert set(GLocalK().get_params()) <= set(signature)
    m = GLocalK(CONFIG, n_hidden=3, seed=7)
    assert (m.config.n_hidden, m.config.seed, m.config.kernel_dim) == (3, 7, CONFIG.kernel_dim)
    assert GLocalK(preset="ml-1m", lambda_2=1.0).config.lambda_s == 0.018
    with pytest.raises(TypeError):
        GLocalK(hidden=3)


def test_a_large_own_file_trains_with_the_ml_1m_settings_not_given(monkeypatch, data):
    """From LARGE_FILE_RATINGS training ratings on (lowered here), a file
    without a preset takes the ML-1M preset's value for each field left at
    Config's default; a field given keeps its value; a preset is untouched."""
    import glocalk_np.config as config_module
    monkeypatch.setattr(config_module, "LARGE_FILE_RATINGS", 10)
    train, test, _ = data
    short = dict(n_hidden=4, kernel_dim=2, epochs_pretrain=1, epochs_finetune=1,
                 iters_pretrain=2, iters_finetune=2)
    m = GLocalK(lambda_s=0.5, **short).fit(train, test=test)
    ml1m = config_module.PRESETS["ml-1m"]
    assert (m.config_.lambda_2, m.config_.dot_scale) == (ml1m["lambda_2"], ml1m["dot_scale"])
    assert m.config_.lambda_s == 0.5 and m.config_.epochs_pretrain == 1
    assert m.summary_["large_file_settings"] == {"lambda_2": 70.0, "dot_scale": 0.5}
    assert m.get_params()["lambda_2"] == Config().lambda_2        # the parameter is kept
    m = GLocalK(preset="ml-100k", **short).fit(train, test=test)
    assert m.config_.lambda_2 == 20.0 and "large_file_settings" not in m.summary_
    monkeypatch.setattr(config_module, "LARGE_FILE_RATINGS", 10**9)
    assert GLocalK(**short).fit(train, test=test).config_.lambda_2 == 20.0


def test_predict_and_recommend_with_dataframes(fitted, data):
    pd = pytest.importorskip("pandas")
    train = data[0]
    pairs = pd.DataFrame({"userId": [train.users[0], 12345], "movieId": [train.items[0], 1]})
    out = fitted.predict(pairs)
    pred, fallback = fitted.predict(pairs["userId"].to_numpy(), pairs["movieId"].to_numpy())
    assert list(out.columns) == ["user", "item", "rating", "fallback"]
    assert out["rating"].tolist() == pred.tolist() and out["fallback"].tolist() == fallback.tolist()
    assert fitted.predict({"user": pairs["userId"], "item": pairs["movieId"]})[0].tolist() == \
        pred.tolist()
    users = pd.Series(np.unique(train.users)[:3])
    recs = fitted.recommend(users, top=2)
    assert isinstance(recs, pd.DataFrame) and len(recs) == 6
    assert recs.to_dict("list") == {k: v.tolist() for k, v in
                                    fitted.recommend(users.to_numpy(), top=2).items()}
