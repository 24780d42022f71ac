"""Datasets and small helpers shared by the benchmark scripts.

Real data is read from ../shared/data beside the repository (or --data-dir)
with the paper's protocols (docs/model.md §11); a missing file stops the script with
exit status 2 and the missing path. Synthetic matrices have MovieLens-like
shapes and popularity, for sizes no copy of the real data is at hand.
"""
import glocalk_np  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import contextlib
import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glocalk_np.data import (DataError, Index, Ratings, ml1m_split, read_monti_mat, read_ratings,
                             subset)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"

# name -> (files under the data folder, preset (docs/model.md §9), protocol)
REAL = {
    "ml-100k": (("ml-100k/u1.base", "ml-100k/u1.test"), "ml-100k",
                "u1.base / u1.test, index over both (1682 items x 943 users)"),
    "douban": (("douban/douban_monti_dataset.mat",), "douban",
               "Monti et al.'s Otraining / Otest (3000 x 3000)"),
    "flixster": (("flixster/training_test_dataset_10_NNs.mat",), "ml-100k",
                 "Monti et al.'s Otraining / Otest (3000 x 3000); no official preset, "
                 "ML-100K's settings"),
    "ml-1m": (("ml-1m/ratings_uir.dat",), "ml-1m",
              "data.ml1m_split (seed 1234, 10% test) of all ratings; index over all"),
}

# name -> (items m, users n, training ratings, preset). The ML shapes are the
# 90% training part that data.ml1m_split leaves of 1,000,209 / 10,000,054 ratings.
SYNTHETIC = {
    "synth-tiny": (60, 80, 1_200, "ml-100k"),
    "synth-ml-1m": (3_706, 6_040, 900_189, "ml-1m"),
    "synth-ml-10m": (10_677, 69_878, 9_000_049, "ml-1m"),
}
# Log-normal popularity spreads, fitted so that the top 10% of items (users)
# hold ~44% (~36%) of the ratings and the 3x3 neighbourhood covers ~28% of
# the matrix, against 44% / 38% / 26% in the real ML-1M training split.
ITEM_SPREAD, USER_SPREAD = 1.3, 1.1

# published: the paper's best-test-epoch RMSE and the official README's MAE and NDCG
PUBLISHED = {"ml-100k": dict(rmse=0.8889, mae=0.6950, ndcg=0.9053),
             "ml-1m": dict(rmse=0.8227, mae=0.6421, ndcg=0.9288),
             "douban": dict(rmse=0.7208, mae=0.5622, ndcg=0.9435)}
# published: the official TF graph re-run on 2 CPU cores (best test RMSE, seconds per run)
TF_RERUN = {"ml-100k": ("0.8899-0.8912", 90), "douban": ("0.7215", 281), "ml-1m": ("0.8258", 1273)}


@dataclass
class Problem:
    """A dataset under its protocol: raw training and test ratings, the id
    index both live in, and the preset (docs/model.md §9) that goes with it."""
    name: str
    train: Ratings
    test: Ratings
    index: Index
    preset: str
    protocol: str

    def matrix(self, ratings):
        """ratings as an items x users CSR matrix in this problem's index."""
        return self.index.matrix(ratings)[0]


def fail(message):
    """Print ``message`` to stderr and exit with status 2 (missing data or input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def local_dask(workers):
    """A LocalCluster of ``workers`` processes (engines.cluster.local_cluster:
    the cores shared among them) and its Client, current for the block, made
    with direct_to_workers=True as the command line makes it; exits 2 saying
    how to install dask.distributed where it is missing."""
    try:
        from distributed import Client
    except ImportError as e:
        fail(f"the Dask engine needs dask.distributed ({e}): pip install -e '.[dask]'")
    from glocalk_np.engines.cluster import local_cluster
    with local_cluster(workers, silence_logs=40) as cluster, \
            Client(cluster, direct_to_workers=True) as client:
        yield client


def dataset_names():
    return list(REAL) + list(SYNTHETIC)


def data_files(name, data_dir, ml1m_file=None):
    """The files a real dataset needs (none for a synthetic one)."""
    if name in SYNTHETIC:
        return []
    if name == "ml-1m" and ml1m_file is not None:
        return [Path(ml1m_file)]
    return [Path(data_dir) / f for f in REAL[name][0]]


def check_data(names, data_dir, ml1m_file=None):
    """Exit 2, naming every missing path, unless all the datasets' files exist."""
    unknown = [n for n in names if n not in REAL and n not in SYNTHETIC]
    if unknown:
        fail(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(dataset_names())}")
    missing = [str(p) for n in names for p in data_files(n, data_dir, ml1m_file) if not p.is_file()]
    if missing:
        fail("missing data file(s): " + ", ".join(missing) + "\n  the scripts read the project's "
             "shared benchmark folder ../shared/data (or --data-dir); see bench/README.md for "
             "where to get each file")


def load(name, data_dir=DEFAULT_DATA_DIR, ml1m_file=None):
    """The :class:`Problem` of a dataset; exits 2 on missing or unreadable data."""
    check_data([name], data_dir, ml1m_file)
    if name in SYNTHETIC:
        m, n, nnz, preset = SYNTHETIC[name]
        n_test = nnz // 9
        ratings = synthetic_ratings(m, n, nnz + n_test, seed=0)
        held = np.zeros(len(ratings), dtype=bool)
        held[np.random.default_rng(1).choice(len(ratings), n_test, replace=False)] = True
        train, test = subset(ratings, ~held), subset(ratings, held)
        protocol = (f"synthetic {m} x {n}, low rank, log-normal popularity; "
                    f"{n_test:,} more ratings held out at random as the test set")
        index = Index(np.arange(1, n + 1), np.arange(1, m + 1))   # every id, rated or not
        return Problem(name, train, test, index, preset, protocol)
    files, preset, protocol = REAL[name]
    paths = data_files(name, data_dir, ml1m_file)
    try:
        if name == "ml-100k":
            train, test = (read_ratings(p) for p in paths)
        elif name == "ml-1m":
            train, test = ml1m_split(read_ratings(paths[0]))
        else:
            train, test = read_monti_mat(paths[0])
    except DataError as e:
        fail(str(e))
    return Problem(name, train, test, Index.from_ratings(train, test), preset, protocol)


def synthetic_ratings(n_items, n_users, n_ratings, seed, rank=10, noise=0.5):
    """``n_ratings`` distinct 1-5 star ratings of an items x users matrix.

    Positions: item and user drawn independently with log-normal popularity
    weights (a heavy tail like MovieLens'), duplicates redrawn. Values:
    clip(round(3.6 + item bias + user bias + rank-``rank`` signal + noise), 1, 5).
    Ids are 1-based as in MovieLens.
    """
    if n_ratings > n_items * n_users:
        raise ValueError("more ratings than cells")
    rng = np.random.default_rng(seed)
    p_item = rng.lognormal(0.0, ITEM_SPREAD, n_items)
    p_user = rng.lognormal(0.0, USER_SPREAD, n_users)
    keys = np.empty(0, dtype=np.int64)
    while keys.size < n_ratings:
        draw = int(1.2 * (n_ratings - keys.size)) + 100
        items = rng.permutation(np.repeat(np.arange(n_items), rng.multinomial(draw, p_item / p_item.sum())))
        users = np.repeat(np.arange(n_users), rng.multinomial(draw, p_user / p_user.sum()))
        keys = np.union1d(keys, items * n_users + users)
    keys = np.sort(rng.choice(keys, n_ratings, replace=False))
    items, users = np.divmod(keys, n_users)
    P = rng.normal(0.0, 1.0 / np.sqrt(rank), (n_items, rank)).astype(np.float32)
    Q = rng.normal(0.0, 0.8, (n_users, rank)).astype(np.float32)
    score = 3.6 + rng.normal(0.0, 0.4, n_items)[items] + rng.normal(0.0, 0.4, n_users)[users]
    for lo in range(0, n_ratings, 1 << 20):   # the rank-r signal in slices: O(2^20 r) memory
        sl = slice(lo, lo + (1 << 20))
        score[sl] += np.einsum("ij,ij->i", P[items[sl]], Q[users[sl]])
    score += rng.normal(0.0, noise, n_ratings)
    stars = np.clip(np.rint(score), 1, 5)
    return Ratings(users + 1, items + 1, stars, f"synthetic(seed={seed})")


def status_mib(field, pid="self"):
    """A memory field of Linux's /proc/PID/status (VmHWM: peak resident,
    VmRSS: resident now) in MiB; None where there is none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def max_rss_mib():
    """Peak resident memory of this process so far, MiB.

    Linux's VmHWM (/proc/self/status) where there is one: ru_maxrss survives
    exec, so a subprocess would report its parent's peak when that is higher.
    """
    peak = status_mib("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def reset_peak():
    """Start this process's peak resident memory (max_rss_mib) afresh
    (Linux: /proc/self/clear_refs; elsewhere nothing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def mean_of(rows):
    """The mean of dicts of numbers, key by key (the first dict's keys)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def write_json(path, value):
    """``value`` as indented JSON to ``path`` (a script's --json)."""
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
