"""The optimiser's own cost: scipy's L-BFGS-B against glocalk_np.lbfgsb, on a
cheap objective of GLocal-K's sizes, beside the memory-bandwidth floor.

    python bench/optimizer.py [--sizes 1214373 6405000] [--iters 10] [--json out.json]

The objective is an ill-conditioned separable quadratic (0.5 sum a_i (x_i -
c_i)^2, a_i from 1 to 1e3) so that 10 iterations never converge; its own
time is measured inside and subtracted, so 'optimizer' is everything else:
scipy's Fortran/C sweeps and copies, or lbfgsb's Numba sweeps. Both runs
start from the same point and take the same steps (nit and nfev are printed
and must agree). The floor is what an exact port cannot beat: the direction
reads the 2 x maxcor stored vectors twice per iteration; it is timed here as
two BLAS gemv sweeps over a maxcor x n matrix each (S and Y).
The Numba workspace is
made once per fit, so its second run is timed (the first touches fresh
pages); scipy allocates its own per call, as it does every epoch of a fit.
The sizes are ML-100K's (1,214,373 parameters) and ML-1M's (6,405,000, 6040
users) pre-training networks; no data is needed.
"""
import argparse
import time

import glocalk_np  # noqa: F401  (first: it shortens OpenBLAS's idle spin, see README)
import numpy as np
from scipy.optimize import minimize

import common
from glocalk_np import lbfgsb


def quadratic(n, seed=0):
    rng = np.random.default_rng(seed)
    a = np.exp(rng.uniform(0, np.log(1e3), n))
    c = rng.standard_normal(n)
    return a, c


def timed_objectives(a, c):
    """(scipy-style fun, lbfgsb-style fg, seconds spent inside them)."""
    inside = [0.0]

    def fun(x):
        tic = time.perf_counter()
        r = x - c
        g = a * r
        f = 0.5 * float(r @ g)
        inside[0] += time.perf_counter() - tic
        return f, g

    def fg(x, g):
        tic = time.perf_counter()
        np.subtract(x, c, out=g)
        f = 0.5 * float(g @ (a * g))
        np.multiply(a, g, out=g)
        inside[0] += time.perf_counter() - tic
        return f
    return fun, fg, inside


def floor_seconds(n, m=10, repeats=5):
    """Two gemv sweeps over the memory (S and Y, m x n each), best of ``repeats``."""
    S, Y, v = np.ones((m, n)), np.ones((m, n)), np.ones(n)
    best = np.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        S @ v
        Y @ v
        S.T @ v[:m]
        Y.T @ v[:m]
        best = min(best, time.perf_counter() - tic)
    return best


def run(n, iters):
    a, c = quadratic(n)
    x0 = np.zeros(n)
    out = {"n": n, "iters": iters}
    fun, fg, inside = timed_objectives(a, c)
    tic = time.perf_counter()
    r = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": iters, "maxcor": 10})
    wall = time.perf_counter() - tic
    out["scipy"] = dict(nit=int(r.nit), nfev=int(r.nfev), wall_s=wall, objective_s=inside[0],
                        optimizer_per_eval_s=(wall - inside[0]) / r.nfev)
    # as in a fit, the workspace is made once and serves every epoch: time the second
    ws = lbfgsb.Workspace(n, 10)
    for _ in range(2):
        fun, fg, inside = timed_objectives(a, c)
        tic = time.perf_counter()
        q = lbfgsb.minimize(fg, x0, maxiter=iters, workspace=ws)
        wall = time.perf_counter() - tic
    out["numba"] = dict(nit=q.nit, nfev=q.nfev, wall_s=wall, objective_s=inside[0],
                        optimizer_per_eval_s=(wall - inside[0]) / q.nfev)
    out["same_steps"] = (r.nit, r.nfev) == (q.nit, q.nfev)
    out["x_rel_diff"] = float(np.abs(q.x - r.x).max() / np.abs(r.x).max())
    out["floor_per_iter_s"] = floor_seconds(n)
    out["numba_per_iter_s"] = (out["numba"]["wall_s"] - out["numba"]["objective_s"]) / q.nit
    out["speedup_per_eval"] = (out["scipy"]["optimizer_per_eval_s"]
                               / out["numba"]["optimizer_per_eval_s"])
    out["numba_over_floor"] = out["numba_per_iter_s"] / out["floor_per_iter_s"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_214_373, 6_405_000])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = [run(n, args.iters) for n in args.sizes]
    print(f"{'n':>10} {'nit':>4} {'nfev':>5} {'same':>5} {'scipy/eval':>11} {'numba/eval':>11} "
          f"{'ratio':>6} {'numba/iter':>11} {'floor/iter':>11} {'/floor':>7}")
    for r in results:
        print(f"{r['n']:>10,} {r['numba']['nit']:>4} {r['numba']['nfev']:>5} {str(r['same_steps']):>5} "
              f"{r['scipy']['optimizer_per_eval_s']:>10.3f}s {r['numba']['optimizer_per_eval_s']:>10.3f}s "
              f"{r['speedup_per_eval']:>5.1f}x {r['numba_per_iter_s']:>10.3f}s "
              f"{r['floor_per_iter_s']:>10.3f}s {r['numba_over_floor']:>6.2f}x")
    if args.json:
        common.write_json(args.json, results)


if __name__ == "__main__":
    main()
