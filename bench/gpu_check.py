"""One prepared check of the CUDA engine on a GPU machine (issue 5).

    PYTHONPATH=. python3 bench/gpu_check.py DIR [--json FILE]

DIR holds MovieLens-100K's u1.base (and u1.test: its pairs are predicted in
the agreement check). Needs numpy, scipy, numba, numba-cuda and cuda-bindings.
It prints, section by section, and last one JSON line with all the figures:
1. the environment: versions (numba, numba-cuda, cuda-bindings) and the GPU;
2. agreement with the CPU engine on ML-100K, both stages, float64 and float32,
   at the initial parameters and at spread kernels (U, V ~ N(0, 0.3));
3. one (loss, gradient) evaluation of each stage timed through the flat
   objective scipy calls (median of 10 after warm-up, transfers included), on
   ML-100K and on a uniformly random ML-1M-shaped matrix (3706 x 6040,
   900,188 ratings, h = 500, float32), with the CPU engine on the same machine.
A failing section is reported and the others still run; the exit status is 1
if any section failed or an agreement figure is over its tolerance.
"""
import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback

os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

import numpy as np
import scipy.sparse as sp

from glocalk_np.engines import cuda_unavailable
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.params import STAGES, flatten, init_global_kernel, init_layers, optimised
from glocalk_np.config import PRESETS

# float64: max relative error against the CPU engine. float32: the loss and the
# predictions against CPU float32, and the gradient against CPU float64, where
# the GPU may be at most F32_FACTOR times as far off as CPU float32 is.
TOLERANCE = {"float64": 1e-8, "float32": 1e-4}
F32_FACTOR = 4.0
ML100K_SHAPE = (1682, 943)                         # items x users (docs/model.md §11)
ML1M_SHAPE, ML1M_RATINGS = (3706, 6040), 900_188
HIDDEN = 500
TIMED, WARMUP, CPU_TIMED = 10, 2, 3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="directory with MovieLens-100K's u1.base (and u1.test)")
    ap.add_argument("--json", help="also write the JSON result to this file")
    args = ap.parse_args()
    start = time.perf_counter()
    result, failed = {}, []

    def section(name, fn, *a):
        print(f"\n== {name}", flush=True)
        tic = time.perf_counter()
        try:
            result[name] = fn(*a)
        except Exception:
            failed.append(name)
            result[name] = {"error": traceback.format_exc(limit=8)}
            print(result[name]["error"], flush=True)
        print(f"-- {name}: {time.perf_counter() - tic:.1f} s", flush=True)
        return result[name]

    env = section("environment", environment)
    if env.get("cuda_unavailable"):
        failed.append("environment")
    else:
        data = section("ml-100k data", read_ml100k, args.data)
        if "error" not in data:
            result["ml-100k data"] = data.pop("summary")
            section("agreement ml-100k", agreement, data)
            section("timing ml-100k", timing, lambda: data["train"], "ml-100k")
        section("timing ml-1m-shaped", timing, ml1m_shaped, "ml-1m")
    for name, r in result.get("agreement ml-100k", {}).items():
        if isinstance(r, dict) and not r.get("ok", True):
            failed.append(f"agreement {name}")
    result["failed"] = failed
    result["total_s"] = time.perf_counter() - start
    line = json.dumps(result, default=str)
    print("\n" + line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    sys.exit(1 if failed else 0)


def environment():
    """Versions and the GPU, printed first so that a failure later still says where it ran."""
    info = {"python": platform.python_version(), "numpy": np.__version__}
    for pkg in ("scipy", "numba", "numba-cuda", "cuda-bindings", "llvmlite"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    print(json.dumps(info), flush=True)
    info["cuda_unavailable"] = cuda_unavailable()
    if info["cuda_unavailable"]:
        print("CUDA engine unavailable:", info["cuda_unavailable"], flush=True)
        return info
    from numba import cuda
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    free, total = cuda.current_context().get_memory_info()
    info.update(numba_cuda_implementation=getattr(cuda, "implementation", None),
                gpu=name, compute_capability=list(dev.compute_capability),
                gpu_memory_gib=round(total / 2 ** 30, 1), cpu_count=os.cpu_count())
    try:
        info["driver"] = list(cuda.cudadrv.driver.driver.get_version())
        info["runtime"] = list(cuda.runtime.get_version())
    except Exception as exc:
        info["driver"] = f"unknown ({exc})"
    print(json.dumps(info), flush=True)
    return info


def read_ml100k(directory):
    """u1.base as the items x users training matrix and u1.test's pairs."""
    def read(name):
        a = np.loadtxt(os.path.join(directory, name), dtype=np.int64, usecols=(0, 1, 2))
        return sp.csr_matrix((a[:, 2].astype(np.float64), (a[:, 1] - 1, a[:, 0] - 1)),
                             shape=ML100K_SHAPE)
    train = read("u1.base")
    test_path = os.path.join(directory, "u1.test")
    pairs = sp.coo_matrix(read("u1.test") if os.path.exists(test_path) else train)
    print(f"train {train.shape} with {train.nnz} ratings; {pairs.nnz} prediction pairs"
          + ("" if os.path.exists(test_path) else " (u1.test missing: the training pairs)"))
    return {"train": train, "rows": pairs.row.astype(np.int64), "cols": pairs.col.astype(np.int64),
            "summary": {"shape": list(train.shape), "nnz": int(train.nnz), "pairs": int(pairs.nnz)}}


def ml1m_shaped(seed=0):
    """3706 x 6040 with 900,188 uniformly placed ratings 1-5: ML-1M's training
    size. Uniform placement gives a larger convolution pattern than real data."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(ML1M_SHAPE[0] * ML1M_SHAPE[1], ML1M_RATINGS, replace=False)
    rows, cols = np.divmod(cells, ML1M_SHAPE[1])
    return sp.csr_matrix((rng.integers(1, 6, cells.size).astype(np.float64), (rows, cols)),
                         shape=ML1M_SHAPE)


def model_params(train, spread, seed=0):
    """Initial parameters (docs/model.md §8) for ``train``; with ``spread`` U, V ~ N(0, 0.3)
    so that the local kernels hold zeros and values in (0, 1)."""
    m, n = train.shape
    params = init_layers(n, n_hidden=HIDDEN, n_layers=2, kernel_dim=5, seed=seed)
    if spread:
        rng = np.random.default_rng(seed + 1)
        for k in params:
            if k[0] in "UV":
                params[k] = rng.normal(0.0, 0.3, params[k].shape)
    params["C"] = init_global_kernel(m, seed=seed)
    return params


def engines(train, preset, dtype):
    from glocalk_np.engines.cuda import CudaEngine
    hp = {k: PRESETS[preset][k] for k in ("lambda_2", "lambda_s", "dot_scale")}
    return (CpuEngine(train, dtype=dtype, **hp), CudaEngine(train, dtype=dtype, **hp))


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300))


def agreement(data):
    """Loss, gradient and predictions of the CUDA engine against the CPU
    engine's in the same dtype, and for float32 both against CPU float64."""
    out = {}
    for point in ("init", "spread"):
        params = model_params(data["train"], spread=point == "spread")
        reference = {}
        for dtype in ("float64", "float32"):
            cpu, gpu = engines(data["train"], "ml-100k", dtype)
            for stage in STAGES:
                loss, grads = cpu(stage, params)
                g_loss, g_grads = gpu(stage, params)
                errs = {k: rel(g_grads[k], grads[k]) for k in grads}
                worst = max(errs, key=errs.get)
                r = {"loss": abs(g_loss - loss) / abs(loss), "grad_max": errs[worst],
                     "grad_worst": worst,
                     "predict": rel(gpu.predict(stage, params, data["rows"], data["cols"]),
                                    cpu.predict(stage, params, data["rows"], data["cols"]))}
                if dtype == "float64":
                    reference[stage] = grads
                    r["ok"] = max(r["loss"], r["grad_max"], r["predict"]) < TOLERANCE[dtype]
                else:
                    gpu32 = max(rel(g_grads[k], reference[stage][k]) for k in grads)
                    cpu32 = max(rel(grads[k], reference[stage][k]) for k in grads)
                    r["vs_cpu64"] = {"gpu32_grad_max": gpu32, "cpu32_grad_max": cpu32}
                    r["ok"] = (max(r["loss"], r["predict"]) < TOLERANCE[dtype]
                               and gpu32 <= max(F32_FACTOR * cpu32, TOLERANCE[dtype]))
                out[f"{point}/{dtype}/{stage}"] = r
                vs64 = ("" if dtype == "float64" else "  vs CPU float64: GPU {gpu32_grad_max:.1e},"
                        " CPU {cpu32_grad_max:.1e}".format(**r["vs_cpu64"]))
                print(f"{point:6s} {dtype} {stage:8s} loss {r['loss']:.1e}  grad {r['grad_max']:.1e}"
                      f" ({worst})  predict {r['predict']:.1e}{vs64}"
                      f"  {'ok' if r['ok'] else 'OVER TOLERANCE'}", flush=True)
    return out


def median_time(fun, x, repeats, sync=None):
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        tic = time.perf_counter()
        fun(x)
        if sync:
            sync()
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def timing(make_train, preset):
    """Seconds per flat (loss, gradient) evaluation, float32, GPU and CPU."""
    from numba import cuda
    train = make_train()
    params = model_params(train, spread=False)
    tic = time.perf_counter()
    cpu, gpu = engines(train, preset, "float32")
    out = {"shape": list(train.shape), "nnz": int(train.nnz), "h": HIDDEN, "dtype": "float32",
           "engine_setup_s": time.perf_counter() - tic}
    for stage in STAGES:
        template = optimised(stage, params)
        x = flatten(template)
        r = {"n_params": int(x.size)}
        tic = time.perf_counter()
        fun = gpu.objective(stage, template)
        for _ in range(WARMUP):
            fun(x)
        r["gpu_first_calls_s"] = time.perf_counter() - tic   # JIT compilation and buffers
        r["gpu_s"] = median_time(fun, x, TIMED, cuda.synchronize)
        plan = gpu._plan(stage, template)
        r["transfer_s"] = median_time(
            lambda v: (plan.x.copy_to_device(v), plan.out.copy_to_host()), x, TIMED, cuda.synchronize)
        if stage == "finetune":
            r["conv_pattern_nnz"] = int(plan.S.nnz)
        cpu_fun = cpu.objective(stage, template)
        cpu_fun(x)
        r["cpu_s"] = median_time(cpu_fun, x, CPU_TIMED)
        r["speedup"] = r["cpu_s"] / r["gpu_s"]
        free, total = cuda.current_context().get_memory_info()
        r["gpu_memory_used_gib"] = round((total - free) / 2 ** 30, 2)
        out[stage] = r
        print(f"{preset} {stage:8s} GPU {r['gpu_s'] * 1e3:8.2f} ms (transfers {r['transfer_s'] * 1e3:.2f} ms)"
              f"  CPU {r['cpu_s'] * 1e3:9.1f} ms  x{r['speedup']:.1f}", flush=True)
    return out


if __name__ == "__main__":
    main()
