"""Seconds, memory and FLOP rate of one (loss, gradient) evaluation: sparse engine vs dense baseline.

Every configuration (dataset, stage, engine, thread count) runs in a fresh
subprocess, so that its peak resident memory (Linux VmHWM; ru_maxrss
elsewhere) is its own; the training matrix reaches it as a .npz file. There
the engine is built and called once to warm up (Numba compilation or cache
load, and for fine-tuning the convolution's neighbourhood pattern), then
timed over --repeats calls (the median is reported). The sparse engine is
then profiled by kernel, and one real L-BFGS-B epoch of the preset
(docs/model.md §9) gives evaluations and seconds per epoch: with scipy's
optimiser there, and on the sparse engine with lbfgsb.py's (the same steps)
in a fresh process of its own, so that each optimiser's peak memory is its own.

Parameters are the initial ones (docs/model.md §8). The sparse fine-tuning cost grows
with the number s of convolution entries the ReLU keeps, so by default C is
given equal columns with the sign that makes the global kernel G a positive
constant: every entry of the 3 x 3 neighbourhood is kept, the largest
second-pass input possible (--conv init times the random initial C).
The dense baseline's cost does not depend on the parameters.
"""
import glocalk_np  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

import common
from dense_baseline import DenseGLocalK
from glocalk_np.kernels import cpu
from glocalk_np.params import STAGES, init_global_kernel, init_layers, optimised
from glocalk_np.config import Config
from glocalk_np.engines import make_engine
from glocalk_np.train import minimize_epoch

DEFAULT_DATASETS = ["ml-100k", "douban", "ml-1m", "synth-ml-1m", "synth-ml-10m"]
# ML-10M is timed for pre-training only (--stages overrides): its fine-tuning
# neighbourhood holds tens of millions of entries, a multi-GB set-up; the
# dense baseline would need 3 GB per m x n float32 matrix (see --dense-max-gb).
DATASET_STAGES = {"synth-ml-10m": ("pretrain",)}
DENSE_MATRICES = {"pretrain": 3, "finetune": 7}   # m x n arrays DenseGLocalK holds at its peak


# ----------------------------------------------------------------- FLOP counts
# A multiply-add counts 2. Elementwise activations, masks and reductions over
# m x n or m x h are not counted: the figures are the products each algorithm
# must do. h = hidden width, L = hidden layers, d = kernel dimension.

def kernel_flops(n, h, L, d):
    """Local kernels of all layers, both engines: K and W_eff (3d + 4 per
    weight), their gradient (5), dU and dV (two GEMMs with V and U, 4d, and
    two sums, 2)."""
    weights = 2 * n * h + (L - 1) * h * h
    return weights * (7 * d + 11)


def sparse_flops(stage, m, n, nnz, kept, h, L, d, gk):
    """The sparse engine (glocalk_np.model cost model). Pre-training: 5 sparse
    products over the nnz ratings (input layer forward and weight gradient,
    output layer SDDMM and its two gradients), 3 GEMMs m x h x h per extra
    hidden layer. Fine-tuning: the first pass forward and backward without an
    output layer (2 products over nnz, 6 GEMMs per hidden layer), the
    convolution and its kernel gradient (2 nnz gk^2 each), and a second pass
    like pre-training whose input layer works on the s = ``kept`` entries
    (forward, weight gradient, input gradient: 3 products over s)."""
    if stage == "pretrain":
        work = 10 * nnz * h + 6 * (L - 1) * m * h * h
    else:
        work = 10 * nnz * h + 6 * kept * h + 12 * (L - 1) * m * h * h + 4 * nnz * gk * gk
    return work + kernel_flops(n, h, L, d)


def dense_flops(stage, m, n, h, L, d, gk):
    """The dense baseline (and the official TF graph): every product with the
    input or output layer is an m x n x h GEMM. Pre-training: forward 2, backward
    3 (output weight and input gradients, input weight gradient). Fine-tuning:
    both passes forward (4), the second backward with its input gradient (4),
    the first backward (3), and the m x n convolution and its kernel gradient."""
    if stage == "pretrain":
        work = 10 * m * n * h + 6 * (L - 1) * m * h * h
    else:
        work = 22 * m * n * h + 12 * (L - 1) * m * h * h + 4 * gk * gk * m * n
    return work + kernel_flops(n, h, L, d)


# ----------------------------------------------------------------- kernel profile

class KernelTimer:
    """Times every public Numba kernel of glocalk_np.kernels.cpu while active.
    The engine looks them up as ``cpu.<name>`` at call time, so replacing the
    module attributes intercepts every call. Use it only once the kernels are
    compiled (a kernel compiled meanwhile would see the wrappers)."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def __enter__(self):
        self._saved = {k: f for k, f in vars(cpu).items()
                       if hasattr(f, "py_func") and not k.startswith("_")}
        for name, f in self._saved.items():
            setattr(cpu, name, self._timed(name, f))
        return self

    def __exit__(self, *exc):
        for name, f in self._saved.items():
            setattr(cpu, name, f)

    def _timed(self, name, f):
        def call(*args):
            tic = time.perf_counter()
            out = f(*args)
            self.seconds[name] += time.perf_counter() - tic
            return out
        return call


# ----------------------------------------------------------------- one configuration

def worker(spec):
    """Measure one configuration; returns a JSON-able dict (run in a fresh process)."""
    train = sp.load_npz(spec["matrix"]).tocsr()
    config = Config.from_preset(spec["preset"])
    m, n = train.shape
    stage, engine_name = spec["stage"], spec["engine"]
    out = {k: v for k, v in spec.items() if k != "matrix"}
    out.update(m=m, n=n, nnz=int(train.nnz), config=config.as_dict())
    if engine_name == "dense":
        need_gb = DENSE_MATRICES[stage] * m * n * 4 / 1e9
        if need_gb > spec["dense_max_gb"]:
            return dict(out, skipped=f"dense needs ~{need_gb:.0f} GB ({DENSE_MATRICES[stage]} "
                                     f"m x n float32 arrays of {m * n * 4 / 1e9:.1f} GB) "
                                     f"> --dense-max-gb {spec['dense_max_gb']}")
    out["rss_data_mib"] = common.max_rss_mib()
    params = init_layers(n, config.n_hidden, config.n_layers, config.kernel_dim, seed=0)
    if stage == "finetune":
        C = init_global_kernel(m, config.gk_size, seed=0)
        if spec["conv"] == "all":
            C = np.repeat(np.abs(C[:, :1]), C.shape[1], axis=1)
        params["C"] = C
    tic = time.perf_counter()
    if engine_name == "sparse":
        engine = make_engine(train, config)
    else:
        engine = DenseGLocalK(train, config.lambda_2, config.lambda_s, config.dot_scale)
    engine(stage, params)
    out["warmup_s"] = time.perf_counter() - tic
    out["kept"] = out["neighbourhood"] = None
    if engine_name == "sparse" and stage == "finetune":
        pre = engine.conv_preactivation(params)
        if spec["conv"] == "all" and not np.any(pre > 0):
            params["C"] = -params["C"]          # G was a negative constant: flip it
            pre = engine.conv_preactivation(params)
            engine(stage, params)
        out["kept"], out["neighbourhood"] = int(np.count_nonzero(pre > 0)), int(pre.size)
    if spec.get("epoch_only"):
        return time_epoch(engine, stage, params, config, spec["epoch_only"])

    times = []
    for _ in range(spec["repeats"]):
        tic = time.perf_counter()
        engine(stage, params)
        times.append(time.perf_counter() - tic)
    out["seconds"] = times
    out["median_s"] = float(np.median(times))
    h, L, d, gk = config.n_hidden, config.n_layers, config.kernel_dim, config.gk_size
    out["flops"] = (sparse_flops(stage, m, n, out["nnz"], out["kept"], h, L, d, gk)
                    if engine_name == "sparse" else dense_flops(stage, m, n, h, L, d, gk))
    out["gflops_per_s"] = out["flops"] / out["median_s"] / 1e9

    if engine_name == "sparse" and spec["profile_kernels"]:
        with KernelTimer() as prof:
            tic = time.perf_counter()
            for _ in range(spec["repeats"]):
                engine(stage, params)
            total = (time.perf_counter() - tic) / spec["repeats"]
        kernels = {k: v / spec["repeats"] for k, v in sorted(prof.seconds.items())}
        out["profile"] = dict(kernels, rest=total - sum(kernels.values()), total=total)
    out["rss_peak_mib"] = common.max_rss_mib()
    if spec["time_epoch"]:
        out.update(time_epoch(engine, stage, params, config, "scipy"))
    out["numba_threads"] = numba.get_num_threads()
    return out


EPOCH_KEYS = {"scipy": "epoch", "numba": "epoch_numba"}


def time_epoch(engine, stage, params, config, optimizer):
    """One L-BFGS-B epoch of the preset with ``optimizer``: evaluations, seconds split
    into the objective and the optimiser's own work, and the process's peak RSS, so
    each optimiser runs in a process of its own for its peak to be its own."""
    template = optimised(stage, params)
    iters = config.iters_pretrain if stage == "pretrain" else config.iters_finetune
    timed = _Timed(engine)
    tic = time.perf_counter()
    _, _, evaluations, _ = minimize_epoch(timed, stage, template, iters, optimizer)
    seconds = time.perf_counter() - tic
    # the rest is L-BFGS-B's own work on the flat vector (and scipy's copies of it)
    return {EPOCH_KEYS[optimizer]: dict(
        iters=iters, evaluations=evaluations, seconds=seconds, objective_s=timed.inside,
        optimizer_s=seconds - timed.inside, rss_peak_mib=common.max_rss_mib())}


def run_config(spec):
    """Run ``spec`` in a fresh subprocess with ``spec['threads']`` Numba and BLAS threads."""
    env = dict(os.environ)
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict({k: v for k, v in spec.items() if k != "matrix"},
                    error=f"exit {proc.returncode}: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- report

def _fmt(r, key, spec):
    """One figure of a result, '-' where it is missing, skipped or failed."""
    if r is None:
        return "-"
    if "error" in r or "skipped" in r:
        return "error" if "error" in r else "skipped"
    value = r.get(key)
    return "-" if value is None else format(value, spec)


class _Timed:
    """An engine whose objectives add the seconds spent inside them to ``inside``:
    the loss, the gradient and the (un)flattening the optimiser waits for;
    its other methods are the engine's."""

    def __init__(self, engine):
        self.engine, self.inside = engine, 0.0

    def _timed(self, f):
        def call(*args):
            tic = time.perf_counter()
            value = f(*args)
            self.inside += time.perf_counter() - tic
            return value
        return call

    def objective(self, stage, template):
        return self._timed(self.engine.objective(stage, template))

    def objective_into(self, stage, template):
        return self._timed(self.engine.objective_into(stage, template))

    def __getattr__(self, name):          # the rest (workspace, place, ...) as the engine's
        return getattr(self.engine, name)


def _epoch(r, key="epoch"):
    e = (r or {}).get(key)
    return (f"{e['evaluations']} ev {e['seconds']:.1f} s (opt {e['optimizer_s']:.2f}) "
            f"{e['rss_peak_mib']:.0f} MiB") if e else "-"


def print_tables(results, scaling):
    by = {(r["dataset"], r["stage"], r["engine"]): r for r in results}
    keys = list(dict.fromkeys((r["dataset"], r["stage"]) for r in results))

    print(f"\n{'dataset':<13} {'stage':<8} {'items x users':>13} {'nnz':>10} {'kept s':>10} "
          f"{'sparse s':>9} {'dense s':>9} {'dense/sparse':>12} {'sparse GF/s':>11} {'dense GF/s':>10}")
    for ds, stage in keys:
        sp_, de = by.get((ds, stage, "sparse")), by.get((ds, stage, "dense"))
        ref = sp_ or de
        ratio = (f"{de['median_s'] / sp_['median_s']:.1f}x"
                 if sp_ and de and "median_s" in sp_ and "median_s" in de else "-")
        shape, nnz = (f"{ref['m']}x{ref['n']}", f"{ref['nnz']:,}") if "m" in ref else ("-", "-")
        print(f"{ds:<13} {stage:<8} {shape:>13} {nnz:>10} "
              f"{_fmt(sp_, 'kept', ','):>10} {_fmt(sp_, 'median_s', '.4f'):>9} "
              f"{_fmt(de, 'median_s', '.4f'):>9} {ratio:>12} "
              f"{_fmt(sp_, 'gflops_per_s', '.1f'):>11} {_fmt(de, 'gflops_per_s', '.1f'):>10}")

    print(f"\n{'dataset':<13} {'stage':<8} {'sparse MiB':>10} {'dense MiB':>9} {'(data)':>7} "
          f"{'sparse epoch, scipy':>36} {'sparse epoch, numba':>36} {'dense epoch, scipy':>36}")
    for ds, stage in keys:
        sp_, de = by.get((ds, stage, "sparse")), by.get((ds, stage, "dense"))
        print(f"{ds:<13} {stage:<8} {_fmt(sp_, 'rss_peak_mib', '.0f'):>10} "
              f"{_fmt(de, 'rss_peak_mib', '.0f'):>9} {_fmt(sp_ or de, 'rss_data_mib', '.0f'):>7} "
              f"{_epoch(sp_):>36} {_epoch(sp_, 'epoch_numba'):>36} {_epoch(de):>36}")
    print("MiB: peak RSS of a fresh process over the evaluations; (data): before the engine; "
          "epoch: one L-BFGS-B run of the preset's iterations with scipy's optimiser or "
          "lbfgsb.py's (the same steps): evaluations, seconds, (opt: seconds outside the "
          "objective, the optimiser's own work), peak RSS")
    for r in results:
        if "skipped" in r or "error" in r:
            print(f"  {r['dataset']} {r['stage']} {r['engine']}: {r.get('skipped') or r['error']}")

    profiled = [r for r in results if "profile" in r]
    if profiled:
        names = sorted({k for r in profiled for k in r["profile"]} - {"rest", "total"})
        print("\nsparse engine by kernel, ms per evaluation (rest = GEMMs, elementwise, Python)")
        print(f"{'kernel':<18}" + "".join(f"{r['dataset'][:13] + ' ' + r['stage'][:4]:>20}"
                                         for r in profiled))
        for k in names + ["rest", "total"]:
            cells = [f"{1e3 * r['profile'].get(k, 0):.1f} ({100 * r['profile'].get(k, 0) / r['profile']['total']:.0f}%)"
                     for r in profiled]
            print(f"{k:<18}" + "".join(f"{c:>20}" for c in cells))

    if scaling:
        counts = sorted({r["threads"] for r in scaling})
        print("\nthread scaling, s/eval (Numba and OpenBLAS threads set per subprocess)")
        print(f"{'dataset':<13} {'stage':<8} {'engine':<7}" + "".join(f"{f'{t} thr':>10}" for t in counts)
              + "  speed-up")
        cells = defaultdict(dict)
        for r in scaling:
            cells[(r["dataset"], r["stage"], r["engine"])][r["threads"]] = r.get("median_s")
        for (ds, stage, engine), row in cells.items():
            vals = [row.get(t) for t in counts]
            speed = f"{vals[0] / vals[-1]:.2f}x" if None not in (vals[0], vals[-1]) else "-"
            print(f"{ds:<13} {stage:<8} {engine:<7}"
                  + "".join(f"{v:10.4f}" if v is not None else f"{'-':>10}" for v in vals)
                  + f"  {speed}")


def cpu_name():
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=common.dataset_names(), metavar="NAME",
                    help=f"default: {' '.join(DEFAULT_DATASETS)} (--quick: synth-tiny); "
                         f"known: {' '.join(common.dataset_names())}")
    ap.add_argument("--engines", nargs="+", choices=("sparse", "dense"), default=["sparse", "dense"])
    ap.add_argument("--stages", nargs="+", choices=STAGES,
                    help="default: both (ML-10M: pre-training only)")
    ap.add_argument("--repeats", type=int, help="timed evaluations per configuration (default 5; --quick 1)")
    ap.add_argument("--threads", nargs="+", type=int,
                    help="thread counts; the main table uses the largest, the others run the "
                         "--scaling dataset (default: 1 and all cores; --quick: all cores)")
    ap.add_argument("--scaling", default=None, metavar="NAME",
                    help="dataset of the thread-scaling runs (default synth-ml-1m, or the first dataset)")
    ap.add_argument("--conv", choices=("all", "init"), default="all",
                    help="fine-tuning point: 'all' = G a positive constant, every neighbourhood entry "
                         "kept (default); 'init' = the random initial C")
    ap.add_argument("--no-epoch", action="store_true", help="skip the one-epoch L-BFGS runs")
    ap.add_argument("--dense-max-gb", type=float, default=4.0,
                    help="skip the dense baseline where its m x n arrays would exceed this (default 4)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, no epoch runs: checks the script")
    ap.add_argument("--data-dir", default=str(common.DEFAULT_DATA_DIR))
    ap.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    datasets = args.datasets or (["synth-tiny"] if args.quick else DEFAULT_DATASETS)
    scaling_ds = args.scaling or ("synth-ml-1m" if "synth-ml-1m" in datasets else datasets[0])
    common.check_data(list(dict.fromkeys(datasets + [scaling_ds])), args.data_dir)
    cores = os.cpu_count()
    threads = sorted(set(args.threads or ([cores] if args.quick else [1, cores])))
    base = dict(repeats=args.repeats or (1 if args.quick else 5), conv=args.conv,
                dense_max_gb=args.dense_max_gb, profile_kernels=True)
    matrices = {}

    def configs(ds, n_threads, folder, **extra):
        if ds not in matrices:   # load once; workers read a compact .npz (their RSS stays theirs)
            problem = common.load(ds, args.data_dir)
            path = Path(folder) / f"{ds}.npz"
            sp.save_npz(path, problem.matrix(problem.train), compressed=False)
            matrices[ds] = dict(matrix=str(path), preset=problem.preset)
            del problem
        for stage in args.stages or DATASET_STAGES.get(ds, STAGES):
            for engine in args.engines:
                spec = dict(base, dataset=ds, stage=stage, engine=engine, threads=n_threads,
                            **matrices[ds], **extra)
                r = run_config(spec)
                if engine == "sparse" and spec.get("time_epoch") and "error" not in r:
                    # lbfgsb.py's epoch (the same steps) in a fresh process: its own peak RSS
                    numba_run = run_config(dict(spec, epoch_only="numba"))
                    if "error" in numba_run:
                        print(f"  numba epoch: {numba_run['error']}", flush=True)
                    else:
                        r.update(numba_run)
                print(f"  {ds} {stage} {engine} {n_threads}t: "
                      + (f"{r['median_s']:.4f} s/eval" if "median_s" in r
                         else r.get("skipped") or r.get("error")), flush=True)
                yield r

    machine = dict(cpu=cpu_name(), cores=cores, platform=platform.platform(),
                   python=platform.python_version(), numpy=np.__version__, numba=numba.__version__)
    print(f"timing with {threads[-1]} thread(s) on {machine['cpu']}, {cores} cores")
    with tempfile.TemporaryDirectory(prefix="glocalk-speed-") as tmp:
        results = [r for ds in datasets for r in
                   configs(ds, threads[-1], tmp, time_epoch=not (args.quick or args.no_epoch))]
        scaling = [r for r in results if r["dataset"] == scaling_ds] if len(threads) > 1 else []
        for t in threads[:-1]:
            scaling += list(configs(scaling_ds, t, tmp, time_epoch=False, profile_kernels=False))
    print_tables(results, scaling)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(machine=machine, settings=base, threads=threads,
                                                   results=results, scaling=scaling), indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
