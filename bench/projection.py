"""A projection, not a run: the Dask engine at ML-20M's and Netflix's shapes
on 8 and 16 workers, at 1 and 10 Gbit/s.

Per worker it measures, on this machine, what one worker would compute: the
CPU engine on a synthetic problem of one share's shape (all the items, the
share's users, its ratings: ML-1M's preset, float32), seconds per (loss,
gradient) evaluation of each stage and the peak memory of that evaluation.
To that it adds by arithmetic what it cannot hold here: the optimiser's
other 23 float64 vectors of the share's parameters (the Numba L-BFGS-B keeps
25: x, g, d, t, r and 2 x 10 of memory), and the exchange, whose bytes per
worker per evaluation are bench/cluster.py's exchange_bytes (measured within
0.2% at ML-100K and ML-1M); every sum passes through the driver, so its link
carries K workers' traffic, half each way. Evaluations per epoch are those
of the ML-1M preset's fit (bench/results/fit_ml-1m_numba.json's
history, else 54 and 12).

    python bench/projection.py --json bench/results/projection.json

No data needed (synthetic shares).
"""
import common  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import argparse
import gc
import json
import time

import numpy as np

from cluster import exchange_bytes, prepared, time_alone
from glocalk_np.config import Config
from glocalk_np.data import Index
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.params import STAGES, init_global_kernel, init_layers, shapes, user_axes

# name -> (items, users, ratings): the public datasets' sizes; 90% train
SHAPES = {"ml-20m": (26_744, 138_493, 20_000_263), "netflix": (17_770, 480_189, 100_480_507)}
TRAIN_FRACTION = 0.9
OPTIMISER_VECTORS = 25
HISTORY = "bench/results/fit_ml-1m_numba.json"


def template(m, n, config):
    """Zero-memory arrays with the shapes of the parameters of an m x n
    problem (np.broadcast_to): for sizes, never for values."""
    return {k: np.broadcast_to(np.float64(0), shape)
            for k, shape in shapes(m, n, config.n_hidden, config.n_layers, config.kernel_dim,
                                   config.gk_size).items()}


def share_size(params, n_share):
    """Parameters one share of n_share users holds in its part of a vector
    (the replicated ones counted: the first share holds them)."""
    axes = user_axes(params)
    n = params["W0"].shape[0]
    return sum(a.size * (n_share / n if k in axes else 1) for k, a in params.items())


def evaluations_per_epoch():
    try:
        runs = json.load(open(HISTORY))["datasets"]["ml-1m"]["runs"]
    except (OSError, KeyError, ValueError):
        return {"pretrain": 54, "finetune": 12}
    hist = runs[0]["history"]
    return {s: float(np.mean([r["evaluations"] for r in hist if r["stage"] == s]))
            for s in STAGES}


def measure_share(m, n_share, nnz_share, config, repeats):
    """Seconds per evaluation of each stage and peak MiB of one share."""
    ratings = common.synthetic_ratings(m, n_share, nnz_share, seed=0)
    R = Index(np.arange(1, n_share + 1), np.arange(1, m + 1)).matrix(ratings)[0]
    del ratings
    gc.collect()
    params = init_layers(n_share, n_hidden=config.n_hidden, n_layers=config.n_layers,
                         kernel_dim=config.kernel_dim, seed=0)
    params["C"] = init_global_kernel(m, config.gk_size, seed=0)
    common.reset_peak()
    engine = CpuEngine(R, lambda_2=config.lambda_2, lambda_s=config.lambda_s,
                       dot_scale=config.dot_scale, dtype=np.float32)
    out = {s: time_alone(prepared(engine, s, params, every_vector=False), repeats)[0]
           for s in STAGES}
    out["peak_mib"] = common.max_rss_mib()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--gbits", nargs="+", type=float, default=[1, 10])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    config = Config.from_preset("ml-1m")
    evals = evaluations_per_epoch()
    rows = []
    print("A PROJECTION: per-worker compute measured on this machine on one share's shape; "
          "optimiser memory and exchange time by arithmetic (see the docstring)")
    print(f"evaluations per epoch: pre-training {evals['pretrain']:.0f}, "
          f"fine-tuning {evals['finetune']:.0f}")
    for name, (m, n, nnz) in SHAPES.items():
        params = template(m, n, config)
        for K in args.workers:
            n_share, nnz_share = -(-n // K), int(nnz * TRAIN_FRACTION) // K
            tic = time.perf_counter()
            share = measure_share(m, n_share, nnz_share, config, args.repeats)
            vectors_mib = (OPTIMISER_VECTORS - 2) * 8 * share_size(params, n_share) / 2 ** 20
            memory = share["peak_mib"] + vectors_mib
            for gbit in args.gbits:
                row = dict(data=name, workers=K, gbit_s=gbit, items=m, users_per_worker=n_share,
                           ratings_per_worker=nnz_share, memory_per_worker_gib=memory / 1024)
                for stage in STAGES:
                    sent = exchange_bytes(stage, params, K, 4)
                    comm = K * sent / 2 / (gbit * 1e9 / 8)
                    row[stage] = dict(compute_s=share[stage], exchange_s=comm,
                                      bytes_per_worker=sent,
                                      evaluation_s=share[stage] + comm,
                                      epoch_s=evals[stage] * (share[stage] + comm))
                rows.append(row)
                print(f"{name:8s} {K:3d} workers {gbit:4.0f} Gbit/s: per evaluation "
                      + ", ".join(f"{s} {row[s]['evaluation_s']:.2f} s ({row[s]['compute_s']:.2f} "
                                  f"compute + {row[s]['exchange_s']:.2f} exchange of "
                                  f"{row[s]['bytes_per_worker'] / 1e6:.0f} MB/worker)"
                                  for s in STAGES)
                      + f"; epoch {row['pretrain']['epoch_s']:.0f} s / "
                        f"{row['finetune']['epoch_s']:.0f} s; {memory / 1024:.1f} GiB per worker",
                      flush=True)
            print(f"  (share measured in {time.perf_counter() - tic:.0f} s)", flush=True)
    if args.out:
        common.write_json(args.out, dict(projection=True, evaluations_per_epoch=evals, rows=rows))


if __name__ == "__main__":
    main()
