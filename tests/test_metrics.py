"""Metrics of docs/model.md §10 against hand computations and a per-user loop."""
import math

import numpy as np
import pytest

from glocalk_np.metrics import clip, evaluate, mae, ndcg, rmse
from glocalk_np.scale import RatingScale


def _ndcg_loop(pred, true, groups):
    """Per-user transcription of the official call_ndcg / ndcg_k (stable sorts)."""
    scores = []
    for u in np.unique(groups):
        sel = np.flatnonzero(groups == u)
        if sel.size < 2:
            continue
        pairs = [(pred[i], true[i]) for i in sel]
        by_pred = sorted(pairs, key=lambda t: t[0], reverse=True)
        by_true = sorted(pairs, key=lambda t: t[1], reverse=True)
        dcg = sum((2 ** r - 1) / math.log2(k + 2) for k, (_, r) in enumerate(by_pred))
        idcg = sum((2 ** r - 1) / math.log2(k + 2) for k, (_, r) in enumerate(by_true))
        scores.append(dcg / idcg)
    return float(np.mean(scores)) if scores else float("nan")


def test_rmse_and_mae_by_hand():
    pred = np.array([1.0, 2.5, 4.0, 5.5])
    true = np.array([2.0, 2.0, 4.0, 3.5])
    # errors -1, 0.5, 0, 2
    assert rmse(pred, true) == pytest.approx(math.sqrt((1 + 0.25 + 0 + 4) / 4))
    assert mae(pred, true) == pytest.approx((1 + 0.5 + 0 + 2) / 4)


def test_rmse_and_mae_do_not_clip():
    assert rmse(np.array([7.0]), np.array([5.0])) == pytest.approx(2.0)
    assert mae(np.array([-1.0]), np.array([1.0])) == pytest.approx(2.0)


def test_clip():
    np.testing.assert_array_equal(clip(np.array([0.2, 3.0, 6.1]), 1, 5), [1.0, 3.0, 5.0])


@pytest.mark.parametrize("seed", range(5))
def test_ndcg_matches_per_user_loop(seed):
    rng = np.random.default_rng(seed)
    n_entries = 200
    groups = rng.integers(0, 40, n_entries) * 3 + 7        # sparse, unsorted user ids
    true = rng.integers(1, 6, n_entries).astype(float)     # many ties in true ratings
    pred = np.round(rng.uniform(1, 5, n_entries), 1)        # some ties in predictions too
    assert (np.bincount(groups) == 1).any(), "some users must have a single rating"
    assert ndcg(pred, true, groups) == pytest.approx(_ndcg_loop(pred, true, groups), rel=1e-12)


def test_ndcg_prediction_ties_keep_entry_order():
    # Tied predictions: the earlier entry (rating 1) ranks first, as a stable sort does.
    first = ndcg(np.array([3.0, 3.0]), np.array([1.0, 5.0]), np.array([0, 0]))
    expected = (1 + 31 / math.log2(3)) / (31 + 1 / math.log2(3))
    assert first == pytest.approx(expected)
    assert ndcg(np.array([3.0, 3.0]), np.array([5.0, 1.0]), np.array([0, 0])) == pytest.approx(1.0)


def test_ndcg_perfect_order_is_one():
    true = np.array([5.0, 3.0, 4.0, 1.0, 2.0, 2.0])
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert ndcg(true * 10, true, groups) == pytest.approx(1.0)


def test_ndcg_reversed_three_items_by_hand():
    true = np.array([3.0, 2.0, 1.0])
    pred = np.array([1.0, 2.0, 3.0])
    # gains 2^r - 1 = 7, 3, 1; ranked reversed: 1, 3, 7
    dcg = 1 / math.log2(2) + 3 / math.log2(3) + 7 / math.log2(4)
    idcg = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(pred, true, np.zeros(3, dtype=int)) == pytest.approx(dcg / idcg)
    assert dcg / idcg == pytest.approx(0.68061, abs=1e-5)


def test_ndcg_excludes_single_rating_users():
    # User 1 (one rating) would score 1.0 if counted; user 0 is reversed.
    true = np.array([3.0, 2.0, 1.0, 4.0])
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    groups = np.array([0, 0, 0, 1])
    assert ndcg(pred, true, groups) == pytest.approx(ndcg(pred[:3], true[:3], groups[:3]))
    assert math.isnan(ndcg(np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([0, 1])))


def test_evaluate_clips_first():
    pred = np.array([6.0, 7.0, 3.0, 0.0])
    true = np.array([1.0, 5.0, 4.0, 2.0])
    groups = np.array([0, 0, 1, 1])
    out = evaluate(pred, true, groups, RatingScale.of(true))
    # clipped [5, 5, 3, 1]: errors 4, 0, 1, 1
    assert out["rmse"] == pytest.approx(math.sqrt(18 / 4))
    assert out["mae"] == pytest.approx(6 / 4)
    # User 0's predictions tie at 5 after clipping, so entry order ranks rating 1 first;
    # unclipped, user 0 would be perfectly ordered.
    user0 = (1 + 31 / math.log2(3)) / (31 + 1 / math.log2(3))
    assert out["ndcg"] == pytest.approx((user0 + 1.0) / 2)
    assert ndcg(pred, true, groups) == pytest.approx(1.0)


def test_top_n_metrics_by_hand():
    from glocalk_np.metrics import top_n
    ranked = [np.array([5, 3, 9]), np.array([1, 2, 4]), np.array([7, 8, 6])]
    relevant = [np.array([3, 4]), np.array([1, 2, 4, 6]), np.array([], dtype=int)]
    out = top_n(ranked, relevant, 3)
    # user 0: one hit at rank 2; user 1: hits at ranks 1-3; user 2: no relevant item, left out
    d = 1 / np.log2(np.arange(2, 5))
    assert out["precision@3"] == pytest.approx((1 / 3 + 3 / 3) / 2)
    assert out["recall@3"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert out["ndcg@3"] == pytest.approx((d[1] / d[:2].sum() + 1.0) / 2)
    assert math.isnan(top_n([np.array([1])], [np.array([], dtype=int)], 1)["ndcg@1"])


def test_top_n_lists_shorter_than_k_count_as_misses():
    from glocalk_np.metrics import top_n
    out = top_n([np.array([2])], [np.array([2, 3])], 4)
    assert out["precision@4"] == pytest.approx(1 / 4) and out["recall@4"] == pytest.approx(1 / 2)
