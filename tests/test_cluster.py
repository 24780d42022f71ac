"""The Dask engine (engines/cluster.py) on a LocalCluster of worker
processes: the contract's every method against the CPU engine in float64,
for 1, 2 and 3 shares of the users (uneven), bit-identical repeats, a short
fit against the one-process fit, a resumed fit, a lost worker, and the
command line. Skipped where dask.distributed is not installed (it is in the
'test' extra)."""
import contextlib
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                  "(pip install 'glocalk-np[dask]')")

from dask import config as dask_config  # noqa: E402
from glocalk_np.config import Config  # noqa: E402
from glocalk_np.engines import EngineFailure, make_engine  # noqa: E402
from glocalk_np import lbfgsb  # noqa: E402
from glocalk_np.engines.cluster import DaskEngine, environment_kept, usable_cpus  # noqa: E402
from glocalk_np.engines.sharded import Ref  # noqa: E402
from glocalk_np.engines.cpu import CpuEngine  # noqa: E402
from glocalk_np.estimator import GLocalK  # noqa: E402
from glocalk_np.params import STAGES, flatten, optimised  # noqa: E402
from glocalk_np.scale import RatingScale  # noqa: E402
from glocalk_np.synthetic import low_rank_ratings  # noqa: E402
from glocalk_np.data import Index, Ratings, subset  # noqa: E402
from glocalk_np.train import EvalSet, fit  # noqa: E402
from problems import PROBLEMS, smooth_problem  # noqa: E402
from engine_contract import every_output, parameters_problems  # noqa: E402
from thread_transport import thread_engine  # noqa: E402
import cli_process  # noqa: E402

TOLERANCE = 1e-12


@contextlib.contextmanager
def local_cluster(workers):
    with environment_kept(), distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
            dashboard_address=":0", silence_logs=40) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client():
    with local_cluster(3) as cluster, distributed.Client(cluster, direct_to_workers=True) as c:
        yield c


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("shares", [1, 2, 3])
@pytest.mark.parametrize("spec", PROBLEMS[:3])
def test_every_method_equals_the_cpu_engine(client, spec, shares):
    R, params, hyper = smooth_problem(spec)
    X = sp.csr_matrix(R)
    dask = DaskEngine(X, client=client, shares=shares, dtype=np.float64, **hyper)
    cpu = CpuEngine(X, dtype=np.float64, **hyper)
    assert dask.settings == cpu.settings and dask.shape == cpu.shape
    m, n = R.shape
    rows, cols = np.divmod(np.arange(m * n), n)
    for stage in STAGES:
        loss, grads = dask(stage, params)
        want_loss, want = cpu(stage, params)
        assert abs(loss - want_loss) <= TOLERANCE * abs(want_loss)
        assert list(grads) == list(want)
        for key in want:
            assert _rel(grads[key], want[key]) < TOLERANCE, (stage, key)
        assert _rel(dask.predict(stage, params, rows, cols),
                    cpu.predict(stage, params, rows, cols)) < TOLERANCE
        x = flatten(optimised(stage, params))
        g = np.full_like(x, np.nan)
        assert dask.objective_into(stage, optimised(stage, params))(x, g) == loss
        np.testing.assert_array_equal(g, flatten(grads))
    assert _rel(dask.conv_preactivation(params), cpu.conv_preactivation(params)) < TOLERANCE


@pytest.mark.parametrize("stage", STAGES)
def test_the_optimiser_runs_on_the_shares_parts_of_its_vectors(client, stage):
    """The engine's workspace holds no vector on the driver (each is a Ref
    to the shares' parts); three L-BFGS-B iterations in it take the steps
    they take in host memory."""
    R, params, hyper = smooth_problem(PROBLEMS[2])
    engine = DaskEngine(sp.csr_matrix(R), client=client, shares=3, dtype=np.float64, **hyper)
    template = optimised(stage, params)
    x = flatten(template)
    ws = engine.workspace(x.size, 3)
    assert all(isinstance(getattr(ws, v), Ref) for v in ("x", "g", "t", "r", "d", "S", "Y"))
    fg = engine.objective_into(stage, template)
    there = lbfgsb.minimize(fg, x, maxiter=3, maxcor=3, workspace=ws)
    here = lbfgsb.minimize(CpuEngine(sp.csr_matrix(R), dtype=np.float64, **hyper)
                           .objective_into(stage, template), x, maxiter=3, maxcor=3)
    assert (there.nit, there.nfev) == (here.nit, here.nfev)
    assert there.fun == pytest.approx(here.fun, rel=1e-12)
    assert _rel(ws.vectors.to_host(there.x), here.x) < 1e-10
    assert _rel(ws.vectors.to_host(there.jac), here.jac) < 1e-9


def test_each_worker_evaluates_with_the_threads_it_was_given(client):
    R, params, hyper = smooth_problem(PROBLEMS[0])
    engine = DaskEngine(sp.csr_matrix(R), client=client, shares=2, threads=1, **hyper)
    engine("finetune", params)
    assert [a.threads_used for a in engine.actors] == [1, 1]


def test_two_runs_with_the_same_shares_are_bit_identical(client):
    R, params, hyper = smooth_problem(PROBLEMS[2])
    for _ in range(2):
        engine = DaskEngine(sp.csr_matrix(R), client=client, shares=3, **hyper)
        runs = [engine("finetune", params) for _ in range(2)]
        for a, b in zip(runs[0][1].values(), runs[1][1].values()):
            np.testing.assert_array_equal(a, b)
        assert runs[0][0] == runs[1][0]


@pytest.mark.parametrize("stage", STAGES)
def test_the_parameters_handed_to_the_trainer_implement_the_whole_protocol(client, stage):
    """SharedParams, base.RemoteParams as tests/test_engines.py holds every
    engine's to: read, predicted from, kept and carried on the shares."""
    R, params, hyper = smooth_problem(PROBLEMS[2])
    engine = DaskEngine(sp.csr_matrix(R), client=client, shares=3, dtype=np.float64, **hyper)
    rows, cols = np.divmod(np.arange(R.size), R.shape[1])
    assert parameters_problems(engine, stage, params, rows, cols) == []


def test_the_shares_in_threads_of_one_process_give_the_workers_bits(client):
    """The sharded engine over threads (tests/thread_transport.py) and over
    Dask, one Numba thread a share either way, the same shares: every bit
    alike, the transport changes nothing of the numbers."""
    R, params, hyper = smooth_problem(PROBLEMS[2])
    X = sp.csr_matrix(R)
    want = every_output(DaskEngine(X, client=client, shares=3, dtype=np.float64, **hyper), params)
    got = every_output(thread_engine(X, shares=3, threads=1, dtype=np.float64, **hyper), params)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def ratings_matrix():
    r = low_rank_ratings(60, 40, 0.25, 3, 0)
    return sp.csr_matrix((r.values, (r.items, r.users))), r


CONFIG = Config(n_hidden=6, kernel_dim=3, epochs_pretrain=2, epochs_finetune=1,
                iters_pretrain=3, iters_finetune=3, dtype="float64", optimizer="numba")


def test_a_fit_on_the_cluster_follows_the_one_process_fit(client, monkeypatch):
    """The same epochs and parameters (the best test epoch's too), and the
    parameters stay on the shares between epochs and stages: the driver
    gathers none of them until they are read."""
    R, ratings = ratings_matrix()
    config = replace(CONFIG, epochs_finetune=3)
    held = subset(ratings, np.arange(0, len(ratings), 7))   # worse as training goes on
    held = Ratings(held.users, held.items, 6 - held.values, "reversed")
    evals = {"test": EvalSet.of_ratings(held, Index.from_ratings(ratings))}
    model_units = RatingScale.of(R.data, config.scale).matrix_to_model(R)
    engine = make_engine(model_units, config, "dask")
    gathers = []
    real = DaskEngine._gather
    monkeypatch.setattr(DaskEngine, "_gather", lambda self, x: gathers.append(x) or real(self, x))
    there = fit(R, config, engine=engine, evals=evals)
    assert not gathers
    here = fit(R, config, evals=evals)
    assert [r.train_rmse for r in there.history] == pytest.approx(
        [r.train_rmse for r in here.history], rel=1e-9)
    assert [r.metrics["test"]["rmse"] for r in there.history] == pytest.approx(
        [r.metrics["test"]["rmse"] for r in here.history], rel=1e-9)
    for key, value in here.params.items():
        assert _rel(there.params[key], value) < 1e-9, key
    assert there.best["test"].epoch == here.best["test"].epoch < config.epochs_finetune
    for key, value in here.best["test"].params.items():
        assert _rel(there.best["test"].params[key], value) < 1e-9, key


def test_the_estimator_trains_saves_and_resumes_on_the_cluster(client, tmp_path):
    """device='dask' with the current client; the saved model predicts on
    its own; a fit stopped after its first epoch and resumed (a fresh engine
    on the same shares) ends bit for bit where an uninterrupted one does."""
    _, ratings = ratings_matrix()
    config = replace(CONFIG, epochs_finetune=2)
    whole = GLocalK(config, device="dask", validation_fraction=0).fit(ratings)
    shares = whole.summary_["engine"]["shares"]
    assert [s["users"] for s in shares] == [[0, 20], [20, 40], [40, 60]]
    assert all(s["threads"] == 1 and s["first_evaluation_s"] > 0 for s in shares)
    whole.save(tmp_path / "m.npz")
    loaded = GLocalK.load(tmp_path / "m.npz")
    np.testing.assert_allclose(loaded.predict(ratings.users, ratings.items)[0],
                               whole.predict(ratings.users, ratings.items)[0], rtol=1e-12)
    user = ratings.users[0]                 # the lists' pick model came with the fit
    assert loaded.picks_.method == "ease" and loaded._rank("auto") == "picks+rating"
    assert loaded.recommend(user, 5) == whole.recommend(user, 5)

    def stop(record, state):
        if len(state.history) == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        GLocalK(config, device="dask", validation_fraction=0).fit(
            ratings, callback=stop, checkpoint_dir=tmp_path / "c")
    resumed = GLocalK(config, device="dask", validation_fraction=0).fit(
        ratings, checkpoint_dir=tmp_path / "c", resume=True)
    for key, value in whole.params_.items():
        np.testing.assert_array_equal(resumed.params_[key], value, err_msg=key)


def test_a_lost_worker_stops_the_evaluation_with_its_name():
    """(A call to the lost worker's actor may wait Dask's connect timeout,
    30 s unless set, to fail: 10 s here.)"""
    R, params, hyper = smooth_problem(PROBLEMS[1])
    with dask_config.set({"distributed.comm.timeouts.connect": "10s"}), local_cluster(2) \
            as cluster, distributed.Client(cluster, direct_to_workers=True) as c:
        engine = DaskEngine(sp.csr_matrix(R), client=c, dtype=np.float64, **hyper)
        lost = engine.workers[1]
        with suppress(Exception):
            c.run(os._exit, 1, workers=[lost])
        with pytest.raises(EngineFailure, match=f"the Dask worker {lost} .*share 2 of 2.*lost"):
            engine("pretrain", params)


def test_device_dask_without_a_client_says_what_to_do(monkeypatch):
    def no_client():
        raise ValueError("No clients found")
    monkeypatch.setattr(distributed, "default_client", no_client)
    R, _ = ratings_matrix()
    with pytest.raises(ValueError, match="needs a running dask.distributed Client"):
        make_engine(R, CONFIG, "dask")


def test_fit_on_local_workers_from_the_command_line(tmp_path):
    _, ratings = ratings_matrix()
    from glocalk_np.data import ratings_csv
    (tmp_path / "r.csv").write_text(ratings_csv(ratings))
    command = [sys.executable, "-m", "glocalk_np", "fit", "r.csv", "--device", "dask",
               "--local-workers", "2", "--hidden", "6", "--epochs-pretrain", "1",
               "--epochs-finetune", "1", "--quiet", "--out", "m.npz"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model saved to m.npz" in done.stdout and (tmp_path / "m.npz").exists()
    assert done.stdout.count("first evaluation") == 2          # a line per worker
    for flags in (["--local-workers", "2"], ["--device", "dask"],
                  ["--device", "dask", "--scheduler", "tcp://x:1", "--local-workers", "2"]):
        bad = command[:5] + flags + ["--out", "n.npz"]
        done = subprocess.run(bad, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "--device dask takes one of" in done.stderr, flags


def test_local_workers_get_their_share_of_blas_threads_and_the_environment_is_restored():
    from glocalk_np.engines.cluster import BLAS_THREAD_VARIABLES, local_cluster
    before = {k: os.environ.get(k) for k in BLAS_THREAD_VARIABLES}
    want = before["OPENBLAS_NUM_THREADS"] or str(max(1, usable_cpus() // 2))
    environ = dict(os.environ)
    with local_cluster(2, silence_logs=40) as cluster, distributed.Client(cluster) as c:
        seen = c.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS"))
    assert sorted(seen.values()) == [want, want]
    assert {k: os.environ.get(k) for k in BLAS_THREAD_VARIABLES} == before
    assert dict(os.environ) == environ


# ---------------------------------------------------------------- misconfigurations
# Dask's wait for a scheduler's answer (cluster.connect_timeout), short here
QUICK = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
FIT = ["fit", "r.csv", "--device", "dask", "--hidden", "6", "--quiet", "--out", "m.npz"]


@pytest.fixture
def ratings_file(tmp_path):
    from glocalk_np.data import ratings_csv
    (tmp_path / "r.csv").write_text(ratings_csv(ratings_matrix()[1]))
    return tmp_path


def one_line(done, status, *parts):
    """``done`` ended with ``status`` and one line on stderr holding ``parts``."""
    lines = done.stderr.splitlines()
    assert done.returncode == status and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("Error: ") and "Traceback" not in done.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("count", ["many", "1000", "0", "-1"])
def test_local_workers_beyond_the_cpus_or_below_one_are_refused_before_any_process_starts(
        ratings_file, count):
    count = str(usable_cpus() + 1) if count == "many" else count
    done = cli_process.run(*FIT, "--local-workers", count, cwd=ratings_file, timeout=60)
    one_line(done, 2, "--local-workers", count)
    assert "give 1 to" in done.stderr or "is not in [1, " in done.stderr


@pytest.mark.parametrize("address, why", [
    ("inproc://x", "inproc:// address names a scheduler in the same Python process"),
    ("tcp://127.0.0.1:99999", "is not an address SCHEME://HOST:PORT"),
    ("tcp://127.0.0.1", "is not an address SCHEME://HOST:PORT"),
    ("tcp://:8786", "is not an address SCHEME://HOST:PORT"),
    ("foo://h:1", "unknown scheme foo://"),
    ("tls://127.0.0.1:8786", "tls:// needs Dask's TLS settings")])
def test_a_malformed_scheduler_address_is_refused_in_one_line(ratings_file, address, why):
    done = cli_process.run(*FIT, "--scheduler", address, cwd=ratings_file, timeout=60,
                           env=QUICK)
    one_line(done, 2, f"--scheduler {address!r}", why)


@pytest.mark.parametrize("address, why", [
    ("a closed port", "no Dask scheduler answers at tcp://127.0.0.1:"),
    ("tcp://no-such-host.invalid:8786", "is not known")])
def test_an_address_where_no_scheduler_listens_fails_in_one_line(ratings_file, address, why):
    if address == "a closed port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    done = cli_process.run(*FIT, "--scheduler", address, cwd=ratings_file, timeout=60,
                           env=QUICK)
    one_line(done, 1, why)


class _AnswersAtOnce(socketserver.StreamRequestHandler):
    """An HTTP server's refusal of a request it cannot parse, sent without
    waiting for a whole request line (http.server waits for a newline,
    which Dask's greeting holds on some Python versions only)."""

    def handle(self):
        self.request.recv(64)
        self.wfile.write(b"HTTP/1.0 400 Bad request\r\nContent-Type: text/html\r\n\r\nBad")


@pytest.mark.parametrize("handler", ["http.server", "at once"])
def test_an_http_server_is_not_taken_for_a_scheduler(ratings_file, handler):
    """Dask's client reads an HTTP reply's first 8 bytes as a message length
    of exbibytes (a MemoryError, once reported as 'out of memory'), and it
    waits for ever on a server that waits for more of the request."""
    kind = http.server.SimpleHTTPRequestHandler if handler == "http.server" else _AnswersAtOnce
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), kind) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = f"tcp://127.0.0.1:{server.server_address[1]}"
        done = cli_process.run(*FIT, "--scheduler", address, cwd=ratings_file, timeout=60,
                               env=QUICK)
        server.shutdown()
    one_line(done, 1, f"{address} is not a Dask scheduler", "its dashboard on 8787")
    assert "memory" not in done.stderr


def test_a_scheduler_killed_during_a_fit_ends_it_in_one_line_naming_the_checkpoint(
        ratings_file):
    """A `dask scheduler` and a `dask worker` of their own (about 10 s here):
    the scheduler is killed once the first checkpoint is written."""
    dask = [sys.executable, "-m", "dask"]
    quiet = dict(cwd=ratings_file, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = subprocess.Popen(dask + ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                         "--no-dashboard", "--scheduler-file", "s.json"],
                                 **quiet)
    worker = fit = None
    try:
        while not (ratings_file / "s.json").exists():
            assert scheduler.poll() is None, "the scheduler did not start"
            time.sleep(0.1)
        worker = subprocess.Popen(dask + ["worker", "--scheduler-file", "s.json",
                                          "--nthreads", "1", "--memory-limit", "0",
                                          "--no-dashboard"], **quiet)
        address = json.loads((ratings_file / "s.json").read_text())["address"]
        with distributed.Client(address, timeout=60) as client:   # a fit needs its worker
            client.wait_for_workers(1, timeout=60)
        fit = cli_process.start(*FIT, "--scheduler", address, "--checkpoint-dir", "c",
                                "--epochs-pretrain", "2", "--epochs-finetune", "200",
                                cwd=ratings_file)
        while not (ratings_file / "c" / "checkpoint.npz").exists():
            assert fit.poll() is None, fit.communicate()
            time.sleep(0.05)
        scheduler.send_signal(signal.SIGKILL)
        _, err = fit.communicate(timeout=60)
    finally:
        for p in (fit, worker, scheduler):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    done = subprocess.CompletedProcess(fit.args, fit.returncode, "", err)
    one_line(done, 1, f"lost the Dask scheduler {address}",
             "the last completed epoch is saved in c: --resume goes on from it")


@pytest.mark.skipif(usable_cpus() < 2, reason="two local workers need two CPUs")
def test_resuming_on_another_worker_count_warns_that_the_result_will_differ(ratings_file):
    """The shares' sums are added in share order: a checkpoint written on
    2 workers and resumed on 1 (here one whose epochs are all done, so that
    only the check runs) says so in one line."""
    fit = [*FIT, "--epochs-pretrain", "1", "--epochs-finetune", "1", "--val-frac", "0",
           "--checkpoint-dir", "c"]
    first = cli_process.run(*fit, "--local-workers", "2", cwd=ratings_file)
    assert first.returncode == 0 and not first.stderr, first.stderr[-3000:]
    again = cli_process.run(*fit, "--local-workers", "2", "--resume", cwd=ratings_file)
    assert again.returncode == 0 and not again.stderr, again.stderr[-3000:]
    other = cli_process.run(*fit, "--local-workers", "1", "--resume", cwd=ratings_file)
    assert other.returncode == 0, other.stderr[-3000:]
    assert other.stderr.splitlines() == [
        f"Warning: {os.path.join('c', 'checkpoint.npz')}: written on 2 Dask workers of "
        f"{usable_cpus() // 2}, {usable_cpus() // 2} Numba threads, resumed on 1 Dask worker "
        f"of {usable_cpus()} Numba threads: the sums are split by worker and added in worker "
        "order, so the result will differ slightly from an uninterrupted run"]
