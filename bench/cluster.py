"""The Dask engine against the CPU engine: seconds per (loss, gradient)
evaluation of both stages at the preset's shape, as a fit with the Numba
optimiser makes it (objective_into on the engine's workspace: for the Dask
engine the vectors stay on the workers), with the CPU engine in this process
and the Dask engine on a LocalCluster of 1 and 2 worker processes (the cores
shared among them), measured in one run; the ratio is what the actors and
the exchanges through the driver cost on one machine, where splitting
cannot gain. Also each engine's set-up.

    pip install -e '.[dask]'
    python bench/cluster.py --datasets ml-100k ml-1m --json bench/results/cluster.json

Data: ../shared/data (see bench/README.md), or the synthetic shapes.
"""
import common  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import argparse
import json
import os
import time

import numpy as np

from glocalk_np.config import Config
from glocalk_np.engines.cluster import DaskEngine
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.params import flatten, init_global_kernel, init_layers, optimised
from glocalk_np.scale import RatingScale


def median_seconds(engine, stage, params, repeats):
    """Median seconds of fg(x, g) in the engine's workspace, after a warm-up."""
    template = optimised(stage, params)
    x0 = flatten(template)
    fg = engine.objective_into(stage, template)
    ws = engine.workspace(x0.size, 10)
    ws.vectors.assign(ws.x, x0)
    fg(ws.x, ws.g)                              # warm: compile or load, first buffers
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fg(ws.x, ws.g)
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--json", dest="out")
    args = parser.parse_args()
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        common.fail(f"the Dask engine needs dask.distributed ({e}): pip install -e '.[dask]'")
    results = {}
    for name in args.datasets:
        problem = common.load(name, args.data_dir)
        R = problem.matrix(problem.train)
        config = Config.from_preset(problem.preset)
        R = RatingScale.of(R.data, config.scale).matrix_to_model(R)
        m, n = R.shape
        params = init_layers(n, n_hidden=config.n_hidden, n_layers=config.n_layers,
                             kernel_dim=config.kernel_dim, seed=0)
        params["C"] = init_global_kernel(m, config.gk_size, seed=0)
        hyper = dict(lambda_2=config.lambda_2, lambda_s=config.lambda_s,
                     dot_scale=config.dot_scale, dtype=np.float32)
        cpu = CpuEngine(R, **hyper)
        row = {"shape": [m, n], "nnz": int(R.nnz),
               "cpu": {s: median_seconds(cpu, s, params, args.repeats)
                       for s in ("pretrain", "finetune")}}
        for workers in args.workers:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                              memory_limit=0, dashboard_address=":0",
                              silence_logs=40) as cluster, Client(cluster) as client:
                tic = time.perf_counter()
                engine = DaskEngine(R, client=client, halo=config.gk_size // 2, **hyper)
                setup = time.perf_counter() - tic
                row[f"dask-{workers}"] = {
                    "setup": setup, **{s: median_seconds(engine, s, params, args.repeats)
                                       for s in ("pretrain", "finetune")}}
        results[name] = row
        for key, r in row.items():
            if isinstance(r, dict):
                ratio = "" if key == "cpu" else "  ({:.2f}x, {:.2f}x the CPU engine)".format(
                    r["pretrain"] / row["cpu"]["pretrain"], r["finetune"] / row["cpu"]["finetune"])
                print(f"{name} {key:7s} pre-training {r['pretrain'] * 1e3:8.1f} ms  fine-tuning "
                      f"{r['finetune'] * 1e3:8.1f} ms" + ratio
                      + (f"  set-up {r['setup']:.1f} s" if "setup" in r else ""), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
