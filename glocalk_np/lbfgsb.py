"""L-BFGS-B's iteration for an unbounded problem, taking the steps
``scipy.optimize.minimize(method='L-BFGS-B')`` takes, at a fraction of its
cost on large problems.

Mirrored from SciPy 1.17: the C port of L-BFGS-B (scipy/optimize/src/lbfgsb.c:
mainlb, lnsrlb, matupd, formt, projgr, dcsrch, dcstep) and its Python driver
(scipy/optimize/_lbfgsb_py.py, _minimize_lbfgsb). With no bounds, every
variable is free and the generalised Cauchy point is skipped once the
memory holds a pair, so one iteration is:

- the direction d = -H g, H the L-BFGS inverse Hessian of the last ``maxcor``
  pairs (s, y) with initial matrix I / theta, theta = y.y / s.y of the newest
  pair; with an empty memory d = -g (the Cauchy point with theta = 1).
  L-BFGS-B solves the same system through its compact form of B; here H is
  applied through the compact form of the inverse (Byrd, Nocedal & Schnabel
  1994, eq. 3.1), H g = g / theta + S p - Y q / theta, whose 2m x 2m core is
  small, so the cost is two sweeps over the stored pairs;
- the line search: More-Thuente (dcsrch) with ftol 1e-3, gtol 0.9, xtol 0.1,
  stpmin 0 and stpmax 1e10; the first trial step is min(1 / |d|, 1e10) on the
  first iteration and 1 afterwards; it fails when the directional derivative
  is not negative, or when a trial step would be the ``maxls``-th backtrack;
- after a failure: back to the previous point; with an empty memory the
  run ends (ABNORMAL), otherwise the memory is emptied and the iteration
  restarts from d = -g;
- after a success, in this order: the iteration count (the driver stops at
  ``maxiter``, then if the evaluation count exceeds ``maxfun``); the largest
  gradient entry <= ``gtol``; the relative decrease (f_old - f) /
  max(|f_old|, |f|, 1) <= ftol (as factr * epsmch); then the pair s = x -
  x_old, y = g - g_old is stored unless s.y <= epsmch * (-g_old.s), and a
  memory whose matrix theta S'S + L D^-1 L' is not positive definite
  (formt's Cholesky) is emptied.

Counting follows SciPy's: ``nfev`` is 1 for the evaluation at x0 plus one per
trial point (SciPy's ScalarFunction evaluates x0 before the first iteration
and caches it), ``nit`` the number of completed line searches. Like
ScalarFunction, a trial point equal to the point evaluated last is not
evaluated again. Not mirrored: bounds, the callback, and L-BFGS-B's checks of
the factorisations in formk and subsm, which the inverse form does not need.
Iterates agree with SciPy's to rounding (tests/test_lbfgsb.py measures it).
After a failed line search (ABNORMAL) ``fun`` is the loss at the returned x;
SciPy's driver reports the last trial point's instead.

Memory: the parameters, the gradient, the previous point and gradient, the
direction and 2 x maxcor stored vectors, all float64 and allocated once in a
Workspace that a caller may pass to every call (one per fit). The O(n) steps
go through the workspace's ``vectors``: HostVectors (the Numba kernels
below) or engines.cuda.CudaVectors, which keeps every vector in GPU memory
so that only dot products and norms cross to the host.
"""
from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy.linalg import solve_triangular

EPS = np.finfo(np.float64).eps
STPMAX = 1e10
# More-Thuente's constants in lnsrlb
LS_FTOL, LS_GTOL, LS_XTOL = 1e-3, 0.9, 0.1
CHUNK = 1 << 14   # vector entries per task of the parallel sweeps
EMPTY = np.empty(0)
# (status, message) of each way a run ends, as SciPy words them
CONVERGED_G = (0, "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL")
CONVERGED_F = (0, "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH")
MAXITER = (1, "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT")
MAXFUN = (1, "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT")
ABNORMAL = (2, "ABNORMAL: ")


@dataclass
class Result:
    """What scipy.optimize.OptimizeResult holds for L-BFGS-B, by the same names."""
    x: np.ndarray
    fun: float
    jac: np.ndarray
    nit: int
    nfev: int
    status: int          # 0 converged, 1 a limit (maxiter, maxfun), 2 abnormal
    message: str
    skipped: int = 0     # pairs not stored for too little curvature
    restarts: int = 0    # memories emptied after a failed line search or formt

    @property
    def success(self):
        return self.status == 0


class Workspace:
    """The float64 vectors of one problem size, allocated once: x, g, the
    previous x and g (t, r), the direction d and the memory S, Y (maxcor x n),
    in host memory, or where ``vectors`` (the sweeps' implementation, e.g.
    engines.cuda.CudaVectors) keeps them."""

    def __init__(self, n, maxcor=10, vectors=None):
        self.n, self.m = n, maxcor
        self.vectors = vectors or HostVectors()
        self.x, self.g, self.t, self.r, self.d = (self.vectors.empty(n) for _ in range(5))
        self.S, self.Y = self.vectors.empty((maxcor, n)), self.vectors.empty((maxcor, n))


# ---------------------------------------------------------------- kernels
# Each sweeps its vectors once, in parallel chunks of CHUNK entries whose
# partial sums are added in chunk order (the same result on any thread count).

@njit(parallel=True, cache=True)
def _history_dots(S, Y, slots, u, v, w, out):
    """out[0:2, k] = S[slots[k]] . u and Y[slots[k]] . u, and likewise
    out[2:4] for v and out[4:6] for w when they are given (size > 0): six
    independent sums per pass. Cost: one read of the memory and the vectors."""
    n, k = S.shape[1], slots.size
    three = v.size > 0
    chunks = (n + CHUNK - 1) // CHUNK
    part = np.zeros((chunks, 6, k))
    for c in prange(chunks):
        lo, hi = c * CHUNK, min((c + 1) * CHUNK, n)
        for j in range(k):
            s, y = S[slots[j]], Y[slots[j]]
            a0 = a1 = a2 = a3 = a4 = a5 = 0.0
            if three:
                for i in range(lo, hi):
                    si, yi, ui, vi, wi = s[i], y[i], u[i], v[i], w[i]
                    a0 += si * ui
                    a1 += yi * ui
                    a2 += si * vi
                    a3 += yi * vi
                    a4 += si * wi
                    a5 += yi * wi
            else:
                for i in range(lo, hi):
                    a0 += s[i] * u[i]
                    a1 += y[i] * u[i]
            part[c, 0, j], part[c, 1, j], part[c, 2, j] = a0, a1, a2
            part[c, 3, j], part[c, 4, j], part[c, 5, j] = a3, a4, a5
    out[:, :k] = 0.0
    for c in range(chunks):
        out[:, :k] += part[c]


@njit(parallel=True, cache=True)
def _direction(S, Y, slots, cs, cy, gamma, g, d):
    """d = -gamma g - sum_k cs[k] S[slots[k]] + sum_k cy[k] Y[slots[k]].
    Cost: one read of the memory and g, one write of d."""
    n, k = g.size, slots.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min((c + 1) * CHUNK, n)
        for i in range(lo, hi):
            d[i] = -gamma * g[i]
        for j in range(k):
            s, y, a, b = S[slots[j]], Y[slots[j]], cs[j], cy[j]
            for i in range(lo, hi):
                d[i] += b * y[i] - a * s[i]


@njit(parallel=True, cache=True)
def _trial_point(t, stp, d, x, first):
    """x = t + stp d; returns whether x differs from the point evaluated
    last: t for the ``first`` trial of a line search, else x's old value.
    Cost: 3 or 4 n."""
    changed = 0
    for i in prange(t.size):
        v = t[i] + stp * d[i]
        if v != (t[i] if first else x[i]):
            changed += 1
        x[i] = v
    return changed > 0


@njit(parallel=True, cache=True)
def _dot_and_abs_max(g, d):
    """(g . d, max |g_i|) in one pass (max |g_i| is the projected gradient's
    norm without bounds). Cost: 2 n."""
    chunks = (g.size + CHUNK - 1) // CHUNK
    part = np.zeros((chunks, 2))
    for c in prange(chunks):
        acc = m = 0.0
        for i in range(c * CHUNK, min((c + 1) * CHUNK, g.size)):
            acc += g[i] * d[i]
            m = max(m, abs(g[i]))
        part[c, 0], part[c, 1] = acc, m
    return part[:, 0].sum(), part[:, 1].max()


@njit(parallel=True, cache=True)
def _squared_distance(a, b):
    """|a - b|^2 without forming a - b. Cost: 2 n."""
    chunks = (a.size + CHUNK - 1) // CHUNK
    part = np.zeros(chunks)
    for c in prange(chunks):
        acc = 0.0
        for i in range(c * CHUNK, min((c + 1) * CHUNK, a.size)):
            acc += (a[i] - b[i]) ** 2
        part[c] = acc
    return part.sum()


@njit(parallel=True, cache=True)
def _store_pair(g, r, stp, d, s_out, y_out):
    """The new pair: s = stp d, y = g - r. Cost: 5 n."""
    for i in prange(g.size):
        s_out[i] = d[i] if stp == 1.0 else stp * d[i]
        y_out[i] = g[i] - r[i]
class HostVectors:
    """The O(n) steps of the iteration on host arrays, with the kernels above.
    Another implementation (engines.cuda.CudaVectors) keeps the vectors on a
    GPU; only the small dot-product results reach the host."""

    empty = staticmethod(np.empty)

    @staticmethod
    def assign(dst, host_src):
        dst[:] = host_src

    @staticmethod
    def to_host(a):
        return a.copy()

    @staticmethod
    def copy(src, dst):
        dst[:] = src

    @staticmethod
    def scale(src, alpha, dst):
        np.multiply(src, alpha, out=dst)

    @staticmethod
    def history_dots(S, Y, slots, u, v=EMPTY, w=EMPTY):
        out = np.empty((6, slots.size))
        _history_dots(S, Y, slots, u, v, w, out)
        return out

    direction = staticmethod(_direction)
    trial_point = staticmethod(_trial_point)
    dot_and_abs_max = staticmethod(_dot_and_abs_max)
    squared_distance = staticmethod(_squared_distance)
    store_pair = staticmethod(_store_pair)


# ---------------------------------------------------------------- line search

class _LineSearch:
    """dcsrch of MINPACK-2 as in lbfgsb.c, for stpmin = 0: call start() with
    the step's first value, then step(f, g) after each evaluation; each returns
    'FG' (evaluate at self.stp), 'CONVERGENCE' or 'WARNING'."""

    def __init__(self, f, g, stp, stpmax):
        self.stp, self.stpmin, self.stpmax = stp, 0.0, stpmax
        self.brackt, self.stage = False, 1
        self.finit, self.ginit, self.gtest = f, g, LS_FTOL * g
        self.width = stpmax
        self.width1 = self.width / 0.5
        self.stx, self.fx, self.gx = 0.0, f, g
        self.sty, self.fy, self.gy = 0.0, f, g
        self.stmin, self.stmax = 0.0, stp + 4.0 * stp

    def step(self, f, g):
        stp = self.stp
        ftest = self.finit + stp * self.gtest
        if self.stage == 1 and f <= ftest and g >= 0.0:
            self.stage = 2
        task = "FG"
        if self.brackt and (stp <= self.stmin or stp >= self.stmax):
            task = "WARNING"
        if self.brackt and self.stmax - self.stmin <= LS_XTOL * self.stmax:
            task = "WARNING"
        if stp == self.stpmax and f <= ftest and g <= self.gtest:
            task = "WARNING"
        if stp == self.stpmin and (f > ftest or g >= self.gtest):
            task = "WARNING"
        if f <= ftest and abs(g) <= LS_GTOL * (-self.ginit):
            task = "CONVERGENCE"
        if task != "FG":
            return task
        if self.stage == 1 and f <= self.fx and f > ftest:
            gt = self.gtest
            stx, fxm, gxm, sty, fym, gym, stp, self.brackt = _dcstep(
                self.stx, self.fx - self.stx * gt, self.gx - gt, self.sty,
                self.fy - self.sty * gt, self.gy - gt, stp, f - stp * gt, g - gt,
                self.brackt, self.stmin, self.stmax)
            self.stx, self.sty = stx, sty
            self.fx, self.fy = fxm + stx * gt, fym + sty * gt
            self.gx, self.gy = gxm + gt, gym + gt
        else:
            (self.stx, self.fx, self.gx, self.sty, self.fy, self.gy, stp,
             self.brackt) = _dcstep(self.stx, self.fx, self.gx, self.sty, self.fy, self.gy,
                                    stp, f, g, self.brackt, self.stmin, self.stmax)
        if self.brackt:
            if abs(self.sty - self.stx) >= 0.66 * self.width1:
                stp = self.stx + 0.5 * (self.sty - self.stx)
            self.width1 = self.width
            self.width = abs(self.sty - self.stx)
            self.stmin, self.stmax = min(self.stx, self.sty), max(self.stx, self.sty)
        else:
            self.stmin = stp + 1.1 * (stp - self.stx)
            self.stmax = stp + 4.0 * (stp - self.stx)
        stp = min(max(stp, self.stpmin), self.stpmax)
        if self.brackt and (stp <= self.stmin or stp >= self.stmax
                            or self.stmax - self.stmin <= LS_XTOL * self.stmax):
            stp = self.stx
        self.stp = stp
        return "FG"


def _cubic(fa, fb, sa, sb, d1, d2, clip=False):
    """theta and gamma (>= 0) of the cubic through two trial steps, in
    dcstep's order of operations; ``clip`` floors the square root's argument at 0."""
    theta = 3.0 * (fa - fb) / (sb - sa) + d1 + d2
    s = max(abs(theta), abs(d1), abs(d2))
    disc = (theta / s) ** 2 - (d1 / s) * (d2 / s)
    return theta, s * np.sqrt(max(0.0, disc) if clip else disc)


def _step_toward(stp, fp, dp, sto, fo, do):
    """dcstep's cubic step from stp towards the other end sto of the interval
    (3 (fo - fp) / (stp - sto) is its 3 (fp - fo) / (sto - stp), exactly)."""
    theta, gamma = _cubic(fo, fp, sto, stp, do, dp)
    if stp > sto:
        gamma = -gamma
    p = (gamma - dp) + theta
    q = ((gamma - dp) + gamma) + do
    return stp + (p / q) * (sto - stp)


def _dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """MINPACK-2's safeguarded cubic/quadratic step, as lbfgsb.c's dcstep;
    returns (stx, fx, dx, sty, fy, dy, stp, brackt)."""
    sgnd = dp * (dx / abs(dx))
    if fp > fx:
        theta, gamma = _cubic(fx, fp, stx, stp, dx, dp)
        if stp < stx:
            gamma = -gamma
        p = (gamma - dx) + theta
        q = ((gamma - dx) + gamma) + dp
        stpc = stx + (p / q) * (stp - stx)
        stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf = stpc if abs(stpc - stx) < abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        brackt = True
    elif sgnd < 0.0:
        stpc = _step_toward(stp, fp, dp, stx, fx, dx)
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        brackt = True
    elif abs(dp) < abs(dx):
        theta, gamma = _cubic(fx, fp, stx, stp, dx, dp, clip=True)
        if stp > stx:
            gamma = -gamma
        p = (gamma - dp) + theta
        q = (gamma + (dx - dp)) + gamma
        r = p / q
        if r < 0.0 and gamma != 0.0:
            stpc = stp + r * (stx - stp)
        elif stp > stx:
            stpc = stpmax
        else:
            stpc = stpmin
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        if brackt:
            stpf = stpc if abs(stpc - stp) < abs(stpq - stp) else stpq
            if stp > stx:
                stpf = min(stp + 0.66 * (sty - stp), stpf)
            else:
                stpf = max(stp + 0.66 * (sty - stp), stpf)
        else:
            stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
            stpf = max(stpmin, min(stpmax, stpf))
    else:
        if brackt:
            stpf = _step_toward(stp, fp, dp, sty, fy, dy)
        elif stp > stx:
            stpf = stpmax
        else:
            stpf = stpmin
    if fp > fx:
        sty, fy, dy = stp, fp, dp
    else:
        if sgnd < 0.0:
            sty, fy, dy = stx, fx, dx
        stx, fx, dx = stp, fp, dp
    return stx, fx, dx, sty, fy, dy, stpf, brackt


# ---------------------------------------------------------------- the memory

class _Memory:
    """The last maxcor pairs (slots of the Workspace's S and Y, oldest first)
    with the small matrices the direction needs: SS = S'S, SY = S'Y (s_i . y_j
    at [i, j]) and YY = Y'Y, and theta."""

    def __init__(self, ws):
        self.ws, self.m = ws, ws.m
        self.SS, self.SY, self.YY = (np.zeros((ws.m, ws.m)) for _ in range(3))
        self.reset()

    def reset(self):
        """Empty the memory (L-BFGS-B's restart: col = 0, theta = 1)."""
        self.slots, self.theta, self._g_dots = [], 1.0, None

    def next_slot(self):
        return (self.slots[-1] + 1) % self.m if self.slots else 0

    def add(self, ss, sy, theta, g):
        """Take the pair written to next_slot(), with s.s = ``ss`` and s.y =
        ``sy`` as L-BFGS-B computes them, and the new theta; one sweep over the
        memory gives its new dot products and those of the gradient ``g`` (for
        the next direction). Returns False, having emptied the memory, when
        theta S'S + L D^-1 L' is not positive definite (formt's test)."""
        ws, slot = self.ws, self.next_slot()
        if len(self.slots) == self.m:
            self.slots.pop(0)
            for M in (self.SS, self.SY, self.YY):
                M[:-1, :-1] = M[1:, 1:].copy()
        self.slots.append(slot)
        k = len(self.slots) - 1
        dots = ws.vectors.history_dots(ws.S, ws.Y, np.array(self.slots), ws.S[slot],
                                       ws.Y[slot], g)
        self.SS[k, :k] = self.SS[:k, k] = dots[0, :k]          # s_j . s_new
        self.SY[k, :k] = dots[1, :k]                           # s_new . y_j
        self.SY[:k, k] = dots[2, :k]                           # s_j . y_new
        self.YY[k, :k + 1] = self.YY[:k + 1, k] = dots[3, :k + 1]
        self.SS[k, k], self.SY[k, k], self.theta = ss, sy, theta
        self._g_dots = dots[4:6, :k + 1]
        k += 1
        L = np.tril(self.SY[:k, :k], -1)
        T = theta * self.SS[:k, :k] + (L / np.diag(self.SY[:k, :k])) @ L.T
        try:
            np.linalg.cholesky(T)
        except np.linalg.LinAlgError:
            self.reset()
            return False
        return True

    def direction(self, g, d):
        """d = -H g, through the compact form of the inverse (module docstring)."""
        ws, k = self.ws, len(self.slots)
        if k == 0:
            ws.vectors.scale(g, -1.0, d)
            return
        slots = np.array(self.slots)
        if self._g_dots is None:
            self._g_dots = ws.vectors.history_dots(ws.S, ws.Y, slots, g)[:2]
        (a, b), self._g_dots = self._g_dots, None
        gamma = 1.0 / self.theta
        SY = self.SY[:k, :k]
        u = solve_triangular(SY, a)                      # R u = S'g, R = triu(S'Y)
        top = solve_triangular(SY, np.diag(SY) * u + gamma * (self.YY[:k, :k] @ u - b),
                               trans="T")
        ws.vectors.direction(ws.S, ws.Y, slots, top, gamma * u, gamma, g, d)


# ---------------------------------------------------------------- the driver

def gradient_into(fun):
    """A scipy-style objective fun(x) -> (f, gradient) as the fg(x, g) -> f
    that minimize calls, copying the gradient into g."""
    def fg(x, g):
        f, grad = fun(x)
        g[:] = grad
        return f
    return fg


def minimize(fg, x0, *, maxiter=15000, maxcor=10, ftol=2.2204460492503131e-09, gtol=1e-5,
             maxfun=15000, maxls=20, workspace=None):
    """Minimise the function with gradient ``fg(x, g) -> f`` (writing the
    gradient at x into the float64 array g) from ``x0`` with SciPy's
    L-BFGS-B steps for an unbounded problem; options and the Result as
    scipy.optimize.minimize(method='L-BFGS-B'). ``workspace`` (a Workspace
    of x0's size and maxcor, e.g. one per fit) saves allocating per call;
    Result.x and .jac are then its arrays. ``x0`` may be a vector of the
    workspace itself: the start is then copied where the vectors live and
    never passes through the host (a trainer keeping its parameters there
    between epochs)."""
    on_host = isinstance(x0, np.ndarray)
    if not on_host and workspace is None:
        raise ValueError("x0 is not a host array: it must be a vector of the workspace given")
    ws = workspace if workspace is not None else Workspace(x0.size, maxcor)
    n = x0.size if on_host else ws.n
    if (ws.n, ws.m) != (n, maxcor):
        raise ValueError(f"workspace is for n={ws.n}, maxcor={ws.m}; "
                         f"got n={n}, maxcor={maxcor}")
    if maxls <= 0:
        raise ValueError("maxls must be positive.")
    # x, g: the current point and gradient, then the trial ones; t, r: the
    # point and gradient before the line search. The buffers swap roles
    # instead of being copied.
    x, g, t, r, d = ws.x, ws.g, ws.t, ws.r, ws.d
    ops = ws.vectors
    if on_host:
        ops.assign(x, x0)
    else:
        ops.copy(x0, x)
    f = float(fg(x, g))
    nfev, nit = 1, 0
    tol = (ftol / EPS) * EPS                     # factr * epsmch, as SciPy passes it
    memory = _Memory(ws)
    skipped = restarts = 0
    x_is_last = True          # x is the point fg saw last

    def result(end):
        return Result(x, f, g, nit, nfev, *end, skipped, restarts)

    if ops.dot_and_abs_max(g, g)[1] <= gtol:
        return result(CONVERGED_G)
    while True:
        memory.direction(g, d)
        dnorm = float(np.sqrt(ops.dot_and_abs_max(d, d)[0]))
        stp = min(1.0 / dnorm, STPMAX) if nit == 0 else 1.0
        x, t, g, r = t, x, r, g
        fold = f
        gd = gdold = ops.dot_and_abs_max(r, d)[0]
        failed = gd >= 0.0
        if not failed:
            search, task, backtracks = _LineSearch(f, gd, stp, STPMAX), "FG", 0
            while task == "FG":
                if backtracks >= maxls:
                    failed = True
                    break
                # SciPy's ScalarFunction does not evaluate the point it evaluated last again
                if ops.trial_point(t, search.stp, d, x, backtracks == 0) or not x_is_last:
                    f = float(fg(x, g))
                    nfev += 1
                    x_is_last = True
                elif backtracks == 0:
                    ops.copy(r, g)     # still the point before the line search
                backtracks += 1
                gd, gmax = ops.dot_and_abs_max(g, d)
                task = search.step(f, gd)
            stp = search.stp
        if failed:
            x, t, g, r, f = t, x, r, g, fold
            x_is_last = False
            if not memory.slots:
                return result(ABNORMAL)
            memory.reset()
            restarts += 1
            continue
        nit += 1
        if nit >= maxiter:
            return result(MAXITER)
        if nfev > maxfun:
            return result(MAXFUN)
        if gmax <= gtol:
            return result(CONVERGED_G)
        if fold - f <= tol * max(abs(fold), abs(f), 1.0):
            return result(CONVERGED_F)
        # the new pair, unless its curvature is too small (mainlb, matupd, formt)
        rr = ops.squared_distance(g, r)
        dr, ddum = (gd - gdold, -gdold) if stp == 1.0 else ((gd - gdold) * stp, -gdold * stp)
        if dr <= EPS * ddum:
            skipped += 1
            continue
        slot = memory.next_slot()
        ops.store_pair(g, r, stp, d, ws.S[slot], ws.Y[slot])
        dtd = dnorm ** 2
        if not memory.add(dtd if stp == 1.0 else stp * stp * dtd, dr, rr / dr, g):
            restarts += 1
