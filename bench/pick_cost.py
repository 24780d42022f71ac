"""Cost and scale of the pick model (glocalk_np/picks.py): seconds and peak
memory of `picks.fit` and of scoring users with the fitted model, by
catalogue size, on either side of EASE_MAX_ITEMS, where EASE gives way to
item-kNN.

Why: EASE inverts a dense items x items Gram matrix (8 m^2 bytes: 0.8 GB
at 10,000 items, 80 GB at 100,000), so past a limit it cannot run; the
limit, what runs beyond it, and that its memory stays bounded are stated in
picks.py's docstring, and this script measures them.

Per catalogue size m (--sizes; default 1,000, 4,000 and 10,000 items,
EASE, 10,000 being the limit, and 10,001, 30,000 and 100,000, item-kNN), a
synthetic items x users 0/1 pattern, seeded: item popularity a power law
(weight 1 / rank^--zipf, ranks shuffled over the items), users' rating
counts log-normal (mean --per-user, sigma --user-sigma), pairs drawn
independently and duplicates redrawn until the pattern holds exactly
--per-item ratings per item on average (at most --max-ratings in all), with
ratings / --per-user users. Each size runs in a fresh subprocess, so that
its peak resident memory (Linux VmHWM, ru_maxrss elsewhere) is its own;
there, after the pattern is built:

- EASE sizes: `picks.choose_penalty` (the penalty search: EASE for each of
  picks.PENALTIES on at most SEARCH_ITEMS items) and then `picks.fit(R,
  penalty=the chosen one)` are timed apart; fit seconds are their sum, what
  `picks.fit(R)` costs with the search (plus building the 0/1 pattern once
  more, negligible). Also the stored entries of the sparse Gram matrix
  pattern @ pattern.T that picks._gram makes before densifying it.
- item-kNN sizes: `picks.fit(R)` (no search: item-kNN has no penalty).
- scoring: --score-users users' columns of the CSC 0/1 pattern (as
  ranking.Ranking._pattern builds it), scored with `model.scores` in the
  blocks of users recommend uses (ranking's _user_block).

Memory: each phase's peak resident memory less the resident memory once the
pattern was built (what the phase adds). Weights MB: 8 bytes per kept
weight (float32 value and int32 index), the model file's share.

A size whose estimated need passes /proc/meminfo's MemAvailable is skipped
with the reason; an item-kNN size whose subprocess passes --case-timeout
seconds is run again with half the ratings (said in the output).

Timings taken while other work ran on the machine (run under `nice`, as
here) are upper bounds; peak memory is not affected.

    cd bench && nice -n 10 ../.venv/bin/python pick_cost.py --json results/pick_cost.json
    cd bench && python pick_cost.py --sizes 1000 20000 --score-users 200
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp

import common
from glocalk_np import picks

SIZES = (1_000, 4_000, 10_000, 10_001, 30_000, 100_000)
UPPER_BOUND_NOTE = ("timings taken while other work ran on the machine (under nice) are upper "
                    "bounds; peak memory is not affected")


def pattern_of(m, per_item, per_user, max_ratings, zipf, user_sigma, seed):
    """The synthetic items x users 0/1 pattern (CSR float64) and its users."""
    rng = np.random.default_rng(seed)
    target = int(min(per_item * m, max_ratings))
    n = max(1, int(round(target / per_user)))
    w_item = 1.0 / np.arange(1, m + 1) ** zipf
    w_item = rng.permutation(w_item / w_item.sum())
    counts = rng.lognormal(np.log(per_user) - user_sigma ** 2 / 2, user_sigma, n)
    w_user = counts / counts.sum()
    keys = np.empty(0, dtype=np.int64)
    while keys.size < target:
        draw = int(1.2 * (target - keys.size)) + 100
        items = rng.choice(m, size=draw, p=w_item)
        users = rng.choice(n, size=draw, p=w_user)
        keys = np.union1d(keys, items.astype(np.int64) * n + users)
    keys = np.sort(rng.choice(keys, target, replace=False))
    items, users = np.divmod(keys, n)
    R = sp.csr_matrix((np.ones(target), (items, users)), shape=(m, n))
    return R


def rss_mib():
    return common.status_mib("VmRSS")


def timed(f):
    start = time.perf_counter()
    value = f()
    return value, time.perf_counter() - start


def run_case(args):
    """One size in this (fresh) process; its record as JSON on stdout."""
    from glocalk_np import ranking
    m = args.case
    R, build_s = timed(lambda: pattern_of(m, args.per_item, args.per_user, args.max_ratings,
                                         args.zipf, args.user_sigma, args.seed))
    pattern = sp.csr_matrix((np.ones(R.nnz), R.indices, R.indptr), shape=R.shape).tocsc()
    n = R.shape[1]
    per_item = np.diff(R.indptr)
    per_user = np.diff(pattern.indptr)
    base = rss_mib()
    rec = dict(items=m, users=n, ratings=int(R.nnz), build_seconds=build_s,
               item_max=int(per_item.max()), item_median=float(np.median(per_item)),
               user_mean=float(per_user.mean()), user_max=int(per_user.max()),
               sum_user_count_squared=float(np.sum(per_user.astype(np.float64) ** 2)),
               rss_after_pattern_mib=base)
    if m <= picks.EASE_MAX_ITEMS:
        common.reset_peak()
        binary = getattr(picks, "binary", None) or picks._binary
        penalty, search_s = timed(lambda: picks.choose_penalty(binary(R), args.seed))
        rec.update(search_seconds=search_s, search_peak_extra_mib=common.max_rss_mib() - base)
        common.reset_peak()
        model, fit_s = timed(lambda: picks.fit(R, penalty=penalty, seed=args.seed))
        rec.update(fit_given_penalty_seconds=fit_s, fit_seconds=search_s + fit_s,
                   fit_peak_extra_mib=common.max_rss_mib() - base)
        rec["peak_extra_mib"] = max(rec["search_peak_extra_mib"], rec["fit_peak_extra_mib"])
    else:
        common.reset_peak()
        model, fit_s = timed(lambda: picks.fit(R, seed=args.seed))
        rec.update(search_seconds=None, fit_given_penalty_seconds=None, fit_seconds=fit_s,
                   fit_peak_extra_mib=common.max_rss_mib() - base)
        rec["peak_extra_mib"] = rec["fit_peak_extra_mib"]
    W = model.weights
    rec.update(method=model.method, penalty=model.penalty, weights_nnz=int(W.nnz),
               weights_mb=8 * W.nnz / 1e6, weights_per_item=W.nnz / m,
               weights_in_memory_mb=(W.data.nbytes + W.indices.nbytes + W.indptr.nbytes) / 1e6)

    # scoring, in recommend's blocks of users
    block = max(1, min(ranking.USER_BLOCK, ranking.SCORE_BLOCK_BYTES // (8 * m)))
    users = min(args.score_users, n)
    common.reset_peak()
    start = time.perf_counter()
    checksum = 0.0
    for lo in range(0, users, block):
        S = model.scores(pattern[:, lo:min(lo + block, users)])
        checksum += float(S[0, 0])
    score_s = time.perf_counter() - start
    scored_ratings = int(pattern.indptr[users])
    rec.update(score_users=users, score_block=block,
               score_seconds=score_s, score_ms_per_user=1e3 * score_s / users,
               score_us_per_rating=1e6 * score_s / max(scored_ratings, 1),
               score_peak_extra_mib=common.max_rss_mib() - base)
    if model.method == "ease":   # what picks._gram holds before densifying it
        del model, W
        G = R @ R.T                          # R is already 0/1
        rec["gram_stored_entries"] = int(G.nnz)
        rec["gram_sparse_mib"] = (G.data.nbytes + G.indices.nbytes + G.indptr.nbytes) / 2**20
        del G
    rec["peak_extra_mib"] = max(rec["peak_extra_mib"], rec["score_peak_extra_mib"])
    print(json.dumps(rec))


def need_gib(m, ratings):
    """A rough estimate of a size's peak memory (GiB): EASE's dense Gram
    matrix, its sparse form (12 bytes an entry at worst) and a copy for the
    inverse's temporaries; item-kNN's blocks and its m * NEIGHBOURS weights."""
    if m <= picks.EASE_MAX_ITEMS:
        return (8 + 12 + 8) * m * m / 2**30 + 1.0
    return (m * picks.NEIGHBOURS * 8 * 3 + 40 * ratings) / 2**30 + 1.5


def mem_available_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def child(args, m, max_ratings):
    cmd = [sys.executable, os.path.abspath(__file__), "--case", str(m),
           "--per-item", str(args.per_item), "--per-user", str(args.per_user),
           "--max-ratings", str(max_ratings), "--zipf", str(args.zipf),
           "--user-sigma", str(args.user_sigma), "--score-users", str(args.score_users),
           "--seed", str(args.seed)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        return None, f"passed --case-timeout {args.case_timeout:.0f} s"
    if out.returncode:
        return None, f"exit {out.returncode}: {out.stderr.strip()[-400:]}"
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="items m")
    ap.add_argument("--per-item", type=float, default=50.0, help="ratings per item, mean")
    ap.add_argument("--per-user", type=float, default=100.0, help="ratings per user, mean")
    ap.add_argument("--max-ratings", type=int, default=5_000_000)
    ap.add_argument("--zipf", type=float, default=1.0, help="item popularity 1 / rank^zipf")
    ap.add_argument("--user-sigma", type=float, default=1.0, help="log-normal sigma of users' counts")
    ap.add_argument("--score-users", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-timeout", type=float, default=420.0,
                    help="seconds an item-kNN size may take before it is rerun with half the ratings")
    ap.add_argument("--json", dest="out")
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)   # the subprocess's size
    args = ap.parse_args()
    if args.case is not None:
        return run_case(args)

    print(f"pick model cost: EASE up to {picks.EASE_MAX_ITEMS:,} items, item-kNN beyond; "
          f"{picks.NEIGHBOURS} weights kept per item; {len(picks.PENALTIES)} penalties searched "
          f"on <= {picks.SEARCH_ITEMS:,} items")
    print(f"synthetic: {args.per_item:g} ratings per item, {args.per_user:g} per user (mean), "
          f"<= {args.max_ratings:,} ratings, item popularity 1/rank^{args.zipf:g}, seed {args.seed}")
    print(f"note: {UPPER_BOUND_NOTE}")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    records, notes = [], []
    for m in args.sizes:
        ratings = int(min(args.per_item * m, args.max_ratings))
        need, have = need_gib(m, ratings), mem_available_gib()
        if have is not None and need > have:
            note = f"m={m:,}: skipped, needs ~{need:.1f} GiB, MemAvailable {have:.1f} GiB"
            print(note, flush=True)
            notes.append(note)
            records.append(dict(items=m, skipped=note))
            continue
        max_ratings = args.max_ratings
        start = time.perf_counter()
        rec, why = child(args, m, max_ratings)
        while rec is None and why.startswith("passed") and m > picks.EASE_MAX_ITEMS \
                and ratings > 100_000:
            ratings //= 2
            max_ratings = ratings
            note = f"m={m:,}: {why}; run again with {ratings:,} ratings"
            print(note, flush=True)
            notes.append(note)
            rec, why = child(args, m, max_ratings)
        if rec is None:
            note = f"m={m:,}: failed, {why}"
            print(note, flush=True)
            notes.append(note)
            records.append(dict(items=m, failed=why))
            continue
        rec["wall_seconds"] = time.perf_counter() - start
        if max_ratings != args.max_ratings:
            rec["ratings_reduced"] = True
        records.append(rec)
        print(f"  m={m:,} done in {rec['wall_seconds']:.0f} s", flush=True)

    head = (f"{'items':>8} {'users':>7} {'ratings':>10} {'method':>6} {'penalty':>7} "
            f"{'fit s':>8} {'search s':>8} {'ms/user':>8} {'peak+ GiB':>9} {'weights MB':>10}")
    print()
    print(head)
    for r in records:
        if "method" not in r:
            print(f"{r['items']:>8,} {r.get('skipped') or r.get('failed')}")
            continue
        print(f"{r['items']:>8,} {r['users']:>7,} {r['ratings']:>10,} {r['method']:>6} "
              f"{fmt(r['penalty'], '.0f'):>7} {r['fit_seconds']:>8.1f} "
              f"{fmt(r['search_seconds'], '.1f'):>8} {r['score_ms_per_user']:>8.3f} "
              f"{r['peak_extra_mib'] / 1024:>9.2f} {r['weights_mb']:>10.1f}")
    for note in notes:
        print(note)
    print(f"note: {UPPER_BOUND_NOTE}")

    if args.out:
        import glocalk_np
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=common.REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "glocalk_np"], capture_output=True,
                               text=True, cwd=common.REPO).stdout.strip()
        common.write_json(args.out, dict(
            what="pick model (picks.py) fit and scoring cost by catalogue size",
            note=UPPER_BOUND_NOTE, notes=notes,
            settings=dict(sizes=args.sizes, per_item=args.per_item, per_user=args.per_user,
                          max_ratings=args.max_ratings, zipf=args.zipf,
                          user_sigma=args.user_sigma, score_users=args.score_users,
                          seed=args.seed, case_timeout=args.case_timeout),
            picks=dict(EASE_MAX_ITEMS=picks.EASE_MAX_ITEMS, NEIGHBOURS=picks.NEIGHBOURS,
                       SEARCH_ITEMS=picks.SEARCH_ITEMS, PENALTIES=list(picks.PENALTIES),
                       BLOCK_BYTES=getattr(picks, "BLOCK_BYTES", None),
                       ITEM_BLOCK=getattr(picks, "ITEM_BLOCK", None)),
            machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                         load_average_at_start=load, mem_available_gib=mem_available_gib(),
                         glocalk_np=getattr(glocalk_np, "__version__", None),
                         commit=commit, library_uncommitted_changes=bool(dirty)),
            results=records))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
