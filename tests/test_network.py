"""network.py's contract for an engine over shares of the users: every sum
across shares is an ops.reduce call named in REDUCTIONS, and nothing else
crosses. Shown by running the network on shares of a problem's users, each
with engines/shares.py's operations (its columns of R, a halo for the
convolution, its part of the parameters), exchanging only through reduce:
the loss and the gradient put together equal the one-process engine's, for
both stages.

The shares run in threads that take turns: a share computes while it holds
the turn and gives it up only inside reduce, so no two Numba kernels run at
once.
"""
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from glocalk_np.engines.cpu import CpuEngine, CpuOps
from glocalk_np.engines.shares import ShareOps, gather_grads, ring, share_params
from glocalk_np.hostops import HostOperations
from glocalk_np.network import ForwardOperations, Operations, REDUCTIONS, Network
from glocalk_np.params import STAGES, optimised
from glocalk_np.sparse import Pattern
from engine_contract import operations_problems
from problems import PROBLEMS, smooth_problem

TOLERANCE = 1e-12                  # float64; only the order of the sums differs


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

    def reducer(self, share):
        def reduce(name, a):
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
        return reduce


def run_on_shares(stage, R, params, hyper, bounds, halo=1):
    """(loss per share, gradient dicts per share, reductions per share)."""
    exchange = Exchange(len(bounds))
    results = [None] * len(bounds)

    def work(k, lo, hi):
        with exchange.turn:
            ops = ShareOps(*ring(sp.csr_matrix(R), lo, hi, halo), hi - lo, R.shape[1],
                           exchange.reducer(k), k == 0, np.float64, **hyper)
            P = {key: np.ascontiguousarray(v, dtype=np.float64)
                 for key, v in optimised(stage, share_params(params, lo, hi)).items()}
            G = gradient_arrays(P)
            results[k] = (Network(ops).loss_and_grad(stage, P, G).value, G)
    threads = [threading.Thread(target=work, args=(k, lo, hi))
               for k, (lo, hi) in enumerate(bounds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r[0] for r in results], [r[1] for r in results], exchange.names


SPLITS = {"1 | rest": lambda n: [(0, 1), (1, n)],
          "halves": lambda n: [(0, n // 2), (n // 2, n)],
          "three uneven": lambda n: [(0, 2), (2, n - 1), (n - 1, n)]}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("spec", PROBLEMS)
def test_the_network_on_shares_of_the_users_equals_one_process(spec, split, stage):
    """The same loss and gradient as one process, every replicated gradient
    alike on every share."""
    R, params, hyper = smooth_problem(spec)
    bounds = SPLITS[split](R.shape[1])
    hyper = {k: float(v) for k, v in hyper.items()}
    losses, grads, names = run_on_shares(stage, R, params, hyper, bounds)
    want_loss, want = CpuEngine(sp.csr_matrix(R), dtype=np.float64, **hyper)(stage, params)
    assert len(set(losses)) == 1
    assert losses[0] == pytest.approx(want_loss, rel=TOLERANCE, abs=0)
    got = gather_grads(grads, bounds, optimised(stage, params))
    assert list(got) == list(want)
    for key, w in want.items():
        assert np.abs(got[key] - w).max() / max(np.abs(w).max(), 1e-300) < TOLERANCE, key
        if all(g[key].shape == w.shape for g in grads):                  # replicated
            for g in grads[1:]:
                np.testing.assert_array_equal(grads[0][key], g[key], err_msg=key)
    assert all(n == names[0] for n in names)
    expected = set(REDUCTIONS) if stage == "finetune" else \
        {"loss", "input", "dH", "dV0", "dU_out"}
    assert set(names[0]) == expected


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


# Partial by design: the contract, and the host operations others build on
BASES = (Operations, HostOperations)


def operations_classes():
    """Every class of operations this process has imported (CudaOps is
    checked under the simulator, tests/test_engines.py): the engines',
    the tests' and inference.NumpyOps; not those a test function makes to
    be refused."""
    found, todo = [], [ForwardOperations]
    while todo:
        for cls in todo.pop().__subclasses__():
            todo.append(cls)
            if cls not in BASES and cls not in found and "<locals>" not in cls.__qualname__:
                found.append(cls)
    return found


def test_every_class_of_operations_is_the_whole_contract_and_no_more():
    try:
        from glocalk_np import inference
    except ImportError:
        inference = None
    classes = operations_classes()
    assert {CpuOps, ShareOps, Recording} <= set(classes)
    if hasattr(inference, "NumpyOps"):
        assert inference.NumpyOps in classes
    for cls in classes:
        assert operations_problems(cls) == [], cls


def test_the_contract_check_finds_what_is_missing_or_beyond():
    class Partial(ForwardOperations):
        own = ("absent",)

        def extra(self):
            pass
    assert operations_problems(Partial)[:2] == ["abstract: bias_sigmoid", "abstract: convolve"]
    assert operations_problems(Partial)[-3:] == ["beyond the contract: extra",
                                                 "own but missing: absent", "no bool leader"]
