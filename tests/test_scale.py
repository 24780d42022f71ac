"""The rating scale map (scale.py): ratings on any positive scale train on
1-5 and come back in their own units."""
import json
from dataclasses import replace

import numpy as np
import pytest

from glocalk_np.data import DataError, Ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.scale import RatingScale
from glocalk_np.config import Config, check_positive_for_scale
from test_estimator import CONFIG, low_rank_ratings, three_way


def scaled(ratings, factor):
    return Ratings(ratings.users, ratings.items, ratings.values * factor, ratings.source)


def test_the_map_round_trips_and_is_the_identity_on_1_to_5():
    rng = np.random.default_rng(0)
    for low, high in [(1, 5), (0.5, 5), (1, 10), (1, 100), (3.2, 3.3)]:
        r = rng.uniform(low, high, 50)
        r[:2] = low, high
        s = RatingScale.of(r)
        assert (s.low, s.high) == (low, high)
        np.testing.assert_allclose(s.to_model([low, high]), [1, 5], rtol=1e-12)
        np.testing.assert_allclose(s.to_user(s.to_model(r)), r, rtol=1e-12)
    one_to_five = RatingScale.of([1.0, 3.0, 5.0])
    assert one_to_five.identity
    x = np.array([0.3, 4.7])
    assert np.array_equal(one_to_five.to_model(x), x) and np.array_equal(one_to_five.to_user(x), x)
    assert RatingScale.of([20.0, 100.0], "none").identity


def test_constant_ratings_are_shifted_to_the_middle_of_the_scale():
    s = RatingScale.of([7.0, 7.0, 7.0])
    assert s.to_model(7.0) == 3.0 and s.to_user(3.0) == 7.0
    assert (s.low, s.high) == (7.0, 7.0)


def test_an_unknown_scale_is_refused_by_name():
    with pytest.raises(ValueError, match="scale must be one of"):
        RatingScale.of([1.0], "log")
    with pytest.raises(ValueError, match="scale must be one of"):
        Config(scale="log")


def test_ratings_of_0_or_below_are_refused_with_scale_none_in_one_wording():
    """RatingScale.of states the check by config.check_positive_for_scale,
    naming the source and the fix."""
    message = r"^r\.csv: ratings must be > 0 with scale='none' .*the smallest is -1\): use " \
        r"scale='auto'"
    with pytest.raises(DataError, match=message):
        RatingScale.of([-1.0, 3.0], "none", "r.csv")
    with pytest.raises(DataError, match=message):
        check_positive_for_scale(np.array([-1.0, 3.0]), "none", "r.csv")
    assert RatingScale.of([-1.0, 3.0]).low == -1.0           # 'auto' takes them


def test_1_to_5_ratings_give_the_same_fit_with_and_without_the_map():
    train, test, val = three_way(low_rank_ratings())
    auto = GLocalK(CONFIG).fit(train, test=test, val=val)
    none = GLocalK(replace(CONFIG, scale="none")).fit(train, test=test, val=val)
    assert [r.metrics for r in auto.history_] == [r.metrics for r in none.history_]
    assert [r.train_rmse for r in auto.history_] == [r.train_rmse for r in none.history_]
    for k, v in auto.params_.items():
        assert np.array_equal(v, none.params_[k]), k


def test_ratings_times_20_fit_like_the_originals_in_their_own_units(tmp_path):
    train, test, val = three_way(low_rank_ratings())
    base = GLocalK(CONFIG).fit(train, test=test, val=val)
    x20 = GLocalK(CONFIG).fit(scaled(train, 20), test=scaled(test, 20), val=scaled(val, 20))
    assert x20.rating_range_ == tuple(20 * v for v in base.rating_range_)
    for name in ("test", "val"):
        for metric in ("rmse", "mae"):
            assert x20.summary_[name][metric] == pytest.approx(20 * base.summary_[name][metric],
                                                               rel=1e-9)
        assert x20.summary_[name]["ndcg"] == pytest.approx(base.summary_[name]["ndcg"], rel=1e-9)
    pred, _ = x20.predict(test.users, test.items)
    pred5, _ = base.predict(test.users, test.items)
    np.testing.assert_allclose(pred, 20 * pred5, rtol=1e-9)
    x20.save(tmp_path / "m.npz")
    loaded = GLocalK.load(tmp_path / "m.npz")
    assert loaded.config.scale == "auto" and loaded.scale_ == x20.scale_
    np.testing.assert_array_equal(loaded.predict(test.users, test.items)[0], pred)
    assert loaded.evaluate(scaled(test, 20))["rmse"] == x20.summary_["test"]["rmse"]


def test_without_the_map_the_1_to_100_fit_is_worse():
    """The reason for the map: the ML-100K preset's penalties on ratings 20x
    larger than the ones it was tuned for."""
    train, test, val = three_way(low_rank_ratings())
    hyper = replace(CONFIG, epochs_pretrain=3, epochs_finetune=3)
    mapped = GLocalK(hyper).fit(scaled(train, 20), test=scaled(test, 20))
    as_given = GLocalK(replace(hyper, scale="none")).fit(scaled(train, 20), test=scaled(test, 20))
    assert mapped.summary_["test"]["rmse"] < as_given.summary_["test"]["rmse"]


def test_a_model_file_from_before_the_map_loads_as_trained_on_the_ratings_as_given(tmp_path):
    """Files written before 'scale' existed hold no such config field; their
    networks were trained on the ratings as given, so they load with 'none'."""
    train, test, _ = three_way(low_rank_ratings())
    as_given = GLocalK(replace(CONFIG, scale="none")).fit(scaled(train, 20))
    as_given.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["config"]["scale"]
    arrays["meta"] = np.array(json.dumps(meta))
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **arrays)
    old = GLocalK.load(tmp_path / "old.npz")
    assert old.config.scale == "none" and old.scale_.identity
    np.testing.assert_array_equal(old.predict(test.users, test.items)[0],
                                  as_given.predict(test.users, test.items)[0])


def _joke_ratings(shift=0.0):
    """A -10..10 scale with zeros among the ratings (37% <= 0 in the
    joke-rating file of issue 20), ``shift`` added to every rating."""
    r = low_rank_ratings(seed=5)
    values = np.array([-10.0, -2.5, 0.0, 5.0, 10.0])[(r.values - 1).astype(int)] + shift
    return Ratings(r.users, r.items, values, "jokes")


def test_zero_and_negative_ratings_train_predict_and_recommend_in_their_own_units():
    ratings = _joke_ratings()
    train, test, val = three_way(ratings)
    m = GLocalK(CONFIG, refit=False).fit(train, test=test, val=val)
    assert m.rating_range_ == (-10.0, 10.0) and (m.train_matrix_.data == 0).any()
    pred, _ = m.predict(test.users, test.items)
    assert pred.min() >= -10 and pred.max() <= 10
    assert m.summary_["test"]["rmse"] < m.summary_["baseline"]["test"]["rmse"] + 2
    zero = np.flatnonzero(train.values == 0)[0]          # a rating of 0 is a rating: seen
    user, item = train.users[zero], train.items[zero]
    recs = m.recommend([user], top=m.index_.n_items)
    assert item not in recs["item"].tolist()
    with pytest.raises(ValueError, match="ratings must be > 0 with scale='none'"):
        GLocalK(replace(CONFIG, scale="none")).fit(train)


def test_ratings_shifted_by_a_constant_give_predictions_shifted_by_it():
    fits = []
    for shift in (0.0, 100.0):
        train, test, _ = three_way(_joke_ratings(shift))
        fits.append(GLocalK(CONFIG, refit=False).fit(train, test=test))
    (a, b), (train, test, _) = fits, three_way(_joke_ratings())
    pa, _ = a.predict(test.users, test.items)
    pb, _ = b.predict(test.users, test.items)
    np.testing.assert_allclose(pb - pa, 100.0, rtol=0, atol=1e-9)
    assert b.summary_["test"]["rmse"] == pytest.approx(a.summary_["test"]["rmse"], abs=1e-9)
