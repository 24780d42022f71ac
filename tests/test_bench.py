"""The benchmark scripts: the dense baseline's gradient, the FLOP counts, the
synthetic data, and speed.py / reproduce.py / plots.py end to end on a tiny
synthetic problem (single-threaded, so a busy machine does not slow them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dense_reference import dense_loss_grad, rel_error
from glocalk_np.params import optimised

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from dense_baseline import DenseGLocalK  # noqa: E402
from speed import dense_flops, sparse_flops  # noqa: E402

ENV = dict(os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def run_script(name, *args, timeout=600):     # a guard against a hang, not a speed test
    return subprocess.run([sys.executable, str(BENCH / name), *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_dense_baseline_matches_reference(problem, stage):
    R, params, hp = problem
    params = optimised(stage, params)
    want_loss, want = dense_loss_grad(stage, params, R, **hp)
    loss, grads = DenseGLocalK(R, dtype=np.float64, **hp)(stage, params)
    assert list(grads) == list(want)          # same keys, in the flat vector's order
    assert abs(loss - want_loss) <= 1e-9 * abs(want_loss)
    for k in want:
        assert grads[k].shape == want[k].shape
        assert rel_error(grads[k], want[k]) < 1e-9, k


def test_dense_baseline_float32(problem):
    R, params, hp = problem
    want_loss, want = dense_loss_grad("finetune", params, R, **hp)
    loss, grads = DenseGLocalK(R, **hp)("finetune", params)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
    for k in want:
        assert rel_error(grads[k], want[k]) < 1e-4, k


def test_flop_counts_agree_on_a_full_matrix():
    """With every entry observed and kept, pre-training does the same products
    both ways; the sparse fine-tuning skips the first pass's output layer."""
    m, n, h, L, d, gk = 30, 40, 8, 2, 5, 3
    assert sparse_flops("pretrain", m, n, m * n, 0, h, L, d, gk) == dense_flops("pretrain", m, n, h, L, d, gk)
    assert sparse_flops("finetune", m, n, m * n, m * n, h, L, d, gk) < dense_flops("finetune", m, n, h, L, d, gk)


def test_synthetic_ratings():
    r = common.synthetic_ratings(50, 70, 900, seed=3)
    assert len(r) == 900
    assert set(np.unique(r.values)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(np.unique(r.items * 1000 + r.users)) == 900
    assert r.items.min() >= 1 and r.items.max() <= 50 and r.users.max() <= 70
    p = common.load("synth-tiny")
    m, n, nnz, _ = common.SYNTHETIC["synth-tiny"]
    assert p.matrix(p.train).shape == (m, n) and len(p.train) == nnz


@pytest.fixture(scope="module")
def speed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    proc = run_script("speed.py", "--quick", "--datasets", "synth-tiny", "--threads", "1",
                      "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc, out


@pytest.fixture(scope="module")
def reproduce_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "reproduce.json"
    proc = run_script("reproduce.py", "--quick", "--datasets", "synth-tiny", "--seeds", "0", "1",
                      "--honest", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_speed_quick(speed_run):
    proc, out = speed_run
    data = json.loads(out.read_text())
    got = {(r["stage"], r["engine"]) for r in data["results"] if "median_s" in r}
    assert got == {(s, e) for s in ("pretrain", "finetune") for e in ("sparse", "dense")}
    fine = next(r for r in data["results"] if r["stage"] == "finetune" and r["engine"] == "sparse")
    assert fine["kept"] == fine["neighbourhood"] > 0     # --conv all keeps the whole neighbourhood
    assert fine["profile"]["spmm"] > 0 and fine["rss_peak_mib"] > 0
    assert "dense/sparse" in proc.stdout


def test_speed_epoch_and_thread_scaling(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_script("speed.py", "--datasets", "synth-tiny", "--stages", "pretrain", "--repeats", "1",
                      "--threads", "1", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for r in data["results"]:       # one L-BFGS epoch of the preset's 5 iterations
        assert r["epoch"]["iters"] == 5 and r["epoch"]["evaluations"] >= 5
        assert 0 < r["epoch"]["objective_s"] < r["epoch"]["seconds"]
        assert np.isclose(r["epoch"]["objective_s"] + r["epoch"]["optimizer_s"], r["epoch"]["seconds"])
        if r["engine"] == "sparse":  # lbfgsb.py's epoch: the same steps as scipy's
            assert r["epoch_numba"]["evaluations"] == r["epoch"]["evaluations"]
    assert sorted((r["engine"], r["numba_threads"]) for r in data["scaling"]) == [
        ("dense", 1), ("dense", 2), ("sparse", 1), ("sparse", 2)]
    assert "thread scaling" in proc.stdout


def test_reproduce_quick(reproduce_run):
    proc, out = reproduce_run
    res = json.loads(out.read_text())["datasets"]["synth-tiny"]
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    for run in res["runs"]:
        assert run["paper"]["rmse"] <= run["last"]["rmse"]
        assert len(run["history"]) == 3 and "test" in run["history"][-1]
        assert "val" in run["honest"]["history"][-1]
    assert res["summary"]["honest_rmse"]["mean"] > 0
    assert np.isclose(res["ensemble"]["last"]["single_rmse"],
                      np.mean([r["last"]["rmse"] for r in res["runs"]]))
    assert "seed ensemble" in proc.stdout


def test_plots(speed_run, reproduce_run, tmp_path):
    pytest.importorskip("matplotlib")
    proc = run_script("plots.py", "--reproduce", str(reproduce_run[1]), "--speed", str(speed_run[1]),
                      "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rmse_synth-tiny.png").is_file() and (tmp_path / "speed.png").is_file()


def test_plots_pool_runs_of_separate_invocations(reproduce_run):
    from plots import pooled_runs
    data = json.loads(reproduce_run[1].read_text())
    later = {"datasets": {"synth-tiny": {"runs": [{"seed": 7}]}, "other": {"runs": [{"seed": 0}]}}}
    runs = pooled_runs([data, later])
    assert [r["seed"] for r in runs["synth-tiny"]] == [0, 1, 7]
    assert [r["seed"] for r in runs["other"]] == [0]


@pytest.mark.parametrize("script, args, missing", [
    ("speed.py", ["--datasets", "ml-100k"], "ml-100k/u1.base"),
    ("reproduce.py", ["--datasets", "ml-100k"], "ml-100k/u1.base"),
    ("rescaled.py", [], "ml-100k/u1.base"), ("serving.py", [], "ml-100k/u1.base"),
    ("fallbacks.py", [], "ml-100k/u1.base"), ("honest.py", [], "ml-100k/u1.base"),
    ("own_data.py", ["--datasets", "ml-1m"], "ml-1m/ratings_uir.dat"),
    ("cluster.py", ["--datasets", "ml-100k"], "ml-100k/u1.base"),
    ("topn.py", ["--datasets", "ml-100k"], "ml-100k/u1.base")])
def test_missing_data_exits_2(tmp_path, script, args, missing):
    proc = run_script(script, *args, "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert str(tmp_path / missing) in proc.stderr
