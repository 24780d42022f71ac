"""The pick model (picks.py) and recommend's orders (ranking.RANKS): EASE
and item-kNN against their dense formulas, the penalty search, the default
order on a planted problem, fold-in, update, model files old and new."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from glocalk_np import modelfile, picks
from glocalk_np.config import Config
from glocalk_np.data import Ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.model import Model
from glocalk_np.modelfile import ModelFileError
from glocalk_np.ranking import RANKS

CONFIG = Config(n_hidden=16, kernel_dim=3, epochs_pretrain=3, epochs_finetune=3,
                iters_pretrain=10, iters_finetune=10, lambda_2=1.0, lambda_s=0.01,
                dtype="float64")
EVERYONE = [0, 1, 2, 3, 4]               # picked by most users, rated 3
LOVED_A = list(range(10, 18))            # picked by most of group A only, rated 5
LOVED_B = list(range(20, 28))            # ... of group B only
TARGET = 0                               # a user of group A: rated EVERYONE[:-1], LOVED_A[:-2]


def planted():
    """Ratings of 60 users in two groups (A: 0-29, B: 30-59): each user
    rated each of EVERYONE 3 and each of their group's LOVED items 5, with
    probability 0.8; TARGET rated all of EVERYONE and LOVED_A but item 4,
    16 and 17."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(60):
        loved = LOVED_A if user < 30 else LOVED_B
        if user == TARGET:
            rows += [(user, i, 3.0) for i in EVERYONE[:-1]]
            rows += [(user, i, 5.0) for i in loved[:-2]]
            continue
        rows += [(user, i, 3.0) for i in EVERYONE if rng.random() < 0.8]
        rows += [(user, i, 5.0) for i in loved if rng.random() < 0.8]
    users, items, values = map(np.array, zip(*rows))
    return Ratings.checked(users, items, values, "planted")


@pytest.fixture(scope="module")
def model():
    return GLocalK(CONFIG, validation_fraction=0, refit=False, blend=False).fit(planted())


def dense_ease(X, penalty):
    P = np.linalg.inv(X.T @ X + penalty * np.eye(X.shape[1]))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0)
    return B


def random_pattern(m=60, n=40, density=0.15, seed=0):
    R = sp.random(m, n, density=density, random_state=seed, format="csr")
    R.data[:] = np.random.default_rng(seed).integers(1, 6, R.nnz)   # values do not matter
    return R


# ------------------------------------------------------------ the pick model

@pytest.mark.parametrize("penalty", [10.0, 400.0])
def test_ease_is_its_closed_form_and_keeps_the_largest_weights(penalty):
    R = random_pattern()
    B = dense_ease((R.T > 0).toarray().astype(float), penalty)
    full = picks.fit(R, penalty=penalty, neighbours=R.shape[0])
    assert full.method == "ease" and full.penalty == penalty
    np.testing.assert_allclose(full.weights.toarray(), B, rtol=1e-6, atol=1e-7)  # float32
    kept = picks.fit(R, penalty=penalty, neighbours=5).weights
    assert (np.diff(kept.indptr) <= 5).all()
    for i in range(R.shape[0]):                 # each row's 5 largest by size
        row = kept[i].toarray().ravel()
        smallest_kept = np.abs(row[row != 0]).min()
        dropped = np.abs(B[i][row == 0])
        assert (dropped <= smallest_kept * (1 + 1e-6)).all()


def test_past_the_ease_limit_item_knn_takes_cosine_neighbours():
    R = random_pattern(m=50)
    X = (R > 0).toarray().astype(float)
    norms = np.sqrt(np.maximum(X.sum(axis=1), 1))
    S = (X @ X.T) / np.outer(norms, norms)
    np.fill_diagonal(S, 0)
    model = picks.fit(R, neighbours=50, max_items=49)
    assert model.method == "cosine" and model.penalty is None
    np.testing.assert_allclose(model.weights.toarray(), S, rtol=1e-6)


def test_the_penalty_search_is_repeatable_and_uses_the_held_out_picks(monkeypatch):
    R = random_pattern(m=80, n=200, density=0.1)
    pattern = picks.binary(R)
    chosen = picks.choose_penalty(pattern, seed=3)
    assert chosen in picks.PENALTIES and picks.choose_penalty(pattern, seed=3) == chosen
    # what is searched is bounded: a few items and users still give a penalty
    monkeypatch.setattr(picks, "SEARCH_ITEMS", 20)
    monkeypatch.setattr(picks, "SEARCH_USERS", 5)
    assert picks.choose_penalty(pattern, seed=3) in picks.PENALTIES
    assert picks.choose_penalty(sp.csr_matrix((3, 4)), seed=0) == picks.PENALTIES[0]


def test_a_user_s_pick_scores_sum_the_rows_of_what_they_picked():
    R = random_pattern()
    model = picks.fit(R, penalty=60.0)
    pattern = picks.binary(R).tocsc()
    S = model.scores(pattern[:, [0, 3]])
    W = model.weights.toarray().astype(np.float64)
    for k, user in enumerate([0, 3]):
        picked = pattern[:, user].nonzero()[0]
        np.testing.assert_allclose(S[:, k], W[picked].sum(axis=0))
    np.testing.assert_array_equal(model.similar(7), W[7])


# ------------------------------------------------------------ the orders

def test_the_default_order_lists_what_the_user_s_neighbours_love_first(model):
    """Loved by the user's group and unrated: first, ahead of the item
    everyone picks but rates middling (which the pick model alone puts
    first), and that ahead of the other group's loved items, rated as
    highly but never picked by this user's group (which the rating alone
    puts right after the first two). With the two standardised scores
    weighed equally (mix 1; a fit without validation ratings takes
    picks.MIX, one with them chooses)."""
    assert model._rank("auto") == "picks+rating" and model.picks_.mix == picks.MIX
    model.picks_.mix = 1.0
    try:
        recs, _ = model.recommend(TARGET, top=3)
    finally:
        model.picks_.mix = picks.MIX
    listed = [item for item, _ in recs]
    assert listed[:2] in ([16, 17], [17, 16]) and listed[2] == 4
    assert model.recommend(TARGET, top=1, rank="picks")[0][0][0] == 4
    by_rating = [item for item, _ in model.recommend(TARGET, top=3, rank="rating")[0]]
    assert set(by_rating[:2]) == {16, 17} and by_rating[2] in LOVED_B
    # the score column is the predicted rating whatever the order
    pred, _ = model.predict(np.full(len(listed), TARGET), listed)
    np.testing.assert_allclose([s for _, s in recs], pred)


def test_an_order_does_not_change_with_candidates_or_exclusions(model):
    for rank in RANKS:
        full = [i for i, _ in model.recommend(TARGET, top=60, include_seen=True, rank=rank)[0]]
        some = full[::3]
        chosen = [i for i, _ in model.recommend(TARGET, top=60, include_seen=True,
                                                items=some, rank=rank)[0]]
        assert chosen == some
        rest = [i for i, _ in model.recommend(TARGET, top=60, include_seen=True,
                                              filter_items=full[:2], rank=rank)[0]]
        assert rest == full[2:]


def test_predict_all_ranks_in_recommend_s_order(model):
    _, rank = model.predict_all(ranks=True)
    u = np.searchsorted(model.index_.users, TARGET)
    listed = [i for i, _ in model.recommend(TARGET, top=60, include_seen=True)[0]]
    assert [model.index_.items[k] for k in np.argsort(rank[:, u])] == listed


def test_similar_items_by_the_pick_model_are_the_group_s(model):
    """The default: the other seven of the group's loved items, first; the
    pick model alone mixes in the items everyone picks after its first
    three."""
    found = [i for i, _ in model.similar(LOVED_A[0], top=7)]
    assert set(found) == set(LOVED_A[1:])
    found = [i for i, _ in model.similar(LOVED_A[0], top=3, rank="picks")]
    assert set(found) <= set(LOVED_A)
    with pytest.raises(ValueError, match="rank must be one of"):
        model.similar(LOVED_A[0], rank="popular")


def test_a_user_folded_in_with_one_group_s_items_gets_that_group_s(model, tmp_path):
    """The planted genre test: a new user who loved three of group B's
    items gets the rest of B's first (the pick model reads their ratings
    at once; fold-in fits their output layer)."""
    path = tmp_path / "m.npz"
    model.save(path)
    fresh = Model.load(path)
    new = {"user": np.full(3, 1000), "item": np.array(LOVED_B[:3]), "rating": np.full(3, 5.0)}
    counts = fresh.update(new, fold_in=True)
    assert counts["new_users"] == 1 and counts["folded_in"] == 1
    listed = [i for i, _ in fresh.recommend(1000, top=5)[0]]
    assert set(listed) <= set(LOVED_B[3:])


def test_update_gives_a_new_item_no_pick_weights_and_lists_go_on(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    fresh = Model.load(path)
    fresh.update({"user": [TARGET, 31], "item": [99, 99], "rating": [4.0, 4.0]})
    W = fresh.picks_.weights
    new = np.searchsorted(fresh.index_.items, 99)
    assert W.shape == (fresh.index_.n_items,) * 2 and W[new].nnz == 0 and W[:, new].nnz == 0
    old = model.picks_.weights.toarray()
    keep = np.delete(np.arange(W.shape[0]), new)
    np.testing.assert_array_equal(W.toarray()[np.ix_(keep, keep)], old)
    for rank in RANKS:               # user 31 rated item 99: seen, never listed
        listed = [i for i, _ in fresh.recommend(31, top=5, rank=rank)[0]]
        assert len(listed) == 5 and 99 not in listed


# ------------------------------------------------------------ model files

def test_the_pick_model_round_trips_through_a_file(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = Model.load(path)
    assert loaded.format_version_ == modelfile.FORMAT_VERSION == 4
    assert (loaded.picks_.method, loaded.picks_.penalty, loaded.picks_.mix) == \
        (model.picks_.method, model.picks_.penalty, model.picks_.mix)
    assert (loaded.picks_.weights != model.picks_.weights).nnz == 0
    for rank in RANKS:
        assert loaded.recommend(TARGET, 10, rank=rank) == model.recommend(TARGET, 10, rank=rank)


def format_3(src, dst):
    """``src`` as format 3 wrote it: no pick model."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("picks/")}
    meta = json.loads(str(arrays["meta"]))
    del meta["picks"]
    arrays.update(format_version=np.int64(3), meta=np.array(json.dumps(meta)))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def test_a_format_3_file_loads_and_ranks_by_rating(model, tmp_path):
    model.save(tmp_path / "m.npz")
    old = Model.load(format_3(tmp_path / "m.npz", tmp_path / "old.npz"))
    assert old.picks_ is None and old.info()["ranking"] == {"default": "rating"}
    assert old.recommend(TARGET, 10) == model.recommend(TARGET, 10, rank="rating")
    assert old.similar(LOVED_A[0], 3) == model.similar(LOVED_A[0], 3, rank="rating")
    for rank in ("picks", "picks+rating"):
        with pytest.raises(ValueError, match="format version is 3 or older"):
            old.recommend(TARGET, 10, rank=rank)
    old.update({"user": [TARGET], "item": [99], "rating": [4.0]})    # nothing to grow
    assert old.picks_ is None


@pytest.mark.parametrize("entry, change, message", [
    ("picks/indices", lambda a: np.where(a == a.max(), 10 ** 6, a), "an item position outside"),
    ("picks/data", lambda a: np.where(np.arange(a.size) == 0, np.float32(np.nan), a),
     "a weight is not finite"),
    ("picks/data", lambda a: a.astype(np.float64), "expected float32"),
    ("picks/indptr", lambda a: a[:-1], "offsets rising"),
])
def test_a_damaged_pick_model_is_refused_with_one_line(model, tmp_path, entry, change, message):
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[entry] = change(arrays[entry])
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelFileError, match=message) as e:
        Model.load(tmp_path / "bad.npz")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("picks_meta", [
    {"method": "svd", "penalty": 1.0, "mix": 1.0}, {"method": "ease", "penalty": -1, "mix": 1},
    {"method": "ease", "penalty": 10.0, "mix": float("inf")}, {"method": "ease", "mix": 1.0},
    {"method": "cosine", "penalty": 5.0, "mix": 1.0}, "ease"])
def test_bad_pick_metadata_is_refused(model, tmp_path, picks_meta):
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "picks": picks_meta}))
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelFileError, match="metadata field 'picks'"):
        Model.load(tmp_path / "bad.npz")


def test_a_refit_of_the_same_pattern_is_handed_out_again_as_a_copy(monkeypatch):
    """tune fits many networks on one pattern: the pick model is fitted once,
    and what one fit sets on its copy (the mix) stays its own."""
    R = random_pattern(seed=4)
    first = picks.fit(R, seed=1)
    first.mix = 3.0
    monkeypatch.setattr(picks, "choose_penalty", lambda *a: pytest.fail("fitted again"))
    again = picks.fit(R, seed=1)
    assert again.mix == picks.MIX and again.weights is first.weights
    R.data[:] = 1.0                            # values are not picks: the same pattern
    assert picks.fit(R, seed=1).weights is first.weights
    other = R.tolil()
    other[0, 0] = 0 if other[0, 0] else 1      # another pattern: fitted anew
    other = other.tocsr()
    with pytest.raises(pytest.fail.Exception, match="fitted again"):
        picks.fit(other, seed=1)
