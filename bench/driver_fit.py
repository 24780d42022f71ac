"""The driver's memory during a short fit on a LocalCluster: how far its
resident memory rises above where it stood once the data was loaded, while
the Dask engine trains (the preset's network, a few short epochs, the test
set scored after each). With the parameters gathered to the driver every
epoch, that rise held several copies of them; kept on the workers, it holds
one, where pre-training hands over to fine-tuning and at the end.

    pip install -e '.[dask]'
    python bench/driver_fit.py --dataset ml-1m --workers 2
    PYTHONPATH=/path/to/an/older/tree python bench/driver_fit.py ...   # to compare

Data: ../shared/data (see bench/README.md).
"""
import common  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import argparse
import math
import time

import glocalk_np
from glocalk_np.estimator import GLocalK
from glocalk_np.params import shapes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs=2, default=[2, 4],
                        metavar=("PRETRAIN", "FINETUNE"))
    parser.add_argument("--iters", type=int, default=5, help="L-BFGS-B iterations per epoch")
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--json", dest="out")
    args = parser.parse_args()
    problem = common.load(args.dataset, args.data_dir)
    model = GLocalK(preset=problem.preset, device="dask", optimizer="numba",
                    epochs_pretrain=args.epochs[0], epochs_finetune=args.epochs[1],
                    iters_pretrain=args.iters, iters_finetune=args.iters)
    config = model.config
    n_params = sum(math.prod(shape) for shape in shapes(
        problem.index.n_items, problem.index.n_users, config.n_hidden, config.n_layers,
        config.kernel_dim, config.gk_size).values())
    with common.local_dask(args.workers):
        common.reset_peak()
        before = common.status_mib("VmRSS") or 0.0
        tic = time.perf_counter()
        model.fit(problem.train, test=problem.test, index=problem.index)
        seconds = time.perf_counter() - tic
        rise = common.max_rss_mib() - before
    result = {"library": glocalk_np.__file__, "dataset": args.dataset, "workers": args.workers,
              "epochs": args.epochs, "iters": args.iters, "parameters": n_params,
              "float64_parameters_mib": n_params * 8 / 2**20,
              "driver_rise_mib": rise, "seconds": seconds,
              "test_rmse": model.summary_["test"]["rmse"]}
    print(f"{args.dataset}, {args.workers} workers, {args.epochs[0]} + {args.epochs[1]} epochs of "
          f"{args.iters} iterations ({result['library']}): the driver rose {rise:.0f} MiB "
          f"(the parameters in float64: {result['float64_parameters_mib']:.0f} MiB); "
          f"{seconds:.0f} s; test RMSE {result['test_rmse']:.4f}", flush=True)
    if args.out:
        common.write_json(args.out, result)


if __name__ == "__main__":
    main()
