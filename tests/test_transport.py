"""The sharded engine (engines/sharded.py) over a second transport, the
threads of this process (tests/thread_transport.py), held to what
tests/test_cluster.py holds the Dask engine to, without Dask: every method
against the CPU engine on 1, 2 and 3 shares, the optimiser's vectors on the
shares, bit-identical repeats, a fit that follows the one-process fit
without gathering the parameters, and a lost share. tests/test_engines.py
holds it to the engine contract besides."""
import numpy as np
import pytest
import scipy.sparse as sp

from engine_contract import every_output, parameters_problems
from glocalk_np import lbfgsb
from glocalk_np.config import Config
from glocalk_np.engines import EngineFailure, settings
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.engines.sharded import Ref, ShardedEngine, SharedParams
from glocalk_np.params import STAGES, flatten, optimised
from glocalk_np.scale import RatingScale
from glocalk_np.synthetic import low_rank_ratings
from glocalk_np.train import fit
from problems import PROBLEMS, smooth_problem
from thread_transport import thread_engine

TOLERANCE = 1e-12      # float64: only the order of the sums differs


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def engines(spec, shares):
    """(the sharded engine on ``shares`` threads, the CPU engine), float64,
    for a problem; its parameters and dense R."""
    R, params, hyper = smooth_problem(spec)
    X = sp.csr_matrix(R)
    return (thread_engine(X, shares=shares, dtype=np.float64, **hyper),
            CpuEngine(X, dtype=np.float64, **hyper), params, R)


@pytest.mark.parametrize("shares", [1, 2, 3])
@pytest.mark.parametrize("spec", PROBLEMS[:3])
def test_every_method_equals_the_cpu_engine(spec, shares):
    """Every number of both stages to round-off; objective_into's loss and
    gradient those of the engine's own call, bit for bit."""
    sharded, cpu, params, _ = engines(spec, shares)
    assert (sharded.settings, sharded.shape) == (cpu.settings, cpu.shape)
    got, want = every_output(sharded, params), every_output(cpu, params)
    assert list(got) == list(want)
    for name, value in want.items():
        assert _rel(got[name], value) < TOLERANCE, name
    for stage in STAGES:
        assert got[f"{stage}/into"] == got[f"{stage}/loss"]
        np.testing.assert_array_equal(got[f"{stage}/into.g"], got[f"{stage}/flat"])


@pytest.mark.parametrize("stage", STAGES)
def test_the_optimiser_steps_on_the_shares_parts_as_in_host_memory(stage):
    sharded, cpu, params, _ = engines(PROBLEMS[2], 3)
    template = optimised(stage, params)
    x = flatten(template)
    ws = sharded.workspace(x.size, 3)
    assert all(isinstance(getattr(ws, v), Ref) for v in ("x", "g", "t", "r", "d", "S", "Y"))
    there = lbfgsb.minimize(sharded.objective_into(stage, template), x, maxiter=3, maxcor=3,
                            workspace=ws)
    here = lbfgsb.minimize(cpu.objective_into(stage, template), x, maxiter=3, maxcor=3)
    assert (there.nit, there.nfev) == (here.nit, here.nfev)
    assert there.fun == pytest.approx(here.fun, rel=1e-12)
    assert _rel(ws.vectors.to_host(there.x), here.x) < 1e-10


def test_two_engines_on_the_same_shares_repeat_every_bit():
    runs = []
    for _ in range(2):
        sharded, _, params, _ = engines(PROBLEMS[2], 3)
        runs += [every_output(sharded, params) for _ in range(2)]
    for run in runs[1:]:
        for name, value in runs[0].items():
            np.testing.assert_array_equal(run[name], value, err_msg=name)


def test_a_fit_on_threads_follows_the_one_process_fit_without_gathering(monkeypatch):
    r = low_rank_ratings(60, 40, 0.25, 3, 0)
    R = sp.csr_matrix((r.values, (r.items, r.users)))
    config = Config(n_hidden=6, kernel_dim=3, epochs_pretrain=2, epochs_finetune=2,
                    iters_pretrain=3, iters_finetune=3, dtype="float64", optimizer="numba")
    engine = thread_engine(RatingScale.of(R.data, config.scale).matrix_to_model(R), shares=3,
                           halo=config.gk_size // 2, **settings(config))
    gathers = []
    real = ShardedEngine._gather
    monkeypatch.setattr(ShardedEngine, "_gather",
                        lambda self, x: gathers.append(x) or real(self, x))
    there = fit(R, config, engine=engine)
    assert not gathers and isinstance(there.params, SharedParams)
    here = fit(R, config)
    assert [e.train_rmse for e in there.history] == pytest.approx(
        [e.train_rmse for e in here.history], rel=1e-9)
    for key, value in here.params.items():
        assert _rel(there.params[key], value) < 1e-9, key
    shares = engine.report()["shares"]
    assert [s["users"][0] for s in shares[1:]] == [s["users"][1] for s in shares[:-1]]
    assert all(s["threads"] == 1 and s["first_evaluation_s"] > 0 for s in shares)


def test_a_lost_share_stops_the_evaluation_with_its_name():
    sharded, _, params, _ = engines(PROBLEMS[1], 2)
    sharded.transport.pools[1].shutdown()
    with pytest.raises(EngineFailure, match=r"share 2 \(a thread\) is lost"):
        sharded("pretrain", params)


def test_the_protocol_check_finds_parameters_that_later_epochs_overwrite(monkeypatch):
    sharded, _, params, R = engines(PROBLEMS[0], 2)
    rows, cols = np.divmod(np.arange(R.size), R.shape[1])
    monkeypatch.setattr(SharedParams, "kept", lambda self, slot: self)
    assert parameters_problems(sharded, "finetune", params, rows, cols)[0].startswith("kept: ")
