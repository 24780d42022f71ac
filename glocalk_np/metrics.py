"""Test-set metrics of docs/model.md §10, on sparse (entry-list) data.

Every function takes 1-D arrays with one value per test entry, so no dense
m x n matrix is ever built. Callers clip predictions to the rating range
first (``evaluate`` does it for them).
"""
import numpy as np

# A held-out rating counts as a liked item (a top-N hit) from here, on the
# 1-5 scale the network trains on (scale.py): 4 and 5 stars.
RELEVANT_FROM = 4.0


def clip(pred, low, high):
    """Predictions limited to the rating range [low, high]. O(N)."""
    return np.clip(pred, low, high)


def rmse(pred, true):
    """Root mean squared error over the entries. O(N); no clipping here."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sqrt(np.mean(diff ** 2)))


def mae(pred, true):
    """Mean absolute error over the entries. O(N); no clipping here."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.mean(np.abs(diff)))


def _ranked_dcg(score, true, groups, idx):
    """Per-group DCG of ``true`` ranked by ``score`` descending; ties by entry order.

    Returns (dcg per group, group size), groups in sorted order. The entry index
    as the last tie-breaker reproduces the official code's stable Python sort,
    which keeps tied items in their original (item) order.
    """
    order = np.lexsort((idx, -score, groups))
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, g.size])
    seg = np.repeat(np.arange(starts.size), sizes)
    rank = np.arange(g.size) - starts[seg]
    gain = (2.0 ** true[order] - 1.0) / np.log2(rank + 2.0)
    return np.bincount(seg, weights=gain, minlength=starts.size), sizes


def ndcg(pred, true, groups):
    """Mean NDCG over users with >= 2 test ratings, cut-off = the user's test count.

    The official definition (docs/model.md §10): each user's test items are ranked by
    predicted score, descending; DCG = sum_k (2^r - 1) / log2(k + 2) over ranks
    k = 0.., r the true rating; it is divided by the DCG of the order by true
    rating. ``groups`` holds the user of each entry (any integers). Ties in
    ``pred`` are broken by the entries' original order (a stable sort), as the
    official code does. Returns nan when no user has >= 2 ratings.
    O(N log N) for the two sorts; no loop over users.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    groups = np.asarray(groups)
    idx = np.arange(pred.size)
    dcg, sizes = _ranked_dcg(pred, true, groups, idx)
    ideal, _ = _ranked_dcg(true, true, groups, idx)
    keep = sizes >= 2
    if not keep.any():
        return float("nan")
    return float(np.mean(dcg[keep] / ideal[keep]))


def evaluate(pred, true, groups, scale):
    """RMSE, MAE and NDCG of predictions clipped to the training range
    [scale.low, scale.high], all in the ratings' own units except NDCG's
    gains 2^r - 1, which take r on the 1-5 scale the model trains on
    (scale.py; the same on 1-5 data): on a 1-100 scale 2^100 would drown
    every other rating. O(N log N)."""
    p = clip(np.asarray(pred, dtype=np.float64), scale.low, scale.high)
    return dict(rmse=rmse(p, true), mae=mae(p, true),
                ndcg=ndcg(scale.to_model(p), scale.to_model(true), groups))


def top_n(ranked, relevant, k):
    """Precision, recall and NDCG at ``k`` of top-N lists, as LensKit and
    cornac report them: ``ranked[u]`` a user's recommended items, best first
    (at most k; only items the user did not rate in training), ``relevant[u]``
    that user's relevant held-out items. Per user: precision = hits / k,
    recall = hits / |relevant|, NDCG = sum over hits of 1 / log2(rank + 1)
    divided by its best value, sum_{r <= min(k, |relevant|)} 1 / log2(r + 1);
    averaged over the users with at least one relevant item (nan if none).
    O(sum of list lengths)."""
    # no list or relevant set is longer than the items: k = 10^12 allocates nothing more
    longest = min(k, max((max(len(items), len(rel)) for items, rel in zip(ranked, relevant)),
                         default=0))
    discount = 1.0 / np.log2(np.arange(2, longest + 2))
    precision, recall, ndcg = [], [], []
    for items, rel in zip(ranked, relevant):
        if len(rel) == 0:
            continue
        hit = np.isin(np.asarray(items)[:k], rel)
        precision.append(hit.sum() / k)
        recall.append(hit.sum() / len(rel))
        ndcg.append(discount[:hit.size][hit].sum() / discount[:min(k, len(rel))].sum())
    if not precision:
        return {f"precision@{k}": float("nan"), f"recall@{k}": float("nan"),
                f"ndcg@{k}": float("nan")}
    return {f"precision@{k}": float(np.mean(precision)), f"recall@{k}": float(np.mean(recall)),
            f"ndcg@{k}": float(np.mean(ndcg))}
