"""Fold-in (foldin.py, GLocalK.update(fold_in=True)): the gradient against
central differences, and what it changes for users old and new."""
import numpy as np
import pytest

from dense_reference import numerical_grad, rel_error
from glocalk_np import foldin
from glocalk_np.config import Config
from glocalk_np.data import Ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.params import layer_count
from glocalk_np.synthetic import low_rank_ratings
from problems import FD_EPS

CONFIG = Config(n_hidden=8, kernel_dim=3, epochs_pretrain=2, epochs_finetune=2,
                iters_pretrain=5, iters_finetune=5, lambda_2=0.5, lambda_s=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_gradient_matches_central_differences(seed):
    rng = np.random.default_rng(seed)
    h, d, k = 7, 3, 5
    U = rng.normal(0, 0.8, (h, d))
    H, r = rng.random((k, h)), rng.integers(1, 6, k).astype(float)
    theta = np.concatenate([rng.normal(0, 1, h), rng.normal(0, 0.3, d), [0.5]])
    pre = 1 - ((U - theta[h:h + d]) ** 2).sum(axis=1)
    assert (pre > 1e-3).any() and (pre < -1e-3).any()    # both sides of the kernel's kink
    assert np.abs(pre).min() > 1e-4                        # and away from it
    loss, grad = foldin.loss_and_grad(theta, H, r, U, 0.7, 0.3)
    num = numerical_grad(lambda p: foldin.loss_and_grad(p["t"], H, r, U, 0.7, 0.3)[0],
                         {"t": theta}, eps=FD_EPS)["t"]
    assert rel_error(grad, num) < 1e-7


@pytest.fixture(scope="module")
def model():
    r = low_rank_ratings(40, 30, 0.4, 2, seed=1)
    return GLocalK(CONFIG, validation_fraction=0, refit=False, blend=False).fit(r)


def test_a_known_user_s_new_ratings_move_their_predictions(model, tmp_path):
    model.save(tmp_path / "m.npz")
    plain, folded = (GLocalK.load(tmp_path / "m.npz") for _ in range(2))
    user, items = 1, np.arange(1, 31)
    before = plain.predict([user] * 30, items)[0]
    five = Ratings(np.full(5, user), np.array([2, 4, 6, 8, 10]), np.full(5, 5.0), "new")
    assert plain.update(five)["folded_in"] == 0
    counts = folded.update(five, fold_in=True)
    assert counts["folded_in"] == 1 and counts["new_users"] == 0
    moved_plain = plain.predict([user] * 30, items)[0] - before
    moved = folded.predict([user] * 30, items)[0] - before
    assert moved.mean() > 0.1 and moved.mean() > 5 * abs(moved_plain).mean()
    last = layer_count(plain.params_) - 1          # another user's column is not refitted
    other = int(np.searchsorted(plain.index_.users, 2))
    for name in (f"W{last}", f"b{last}"):
        assert np.array_equal(folded.params_[name][..., other], plain.params_[name][..., other])
    assert np.array_equal(folded.params_[f"V{last}"][other], plain.params_[f"V{last}"][other])


def test_a_new_user_gets_a_column_of_their_own(model, tmp_path):
    model.save(tmp_path / "m.npz")
    m = GLocalK.load(tmp_path / "m.npz")
    new = Ratings(np.full(8, 999), np.arange(1, 9), np.array([5, 5, 5, 5, 1, 1, 1, 1.0]), "new")
    with pytest.warns(Warning, match="skipped"):
        assert GLocalK.load(tmp_path / "m.npz").update(new)["skipped"] == 8
    counts = m.update(new, fold_in=True)
    assert counts["new_users"] == 1 and counts["folded_in"] == 1 and counts["skipped"] == 0
    pred, fallback = m.predict(np.full(8, 999), np.arange(1, 9))
    assert (fallback == "").all()                  # the network's, not a fallback
    assert pred[:4].mean() > pred[4:].mean()       # it learned what they like
    recs, warning = m.recommend(999, 5)
    assert warning is None and not {i for i, _ in recs} & set(range(1, 9))
    m.save(tmp_path / "m2.npz")
    again = GLocalK.load(tmp_path / "m2.npz")
    assert np.array_equal(again.predict(np.full(8, 999), np.arange(1, 9))[0], pred)


def test_fold_in_names_the_new_user_it_cannot_add_not_a_known_one(model, tmp_path):
    model.save(tmp_path / "m.npz")
    m = GLocalK.load(tmp_path / "m.npz")
    mixed = Ratings(["1", "4242", "abc"], [1, 2, 3], [4.0, 3.0, 5.0], "new")   # a text column
    with pytest.raises(ValueError, match=r"^new: row 2: new user id 'abc' is not of the kind"):
        m.update(mixed, fold_in=True)
    assert np.array_equal(m.index_.users, model.index_.users)      # nothing changed


def test_a_model_of_text_ids_folds_in_a_user_written_as_an_integer():
    r = low_rank_ratings(12, 10, 0.7, 2, seed=4)
    m = GLocalK(CONFIG, validation_fraction=0, refit=False, blend=False).fit(
        Ratings(np.array([f"u{u}" for u in r.users.tolist()], dtype=object), r.items, r.values,
                "named"))
    counts = m.update(Ratings([77] * 4, [1, 2, 3, 4], [5.0, 5.0, 2.0, 2.0], "new"), fold_in=True)
    assert counts["new_users"] == 1 and "77" in m.index_.users.tolist()
    assert m.predict(["77"], [1])[1].tolist() == [""]              # its own column
