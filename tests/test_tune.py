"""glocalk-np tune: a search on a validation split that beats a bad default,
records failures, and writes settings that fit --config reads."""
import json

import pytest

from glocalk_np import tune as search
from glocalk_np.estimator import GLocalK
from glocalk_np.synthetic import low_rank_ratings as synthetic_ratings
from glocalk_np.config import Config
from glocalk_np.records import TrainingDiverged
from test_cli import TINY, fails, run, write_ratings
from test_estimator import low_rank_ratings, three_way

BAD = Config(n_hidden=8, kernel_dim=3, epochs_pretrain=2, epochs_finetune=2, iters_pretrain=3,
             iters_finetune=3, dtype="float64", lambda_2=5000.0)    # penalised into a constant
SMALL_SPACE = {"lambda_2": ("log", 0.1, 10.0), "lambda_s": ("log", 1e-3, 0.1),
               "dot_scale": ("log", 0.25, 4.0), "n_hidden": ("choice", (8,)),
               "epochs_pretrain": ("choice", (2, 4)), "epochs_finetune": ("choice", (2, 4))}


def test_tune_finds_a_setting_better_than_a_bad_default():
    train, _, val = three_way(low_rank_ratings())
    seen = []
    ranked = search.tune(train, val, BAD, trials=5, seed=1, patience=2, callback=seen.append,
                         space=SMALL_SPACE)
    assert [t.number for t in seen] == [1, 2, 3, 4, 5] and len(ranked) == 5
    default = next(t for t in ranked if t.number == 1)
    assert default.settings["lambda_2"] == 5000.0
    rmses = [t.val_rmse for t in ranked]
    assert rmses == sorted(rmses) and ranked[0].val_rmse < default.val_rmse
    # the best trial's Config reproduces its validation RMSE with a plain fit (of the
    # network alone, as trials are scored: a blend would score the blended model)
    best = ranked[0]
    assert best.config.patience == 2 and best.config.epochs_finetune == best.best_epoch
    refit = GLocalK(best.config, blend=False).fit(train, val=val, select="val")
    assert refit.summary_["val"]["rmse"] == pytest.approx(best.val_rmse, rel=1e-9)


def test_a_failed_trial_is_recorded_and_the_search_goes_on(monkeypatch):
    train, _, val = three_way(low_rank_ratings())
    fit = GLocalK.fit

    def diverge_second(self, *args, **kwargs):
        if self.config.lambda_2 != 5000.0 and not diverge_second.done:
            diverge_second.done = True
            raise TrainingDiverged("training diverged: the loss is nan")
        return fit(self, *args, **kwargs)

    diverge_second.done = False
    monkeypatch.setattr(GLocalK, "fit", diverge_second)
    ranked = search.tune(train, val, BAD, trials=3, seed=1, space=SMALL_SPACE)
    assert [t.number for t in ranked][-1] == 2 and ranked[-1].val_rmse is None
    assert "diverged" in ranked[-1].error
    assert all(t.val_rmse is not None for t in ranked[:-1])


def test_tune_needs_a_budget():
    with pytest.raises(ValueError, match="trial count or a time budget"):
        search.tune(None, None, BAD)


def test_tune_writes_settings_that_fit_reads(tmp_path):
    ratings = write_ratings(tmp_path / "r.csv", synthetic_ratings(40, 30, 0.4, 2, seed=1))
    best = tmp_path / "best.json"
    out = run("tune", ratings, *TINY, "--trials", "2", "--out", best).stdout
    assert "trial   1" in out and "2 trials, ranked by validation RMSE" in out
    data = json.loads(best.read_text())
    assert len(data["trials"]) == 2 and data["val_rmse"] == min(
        t["val_rmse"] for t in data["trials"])
    report = tmp_path / "m.json"
    run("fit", ratings, "--config", best, "--out", tmp_path / "m.npz", "--metrics-json", report,
        "--quiet")
    config = json.loads(report.read_text())["config"]
    assert config == data["config"]
    run("fit", ratings, "--config", best, "--lambda-2", "3.5", "--out", tmp_path / "m.npz",
        "--metrics-json", report, "--quiet")
    assert json.loads(report.read_text())["config"]["lambda_2"] == 3.5   # options win


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"lambda_2": 1}', "no 'config' object"),
    ('{"config": {"lambda_3": 1}}', "unknown hyper-parameter(s): lambda_3"),
    ('{"config": {"n_hidden": -4}}', "n_hidden must be a positive integer, got -4"),
])
def test_a_bad_settings_file_is_one_line(tmp_path, content, message):
    ratings = write_ratings(tmp_path / "r.csv", synthetic_ratings(40, 30, 0.4, 2, seed=1))
    settings = tmp_path / "s.json"
    settings.write_text(content)
    line = fails("fit", ratings, "--config", settings, "--out", tmp_path / "m.npz")
    assert str(settings) in line and message in line


def test_tune_can_rank_by_a_top_n_metric_and_reports_coverage(tmp_path):
    train, _, val = three_way(low_rank_ratings())
    ranked = search.tune(train, val, BAD, trials=3, seed=1, patience=2, space=SMALL_SPACE,
                         metric="ndcg@10")
    scores = [t.score for t in ranked]
    assert scores == sorted(scores, reverse=True)       # higher is better
    for t in ranked:
        model = GLocalK(t.config, refit=False, blend=False).fit(train, val=val, select="val")
        assert t.score == pytest.approx(model.evaluate(val, k=10)["ndcg@10"], rel=1e-9)
        lists = model.recommend(model.index_.users, top=10)
        assert t.coverage == len(set(lists["item"].tolist())) / model.index_.n_items
    with pytest.raises(ValueError, match="metric must be one of"):
        search.tune(train, val, BAD, trials=1, metric="auc")


def test_tune_says_when_the_best_epoch_is_the_last_of_its_budget(tmp_path):
    path = write_ratings(tmp_path / "r.csv", synthetic_ratings(40, 30, 0.4, 2, seed=1))
    result = run("tune", path, *TINY, "--trials", "1", "--out", tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    last = data["trials"][0]["best_epoch"] == data["trials"][0]["settings"]["epochs_finetune"]
    assert ("is the last of its budget" in result.stderr) == last
    assert data["metric"] == "rmse" and 0 < data["coverage"] <= 1


def test_a_trial_reports_the_settings_it_trained_with_on_a_large_file(monkeypatch):
    """A file at or above LARGE_FILE_RATINGS (lowered here) trains with the
    ML-1M settings left at their defaults; the trial says so."""
    import glocalk_np.config as config_module
    monkeypatch.setattr(config_module, "LARGE_FILE_RATINGS", 10)
    train, _, val = three_way(low_rank_ratings())
    base = Config(n_hidden=4, kernel_dim=2, epochs_pretrain=1, epochs_finetune=1,
                  iters_pretrain=2, iters_finetune=2)
    trial = search.tune(train, val, base, trials=1, space=SMALL_SPACE)[0]
    assert trial.settings["lambda_2"] == trial.config.lambda_2 == 70.0
    assert trial.config.dot_scale == 0.5


def test_a_trial_that_would_overrun_the_budget_stops_and_keeps_its_best_epoch(tmp_path,
                                                                               monkeypatch):
    """A clock that moves 10 s at each look: with --budget 1 (60 s) the first
    trial stops after the epoch whose successor would end past the budget,
    no trial starts after it, every epoch is printed as it ends, and the
    settings written reproduce the stopped trial's validation RMSE."""
    class Clock:
        now = -10

        @classmethod
        def perf_counter(cls):
            cls.now += 10
            return cls.now

    monkeypatch.setattr(search, "time", Clock)
    ratings = write_ratings(tmp_path / "r.csv", synthetic_ratings(40, 30, 0.4, 2, seed=1))
    settings = tmp_path / "t.json"
    args = [*TINY[:6], "--epochs-finetune", "10", *TINY[8:]]
    out = run("tune", ratings, *args, "--budget", "1", "--out", settings).stdout.splitlines()
    assert out[0].startswith("data: 480 ratings by 40 users of 30 items; train ")
    epochs = [line.split()[2:4] for line in out if line.split()[2:3] in (["pretrain"],
                                                                         ["finetune"])]
    assert epochs == [["pretrain", "1/1"], ["finetune", "1/10"], ["finetune", "2/10"],
                      ["finetune", "3/10"]]        # the clock at 30, 40, 50 and 60 after them
    assert sum("stopped at the budget" in line for line in out) == 2    # as it ends, ranked
    data = json.loads(settings.read_text())
    (trial,) = data["trials"]
    assert trial["stopped"] and trial["coverage"] is None and trial["score"] == trial["val_rmse"]
    assert data["config"]["epochs_pretrain"] == 1
    assert data["config"]["epochs_finetune"] == trial["best_epoch"] <= 3
    report = tmp_path / "m.json"
    run("fit", ratings, "--config", settings, "--no-refit", "--no-blend", "--out",
        tmp_path / "m.npz", "--metrics-json", report, "--quiet")
    summary = json.loads(report.read_text())["summary"]
    # the trial's epochs were scored by the engine, the model as it predicts by
    # inference.py: float32 sums in other orders (another epoch differs by far more)
    assert summary["val"]["rmse"] == pytest.approx(trial["val_rmse"], rel=1e-6)
