"""The Dask engine: the network evaluated on shares of the users, one share
per worker of a dask.distributed cluster (pip install 'glocalk-np[dask]').

Each worker holds a ShareWorker actor: its users' columns of R and the halo
the convolution reads (sent once, at set-up; the worker builds its own index
arrays and neighbourhood pattern), and runs network.Network over
shares.ShareOps. The evaluation runs in a thread of the actor that stops at
every named reduction (network.REDUCTIONS); the driver collects the shares'
parts, sums them in share order (so a run repeats bit for bit with the same
worker count) and sends the sum back to every share. Everything goes through
Dask itself: actor method calls, no transport of our own.

What this first version leaves to the driver: the flat parameter vector and
the optimiser's state (the sharded L-BFGS-B state is still to come), and
the assembly of the gradient.
"""
import queue
import threading

import numpy as np
import scipy.sparse as sp

from ..network import Network
from ..params import check_for_matrix, flatten, optimised, unflatten
from ..sparse import Pattern
from .base import Engine, EngineFailure
from .shares import ShareOps, even_bounds, gather_grads, ring, share_params


class ShareWorker:
    """A Dask actor: one share's operations and the thread that evaluates
    on them, paused at each reduction (see the module docstring)."""

    def __init__(self, ring_matrix, offset, n_own, n_users, leader, settings, threads=None):
        import numba
        if threads:
            numba.set_num_threads(threads)
        hyper = {k: settings[k] for k in ("lambda_2", "lambda_s", "dot_scale")}
        self.ops = ShareOps(ring_matrix, offset, n_own, n_users, self._reduce, leader,
                            settings["dtype"], **hyper)
        self.network = Network(self.ops)
        self._sums, self._parts = queue.Queue(), queue.Queue()

    def _reduce(self, name, a):
        """In the evaluation thread: hand the part to the driver, wait for
        the sum, put it in place."""
        loss = hasattr(a, "value")
        self._parts.put(("reduce", name, np.array(a.value if loss else a, copy=True)))
        total = self._sums.get()
        if loss:
            a.value = float(total)
        else:
            a[...] = total
        return a

    def start(self, task, stage, P, rows=None, cols=None):
        """Begin ``task`` ('loss_and_grad', 'predict', 'output_factors' or
        'conv_preactivation') at the share's parameters P; returns the first
        step (see resume)."""
        P = {k: np.ascontiguousarray(v, dtype=self.ops.dtype) for k, v in P.items()}

        def run():
            try:
                self._parts.put(("done", None, self._task(task, stage, P, rows, cols)))
            except BaseException as e:          # noqa: BLE001 - reported to the driver
                self._parts.put(("error", f"{type(e).__name__}: {e}", None))
        threading.Thread(target=run, daemon=True).start()
        return self._parts.get()

    def resume(self, total):
        """The sum of the last reduction's parts; returns the next step:
        ('reduce', name, part), ('done', None, result) or ('error', text, None)."""
        self._sums.put(total)
        return self._parts.get()

    def _task(self, task, stage, P, rows, cols):
        network = self.network
        if task == "loss_and_grad":
            G = {k: (np.zeros_like if k.startswith("b") else np.empty_like)(v)
                 for k, v in P.items()}
            return network.loss_and_grad(stage, P, G).value, G
        if task == "predict":
            return np.array(network.predict(stage, P, rows, cols))
        fwd = network.forward(stage, P)
        if task == "output_factors":
            b = P[f"b{len(fwd.Weff) - 1}"]
            return tuple(np.array(a, dtype=np.float64) for a in (fwd.hidden[-1], fwd.WoutT, b))
        if task == "conv_preactivation":     # at the halo pattern's entries in own columns
            S = self.ops.neighbourhood(int(round(np.sqrt(P["C"].shape[1]))))[0]
            lo = self.ops.offset
            own = (S.indices >= lo) & (S.indices < lo + self.ops.R.shape[1])
            return S.rows[own], S.indices[own] - lo, fwd.conv.pre[own].copy()
        raise ValueError(f"unknown task {task!r}")


class DaskEngine(Engine):
    """The engine contract (base.py) over a dask.distributed ``client``:
    the users split into ``shares`` blocks (default: one per worker), each
    on one worker, ``halo`` users beyond each block for the convolution
    (gk_size // 2)."""

    def __init__(self, train, *, client, lambda_2, lambda_s, dot_scale=1.0, dtype=np.float32,
                 halo=1, shares=None, threads=None):
        R = sp.csr_matrix(train)
        R.sum_duplicates()
        R.sort_indices()
        R.eliminate_zeros()
        if R.nnz == 0:
            raise ValueError("training matrix has no ratings")
        if not np.all(np.isfinite(R.data)) or R.data.min() <= 0:
            raise ValueError("ratings must be finite and > 0 (0 means missing)")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.shape = R.shape
        self.settings = dict(lambda_2=float(lambda_2), lambda_s=float(lambda_s),
                             dot_scale=float(dot_scale), dtype=self.dtype)
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise ValueError("the Dask cluster has no workers")
        count = len(workers) if shares is None else shares
        if not 1 <= count <= R.shape[1]:
            raise ValueError(f"shares must be in [1, {R.shape[1]}] (one user at least "
                             f"each), got {count}")
        self.bounds = even_bounds(R.shape[1], count)
        self.workers = [workers[k % len(workers)] for k in range(count)]
        self._R = R
        nthreads = client.scheduler_info()["workers"]
        futures = []
        for k, ((lo, hi), worker) in enumerate(zip(self.bounds, self.workers)):
            X, offset = ring(R, lo, hi, halo)
            futures.append(client.submit(
                ShareWorker, X, offset, hi - lo, R.shape[1], k == 0, self.settings,
                threads or nthreads[worker].get("nthreads"), actor=True, workers=[worker],
                pure=False))
        self.actors = [self._result(k, f.result) for k, f in enumerate(futures)]

    def _result(self, k, call, *args, **kwargs):
        """call(*args, **kwargs) for share k (a method name of its actor, or
        a callable), or EngineFailure naming its worker: a lost worker fails
        the look-up of an actor's method, the call or its result."""
        try:
            if isinstance(call, str):
                call = getattr(self.actors[k], call)
            return call(*args, **kwargs)
        except Exception as e:                  # noqa: BLE001 - any failure of the cluster
            raise EngineFailure(f"the Dask worker {self.workers[k]} (share {k + 1} of "
                                f"{len(self.bounds)}) failed or was lost: "
                                f"{type(e).__name__}: {e}") from None

    # ----- the exchange -------------------------------------------------
    def _run(self, task, stage, params, per_share=None):
        """Run ``task`` on every share; the results, in share order."""
        extra = per_share or [{}] * len(self.actors)
        steps = [self._result(k, "start", task, stage, share_params(params, lo, hi), **x)
                 for k, ((lo, hi), x) in enumerate(zip(self.bounds, extra))]
        while True:
            steps = [self._result(k, s.result) for k, s in enumerate(steps)]
            kinds = {s[0] for s in steps}
            if "error" in kinds:
                k = next(k for k, s in enumerate(steps) if s[0] == "error")
                raise EngineFailure(f"the Dask worker {self.workers[k]} (share {k + 1}): "
                                    f"{steps[k][1]}")
            if kinds == {"done"}:
                return [s[2] for s in steps]
            names = {s[1] for s in steps}
            if kinds != {"reduce"} or len(names) != 1:
                raise EngineFailure(f"the shares fell out of step: {sorted(map(str, names))}")
            total = steps[0][2].copy()
            for s in steps[1:]:             # share order: the same bits every run
                total += s[2]
            steps = [self._result(k, "resume", total) for k in range(len(self.actors))]

    def _params(self, stage, params):
        check_for_matrix(params, stage, *self.shape)
        return {k: np.ascontiguousarray(v, dtype=self.dtype)
                for k, v in optimised(stage, params).items()}

    # ----- the contract -------------------------------------------------
    def __call__(self, stage, params):
        P = self._params(stage, params)
        results = self._run("loss_and_grad", stage, P)
        return results[0][0], gather_grads([r[1] for r in results], self.bounds, P)

    def objective_into(self, stage, template):
        check_for_matrix(template, stage, *self.shape)

        def fg(x, g):
            loss, grads = self(stage, unflatten(x, template))
            g[:] = flatten(grads)
            return loss
        return fg

    def predict(self, stage, params, rows, cols):
        P = self._params(stage, params)
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        share = np.searchsorted([hi for _, hi in self.bounds], cols, side="right")
        picks = [np.flatnonzero(share == k) for k in range(len(self.bounds))]
        parts = self._run("predict", stage, P, [
            {"rows": rows[p], "cols": cols[p] - lo} for p, (lo, _) in zip(picks, self.bounds)])
        out = np.empty(rows.size, dtype=self.dtype)
        for p, part in zip(picks, parts):
            out[p] = part
        return out

    def output_factors(self, stage, params):
        parts = self._run("output_factors", stage, self._params(stage, params))
        return (parts[0][0], np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]))

    def conv_preactivation(self, params):
        parts = self._run("conv_preactivation", "finetune", self._params("finetune", params))
        S = Pattern.from_csr(self._R).neighbourhood(int(round(np.sqrt(params["C"].shape[1]))))
        place = sp.csr_matrix((np.arange(1, S.nnz + 1), S.indices, S.indptr), shape=S.shape)
        out = np.empty(S.nnz, dtype=self.dtype)
        for (rows, cols, pre), (lo, _) in zip(parts, self.bounds):
            out[np.asarray(place[rows, cols + lo]).ravel() - 1] = pre
        return out
