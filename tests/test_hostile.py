"""Hostile input, through the real command in a process of its own: crafted
model files and checkpoints, planted symlinks, special files, outputs that
name inputs, ids that would merge, and inputs that once gave tracebacks.

Each refusal is exit status 2 with one ``Error:`` line on stderr, no
traceback and no death by a signal, and every file that existed before the
command is byte-identical after it.
"""
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from glocalk_np.cli import cli
from glocalk_np.data import DataWarning, read_ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.synthetic import low_rank_ratings
from glocalk_np.train import Config, physical_memory
import cli_process
from model_fuzz import mutate

HERE = Path(__file__).parent
TINY = Config(n_hidden=8, kernel_dim=3, epochs_pretrain=1, epochs_finetune=2,
              iters_pretrain=2, iters_finetune=2)
TINY_ARGS = ["--hidden", "8", "--kernel-dim", "3", "--epochs-pretrain", "1",
             "--epochs-finetune", "2", "--iters-pretrain", "2", "--iters-finetune", "2"]


def g(*args, cwd=None, **kwargs):
    """``glocalk-np args`` in a fresh process (python -m glocalk_np)."""
    return subprocess.run([sys.executable, "-m", "glocalk_np", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=180, **kwargs)


def refused(done, *fragments):
    """Assert exit 2, one 'Error:' line holding every fragment, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def unchanged(folder):
    """Every file under ``folder`` keeps its bytes and kind; no temp file is left."""
    def snapshot():
        out = {}
        for p in Path(folder).rglob("*"):
            kind = "link" if p.is_symlink() else "fifo" if p.is_fifo() else \
                "dir" if p.is_dir() else "file"
            out[p] = (kind, p.read_bytes() if kind == "file" else None)
        return out
    before = snapshot()
    yield
    after = snapshot()
    assert {p: after.get(p) for p in before} == before
    assert not [p for p in after if p.name.endswith(".tmp")]


def rewrite(src, dst, drop=(), meta=None, **changes):
    """Copy the npz ``src`` to ``dst`` without ``drop``, with ``changes`` and
    with the metadata fields in ``meta`` replaced."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    arrays.update(changes)
    if meta:
        arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), **meta}))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """r.csv (40 users x 30 items), a model m.npz fitted on it, a checkpoint
    in ckpt/, the pairs file p.csv and its known pair."""
    d = tmp_path_factory.mktemp("hostile")
    ratings = low_rank_ratings(40, 30, 0.4, 2, seed=1)
    (d / "r.csv").write_text("".join(f"{u},{i},{r:g}\n" for u, i, r in
                                     zip(ratings.users, ratings.items, ratings.values)))
    train = read_ratings(d / "r.csv")
    GLocalK(TINY).fit(train, checkpoint_dir=d / "ckpt").save(d / "m.npz")
    (d / "p.csv").write_text(f"{train.users[0]},{train.items[0]}\n")
    return d


@pytest.fixture
def work(tmp_path, files):
    """A scratch copy of the fixture's files."""
    for name in ("r.csv", "m.npz", "p.csv"):
        (tmp_path / name).write_bytes((files / name).read_bytes())
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "checkpoint.npz").write_bytes(
        (files / "ckpt" / "checkpoint.npz").read_bytes())
    return tmp_path


# ---------------------------------------------------------------- 1. crafted files

def _one_set_to(a, value):
    a = a.copy()
    a[len(a) // 2] = value
    return a


@pytest.mark.parametrize("changes, problem", [
    ({"param/W0": lambda a: np.zeros((40, 100_000)), "param/V0": lambda a: np.zeros((1, 3))},
     "W0 has shape (40, 100000), expected (40, 8)"),
    ({"param/U0": lambda a: np.zeros((1, 3))}, "U0 has shape (1, 3), expected (40, 3)"),
    ({"param/V0": lambda a: np.float64(1.0)}, "V0 has shape (), expected (8, 3)"),
    ({"param/b2": lambda a: a[:3]}, "b2 has shape (3,), expected (40,)"),
    ({"train/indptr": lambda a: _one_set_to(a, 10 ** 6)}, "train/indptr"),
    ({"train/indices": lambda a: _one_set_to(a, 10 ** 6)}, "train/indices: a user position"),
    ({"train/data": lambda a: _one_set_to(a, np.nan)}, "train/data: ratings must be finite"),
    ({"param/W1": lambda a: _one_set_to(a, np.nan)}, "W1 holds NaN"),
    ({"index/users": lambda a: a.astype(np.float64)}, "index/users: ids of dtype float64"),
    ({"index/items": lambda a: a[::-1].copy()}, "not sorted and unique"),
])
def test_crafted_model_arrays_are_refused_before_any_kernel(work, changes, problem):
    with np.load(work / "m.npz") as z:
        changed = {k: make(z[k]) for k, make in changes.items()}
    bad = rewrite(work / "m.npz", work / "x.npz", **changed)
    with unchanged(work):
        refused(g("predict", bad, work / "p.csv"), str(bad), problem)


def test_crafted_checkpoint_is_refused_on_resume(work):
    ckpt = work / "ckpt" / "checkpoint.npz"
    rewrite(ckpt, ckpt, **{"param/U0": np.zeros((1, 3))})
    with unchanged(work):
        refused(g("fit", work / "r.csv", *TINY_ARGS, "--val-frac", "0", "--checkpoint-dir",
                  work / "ckpt", "--resume", "--out", work / "new.npz"),
                "U0 has shape (1, 3), expected (40, 3)")


# ---------------------------------------------------------------- 2. planted symlink

def test_a_symlink_planted_at_the_old_temp_name_is_not_followed(work):
    """The attack of the issue: the old temp name was '.NAME.PID.tmp.csv' and
    `exec` keeps the shell's pid; O_EXCL temp files never open a planted link."""
    victim = work / "victim.txt"
    victim.write_text("precious\n")
    script = (f'ln -s {victim} .pred.$$.tmp.csv; '
              f'exec {sys.executable} -m glocalk_np predict m.npz p.csv --out pred.csv')
    done = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "precious\n"
    assert (work / "pred.csv").read_text().startswith("user,item,prediction,fallback\n")


def test_temp_files_are_created_exclusively(tmp_path, monkeypatch):
    """mkstemp's next candidate name is taken by a symlink: it is skipped."""
    import tempfile

    from glocalk_np.safeio import atomic_output
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = iter(["planted", "fresh"])
    (tmp_path / ".out.txt.planted.tmp").symlink_to(victim)
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    with atomic_output(tmp_path / "out.txt", text=True) as f:
        f.write("new")
    assert victim.read_text() == "keep" and (tmp_path / "out.txt").read_text() == "new"


# ---------------------------------------------------------------- 3. special files

def test_an_output_that_is_a_special_file_is_refused(work):
    fifo = work / "pipe"
    os.mkfifo(fifo)
    with unchanged(work):
        refused(g("predict", work / "m.npz", work / "p.csv", "--out", fifo),
                "exists and is not a regular file")
        refused(g("fit", work / "r.csv", "--out", work / "ckpt"), "--out")
    assert fifo.is_fifo()


# ---------------------------------------------------------------- 4. outputs that are inputs

def test_an_output_may_not_be_an_input_or_another_output(work):
    os.link(work / "m.npz", work / "hard.npz")
    (work / "soft.npz").symlink_to(work / "m.npz")
    m, r, p = work / "m.npz", work / "r.csv", work / "p.csv"
    cases = [
        (["fit", r, *TINY_ARGS, "--out", r], "would replace the input"),
        (["fit", r, *TINY_ARGS, "--out", work / "a.npz", "--metrics-json", work / "a.npz"],
         "named for two outputs"),
        (["fit", r, *TINY_ARGS, "--test", p, "--out", p], "would replace the input"),
        (["fit", r, *TINY_ARGS, "--checkpoint-dir", work / "ckpt",
          "--out", work / "ckpt" / "checkpoint.npz"], "named for two outputs"),
        (["predict", m, p, "--out", m], "would replace the input"),
        (["predict", m, p, "--out", work / "hard.npz"], "would replace the input"),
        (["predict", work / "soft.npz", p, "--out", m], "would replace the input"),
    ]
    for args, problem in cases:
        with unchanged(work):
            refused(g(*args), problem)
    (work / "x.users.txt").write_text("mine\n")
    with unchanged(work):
        refused(g("predict", work / "x.users.txt", "--all", "--out", work / "x.npy"),
                "would replace the input")


# ---------------------------------------------------------------- 5. ids that would merge

def test_ids_are_kept_exactly_as_written(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1_0,0000000001,4\n10,1,3\n\u0661,5,2\n1,5,5\n1.0,5,1\n")
    with pytest.warns(DataWarning) as warned:
        r = read_ratings(path)
    item, user = sorted(str(w.message).split(": ", 1)[1] for w in warned)
    assert item.startswith("item id '0000000001' is a number not written as a plain integer")
    assert user.startswith("user id '1_0' is a number not written as a plain integer")
    assert r.users.tolist() == ["1_0", "10", "\u0661", "1", "1.0"]   # five users, none merged
    assert r.items.tolist() == ["0000000001", "1", "5", "5", "5"]
    path.write_text("-3,7,4\n0,12,3\n")
    assert read_ratings(path).users.dtype == np.int64   # plain integers stay numbers


def test_ids_survive_fit_and_predict_unchanged(tmp_path):
    ratings = low_rank_ratings(12, 10, 0.6, 2, seed=2)
    lines = [f"u{u},{i:010d},{r:g}" for u, i, r in zip(ratings.users, ratings.items,
                                                         ratings.values)]
    lines += ["1_0,0000000001,4", "10,0000000001,2"]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "p.csv").write_text("1_0,0000000001\n10,0000000001\n")
    done = g("fit", "r.csv", *TINY_ARGS, "--quiet", "--out", "m.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = g("predict", "m.npz", "p.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["user"], r["item"], r["fallback"]) for r in rows] == \
        [("1_0", "0000000001", ""), ("10", "0000000001", "")]


# ---------------------------------------------------------------- 6. '::' files

def test_a_line_ending_in_part_of_the_separator_shifts_nothing(tmp_path):
    (tmp_path / "r.dat").write_bytes(b"1::2::3:\n4::5::6\n")
    refused(g("fit", tmp_path / "r.dat"), f"{tmp_path / 'r.dat'}:1: rating '3:' is not a number")
    (tmp_path / "r.dat").write_bytes(b"1::2::3\n:4::5::6\n")
    assert read_ratings(tmp_path / "r.dat").users.tolist() == ["1", ":4"]


# ---------------------------------------------------------------- 7. no tracebacks

@pytest.mark.parametrize("meta, problem", [
    (dict(members=[1]), "'members' is not a list of ensemble members"),
    (dict(history=[5]), "'history' is not a list of epoch records"),
    (dict(params=5), "arrays listed as 5"),
    (dict(config=[1]), "'config' is not an object"),
    (dict(config={"n_hidden": "8"}), "invalid config"),
    (dict(stage="middle"), "'stage' is not a stage name"),
    (dict(best_epoch=99), "best epoch 99"),
])
def test_metadata_of_the_wrong_type_is_one_line(work, meta, problem):
    bad = rewrite(work / "m.npz", work / "x.npz", meta=meta)
    with unchanged(work):
        refused(g("predict", bad, work / "p.csv"), problem)


def test_a_header_declaring_a_huge_array_allocates_nothing(work):
    bad = work / "x.npz"
    with zipfile.ZipFile(work / "m.npz") as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            if info.filename == "param/W1.npy":
                body = io.BytesIO()
                np.lib.format.write_array_header_1_0(body, {
                    "descr": "<f8", "fortran_order": False, "shape": (10 ** 6, 10 ** 6)})
                dst.writestr(info.filename, body.getvalue() + bytes(64))
            else:
                dst.writestr(info, src.read(info))
    refused(g("predict", bad, work / "p.csv"), "declares shape (1000000, 1000000)")


def test_a_million_character_id_costs_its_length_not_its_width_times_ids(tmp_path):
    import tracemalloc
    lines = [f"{u},{u % 7},3" for u in range(999)] + ["x" * 10 ** 6 + ",1,4"]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    r = read_ratings(tmp_path / "r.csv")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(r) == 1000 and peak < 50 * 2 ** 20   # fixed width: 4 GB


def test_a_network_too_large_for_memory_is_refused_before_training(work):
    refused(g("fit", work / "r.csv", "--hidden", 10 ** 9, "--out", work / "x.npz"),
            "n_hidden=1000000000", "GiB of memory")
    assert not (work / "x.npz").exists()


def test_predict_all_that_cannot_fit_in_memory_is_one_line(tmp_path):
    side = int(np.sqrt(physical_memory() / 32)) + 1000
    if side > 200_000:
        pytest.skip("this machine's memory holds a very large matrix")
    ids = np.arange(side)
    from glocalk_np.data import Ratings
    model = GLocalK(n_hidden=1, kernel_dim=1, epochs_pretrain=0, epochs_finetune=0)
    model.fit(Ratings(ids, ids, np.full(side, 3.0), "diag")).save(tmp_path / "big.npz")
    refused(g("predict", tmp_path / "big.npz", "--all", "--out", tmp_path / "all.npy"),
            f"the full {side} x {side}", "predict pairs instead")
    assert not (tmp_path / "all.npy").exists()


@pytest.mark.parametrize("delay", [0.3, 0.6])
def test_ctrl_c_while_starting_is_one_line(tmp_path, delay):
    proc = cli_process.start("demo", "--quick", cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("Interrupted")


def test_sigterm_ends_in_one_line_and_keeps_the_old_output(work):
    """SIGTERM while fitting ends with status 143 and the old model intact
    (the temp file's removal on SIGTERM: test_failed_save_leaves_the_old_file_intact)."""
    model = work / "m.npz"
    with unchanged(work):
        proc = subprocess.Popen(
            [sys.executable, "-m", "glocalk_np", "fit", "r.csv", *TINY_ARGS[:6],
             "--epochs-finetune", "100000", "--patience", "0", "--out", "m.npz"], cwd=work,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            if line.startswith("finetune"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "Traceback" not in err
        assert err.splitlines()[-1] == "Terminated"
    assert GLocalK.load(model).config.n_hidden == 8


# ---------------------------------------------------------------- 8. clear messages

def test_messages_name_the_problem_up_front(work):
    r, out = work / "r.csv", work / "x.npz"
    with unchanged(work):
        refused(g("fit", r, "--out", ""), "an output path is empty")
        (work / "file").write_text("")
        refused(g("fit", r, *TINY_ARGS, "--checkpoint-dir", work / "file" / "ckpt",
                  "--out", out), "cannot create the checkpoint folder")
        refused(g("fit", r, "--lambda-2", "1e308", "--out", out), "lambda_2 must be a number")
        (work / "big.csv").write_text("1,1,1e308\n1,2,3\n")
        refused(g("fit", work / "big.csv", "--out", out), "big.csv:1: rating '1e308' is above")
        (work / "header.csv").write_text("user,item\n")
        refused(g("predict", work / "m.npz", work / "header.csv"), "only a header line")
    assert not out.exists()


def test_a_global_kernel_wider_than_the_matrix_trains(work):
    done = g("fit", work / "r.csv", *TINY_ARGS, "--gk-size", "99", "--quiet", "--out",
             work / "x.npz")
    assert done.returncode == 0, done.stderr
    assert GLocalK.load(work / "x.npz").params_["C"].shape == (30, 99 * 99)


def test_disk_full_names_the_target_not_a_temp_file(work, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    with unchanged(work):
        result = CliRunner().invoke(cli, ["demo", "--quick", "--quiet", "--out",
                                          str(work / "m.npz")])
    assert result.exit_code == 1        # a failure at run time, not a usage error
    assert result.stderr.splitlines()[-1] == f"Error: {work / 'm.npz'}: No space left on device"


def test_resume_says_when_it_starts_afresh_and_when_threads_differ(work):
    args = ["fit", work / "r.csv", *TINY_ARGS, "--quiet", "--out", work / "x.npz",
            "--checkpoint-dir", work / "fresh", "--resume"]
    done = g(*args, "--threads", "1")
    assert done.returncode == 0 and "no checkpoint yet; starting afresh" in done.stderr
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread only")
    done = g(*args, "--threads", "2")
    assert done.returncode == 0
    assert "written with 1 Numba threads, resumed with 2" in done.stderr


# ---------------------------------------------------------------- fuzz

def test_mutated_model_files_load_and_predict_or_fail_in_one_line(tmp_path, files):
    """300 seeded mutations of a valid model: each predicts finite numbers or
    is refused in one line; a crash of the process names the file."""
    with np.load(files / "m.npz") as z:
        good = {k: z[k] for k in z.files}
    paths = []
    for seed in range(300):
        path = tmp_path / f"case{seed}.npz"
        with open(path, "wb") as f:
            np.savez(f, **mutate(good, seed))
        paths.append(str(path))
    done = subprocess.run([sys.executable, str(HERE / "model_fuzz.py"), str(files / "p.csv"),
                           *paths], capture_output=True, text=True, timeout=600)
    started = [l for l in done.stdout.splitlines() if l.startswith("start ")]
    assert done.returncode == 0, f"died at {started[-1] if started else '?'}: {done.stderr[-2000:]}"
    results = [json.loads(l) for l in done.stdout.splitlines() if l.startswith("{")]
    assert len(results) == len(paths)
    outcomes = {0: 0, 2: 0}
    for r in results:
        assert r["code"] in (0, 2) and "Traceback" not in r["stderr"], r
        outcomes[r["code"]] += 1
        if r["code"] == 2:
            lines = r["stderr"].splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"Error: {r['path']}"), r
        else:
            preds = [float(row["prediction"]) for row in csv.DictReader(io.StringIO(r["stdout"]))]
            assert preds and np.isfinite(preds).all(), r
    assert min(outcomes.values()) > 20, outcomes     # both outcomes are exercised
