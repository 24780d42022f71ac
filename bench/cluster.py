"""The Dask engine against the CPU engine: seconds per (loss, gradient)
evaluation of both stages at the preset's shape, as a fit with the Numba
optimiser makes it (objective_into on the engine's workspace: for the Dask
engine the vectors stay on the workers), with the CPU engine in this process
and the Dask engine on a LocalCluster of 1 and 2 worker processes (the cores
shared among them). The two engines take turns, evaluation by evaluation,
and the ratio is the median of the turns' ratios: these machines drift by
10-20% within a session, and timed one after the other the engines had
given 1.19x where in turns they give 1.07x. The ratio is what the actors
and the exchanges through the driver cost on one machine, where splitting
cannot gain. Also each engine's set-up.

    pip install -e '.[dask]'
    python bench/cluster.py --datasets ml-100k ml-1m --json bench/results/cluster.json

Traffic: the bytes a Dask evaluation moves, counted on the loopback
interface (all of it: driver, workers and scheduler share this machine; the
cluster is otherwise idle), against exchange_bytes' model of it.

Data: ../shared/data (see bench/README.md), or the synthetic shapes
(synth-ml-10m: ML-10M's shape; --no-cpu skips the in-process engine there).
"""
import common  # noqa: F401  first: sets OpenBLAS' spin before NumPy loads

import argparse
import time

import numpy as np

from glocalk_np.config import Config
from glocalk_np.engines.cluster import DaskEngine, usable_cpus
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.params import (STAGES, flatten, init_global_kernel, init_layers, layer_count,
                               optimised, user_axes)
from glocalk_np.scale import RatingScale


def loopback_bytes():
    """Bytes sent on the loopback interface so far (Linux; None elsewhere)."""
    try:
        for line in open("/proc/net/dev"):
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                return int(fields.split()[8])
    except OSError:
        pass
    return None


def exchange_bytes(stage, params, workers, itemsize):
    """The model of what one evaluation moves per worker (sent plus
    received), in bytes, with the optimiser's vectors on the workers:
    each reduction's part goes up to the driver and the sum comes back
    (network.REDUCTIONS, in the compute dtype: 'input' once per pass, of
    items x first hidden width; 'dH' items x last hidden width; 'dV0',
    'dU_out' the kernel vectors; fine-tuning adds 'w_mean', 'b_mean', 'dG');
    the replicated parameters (float64) go from the first share to the
    driver and on to each other share, one pass over each worker's link.
    Nothing moves with one worker. Messages' own headers are left out."""
    if workers == 1:
        return 0
    template = optimised(stage, params)
    last = layer_count(template) - 1
    m = params["C"].shape[0]
    first, hidden = template["W0"].shape[1], template[f"W{last}"].shape[0]
    parts = m * first + m * hidden + template["V0"].size + template[f"U{last}"].size + 1
    if stage == "finetune":
        parts += m * first + hidden + 1 + template["C"].shape[1]
    axes = user_axes(template)
    replicated = sum(a.size for k, a in template.items() if k not in axes)
    return 2 * parts * itemsize + 8 * replicated


def prepared(engine, stage, params, every_vector=True):
    """fg(x, g) in the engine's workspace at ``params``, warmed up (compile
    or cache load, first buffers), as a callable: one evaluation as a fit
    with the Numba optimiser makes it, the workspace's every vector in
    memory (as in a fit) or only x and g."""
    template = optimised(stage, params)
    x0 = flatten(template)
    fg = engine.objective_into(stage, template)
    ws = engine.workspace(x0.size, 10)
    ws.vectors.assign(ws.x, x0)
    rows = [M[i] for M in (ws.S, ws.Y) for i in range(10)]
    for v in (ws.t, ws.r, ws.d, *rows) if every_vector else ():
        ws.vectors.copy(ws.x, v)
    fg(ws.x, ws.g)
    return lambda: fg(ws.x, ws.g)


def seconds(evaluate):
    tic = time.perf_counter()
    evaluate()
    return time.perf_counter() - tic


def time_alone(evaluate, repeats):
    """(median seconds, loopback bytes per evaluation) of ``evaluate`` run
    alone ``repeats`` times."""
    sent = loopback_bytes()
    times = [seconds(evaluate) for _ in range(repeats)]
    sent = None if sent is None else (loopback_bytes() - sent) / repeats
    return float(np.median(times)), sent


def in_turns(evaluations, repeats):
    """{name: seconds of each of ``repeats`` calls}, the callables taking
    turns call by call: a drift of this machine's speed (20-40% within
    minutes here) then falls on every engine alike."""
    times = {name: [] for name in evaluations}
    for _ in range(repeats):
        for name, evaluate in evaluations.items():
            times[name].append(seconds(evaluate))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m"])
    parser.add_argument("--workers", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-cpu", dest="cpu", action="store_false",
                        help="skip the in-process CPU engine (ratios then absent)")
    parser.add_argument("--only-xg", dest="every_vector", action="store_false",
                        help="hold only the optimiser's x and g (where its 25 vectors do not "
                             "fit this machine; the peaks then leave 23 of them out)")
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--json", dest="out")
    args = parser.parse_args()
    results = {"every_vector": args.every_vector, "repeats": args.repeats}
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
        row = results[name] = {"shape": [m, n], "nnz": int(R.nnz)}
        cpu = None
        if args.cpu:        # kept for the comparisons in turns with each cluster
            common.reset_peak()
            cpu = CpuEngine(R, **hyper)
            row["cpu"] = {s: time_alone(prepared(cpu, s, params, args.every_vector),
                                     args.repeats)[0] for s in STAGES}
            row["cpu"]["peak_mib"] = common.max_rss_mib()
            report(name, "cpu", row)
        for workers in args.workers:
            threads = max(1, usable_cpus() // workers)     # local_cluster's share
            with common.local_dask(workers) as client:
                client.run(common.reset_peak)
                common.reset_peak()
                before = common.status_mib("VmRSS") or 0.0
                tic = time.perf_counter()
                engine = DaskEngine(R, client=client, halo=config.gk_size // 2, **hyper)
                r = row[f"dask-{workers}"] = {"threads": threads,
                                              "setup": time.perf_counter() - tic}
                for stage in STAGES:      # alone, one stage's vectors at a time as in a fit
                    r[stage], sent = time_alone(prepared(engine, stage, params, args.every_vector),
                                             args.repeats)
                    r[f"{stage}_alone"] = r[stage]
                    r[f"{stage}_bytes"] = {
                        "measured_per_worker": None if sent is None else sent / workers,
                        "model_per_worker": exchange_bytes(stage, params, workers, 4)}
                r["worker_peak_mib"] = sorted(client.run(common.max_rss_mib).values())
                r["driver_peak_beyond_data_mib"] = common.max_rss_mib() - before
                for stage in STAGES if cpu is not None else ():     # in turns
                    times = in_turns({"cpu": prepared(cpu, stage, params, args.every_vector),
                                      "dask": prepared(engine, stage, params, args.every_vector)},
                                     args.repeats)
                    r[stage] = float(np.median(times["dask"]))
                    r[f"{stage}_cpu"] = float(np.median(times["cpu"]))
                    r[f"{stage}_vs_cpu"] = float(np.median(np.divide(times["dask"],
                                                                     times["cpu"])))
                del engine
            report(name, f"dask-{workers}", row)
    if args.out:
        common.write_json(args.out, results)


def report(name, key, row):
    """One line of ``row[key]``: seconds per evaluation, ratios, traffic."""
    r = row[key]
    line = (f"{name} {key:7s} pre-training {r['pretrain'] * 1e3:8.1f} ms  fine-tuning "
            f"{r['finetune'] * 1e3:8.1f} ms")
    if "pretrain_vs_cpu" in r:
        line += ("  ({:.2f}x, {:.2f}x the CPU engine in turns with it; {:.2f}x, {:.2f}x each "
                 "alone)").format(*(r[f"{s}_vs_cpu"] for s in STAGES),
                                  *(r[f"{s}_alone"] / row["cpu"][s] for s in STAGES))
    if "setup" in r:
        line += f"  set-up {r['setup']:.1f} s"
    for stage in STAGES if key != "cpu" else ():
        b = r[f"{stage}_bytes"]
        if b["measured_per_worker"] is not None:
            line += (f"\n    {stage}: {b['measured_per_worker'] / 1e6:.2f} MB per worker per "
                     f"evaluation measured, {b['model_per_worker'] / 1e6:.2f} MB modelled")
    if "worker_peak_mib" in r:
        line += "\n    peak memory: workers " + ", ".join(
            f"{v:.0f} MiB" for v in r["worker_peak_mib"]) + \
            f"; driver {r['driver_peak_beyond_data_mib']:.0f} MiB beyond its data"
    elif "peak_mib" in r:
        line += f"\n    peak memory {r['peak_mib']:.0f} MiB"
    print(line, flush=True)


if __name__ == "__main__":
    main()
