"""Does the epoch training picks differ from the one the model's own
predictions would pick? Training scores each epoch with its engine's
forward pass (kernels, their summation order); a fitted model predicts with
inference.py's NumPy forward pass, the same network in the same dtype
summed in other orders (docs/model.md §10). This fits a preset on a
dataset, rescoring the test set after every fine-tuning epoch with the
model's path, and reports the largest difference between the two RMSEs and
whether both pick the same epoch.

    python bench/selection_scores.py --dataset ml-100k --out results/selection_scores.json

Data: ../shared/data (see bench/README.md for where to get it).
"""
import glocalk_np  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import argparse

import numpy as np

import common
from glocalk_np import inference
from glocalk_np.config import Config
from glocalk_np.fallback import Fallback
from glocalk_np.scale import RatingScale
from glocalk_np.scoring import EvalSet, held_out_scores
from glocalk_np.train import fit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k", choices=common.dataset_names())
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--out")
    args = parser.parse_args()
    common.check_data([args.dataset], args.data_dir)
    problem = common.load(args.dataset, args.data_dir)
    R = problem.matrix(problem.train)
    config = Config.from_preset(problem.preset)
    scale = RatingScale.of(R.data, config.scale)
    test = EvalSet.of_ratings(problem.test, problem.index)
    fallback, model_R = Fallback(R), scale.matrix_to_model(R)
    rows = []

    def rescore(record, state):
        if record.stage != "finetune":
            return
        H, WoutT, b = inference.output_factors("finetune", state.params, model_R, config.dtype,
                                               config.dot_scale)

        def network(r, c):
            return scale.to_user(np.einsum("ij,ij->i", H[r], WoutT[c]) + b[c])
        pred, kinds = fallback.predict(test.rows, test.cols, network, test.rows_known,
                                       test.cols_known)
        ours = held_out_scores(pred, kinds, test, scale)["rmse"]
        rows.append((record.epoch, record.metrics["test"]["rmse"], ours))
        print(f"epoch {record.epoch:3d}: engine {rows[-1][1]:.6f}  model {ours:.6f}", flush=True)

    fit(R, config, evals={"test": test}, callback=rescore)
    epochs, engine, model = (np.array(c) for c in zip(*rows))
    result = {"dataset": args.dataset, "preset": problem.preset, "epochs": len(rows),
              "max_abs_rmse_difference": float(np.abs(engine - model).max()),
              "engine_best_epoch": int(epochs[np.argmin(engine)]),
              "model_best_epoch": int(epochs[np.argmin(model)]),
              "smallest_gap_between_epochs": float(np.diff(np.sort(engine)).min())}
    print(result)
    if args.out:
        common.write_json(args.out, result)


if __name__ == "__main__":
    main()
