"""Digests of what a run computes, for tests/test_repeatable.py: run as a
script, it prints one JSON object of sha256 prefixes of the loss and every
gradient array of both stages in float32 (the default), on a fixed random
problem, and of a short fit's per-epoch history and final parameters
(float32, both optimisers' steps: the Numba L-BFGS-B). Equal digests from
two processes mean bit-identical numbers."""
import hashlib
import json
import sys

import numpy as np
import scipy.sparse as sp


def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def main():
    from glocalk_np.engines.cpu import CpuEngine
    from glocalk_np.params import init_global_kernel, init_layers
    from glocalk_np.config import Config
    from glocalk_np.train import fit
    rng = np.random.default_rng(7)
    m, n, h = 300, 400, 64
    R = sp.random(m, n, density=0.06, format="csr", random_state=7,
                  data_rvs=lambda k: rng.integers(1, 6, k).astype(float))
    params = init_layers(n, n_hidden=h, n_layers=2, kernel_dim=5, seed=7)
    params["C"] = init_global_kernel(m, seed=7)
    out = {}
    for dtype in (np.float32,):
        engine = CpuEngine(R, lambda_2=20.0, lambda_s=0.006, dot_scale=1.0, dtype=dtype)
        for stage in ("pretrain", "finetune"):
            loss, grads = engine(stage, params)
            out[f"{np.dtype(dtype).name}/{stage}"] = digest(np.float64(loss), *grads.values())
    state = fit(R, Config(n_hidden=h, epochs_pretrain=2, epochs_finetune=2, iters_pretrain=5,
                          iters_finetune=5, optimizer="numba", seed=7))
    out["fit/history"] = digest(np.array([r.train_rmse for r in state.history]))
    out["fit/params"] = digest(*state.params.values())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
