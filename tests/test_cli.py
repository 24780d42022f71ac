"""The command line: every command through click's CliRunner, a few as real
processes, and every kind of bad input as one `Error:` line with status 2."""
import json
import os
import signal
import subprocess
import sys

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from glocalk_np import gradcheck
from glocalk_np import train as training
from glocalk_np.cli import cli
from glocalk_np.console.process import Terminated
from glocalk_np.data import read_pairs, read_ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.gradcheck import random_problem
from glocalk_np.engines.cpu import CpuEngine
from glocalk_np.synthetic import low_rank_ratings
import cli_process

TINY = ["--hidden", "8", "--kernel-dim", "3", "--epochs-pretrain", "1", "--epochs-finetune", "2",
        "--iters-pretrain", "2", "--iters-finetune", "2"]


def run(*args, code=0):
    """CliRunner result of ``glocalk-np args``, checked for status and no traceback."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result


def fails(*args):
    """The single stderr line of a command that must fail with status 2."""
    result = run(*args, code=2)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert [line for line in result.stdout.splitlines() if not line.startswith("data: ")] == []
    return lines[0]


def write_ratings(path, ratings):
    path.write_text("".join(f"{u},{i},{r:g}\n" for u, i, r in
                            zip(ratings.users, ratings.items, ratings.values)))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A ratings file (40 users x 30 items), a test file with some unseen
    users/items, and a model fitted on the first with the tiny schedule."""
    d = tmp_path_factory.mktemp("cli")
    train = write_ratings(d / "train.csv", low_rank_ratings(40, 30, 0.4, 2, seed=1))
    test = d / "test.csv"
    test.write_text("1,1,4\n1,3,2\n2,5,5\n2,2,1\n999,1,3\n1,999,2\n")
    model = d / "model.npz"
    run("fit", train, *TINY, "--out", model, "--quiet")
    return {"dir": d, "train": train, "test": test, "model": model}


# ---------------------------------------------------------------- fit

def test_fit_prints_epochs_and_summary_and_writes_model_and_metrics(tmp_path, files):
    model, report = tmp_path / "m.npz", tmp_path / "m.json"
    result = run("fit", files["train"], *TINY, "--test-frac", "0.2", "--val-frac", "0.2",
                 "--out", model, "--metrics-json", report)
    out = result.stdout
    for line in ("pretrain   1/1 ", "finetune   1/2 ", "finetune   2/2 "):
        assert line in out
    assert "train RMSE" in out and "val RMSE" in out and "test RMSE" in out
    assert "(fine-tuning epoch with the best validation RMSE, then refit on the training and " \
        "validation ratings together for the epochs chosen)" in out
    assert "data: 480 ratings by 40 users of 30 items; train 307, validation 77 (16%), " \
        "test 96 (20%)" in out
    assert "NDCG" in out and f"model saved to {model}" in out
    assert "pre-training" not in result.stderr    # progress bars only on a terminal
    est = GLocalK.load(model)
    assert est.config.n_hidden == 8 and est.config.kernel_dim == 3
    data = json.loads(report.read_text())
    assert set(data) == {"config", "summary", "history", "selection_history", "unseen",
                         "seconds"}
    assert [(h["stage"], h["epoch"]) for h in data["selection_history"]] == \
        [("pretrain", 1), ("finetune", 1), ("finetune", 2)]
    refit = data["summary"]["refit"]
    assert refit["ratings"] == 307 + 77 and refit["epochs_pretrain"] == 1
    assert [(h["stage"], h["epoch"]) for h in data["history"]] == \
        [("pretrain", 1)] + [("finetune", e + 1) for e in range(refit["epochs_finetune"])]
    assert data["summary"]["select"] == "val" and set(data["unseen"]) == {"test", "val"}
    assert set(data["summary"]["baseline"]) == {"test", "val"}
    assert "validation" in data["summary"]["protocol"]
    assert data["summary"]["best_epoch"] == est.best_epoch_
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]   # no temp files left


@pytest.mark.parametrize("extra, select, patience, refit", [
    ([], "val", 5, True),                             # a ratings file, no preset: 5% val
    (["--test-frac", "0.2"], "val", 5, True),         # the test set never picks by default
    (["--test-frac", "0.2", "--val-frac", "0.2", "--patience", "2"], "val", 2, True),
    (["--test-frac", "0.2", "--no-refit"], "val", 5, False),
    (["--test-frac", "0.2", "--val-frac", "0"], "last", 0, False),
    (["--test-frac", "0.2", "--preset", "ml-100k"], "last", 0, False),   # the paper's way
    (["--test-frac", "0.2", "--select", "test"], "test", 5, False),
])
def test_fit_default_selection_and_patience(tmp_path, files, extra, select, patience, refit):
    report = tmp_path / "m.json"
    run("fit", files["train"], *TINY, *extra, "--out", tmp_path / "m.npz",
        "--metrics-json", report, "--quiet")
    data = json.loads(report.read_text())
    assert data["summary"]["select"] == select and data["config"]["patience"] == patience
    assert ("TEST RMSE" in data["summary"]["protocol"]) == (select == "test")
    assert ("val" in data["unseen"]) == (select == "val" or patience > 0)
    assert ("refit" in data["summary"]) == ("selection_history" in data) == refit


def test_the_summary_names_the_run_that_stopped_and_what_scored_val(tmp_path, files):
    """After a refit: the stopping run's epochs and the patience it used
    (not the refit's epochs and None), and the same validation scores as
    without a refit (the choosing fit as it predicts, blended), labelled."""
    args = ["fit", files["train"], "--hidden", "8", "--kernel-dim", "3", "--epochs-pretrain",
            "1", "--epochs-finetune", "30", "--iters-pretrain", "2", "--iters-finetune", "5",
            "--patience", "2", "--quiet"]      # stops after fine-tuning epoch 7 here
    refit = run(*args, "--out", tmp_path / "refit.npz").stdout.splitlines()
    alone = run(*args, "--no-refit", "--out", tmp_path / "alone.npz").stdout.splitlines()
    est = GLocalK.load(tmp_path / "refit.npz")
    ran = sum(r.stage == "finetune" for r in est.selection_history_)
    assert ran < 30 and len(est.history_) == 1 + est.best_epoch_ < 1 + ran
    assert f"stopped early: fine-tuning after epoch {ran} of 30 in the fit that chose the " \
        "epochs (no better validation RMSE in 2 epochs)" in refit
    assert f"stopped early: fine-tuning after epoch {ran} of 30 (no better validation RMSE in " \
        "2 epochs)" in alone
    val = [line for line in refit if line.startswith("  val RMSE")]
    assert val == [line.replace(")", ", before the refit)")
                   for line in alone if line.startswith("  val RMSE")]
    assert val[0].endswith("ratings; the network blended with the baseline, before the refit)")


def test_quiet_leaves_only_the_summary(tmp_path, files):
    result = run("fit", files["train"], *TINY, "--out", tmp_path / "m.npz", "--quiet")
    assert "pretrain " not in result.stdout and "selected: fine-tuning epoch" in result.stdout
    assert result.stderr == ""


def test_preset_with_overrides_dtype_and_threads(tmp_path, files):
    model = tmp_path / "m.npz"
    try:
        run("fit", files["train"], "--preset", "ml-1m", *TINY, "--lambda-s", "0.5",
            "--dtype", "float64", "--seed", "3", "--threads", "1", "--out", model, "--quiet")
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    config = GLocalK.load(model).config
    assert (config.lambda_2, config.dot_scale) == (70.0, 0.5)           # from the preset
    assert (config.lambda_s, config.epochs_finetune) == (0.5, 2)        # overridden
    assert (config.dtype, config.seed) == ("float64", 3)


def test_optimizer_option_is_recorded_and_resume_keeps_to_it(tmp_path, files):
    model, ckpt = tmp_path / "m.npz", tmp_path / "ckpt"
    run("fit", files["train"], *TINY, "--optimizer", "numba", "--checkpoint-dir", ckpt,
        "--out", model, "--quiet")
    assert GLocalK.load(model).config.optimizer == "numba"
    line = fails("fit", files["train"], *TINY, "--checkpoint-dir", ckpt, "--resume",
                 "--out", model)
    assert "optimizer='scipy' (checkpoint: 'numba')" in line


def test_explicit_separator(tmp_path, files):
    piped = tmp_path / "piped.txt"
    piped.write_text(files["train"].read_text().replace(",", "|"))
    assert "found 1 field" in fails("fit", piped, *TINY)
    run("fit", piped, *TINY, "--sep", "|", "--out", tmp_path / "m.npz", "--quiet")


def test_explicit_test_file_with_unseen_users_counts_every_rating(tmp_path, files):
    result = run("fit", files["train"], *TINY, "--test", files["test"],
                 "--out", tmp_path / "m.npz", "--quiet")
    assert "(all 6 ratings)" in result.stdout
    assert "2 predicted by a fallback (2 with a user or item unseen in training); the " \
        "network's 4: RMSE" in result.stdout
    line = next(l for l in result.stdout.splitlines() if "baseline (" in l)
    assert line.startswith("  baseline (global mean + user and item offsets): val RMSE ")
    assert "  test RMSE " in line


def test_mat_file_brings_its_own_test_set(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    M = rng.integers(1, 6, (12, 10)).astype(float)
    test_mask = (rng.random(M.shape) < 0.2).astype(float)
    path = tmp_path / "monti.mat"
    with h5py.File(path, "w") as f:    # HDF5 holds MATLAB's arrays transposed
        for name, a in (("M", M), ("Otraining", 1 - test_mask), ("Otest", test_mask)):
            f[name] = a.T
    report = tmp_path / "m.json"
    run("fit", path, *TINY, "--out", tmp_path / "m.npz", "--metrics-json", report, "--quiet")
    summary = json.loads(report.read_text())["summary"]
    assert summary["select"] == "val" and "test" in summary and "val" in summary
    assert "has its own test set" in fails("fit", path, *TINY, "--test-frac", "0.1")


def test_ctrl_c_saves_the_last_epoch_and_resume_finishes(tmp_path, files, monkeypatch):
    real = training.minimize_epoch
    calls = []

    def interrupt_second_epoch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(training, "minimize_epoch", interrupt_second_epoch)
    ckpt, model = tmp_path / "ckpt", tmp_path / "m.npz"
    args = ["fit", files["train"], *TINY, "--no-refit", "--checkpoint-dir", ckpt, "--out", model]
    result = run(*args, code=130)
    assert result.stderr.splitlines()[-1] == f"Interrupted: last completed epoch saved in {ckpt}"
    assert (ckpt / "checkpoint.npz").exists() and not model.exists()
    result = run(*args, "--resume", "--quiet")
    assert len(GLocalK.load(model).history_) == 3 and len(calls) == 4   # 1 epoch reused


@pytest.mark.parametrize("signal_", [KeyboardInterrupt, Terminated])
def test_a_signal_inside_a_numba_call_ends_like_the_signal(tmp_path, files, monkeypatch, signal_):
    """Ctrl-C while a Numba function runs surfaces as a SystemError caused by
    the KeyboardInterrupt; it must end as Ctrl-C does (and SIGTERM likewise)."""
    def numba_interrupted(*args):
        try:
            raise signal_()
        except BaseException as e:
            raise SystemError("CPUDispatcher(...) returned a result with an exception set") from e

    monkeypatch.setattr(training, "minimize_epoch", numba_interrupted)
    result = run("fit", files["train"], *TINY, "--out", tmp_path / "m.npz",
                 code=130 if signal_ is KeyboardInterrupt else 143)
    last = result.stderr.splitlines()[-1]
    assert last == ("Interrupted: nothing saved" if signal_ is KeyboardInterrupt else "Terminated")
    assert not (tmp_path / "m.npz").exists()


# ---------------------------------------------------------------- evaluate

def test_evaluate_text_and_json(files):
    expected = GLocalK.load(files["model"]).evaluate(read_ratings(files["test"]))
    lines = {line[:32].strip(): line[32:].strip()
             for line in run("evaluate", files["model"], files["test"]).stdout.splitlines()}
    assert lines["RMSE"] == f"{expected['rmse']:.4f}" and lines["MAE"] == f"{expected['mae']:.4f}"
    assert lines["NDCG (paper's: test items only)"] == f"{expected['ndcg']:.4f}"
    assert lines["precision@10"] == f"{expected['precision@10']:.4f}"
    assert lines["NDCG@10 (all unrated items)"] == f"{expected['ndcg@10']:.4f}"
    assert lines["ratings"] == "6" and lines["by a fallback"].startswith("2 ")
    assert lines["of them unseen ids"].startswith("2 ")
    assert lines["RMSE of the network alone"] == f"{expected['network_rmse']:.4f} (4 ratings)"
    assert lines["RMSE of the baseline"].startswith(f"{expected['baseline']['rmse']:.4f} ")
    data = json.loads(run("evaluate", files["model"], files["test"], "--json").stdout)
    assert {k: v for k, v in data.items() if k != "baseline"} == pytest.approx(
        {k: v for k, v in expected.items() if k != "baseline"})
    assert data["unseen"] == 2 and data["baseline"] == pytest.approx(expected["baseline"])
    at3 = json.loads(run("evaluate", files["model"], files["test"], "--json", "--k", "3").stdout)
    assert {"precision@3", "recall@3", "ndcg@3"} <= set(at3)


# ---------------------------------------------------------------- predict

def test_predict_pairs_with_fallbacks(tmp_path, files):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("user\titem\tcomment\n1\t1\tx\n999\t1\ty\n1\t999\tz\n")
    out = tmp_path / "pred.csv"
    run("predict", files["model"], pairs, "--out", out)
    lines = out.read_text().splitlines()
    assert lines[0] == "user,item,prediction,fallback"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[:2] for r in rows] == [["1", "1"], ["999", "1"], ["1", "999"]]
    assert [r[3] for r in rows] == ["", "item_mean", "user_mean"]
    pred, _ = GLocalK.load(files["model"]).predict(np.array([1, 999, 1]), np.array([1, 1, 999]))
    np.testing.assert_allclose([float(r[2]) for r in rows], pred, atol=1e-6)
    assert run("predict", files["model"], pairs).stdout == out.read_text()   # stdout by default


def test_predict_reads_pairs_from_standard_input_for_dash(tmp_path, files):
    """'-' is standard input, a pipe included, read by the rules of a file
    (it was 'File '-' does not exist'); its messages call it <stdin>."""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,1\n999,1\n")
    for args in (["-"], ["-", "--out", "-"]):
        done = cli_process.run("predict", files["model"], *args, input=pairs.read_text())
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout == run("predict", files["model"], pairs).stdout
    done = cli_process.run("predict", files["model"], "-", input="1,1\n2\n")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "Error: <stdin>:2: found 1 field separated by comma, expected 2 as on line 1"]


@pytest.mark.parametrize("text, users, items", [
    ("user,item\n1,10\n2,20\n", [1, 2], [10, 20]),
    ("1 10 5 881250949\n2 20 4 881250950\n", [1, 2], [10, 20]),
    ("alice;m1\nbob;m2\n", ["alice", "bob"], ["m1", "m2"]),
])
def test_read_pairs_headers_separators_and_id_kinds(tmp_path, text, users, items):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    got = read_pairs(path)
    assert [a.tolist() for a in got] == [users, items]


@pytest.mark.parametrize("text, problem", [
    ("", ": no (user, item) pairs (the file is empty)"),
    ("1,10\n2\n", ":2: found 1 field separated by comma, expected 2 as on line 1"),
    ("1\n", ":1: found 1 field separated by whitespace, expected at least 2 (user, item[, ...])"),
])
def test_bad_pairs_file(tmp_path, files, text, problem):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    assert fails("predict", files["model"], path) == f"Error: {path}{problem}"


def test_predict_all_as_long_csv_and_as_npy(tmp_path, files):
    est = GLocalK.load(files["model"])
    n_users, n_items = est.index_.n_users, est.index_.n_items
    out = run("predict", files["model"], "--all").stdout.splitlines()
    assert out[0] == "user,item,prediction,rank,seen" and len(out) == 1 + n_users * n_items
    u, i, p, _, _ = out[1 + n_items].split(",")          # second user's first item
    assert (int(u), int(i)) == (est.index_.users[1], est.index_.items[0])
    assert float(p) == pytest.approx(est.predict_all()[0, 1], abs=1e-6)
    user = est.index_.users[1]
    rows = [line.split(",") for line in out[1:] if line.split(",")[0] == str(user)]
    by_rank = [int(r[1]) for r in sorted(rows, key=lambda r: int(r[3]))]
    everything, _ = est.recommend(user, top=n_items, include_seen=True)
    assert by_rank == [item for item, _ in everything]      # the same ranking as recommend
    unseen = [int(r[1]) for r in sorted(rows, key=lambda r: int(r[3])) if r[4] == "False"]
    assert unseen[:5] == [item for item, _ in est.recommend(user, top=5)[0]]
    run("predict", files["model"], "--all", "--out", tmp_path / "all.npy")
    np.testing.assert_allclose(np.load(tmp_path / "all.npy"), est.predict_all())
    assert (tmp_path / "all.users.txt").read_text().split() == [str(x) for x in est.index_.users]
    assert (tmp_path / "all.items.txt").read_text().split() == [str(x) for x in est.index_.items]


def test_predict_needs_pairs_or_all(files):
    assert fails("predict", files["model"]) == "Error: give PAIRS or --all (exactly one)"
    assert "exactly one" in fails("predict", files["model"], files["test"], "--all")


# ---------------------------------------------------------------- recommend

def test_recommend_known_user(files):
    est = GLocalK.load(files["model"])
    out = run("recommend", files["model"], "--user", "1", "--top", "3").stdout.splitlines()
    assert out[0].split() == ["rank", "item", "predicted"] and len(out) == 4
    items = [int(line.split()[1]) for line in out[1:]]
    assert items == [item for item, _ in est.recommend(1, top=3)[0]]
    train = read_ratings(files["train"])
    assert not set(train.items[train.users == 1]) & set(items)
    everything = run("recommend", files["model"], "--user", "1", "--top", "30", "--include-seen")
    assert len(everything.stdout.splitlines()) == 31
    for rank in ("rating", "picks"):
        out = run("recommend", files["model"], "--user", "1", "--top", "5", "--rank", rank)
        assert [int(line.split()[1]) for line in out.stdout.splitlines()[1:]] == \
            [item for item, _ in est.recommend(1, top=5, rank=rank)[0]]
    by_rating = run("similar", files["model"], "--item", "1", "--rank", "rating", "--json")
    assert [(s["item"], s["similarity"]) for s in json.loads(by_rating.stdout)] == \
        est.similar(1, rank="rating")
    assert "'--rank': 'popular' is not one of" in fails("recommend", files["model"], "--user",
                                                           "1", "--rank", "popular")


def test_recommend_unknown_user_warns_and_ranks_by_damped_item_mean(files):
    est = GLocalK.load(files["model"])
    result = run("recommend", files["model"], "--user", "nobody", "--top", "1")
    assert result.stderr.startswith("Warning: user 'nobody' has no training ratings")
    best = est.index_.items[np.argmax(est.damped_item_means_)]
    assert result.stdout.splitlines()[1].split()[1] == str(best)


# ---------------------------------------------------------------- gradcheck, demo

def test_gradcheck_passes_and_catches_a_wrong_gradient(monkeypatch):
    _, params = random_problem(0)
    K = np.maximum(0, 1 - ((params["U1"][:, None] - params["V1"][None]) ** 2).sum(axis=2))
    assert (K == 0).any() and (K > 0).any()        # both branches of the kernel are checked
    result = run("gradcheck")
    out = result.stdout.splitlines()
    assert out[0].startswith("point: seed 0, ")
    progress = result.stderr.splitlines()                  # as each stage starts
    assert [line.split(":")[0] for line in progress] == ["pre-training", "fine-tuning"]
    assert all("parameters, 2 losses each" in line for line in progress)
    assert [line.split()[0] for line in out[1:]] == ["pretrain", "finetune"]
    assert all("  ok, " in line and float(line.split()[4]) < 1e-7 for line in out[1:])

    class OffByAThousandth(CpuEngine):
        def __call__(self, stage, params):
            loss, grads = super().__call__(stage, params)
            grads["b0"] = grads["b0"] * 1.001
            return loss, grads

    monkeypatch.setattr(gradcheck, "CpuEngine", OffByAThousandth)
    out = run("gradcheck", code=1).stdout.splitlines()[1:]
    assert len(out) == 2
    assert all("FAILED" in line and 1e-4 < float(line.split()[4]) < 1e-2 for line in out)


def test_demo_quick_prints_the_baseline_table(tmp_path):
    result = run("demo", "--quick", "--quiet", "--out", tmp_path / "demo.npz")
    out = result.stdout
    table = {line[:12].strip(): line[12:].split() for line in out.splitlines()
             if line.startswith(("global mean", "baseline ", "GLocal-K"))}
    assert set(table) == {"global mean", "baseline", "GLocal-K"}
    assert all(len(v) == 2 and all(float(x) > 0 for x in v) for v in table.values())
    assert "top 5 items for user" in out and (tmp_path / "demo.npz").exists()


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("text, problem", [
    ("", "train.csv: no ratings (the file is empty)"),
    ("1,2,3\n1,2\n", "train.csv:2: found 2 fields separated by comma, expected 3"),
    ("1,2,3\n2,2,good\n", "train.csv:2: rating 'good' is not a number"),
    ("1,2,3\n2,2,nan\n", "train.csv:2: rating 'nan' is not a finite number"),
    ("1,2,3\n2,2,inf\n", "train.csv:2: rating 'inf' is not a finite number"),
    ("1,2,3\n2,2,-2e6\n", "train.csv:2: rating '-2e6' is beyond ±1e+06"),
    ("1,2,3\n2,2,1e-9\n", "train.csv:2: rating '1e-9' is within ±1e-06 of 0 but not 0"),
])
def test_bad_ratings_file_is_one_line_naming_file_and_line(tmp_path, files, text, problem):
    path = tmp_path / "train.csv"
    path.write_text(text)
    assert fails("fit", path, *TINY).startswith(f"Error: {tmp_path}/{problem}")
    assert fails("evaluate", files["model"], path).startswith(f"Error: {tmp_path}/{problem}")


def test_bad_test_file_is_reported_before_training(tmp_path, files):
    path = tmp_path / "test.csv"
    path.write_text("1,1,4\n2,2,x\n")
    assert fails("fit", files["train"], *TINY, "--test", path) == \
        f"Error: {path}:2: rating 'x' is not a number"


def test_duplicates_warn_on_one_line_and_count(tmp_path):
    path = write_ratings(tmp_path / "r.csv", low_rank_ratings(20, 10, 0.5, 2, seed=0))
    with path.open("a") as f:
        f.write("1,1,2\n1,1,3\n2,2,5\n2,2,4\n")
    result = run("fit", path, *TINY, "--out", tmp_path / "m.npz", "--quiet")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [f"Warning: {path}: 2 duplicate (user, item) pairs; kept the last of each"]


def test_a_test_set_of_only_unseen_users_is_scored_by_the_fallbacks(tmp_path, files):
    path = tmp_path / "unseen.csv"
    path.write_text("1000,1,4\n1001,2,3\n")
    result = run("evaluate", files["model"], path)
    assert result.stderr == ""
    lines = {line[:32].strip(): line[32:].strip() for line in result.stdout.splitlines()}
    assert lines["ratings"] == "2" and lines["by a fallback"].startswith("2 ")
    assert lines["RMSE of the network alone"] == "nan (0 ratings)"


@pytest.mark.parametrize("frac_option", ["--test-frac", "--val-frac"])
def test_split_leaving_an_empty_training_set(tmp_path, frac_option):
    path = tmp_path / "two.csv"
    path.write_text("1,1,4\n2,2,3\n")
    held_out = "a test set" if frac_option == "--test-frac" else "a validation set"
    assert fails("fit", path, *TINY, frac_option, "0.9") == (
        f"Error: {path}: too few ratings to hold out {held_out}: 0.9 of 2 ratings rounds to "
        "all 2, leaving none to train on")


def test_missing_unreadable_and_unknown_paths(tmp_path, files):
    missing = tmp_path / "nope.csv"
    msg = fails("fit", missing, *TINY)
    assert msg.startswith(f"Error: {missing}: no such file, nor a dataset name")
    assert "glocalk-np datasets download" in msg
    assert fails("fit", tmp_path, *TINY) == f"Error: {tmp_path}: is a folder, not a regular file"
    assert "does not exist" in fails("evaluate", missing, files["test"])
    assert "is a directory" in fails("fit", files["train"], "--test", tmp_path)
    assert f"folder {tmp_path / 'no'} does not exist" in \
        fails("fit", files["train"], *TINY, "--out", tmp_path / "no" / "m.npz")


def test_corrupt_and_truncated_model_files(tmp_path, files):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a model at all")
    assert fails("evaluate", garbage, files["test"]) == \
        f"Error: {garbage}: not a glocalk-np file (not an npz archive)"
    cut = tmp_path / "cut.npz"
    data = files["model"].read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    assert fails("recommend", cut, "--user", "1").startswith(f"Error: {cut}: corrupt or truncated")


@pytest.mark.parametrize("args, message", [
    (["--test", "TEST", "--test-frac", "0.1"], "give --test or --test-frac, not both"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--select", "val", "--val-frac", "0"], "--select val needs a val set (--val-frac)"),
    (["--select", "test"], "--select test needs a test set (--test or --test-frac)"),
    (["--threads", "100000"], "Invalid value for '--threads': 100000 is more than the"),
    (["--test-frac", "1.5"], "Invalid value for '--test-frac'"),
    (["--hidden", "0"], "Invalid value for '--hidden'"),
    (["--preset", "netflix"], "Invalid value for '--preset'"),
    (["--gk-size", "2"], "Invalid value for '--gk-size': 2 is not odd"),
    # the ranges Config takes (config.RANGES), refused before any data is read
    (["--lambda-2", "1e7"], "Invalid value for '--lambda-2': 10000000.0 is not in [0, 1000000.0]"),
    (["--layers", "1001"], "Invalid value for '--layers': 1001 is not in [1, 1000]"),
    (["--no-such-option"], "No such option"),
])
def test_usage_errors_are_one_line(files, args, message):
    args = [files["test"] if a == "TEST" else a for a in args]
    assert message in fails("fit", files["train"], *TINY, *args)


# ---------------------------------------------------------------- real processes

def glocalk(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "glocalk_np", *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_subprocess_fit_evaluate_and_error(tmp_path, files):
    model = tmp_path / "m.npz"
    done = glocalk("fit", files["train"], *TINY, "--out", model)
    assert done.returncode == 0 and "finetune   2/2" in done.stdout and model.exists()
    done = glocalk("evaluate", model, files["test"], "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["unseen"] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("1,1,4\n1,2,3e6\n")
    done = glocalk("fit", bad)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"Error: {bad}:2: rating '3e6' is beyond ±1e+06, the "
                                        "largest glocalk-np trains on in float32: rescale the "
                                        "ratings"]


def test_subprocess_usage_error_and_help(tmp_path, files):
    done = glocalk("recommend", files["model"])
    assert done.returncode == 2 and \
        done.stderr == "Error: give --user, --users or --all-users (exactly one)\n"
    done = glocalk("--help")
    assert done.returncode == 0 and "fit" in done.stdout and "datasets" in done.stdout


def test_subprocess_sigint_during_fit(tmp_path, files):
    ckpt = tmp_path / "ckpt"
    proc = cli_process.start("fit", files["train"], *TINY[:6], "--epochs-finetune", "100000",
                             "--patience", "0", "--checkpoint-dir", ckpt, "--out",
                             tmp_path / "m.npz")
    try:
        for line in proc.stdout:               # wait for a completed fine-tuning epoch
            if line.startswith("finetune"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.splitlines()[-1] == f"Interrupted: last completed epoch saved in {ckpt}"
    assert (ckpt / "checkpoint.npz").exists()


def test_fit_on_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    """--device cuda where no GPU (or no numba-cuda) is present: exit 2, one line."""
    from glocalk_np.engines import cuda_unavailable
    if cuda_unavailable() is None:
        pytest.skip("a CUDA device is available here")
    path = tmp_path / "r.csv"
    path.write_text("".join(f"{u},{i},{1 + (u * i) % 5}\n" for u in range(6) for i in range(5)))
    result = CliRunner().invoke(cli, ["fit", str(path), "--device", "cuda", "--out",
                                      str(tmp_path / "m.npz")])
    assert result.exit_code == 2
    assert "device='cuda' is unavailable" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_fit_seed_ensemble_reports_members_and_saves_one_model(tmp_path, files):
    model = tmp_path / "ens.npz"
    out = run("fit", files["train"], *TINY, "--test-frac", "0.2", "--seed", "3",
              "--ensemble", "2", "--out", model, "--quiet").stdout
    assert "seed ensemble of 2 models" in out and "seed 3 alone" in out and "seed 4 alone" in out
    assert GLocalK.load(model).ensemble == 2
    assert fails("fit", files["train"], *TINY, "--ensemble", "0").startswith("Error: Invalid value")


@pytest.mark.parametrize("command", ["fit", "tune", "predict", "recommend", "evaluate"])
def test_each_option_s_help_names_one_default(command):
    """--patience's showed two, one of them 'None'."""
    options = run(command, "--help").stdout.split("\nOptions:")[1].split("\n  -")[1:]
    assert options and all(" ".join(o.split()).count("[default:") <= 1 for o in options), options
    assert not [o for o in options if "default: None" in " ".join(o.split())]


def test_version_option_names_the_package_version():
    import glocalk_np
    assert run("--version").stdout.strip() == f"glocalk-np, version {glocalk_np.__version__}"


def test_recommend_for_all_users_or_a_file_of_them(tmp_path, files):
    est = GLocalK.load(files["model"])
    out = tmp_path / "recs.csv"
    run("recommend", files["model"], "--all-users", "--top", "3", "--out", out)
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["user", "rank", "item", "score", "fallback"]
    assert len(rows) == 1 + 3 * est.index_.users.size
    for user in est.index_.users[:5].tolist():
        mine = [r for r in rows[1:] if r[0] == str(user)]
        single, _ = est.recommend(user, top=3)
        assert [(int(r[2]), float(r[3])) for r in mine] == \
            [(item, round(score, 6)) for item, score in single]
        assert [r[1] for r in mine] == ["1", "2", "3"] and {r[4] for r in mine} == {"False"}
    users = tmp_path / "users.txt"
    users.write_text("1,x\nnobody,y\n2,extra field\n")
    result = run("recommend", files["model"], "--users", users, "--top", "2", "--format", "json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["user"], r["rank"]) for r in lines] == [(1, 1), (1, 2), ("nobody", 1),
                                                       ("nobody", 2), (2, 1), (2, 2)]
    assert [r["fallback"] for r in lines] == [False, False, True, True, False, False]
    assert "Warning: user 'nobody' has no training ratings" in result.stderr
    table = run("recommend", files["model"], "--users", users, "--top", "1", "--format",
                "table").stdout
    assert table.splitlines()[0].split() == ["user", "rank", "item", "predicted"]
    assert "exactly one" in fails("recommend", files["model"], "--user", "1", "--all-users")


def test_dash_is_standard_output_for_text_outputs(tmp_path, files):
    result = run("fit", files["train"], *TINY, "--metrics-json", "-", "--out",
                 tmp_path / "m.npz", "--quiet")
    assert '"summary"' in result.stdout and not (tmp_path / "-").exists()
    csv = run("recommend", files["model"], "--user", "1", "--format", "csv", "--out", "-").stdout
    assert csv.splitlines()[0] == "user,rank,item,score,fallback"
    assert "Invalid value for '--out'" in fails("fit", files["train"], "--out", "-")


@pytest.mark.parametrize("failure", ["diverged", "lost worker"])
def test_failures_at_run_time_exit_1_usage_and_data_errors_2(tmp_path, files, monkeypatch,
                                                             failure):
    from glocalk_np import estimator
    from glocalk_np.engines import EngineFailure
    from glocalk_np.records import TrainingDiverged
    error = (TrainingDiverged("training diverged: the loss is nan after pretrain epoch 1")
             if failure == "diverged" else
             EngineFailure("the Dask worker tcp://10.0.0.2:4000 (share 2 of 2) failed or "
                           "was lost: RuntimeError: Worker holding Actor was lost."))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(estimator.training, "fit", fail)
    result = run("fit", files["train"], *TINY, "--out", tmp_path / "m.npz", code=1)
    assert result.stderr.splitlines() == [f"Error: {error}" + (
        "; nothing saved" if failure == "lost worker" else "")]
    assert not (tmp_path / "m.npz").exists()
    assert "Error: " in fails("fit", files["train"], "--hidden", "0")     # usage: status 2


def test_update_writes_a_model_that_uses_the_new_ratings(tmp_path, files):
    est = GLocalK.load(files["model"])
    rated = est.train_matrix_.tocoo()                  # a pair rated in training
    user, item = est.index_.users[rated.col[0]], est.index_.items[rated.row[0]]
    new = tmp_path / "new.csv"
    new.write_text(f"{user},{item},5\n{user},777777,4\nstranger,{item},3\n")
    out = tmp_path / "updated.npz"
    result = run("update", files["model"], new, "--out", out)
    assert "1 ratings added (1 on new items), 1 replaced, 1 skipped" in result.stdout
    assert "users the model does not know were skipped" in result.stderr
    updated = GLocalK.load(out)
    assert 777777 in updated.index_.items.tolist()
    assert updated.predict([user], [777777])[1].tolist() == [""]    # the network, not a fallback
    assert "would replace the input" in fails("update", files["model"], new, "--out",
                                              files["model"])


def test_update_fold_in_adds_new_users_with_their_own_column(tmp_path, files):
    new = tmp_path / "new.csv"
    new.write_text("".join(f"4242,{item},{5 if item < 5 else 1}\n" for item in range(1, 9)))
    out = tmp_path / "folded.npz"
    result = run("update", files["model"], new, "--out", out, "--fold-in")
    assert "8 ratings added (0 on new items), 0 replaced, 1 new users, 1 users folded in" \
        in result.stdout
    pred, fallback = GLocalK.load(out).predict([4242] * 8, list(range(1, 9)))
    assert fallback.tolist() == [""] * 8 and pred[:4].mean() > pred[4:].mean()
    new.write_text("stranger,1,3\n")
    assert "new user id 'stranger' is not of the kind" in fails(
        "update", files["model"], new, "--out", out, "--fold-in")


def test_subprocess_python_m_version_and_top_n_for_all_users(tmp_path, files):
    import glocalk_np
    done = subprocess.run([sys.executable, "-m", "glocalk_np", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith(glocalk_np.__version__)
    done = glocalk("recommend", files["model"], "--all-users", "--top", "2", "--out", "-")
    rows = done.stdout.splitlines()
    assert done.returncode == 0 and rows[0] == "user,rank,item,score,fallback"
    assert len(rows) == 1 + 2 * GLocalK.load(files["model"]).index_.n_users


def test_save_split_writes_the_ratings_fit_used(tmp_path, files):
    split = tmp_path / "split"
    result = run("fit", files["train"], *TINY, "--test-frac", "0.2", "--save-split", split,
                 "--out", tmp_path / "m.npz", "--quiet")
    assert "data: 480 ratings by 40 users of 30 items; train 365, validation 19 (4%), test 96 " \
           "(20%)" in result.stdout
    parts = {name: read_ratings(split / f"{name}.csv") for name in ("train", "val", "test")}
    assert [len(parts[n]) for n in ("train", "val", "test")] == [365, 19, 96]
    everything = read_ratings(files["train"])
    pairs = lambda r: sorted(zip(r.users.tolist(), r.items.tolist(), r.values.tolist()))
    assert pairs(everything) == sorted(sum((pairs(r) for r in parts.values()), []))
    result = run("evaluate", tmp_path / "m.npz", split / "test.csv")       # the README's next step
    assert "ratings                          96" in result.stdout
    (tmp_path / "file").write_text("")
    assert "--save-split" in fails("fit", files["train"], "--save-split", tmp_path / "file")


def test_a_second_save_split_leaves_exactly_its_own_split(tmp_path, files):
    """A run without a validation set removes the val.csv an earlier run
    left (a link: the link, not the file it names), in the same step as it
    writes the others; a split file that is an input of the run is refused
    before anything is written."""
    split = tmp_path / "split"
    run("fit", files["train"], *TINY, "--test-frac", "0.2", "--save-split", split,
        "--out", tmp_path / "m.npz", "--quiet")
    assert sorted(p.name for p in split.iterdir()) == ["test.csv", "train.csv", "val.csv"]
    result = run("fit", files["train"], *TINY, "--val-frac", "0", "--save-split", split,
                 "--out", tmp_path / "m.npz", "--quiet")
    assert "split saved in " + str(split) + ": train.csv; val.csv of an earlier run removed " \
        "(no validation set now); test.csv of an earlier run removed (no test set now)" \
        in result.stdout
    assert sorted(p.name for p in split.iterdir()) == ["train.csv"]
    assert len(read_ratings(split / "train.csv")) == len(read_ratings(files["train"]))
    kept = tmp_path / "kept.csv"
    kept.write_text("1,1,4\n")
    (split / "val.csv").symlink_to(kept)
    run("fit", files["train"], *TINY, "--val-frac", "0", "--save-split", split,
        "--out", tmp_path / "m.npz", "--quiet")
    assert not (split / "val.csv").is_symlink() and kept.read_text() == "1,1,4\n"
    (split / "val.csv").write_text("1,1,4\n")
    assert fails("fit", files["train"], *TINY, "--val-frac", "0", "--test", split / "val.csv",
                 "--save-split", split) == \
        f"Error: {split / 'val.csv'}: this output would replace the input {split / 'val.csv'}"
    assert (split / "val.csv").read_text() == "1,1,4\n"


def test_resume_goes_on_into_the_refit(tmp_path, files, monkeypatch):
    """Interrupted in the refit, the resumed fit reuses the choosing fit's
    checkpoint and the refit's epochs, and ends as an uninterrupted one."""
    args = ["fit", files["train"], *TINY, "--checkpoint-dir", tmp_path / "ckpt", "--quiet"]
    run(*args, "--out", tmp_path / "whole.npz")
    real, calls = training.minimize_epoch, []

    def interrupt_in_the_refit(*a):
        calls.append(1)
        if len(calls) == 5:           # 3 epochs choose (1 + 2), the refit's second epoch
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(training, "minimize_epoch", interrupt_in_the_refit)
    ckpt = tmp_path / "ckpt2"
    run("fit", files["train"], *TINY, "--checkpoint-dir", ckpt, "--out", tmp_path / "m.npz",
        code=130)
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-refit.npz", "checkpoint.npz"]
    calls.clear()
    run("fit", files["train"], *TINY, "--checkpoint-dir", ckpt, "--resume", "--quiet",
        "--out", tmp_path / "m.npz")
    whole, resumed = GLocalK.load(tmp_path / "whole.npz"), GLocalK.load(tmp_path / "m.npz")
    assert len(calls) == len(whole.history_) - 1          # only the refit's rest ran again
    for k in whole.params_:
        np.testing.assert_array_equal(whole.params_[k], resumed.params_[k], err_msg=k)


def test_a_lost_worker_names_the_checkpoint_to_resume_from(tmp_path, files, monkeypatch):
    """An engine failure after an epoch was saved: one line with the
    checkpoint folder, exit 1; --resume then finishes the fit."""
    from glocalk_np import estimator
    from glocalk_np.engines import EngineFailure
    real, calls = estimator.training.minimize_epoch, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise EngineFailure("the Dask worker tcp://10.0.0.2:4000 (share 2 of 2) failed "
                                "or was lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(estimator.training, "minimize_epoch", fails_second)
    folder, out = tmp_path / "c", tmp_path / "m.npz"
    result = run("fit", files["train"], *TINY, "--checkpoint-dir", folder, "--out", out,
                 "--quiet", code=1)
    assert result.stderr.splitlines() == [
        "Error: the Dask worker tcp://10.0.0.2:4000 (share 2 of 2) failed or was lost; the "
        f"last completed epoch is saved in {folder}: --resume goes on from it"]
    assert not out.exists()
    run("fit", files["train"], *TINY, "--checkpoint-dir", folder, "--resume", "--out", out,
        "--quiet")
    assert out.exists()


def test_inference_commands_compile_no_numba_kernel(tmp_path, files):
    """predict, recommend and evaluate run inference.py's NumPy forward pass:
    with an empty Numba cache they leave it empty (a kernel compiled with
    cache=True would be written there)."""
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("1,1\n2,5\n")
    for args in (("recommend", files["model"], "--user", "1"),
                 ("predict", files["model"], pairs),
                 ("evaluate", files["model"], files["test"])):
        done = glocalk(*args, env=env)
        assert done.returncode == 0, done.stderr
    compiled = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert not compiled, compiled[:5]


def test_info_describes_the_model_in_words_and_json(files):
    text = run("info", files["model"]).output
    assert "40 users" in text and "30 items" in text and "format version 4" in text
    assert "lists ranked by  picks+rating: pick model EASE (penalty" in text
    result = json.loads(run("info", files["model"], "--json").output)
    assert result["data"]["users"] == 40 and result["data"]["items"] == 30
    assert result["network"]["stage"] == "finetune" and result["settings"]["n_hidden"] > 0
    assert result["format_version"] == 4 and result["file"] == str(files["model"])
    assert result["ranking"]["default"] == "picks+rating" and result["ranking"]["weights"] > 0
    assert fails("info", files["train"]).endswith("not a glocalk-np file (not an npz archive)")


def test_plot_shows_the_choosing_fit_its_chosen_epoch_and_the_refit(tmp_path, files,
                                                                     monkeypatch):
    """After a default fit (a refit): the curves of the fit that chose the
    epoch, its validation curve among them, the chosen epoch marked, the
    refit's curves beside them; the file's name as the title, '$' and all,
    drawn as text (mathtext failed on 'a$\\frac{$.npz')."""
    pytest.importorskip("matplotlib", reason="plot needs the [plot] extra (matplotlib)")
    from matplotlib.figure import Figure
    drawn, savefig = {}, Figure.savefig

    def recorded(fig, *args, **kwargs):
        ax = fig.axes[0]
        drawn.update({line.get_label(): line.get_xydata() for line in ax.get_lines()},
                     title=ax.get_title())
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recorded)
    model, out = tmp_path / "a$\\frac{$.npz", tmp_path / "curve.png"
    model.write_bytes(files["model"].read_bytes())
    est = GLocalK.load(model)
    chose, refit = est.selection_history_, est.history_
    assert chose is not None and all("val" in r.metrics for r in chose)
    assert f"learning curves of {len(chose)} epochs written" in run("plot", model, "--out",
                                                                    out).stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and drawn["title"] == model.name
    np.testing.assert_allclose(drawn["val"][:, 1], [r.metrics["val"]["rmse"] for r in chose])
    np.testing.assert_allclose(drawn["refit: training"][:, 1], [r.train_rmse for r in refit])
    pre = sum(r.stage == "pretrain" for r in chose)
    assert drawn[f"chosen: fine-tuning epoch {est.best_epoch_}"][0, 0] == pre + est.best_epoch_
    assert drawn["fine-tuning starts"][0, 0] == pre + 0.5


def test_plot_says_what_is_missing(tmp_path, files, monkeypatch):
    empty = tmp_path / "empty.npz"
    run("fit", files["train"], "--epochs-pretrain", "0", "--epochs-finetune", "0", "--out",
        empty, "--quiet")
    assert fails("plot", empty, "--out", tmp_path / "curve.png") == \
        f"Error: {empty}: no epoch to plot (a model fitted with 0 epochs)"
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if not installed
    assert fails("plot", files["model"], "--out", tmp_path / "other.png").endswith(
        "plotting needs matplotlib: pip install 'glocalk-np[plot]'")
    assert not (tmp_path / "other.png").exists()
