"""The sharded engine: the network evaluated on shares of the users
(network.py's "Shares"), each share a Share somewhere a Transport reaches.
The Dask engine (cluster.py) is this engine over Dask's actors; a transport
(Ray, MPI, the threads of tests/thread_transport.py) implements only
starting the shares, calling them and failing (Transport below).

Each share holds a Share: its users' columns of R and the halo the
convolution reads (sent once, at set-up; the share builds its own index
arrays and neighbourhood pattern), and runs network.Network over
shares.ShareOps. The evaluation runs in a thread of the Share that stops at
every named reduction (network.REDUCTIONS); the driver collects the shares'
parts, sums them in share order (so a run repeats bit for bit with the same
share count, whatever the transport) and sends the sum back to every share.

The optimiser's vectors are sharded the same way (ShardedVectors, the
Workspace.vectors of lbfgsb.minimize): each share keeps its part of x, the
gradient, the direction and the memory S, Y (its users' slices; the
replicated arrays on the first share only, so that each entry counts once),
runs lbfgsb's O(n) steps on it and returns partial dot products, summed on
the driver in share order. The driver keeps the small matrices and the line
search. The trainer's parameters stay on the shares between epochs too
(place, parameters_in, SharedParams, base.RemoteParams): each epoch starts
from them there, is scored there, and the best epoch's copy is made there;
where pre-training hands over to fine-tuning, the shares carry them over
into the new layout themselves. The driver gathers them for a checkpoint
and for the fitted model, never the optimiser's memory.
"""
import itertools
import queue
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import lbfgsb
from ..kernels import cpu
from ..network import Network
from ..params import (check_for_matrix, flatten, optimised, placeholders, unflatten,
                      user_axes)
from ..sparse import Pattern
from .base import Engine, EngineFailure, RemoteParams, training_matrix
from .shares import ShareOps, even_bounds, gather_grads, ring, share_params


@dataclass(frozen=True)
class Ref:
    """A vector of the optimiser, held in parts by the shares: ``key``
    names it, ``rows`` is its number of rows for a matrix (the memory S, Y),
    ``row`` picks one (ws.S[slot])."""
    key: int
    rows: int | None = None
    row: int | None = None

    def __getitem__(self, row):
        return Ref(self.key, self.rows, row)


def in_share_order(parts):
    """The sum of the shares' parts, added in share order: the same bits
    every run with the same shares, whatever the transport."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


class Share:
    """One share's operations and the thread that evaluates on them, paused
    at each reduction (see the module docstring), where a transport put it
    (a Dask actor); the driver calls its public methods."""

    threads_used = None      # Numba threads of the last evaluation or vector step
    first_seconds = None     # wall time of the first evaluation, start to result

    def __init__(self, ring_matrix, offset, n_own, n_users, leader, settings, threads=None,
                 alone=False):
        self._threads = threads
        hyper = {k: settings[k] for k in ("lambda_2", "lambda_s", "dot_scale")}
        self.ops = ShareOps(ring_matrix, offset, n_own, n_users, self._reduce, leader,
                            settings["dtype"], **hyper)
        self.network = Network(self.ops)
        self._sums, self._parts = queue.Queue(), queue.Queue()
        self._layout, self._vectors, self._flat = None, {}, None
        self._alone = alone          # the only share: its parts are the sums

    def _use_threads(self):
        """Numba's thread count is per calling thread: set it in each that
        runs kernels (the evaluation's, the transport's); the count in use is
        kept as ``threads_used``."""
        import numba
        if self._threads:
            numba.set_num_threads(min(self._threads, numba.config.NUMBA_NUM_THREADS))
        self.threads_used = numba.get_num_threads()

    def _reduce(self, name, a):
        """In the evaluation thread: hand the part to the driver, wait for
        the sum, put it in place."""
        if self._alone:
            return a
        loss = hasattr(a, "value")
        self._parts.put(("reduce", name, np.array(a.value if loss else a, copy=True)))
        total = self._sums.get()
        if loss:
            a.value = float(total)
        else:
            a[...] = total
        return a

    def timings(self):
        """(threads_used, first_seconds), for the engine's report."""
        return self.threads_used, self.first_seconds

    def start(self, task, stage, P, rows=None, cols=None):
        """Begin ``task`` ('loss_and_grad', 'predict' or
        'conv_preactivation') at the share's parameters P, or
        'loss_and_grad_into' at P = (x, g, the replicated arrays, every
        parameter's name in order); returns the first step (see resume)."""
        if isinstance(P, dict):
            P = {k: np.ascontiguousarray(v, dtype=self.ops.dtype) for k, v in P.items()}

        def run():
            self._use_threads()
            tic = time.perf_counter()
            try:
                result = self._task(task, stage, P, rows, cols)
                if self.first_seconds is None:     # compile or cache load, first buffers
                    self.first_seconds = time.perf_counter() - tic
                self._parts.put(("done", None, result))
            except BaseException as e:          # noqa: BLE001 - reported to the driver
                self._parts.put(("error", f"{type(e).__name__}: {e}", None))
        threading.Thread(target=run, daemon=True).start()
        return self._parts.get()

    # ----- this share's part of the optimiser's vectors ---------------------
    def set_layout(self, layout, carry=None):
        """[(name, shape)] of the arrays this share's part of a vector holds,
        in order; a new layout drops the vectors of the old, except that
        with ``carry`` = (old, new) the arrays of the vector ``old`` that
        the new layout has too are copied into the vector ``new``."""
        kept = None
        if carry is not None and carry[0].key in self._vectors:
            kept = self._views(self._vectors[carry[0].key])
        if layout != self._layout:
            self._layout, self._vectors = layout, {}
        if kept is not None:       # (the same key and layout: a copy onto itself)
            self._put_named(carry[1], kept)
        return sum(int(np.prod(shape)) for _, shape in layout)

    def _put_named(self, ref, arrays):
        """Write the arrays ``arrays`` ({name: array}) into this share's
        part of the vector ``ref``, where its layout has them."""
        views = self._views(self._local(ref))
        for name, a in arrays.items():
            if name in views:
                views[name][...] = a

    def _local(self, ref):
        if not isinstance(ref, Ref):
            return ref
        a = self._vectors.get(ref.key)
        if a is None:
            n = sum(int(np.prod(shape)) for _, shape in self._layout)
            a = self._vectors[ref.key] = np.zeros(n if ref.rows is None else (ref.rows, n))
        return a if ref.row is None else a[ref.row]

    def vectors(self, op, *args):
        """lbfgsb.HostVectors' ``op`` on this share's parts of the Refs in
        ``args``; 'put' writes a part, 'take' returns one."""
        self._use_threads()
        if op == "put":
            self._local(args[0])[:] = args[1]
            return None
        if op == "put_named":
            return self._put_named(*args)
        if op == "take":
            if args[0].key not in self._vectors:
                raise LookupError("the vector was dropped with its stage's layout")
            return self._local(args[0]).copy()
        return getattr(lbfgsb.HostVectors, op)(*map(self._local, args))

    def _flat_arrays(self, x):
        """(parameters, gradients) as {name: array} views of two flat
        compute-dtype buffers laid out like this share's part of a vector,
        kept between evaluations; the parameters cast from x's part in one
        parallel pass, as the CPU engine's objective_into does."""
        local = self._local(x)
        if self._flat is None or self._flat[0].size != local.size:
            self._flat = tuple(np.empty(local.size, self.ops.dtype) for _ in range(2))
        flat_p, flat_g = self._flat
        cpu.copy_cast(local, flat_p)
        return self._views(flat_p), self._views(flat_g)

    def _views(self, flat):
        out, pos = {}, 0
        for name, shape in self._layout:
            size = int(np.prod(shape))
            out[name] = flat[pos:pos + size].reshape(shape)
            pos += size
        return out

    def arrays(self, ref, names):
        """The arrays ``names`` of this share's part of the vector ``ref``."""
        views = self._views(self._local(ref))
        return {name: views[name] for name in names}

    def resume(self, total):
        """The sum of the last reduction's parts; returns the next step:
        ('reduce', name, part), ('done', None, result) or ('error', text, None)."""
        self._sums.put(total)
        return self._parts.get()

    def _at(self, x, replicated, names):
        """(parameters, gradients) of ``_flat_arrays`` at this share's part
        of the vector x, with the replicated arrays (the first share's, sent
        to the others), the parameters ``names`` in order."""
        P, G = self._flat_arrays(x)
        P.update({k: np.ascontiguousarray(v, dtype=self.ops.dtype)
                  for k, v in replicated.items()})
        return {k: P[k] for k in names}, G

    def _task(self, task, stage, P, rows, cols):
        network = self.network
        if task == "loss_and_grad_into":  # P: (x, g, the replicated arrays, all names)
            x, g, replicated, names = P
            P, G = self._at(x, replicated, names)
            G.update({k: np.empty_like(v) for k, v in P.items() if k not in G})
            for k, v in G.items():
                if k.startswith("b"):
                    v[:] = 0
            loss = network.loss_and_grad(stage, P, G).value
            cpu.copy_cast(self._flat[1], self._local(g))
            return loss
        if isinstance(P, tuple):         # (x, the replicated arrays, names): at a vector
            P = self._at(*P)[0]
        if task == "loss_and_grad":
            G = {k: (np.zeros_like if k.startswith("b") else np.empty_like)(v)
                 for k, v in P.items()}
            return network.loss_and_grad(stage, P, G).value, G
        if task == "predict":
            return np.array(network.predict(stage, P, rows, cols))
        if task == "conv_preactivation":     # at the halo pattern's entries in own columns
            fwd = network.forward(stage, P)
            S = self.ops.neighbourhood(int(round(np.sqrt(P["C"].shape[1]))))[0]
            lo = self.ops.offset
            own = (S.indices >= lo) & (S.indices < lo + self.ops.R.shape[1])
            return S.rows[own], S.indices[own] - lo, fwd.conv.pre[own].copy()
        raise ValueError(f"unknown task {task!r}")


class Transport(ABC):
    """How a ShardedEngine reaches its shares: it starts one Share per share
    where the share runs, calls the shares' methods and hands back their
    results in share order, and turns a failure of its own (a lost worker)
    into EngineFailure. The sums stay with the engine. ``workers``: where
    each share runs, in words (a Dask worker's address), once opened."""

    workers: list

    @abstractmethod
    def places(self):
        """Where shares may run, in a fixed order, one or more (share k runs
        on the (k mod their number)-th); ValueError where there are none."""

    @abstractmethod
    def open(self, workers, shares):
        """Start share k on ``workers[k]`` as Share(**shares[k], threads=its
        Numba threads): the transport's to choose."""

    @abstractmethod
    def each(self, method, args):
        """Share k's method ``method``(*args[k]) on every share at once; the
        results, in share order."""

    @abstractmethod
    def call(self, k, method, *args):
        """Share k's method ``method``(*args); its result."""

    @abstractmethod
    def where(self, k):
        """Share k in words, for the message of an error it reports."""

    @abstractmethod
    def spread(self):
        """Engine.spread's words for the shares and their Numba threads."""


class ShardedEngine(Engine):
    """The engine contract (base.py) over a ``transport``: the users split
    into ``shares`` blocks (default: one per place of the transport), each a
    Share, ``halo`` users beyond each block for the convolution (gk_size //
    2)."""

    def __init__(self, train, *, transport, lambda_2, lambda_s, dot_scale=1.0,
                 dtype=np.float32, halo=1, shares=None):
        R, self.settings = training_matrix(train, lambda_2, lambda_s, dot_scale, dtype)
        self.dtype, self.shape = self.settings["dtype"], R.shape
        places = transport.places()
        count = len(places) if shares is None else shares
        if not 1 <= count <= R.shape[1]:
            raise ValueError(f"shares must be in [1, {R.shape[1]}] (one user at least "
                             f"each), got {count}")
        self.bounds = even_bounds(R.shape[1], count)
        self._R, self.transport = R, transport
        specs = []
        for k, (lo, hi) in enumerate(self.bounds):
            X, offset = ring(R, lo, hi, halo)
            specs.append(dict(ring_matrix=X, offset=offset, n_own=hi - lo, n_users=R.shape[1],
                              leader=k == 0, settings=self.settings, alone=count == 1))
        transport.open([places[k % len(places)] for k in range(count)], specs)

    # ----- the exchange -------------------------------------------------
    def _each(self, method, *args, per_share=None):
        """The Share method ``method``(*args, *per_share[k]) on every share
        at once; the results, in share order."""
        extra = per_share or [()] * len(self.bounds)
        return self.transport.each(method, [args + tuple(x) for x in extra])

    def _run(self, task, stage, params, per_share=None):
        """Run ``task`` at ``params`` on every share; the results, in share order."""
        return self._steps(task, stage, [share_params(params, lo, hi) for lo, hi in self.bounds],
                           per_share)

    def _steps(self, task, stage, shares, per_share=None):
        """Run ``task`` with each share's argument in ``shares`` (and the
        arguments per_share[k] after it), exchanging the named sums; the
        results, in share order."""
        extra = per_share or [()] * len(self.bounds)
        steps = self.transport.each("start", [(task, stage, P, *x)
                                              for P, x in zip(shares, extra)])
        while True:
            kinds = {s[0] for s in steps}
            if "error" in kinds:
                k = next(k for k, s in enumerate(steps) if s[0] == "error")
                raise EngineFailure(f"{self.transport.where(k)}: {steps[k][1]}")
            if kinds == {"done"}:
                return [s[2] for s in steps]
            names = {s[1] for s in steps}
            if kinds != {"reduce"} or len(names) != 1:
                raise EngineFailure(f"the shares fell out of step: {sorted(map(str, names))}")
            total = in_share_order([s[2] for s in steps])
            steps = self.transport.each("resume", [(total,)] * len(steps))

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
        """fg(x, g) for lbfgsb.minimize: with this engine's workspace (x and
        g Refs), each share evaluates at its part of x and writes its part
        of g; with host arrays, the whole vectors pass through the driver."""
        check_for_matrix(template, stage, *self.shape)
        self._use_layout(template)
        host = lbfgsb.gradient_into(self.objective(stage, template))

        def fg(x, g):
            if not isinstance(x, Ref):
                return host(x, g)
            return self._steps("loss_and_grad_into", stage,
                               [(x, g, *at) for at in self._at(x)])[0]
        return fg

    def _use_layout(self, template, carry=None):
        """Lay the shares' parts of the vectors out like ``template`` (a new
        layout drops the vectors of the old; ``carry``: see
        Share.set_layout)."""
        layouts = self._layouts(template)
        self._each("set_layout", per_share=[(layout, carry) for layout in layouts])
        self._layout_of = (placeholders(template), layouts)

    def _at(self, x):
        """Per share, what a task at the vector ``x`` needs beside its part:
        (the replicated arrays, from the first share to the others; every
        parameter's name in order)."""
        template, layouts = self._layout_of
        replicated = [name for name, _ in layouts[0] if name not in user_axes(template)]
        shared = {} if len(self.bounds) == 1 else self.transport.call(0, "arrays", x, replicated)
        return [(shared if k else {}, list(template)) for k in range(len(self.bounds))]

    def place(self, workspace, x, params):
        """Each share's part of ``params`` put into its part of ``x``: no
        flat vector of every parameter is made here. SharedParams (with,
        say, the global kernel added for fine-tuning) are copied from their
        vector on the shares themselves, and only the added arrays are sent."""
        if not isinstance(params, SharedParams):
            self._use_layout(params)
            self._each("vectors", "put", x, per_share=[(part,) for part in self._split(params)])
            return
        self._use_layout(placeholders(params), carry=(params.ref, x))
        if params.added:
            self._each("vectors", "put_named", x, per_share=[
                (share_params(params.added, lo, hi),) for lo, hi in self.bounds])

    def parameters_in(self, workspace, x, template):
        """SharedParams: predict reads them on the shares; they are gathered
        here only when read as arrays (a checkpoint, the fitted model)."""
        return SharedParams(self, x, template)

    def report(self):
        """Per share: its worker, users, Numba threads and first evaluation's
        seconds (kernels compiled, or loaded from the worker's cache)."""
        return {"shares": [
            {"worker": w, "users": [lo, hi], "threads": threads, "first_evaluation_s": seconds}
            for w, (lo, hi), (threads, seconds) in zip(self.transport.workers, self.bounds,
                                                       self._each("timings"))]}

    def spread(self):
        """The shares and their Numba threads: the sums are added in share order."""
        return self.transport.spread()

    def workspace(self, n, maxcor):
        """lbfgsb's vectors for n parameters, in parts on the shares."""
        return lbfgsb.Workspace(n, maxcor, vectors=ShardedVectors(self))

    def _layouts(self, template):
        """Per share, [(name, shape)] of its part of a flat vector laid out
        like ``template``: its users' slices, and on the first share the
        replicated arrays too."""
        axes = user_axes(template)
        out = []
        for k, (lo, hi) in enumerate(self.bounds):
            layout = []
            for name, a in template.items():
                shape = list(np.shape(a))
                if name in axes:
                    shape[axes[name]] = hi - lo
                elif k:
                    continue
                layout.append((name, tuple(shape)))
            out.append(layout)
        return out

    def _split(self, params):
        """The shares' parts (float64) of the arrays ``params``, laid out
        like the template."""
        layouts = self._layout_of[1]
        shares = (share_params(params, lo, hi) for lo, hi in self.bounds)
        return [np.concatenate([np.ravel(part[name]).astype(np.float64) for name, _ in layout])
                for part, layout in zip(shares, layouts)]

    def _gather(self, x):
        """The arrays of the shares' parts of the vector ``x``, laid out like
        the template (the inverse of _split)."""
        template, layouts = self._layout_of
        pieces = []
        for part, layout in zip(self._each("vectors", "take", x), layouts):
            arrays, pos = {}, 0
            for name, shape in layout:
                size = int(np.prod(shape))
                arrays[name] = part[pos:pos + size].reshape(shape)
                pos += size
            pieces.append(arrays)
        return gather_grads(pieces, self.bounds, template)

    def predict(self, stage, params, rows, cols):
        """As the contract says; ``params`` may also be SharedParams, read
        where they are."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        share = np.searchsorted([hi for _, hi in self.bounds], cols, side="right")
        picks = [np.flatnonzero(share == k) for k in range(len(self.bounds))]
        where = [(rows[p], cols[p] - lo) for p, (lo, _) in zip(picks, self.bounds)]
        if isinstance(params, SharedParams):
            at_vector = [(params.ref, *at) for at in self._at(params.ref)]
            parts = self._steps("predict", stage, at_vector, where)
        else:
            parts = self._run("predict", stage, self._params(stage, params), where)
        out = np.empty(rows.size, dtype=self.dtype)
        for p, part in zip(picks, parts):
            out[p] = part
        return out

    def conv_preactivation(self, params):
        parts = self._run("conv_preactivation", "finetune", self._params("finetune", params))
        S = Pattern.from_csr(self._R).neighbourhood(int(round(np.sqrt(params["C"].shape[1]))))
        place = sp.csr_matrix((np.arange(1, S.nnz + 1), S.indices, S.indptr), shape=S.shape)
        out = np.empty(S.nnz, dtype=self.dtype)
        for (rows, cols, pre), (lo, _) in zip(parts, self.bounds):
            out[np.asarray(place[rows, cols + lo]).ravel() - 1] = pre
        return out


class ShardedVectors:
    """lbfgsb's O(n) steps (Workspace.vectors, as lbfgsb.HostVectors) on
    vectors held in parts by a ShardedEngine's shares: each step runs on every
    share's part; dot products and norms come back as partial sums, added in
    share order. The layout is the one the engine's last objective_into set."""

    def __init__(self, engine):
        # keys count from 0 in each workspace: a new one of the same layout
        # (the next stage's, on a share without the global kernel) takes
        # over the last one's arrays, so a share holds one stage's vectors
        self.engine, self._keys = engine, itertools.count()

    def empty(self, shape):
        return Ref(next(self._keys), shape[0] if np.ndim(shape) and len(shape) == 2 else None)

    def _all(self, op, *args):
        return self.engine._each("vectors", op, *args)

    def assign(self, dst, host_src):
        engine = self.engine
        whole = unflatten(np.asarray(host_src, dtype=np.float64), engine._layout_of[0])
        engine._each("vectors", "put", dst, per_share=[(part,) for part in engine._split(whole)])

    def to_host(self, a):
        return flatten(self.engine._gather(a))

    def copy(self, src, dst):
        self._all("copy", src, dst)

    def scale(self, src, alpha, dst):
        self._all("scale", src, alpha, dst)

    def history_dots(self, S, Y, slots, u, v=lbfgsb.EMPTY, w=lbfgsb.EMPTY):
        return in_share_order(self._all("history_dots", S, Y, slots, u, v, w))

    def direction(self, S, Y, slots, cs, cy, gamma, g, d):
        self._all("direction", S, Y, slots, cs, cy, gamma, g, d)

    def trial_point(self, t, stp, d, x, first):
        return any(self._all("trial_point", t, stp, d, x, first))

    def dot_and_abs_max(self, g, d):
        parts = self._all("dot_and_abs_max", g, d)
        return float(sum(p[0] for p in parts)), float(max(p[1] for p in parts))

    def squared_distance(self, a, b):
        return float(sum(self._all("squared_distance", a, b)))

    def store_pair(self, g, r, stp, d, s_out, y_out):
        self._all("store_pair", g, r, stp, d, s_out, y_out)


class SharedParams(RemoteParams):
    """The parameters in a vector of a ShardedEngine's shares, laid out like
    ``template`` (ShardedEngine.parameters_in): predict reads each share's part
    where it is; read as a mapping (a checkpoint, the fitted model) they are
    gathered once, as float64 arrays. Valid while the vector holds them: the
    trainer makes a new one after every epoch."""

    def __init__(self, engine, ref, template, added=None):
        self._engine, self.ref, self._template, self._arrays = engine, ref, template, None
        self.added = added or {}      # host arrays beside the vector's (with_arrays)

    def __getitem__(self, name):
        if name in self.added:
            return self.added[name]
        if self._arrays is None:
            self._arrays = self._engine._gather(self.ref)
        return self._arrays[name]

    def placeholders(self):
        """params.placeholders of these parameters, without gathering them."""
        return dict(self._template)

    def with_arrays(self, arrays):
        """These parameters and the host arrays ``arrays`` (the global
        kernel where fine-tuning begins), still not gathered."""
        return SharedParams(self._engine, self.ref, {**self._template, **placeholders(arrays)},
                            {**self.added, **arrays})

    def __iter__(self):
        return iter(self._template)

    def __len__(self):
        return len(self._template)

    def __contains__(self, name):
        return name in self._template

    def kept(self, slot):
        """A copy made on the shares, in the vector named ``slot`` (one per
        selection rule: the best epoch's parameters), which later epochs
        leave alone."""
        ref = Ref(("kept", slot))
        self._engine._each("vectors", "copy", self.ref, ref)
        return SharedParams(self._engine, ref, self._template, dict(self.added))
