"""network.py's contract for an engine over shares of the users: every sum
across shares is an ops.reduce call named in REDUCTIONS, and nothing else
crosses. Shown here by running the network on two shares of a problem's
users, each a CPU engine's operations on its columns of R and its rows of the
user-sized parameters, exchanging only through reduce; the assembled loss
and gradient equal the one-process engine's.

The shares run in two threads that take turns: a share computes while it
holds the turn and gives it up only inside reduce, so no two Numba kernels
run at once.
"""
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from glocalk_np.engines.cpu import CpuEngine, CpuOps
from glocalk_np.network import OPERATIONS, REDUCTIONS, Network
from glocalk_np.params import layer_count, optimised
from glocalk_np.sparse import Pattern
from problems import PROBLEMS, smooth_problem

SHARDED_ROWS = ("W0", "U0")        # one row per user
TOLERANCE = 1e-12                  # float64; only the order of the sums differs


def user_share(params, cols):
    """The parameters a share holds: its users' rows of the first layer's W
    and U and of the output layer's V, its columns of the output layer's W
    and its biases; the rest whole (replicated)."""
    last = layer_count(params) - 1
    share = dict(params)
    for key in SHARDED_ROWS + (f"V{last}",):
        share[key] = params[key][cols]
    share[f"W{last}"] = params[f"W{last}"][:, cols]
    share[f"b{last}"] = params[f"b{last}"][cols]
    return share


def assemble(grads, shares, params):
    """One gradient dict from the shares': user-sized arrays put together,
    replicated ones (which every share must hold alike) from share 0."""
    last = layer_count(params) - 1
    out = {k: np.array(v, copy=True) for k, v in grads[0].items()}
    for key in SHARDED_ROWS + (f"V{last}",):
        out[key] = np.empty_like(params[key])
    out[f"W{last}"] = np.empty_like(params[f"W{last}"])
    out[f"b{last}"] = np.empty_like(params[f"b{last}"])
    for g, cols in zip(grads, shares):
        for key in SHARDED_ROWS + (f"V{last}",):
            out[key][cols] = g[key]
        out[f"W{last}"][:, cols] = g[f"W{last}"]
        out[f"b{last}"][cols] = g[f"b{last}"]
    return out


def gradient_arrays(P):
    """What Network fills: biases zeroed (added into), the rest overwritten."""
    return {k: (np.zeros_like if k.startswith("b") else np.empty_like)(v) for k, v in P.items()}


class Exchange:
    """An all-reduce between threads that take turns (see the docstring):
    sums in share order, the same result on every share."""

    def __init__(self, shares):
        self.turn = threading.Lock()
        self.barrier = threading.Barrier(shares)
        self.parts = [None] * shares
        self.names = [[] for _ in range(shares)]

    def reduce(self, share, name, a):
        self.names[share].append(name)
        value = a.value if hasattr(a, "value") else a
        self.parts[share] = np.array(value, copy=True)
        self.turn.release()
        self.barrier.wait()
        total = self.parts[0].copy()
        for part in self.parts[1:]:
            total += part
        self.barrier.wait()                # every share has read the parts
        self.turn.acquire()
        if hasattr(a, "value"):
            a.value = float(total)
        else:
            a[...] = total
        return a


class ShareOps(CpuOps):
    """The CPU operations on one share, reducing through an Exchange."""

    def __init__(self, R, exchange, share, **hyper):
        super().__init__(Pattern.from_csr(R), R.data.astype(np.float64), **hyper)
        self.exchange, self.share, self.leader = exchange, share, share == 0

    def reduce(self, name, a):
        return self.exchange.reduce(self.share, name, a)


def run_on_shares(stage, R, params, hyper, shares):
    """(loss per share, gradient dicts per share, reductions per share)."""
    exchange = Exchange(len(shares))
    results = [None] * len(shares)

    def work(k, cols):
        with exchange.turn:
            ops = ShareOps(sp.csr_matrix(R[:, cols]), exchange, k, **hyper)
            P = {key: np.ascontiguousarray(v, dtype=np.float64)
                 for key, v in optimised(stage, user_share(params, cols)).items()}
            G = gradient_arrays(P)
            results[k] = (Network(ops).loss_and_grad(stage, P, G).value, G)
    threads = [threading.Thread(target=work, args=(k, cols)) for k, cols in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r[0] for r in results], [r[1] for r in results], exchange.names


@pytest.mark.parametrize("spec", PROBLEMS)
@pytest.mark.parametrize("cut", [1, 0.5])
def test_pretraining_on_two_shares_of_the_users_equals_one_process(spec, cut):
    """Uneven and even shares: the same loss and gradient as one process,
    every replicated gradient alike on both shares."""
    R, params, hyper = smooth_problem(spec)
    n = R.shape[1]
    split = 1 if cut == 1 else n // 2
    shares = [np.arange(split), np.arange(split, n)]
    hyper = {k: float(v) for k, v in hyper.items()}
    losses, grads, names = run_on_shares("pretrain", R, params, hyper, shares)
    want_loss, want = CpuEngine(sp.csr_matrix(R), dtype=np.float64, **hyper)(
        "pretrain", params)
    assert losses[0] == losses[1]
    assert losses[0] == pytest.approx(want_loss, rel=TOLERANCE, abs=0)
    got = assemble(grads, shares, params)
    assert list(got) == list(want)
    for key, w in want.items():
        assert np.abs(got[key] - w).max() / max(np.abs(w).max(), 1e-300) < TOLERANCE, key
        if grads[0][key].shape == grads[1][key].shape == w.shape:      # replicated
            np.testing.assert_array_equal(grads[0][key], grads[1][key], err_msg=key)
    assert names[0] == names[1]
    assert set(names[0]) == {"loss", "input", "dH", "dV0", "dU_out"}


class Recording(CpuOps):
    """One process's operations, recording the reductions asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.names = []

    def reduce(self, name, a):
        self.names.append(name)
        return a


def test_fine_tuning_asks_for_every_reduction_by_its_name():
    R, params, hyper = smooth_problem(PROBLEMS[1])
    X = sp.csr_matrix(R)
    ops = Recording(Pattern.from_csr(X), X.data.astype(np.float64),
                    **{k: float(v) for k, v in hyper.items()})
    P = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in params.items()}
    Network(ops).loss_and_grad("finetune", P, gradient_arrays(P))
    assert set(ops.names) == set(REDUCTIONS)
    assert ops.names.count("input") == 2              # the first pass's and the second's


def test_every_engine_s_operations_are_all_of_network_operations():
    missing = [name for name in OPERATIONS if not hasattr(CpuOps, name)]
    assert missing == []
