"""Hostile input, through the real command in a process of its own: crafted
model files and checkpoints, planted symlinks, special files, outputs that
name inputs, ids that would merge, and inputs that once gave tracebacks.

Each refusal is exit status 2 with one ``Error:`` line on stderr, no
traceback and no death by a signal, and every file that existed before the
command is byte-identical after it.
"""
import contextlib
import csv
import importlib.util
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
from glocalk_np.data import DataError as DataError_, DataWarning, read_ratings
from glocalk_np.estimator import GLocalK
from glocalk_np.synthetic import low_rank_ratings
from glocalk_np.config import Config
from glocalk_np.safeio import physical_memory
import cli_process
from model_fuzz import mutate

HERE = Path(__file__).parent
TINY = Config(n_hidden=8, kernel_dim=3, epochs_pretrain=1, epochs_finetune=2,
              iters_pretrain=2, iters_finetune=2)
TINY_ARGS = ["--hidden", "8", "--kernel-dim", "3", "--epochs-pretrain", "1",
             "--epochs-finetune", "2", "--iters-pretrain", "2", "--iters-finetune", "2"]


# Peak memory a refused command may use: the interpreter with NumPy, SciPy
# and Numba loaded takes 140-190 MiB here; reading a crafted file must not
# add more than its own size does.
PEAK_MIB = 400


def g(*args, cwd=None, timeout=180):
    """``glocalk-np args`` in a fresh process, as a shell starts it."""
    return cli_process.run(*args, cwd=cwd, timeout=timeout)


def refused(done, *fragments, peak=None):
    """Assert exit 2, one short 'Error:' line holding every fragment, no
    traceback, no death by a signal and, given the peak memory in MiB,
    at most PEAK_MIB."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr[-2000:]
    assert len(lines[0]) <= 600, lines[0][:2000]
    assert "Traceback" not in done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert peak is None or peak < PEAK_MIB, f"peak memory {peak:.0f} MiB"
    return lines[0]


def measured_refusal(*args, fragments=(), cwd=None, timeout=120):
    """Run ``glocalk-np args`` and assert it is refused (see refused), its
    peak memory included."""
    done, peak = cli_process.run_measured(*args, cwd=cwd, timeout=timeout)
    return refused(done, *fragments, peak=peak)


@contextlib.contextmanager
def unchanged(folder):
    """Every file under ``folder`` keeps its bytes (its size and time for
    files over 64 MiB) and kind; no temp file is left."""
    def snapshot():
        out = {}
        for p in Path(folder).rglob("*"):
            kind = "link" if p.is_symlink() else "fifo" if p.is_fifo() else \
                "dir" if p.is_dir() else "file"
            if kind == "file" and p.stat().st_size > 64 << 20:
                out[p] = (kind, (p.stat().st_size, p.stat().st_mtime_ns))
            else:
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
    GLocalK(TINY, validation_fraction=0, refit=False).fit(train, checkpoint_dir=d / "ckpt").save(
        d / "m.npz")
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
    ({"train/data": lambda a: _one_set_to(a, np.nan)}, "train/data: rating nan is not a finite"),
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
    """Every mkstemp's first candidate name is taken by a symlink (the
    write-access probe's and the temporary file's): it is skipped."""
    import itertools
    import tempfile

    from glocalk_np.safeio import atomic_output
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = itertools.chain.from_iterable(("planted", f"fresh{i}") for i in itertools.count())
    (tmp_path / ".out.txt.planted.tmp").symlink_to(victim)
    (tmp_path / ".glocalk-np-probe.planted").symlink_to(victim)
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
                "exists and is a FIFO (named pipe); refusing to replace it")
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
                  "--out", out), "'--checkpoint-dir'", f"{work / 'file'} is not a folder")
        refused(g("fit", r, "--lambda-2", "1e308", "--out", out), "'--lambda-2'",
                "1e+308 is not in [0, 1000000.0]")
        (work / "big.csv").write_text("1,1,1e308\n1,2,3\n")
        refused(g("fit", work / "big.csv", "--out", out),
                "big.csv:1: rating '1e308' is beyond ±1e+06")
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
    assert min(outcomes.values()) > 10, outcomes     # both outcomes are exercised


# ================================================================ round 2 (issue 19)
# One test per class of defect the second hostile round found, through the
# real command (or the API where the defect was the API's), with crafted
# files built here.

# ---------------------------------------------------------------- data loss

def test_an_output_that_is_a_symlink_is_written_through_it(work):
    """The link stays a link and its target gets the output; a link to this
    process's standard output (as /dev/stdout is) keeps the link too."""
    (work / "real.csv").write_text("old\n")
    (work / "out.csv").symlink_to(work / "real.csv")
    done = g("predict", "m.npz", "p.csv", "--out", "out.csv", cwd=work)
    assert done.returncode == 0, done.stderr
    assert (work / "out.csv").is_symlink()
    assert (work / "real.csv").read_text().startswith("user,item,prediction,fallback\n")
    (work / "stdout").symlink_to("/proc/self/fd/1")
    with open(work / "captured.txt", "w") as captured:
        done = subprocess.run(cli_process.command("predict", "m.npz", "p.csv", "--out",
                                                  "stdout"), cwd=work, stdout=captured,
                              stderr=subprocess.PIPE, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert (work / "stdout").is_symlink() and os.readlink(work / "stdout") == "/proc/self/fd/1"
    assert (work / "captured.txt").read_text().startswith("user,item,prediction")


def test_every_companion_output_is_checked_before_anything_is_written(work):
    (work / "x.npy").write_text("mine")
    (work / "x.users.txt").write_text("mine too")
    (work / "x.items.txt").mkdir()
    with unchanged(work):
        measured_refusal("predict", "m.npz", "--all", "--out", "x.npy", cwd=work,
                         fragments=("x.items.txt: exists and is a folder",))
    os.rmdir(work / "x.items.txt")
    done = g("predict", "m.npz", "--all", "--out", "x.npy", cwd=work)
    assert done.returncode == 0, done.stderr
    assert np.load(work / "x.npy").shape == (30, 40)
    assert len((work / "x.items.txt").read_text().splitlines()) == 30


def test_set_params_is_all_or_nothing_and_refused_where_it_would_break_the_fit(files, tmp_path):
    model = GLocalK.load(files / "m.npz")
    before = model.get_params()
    with pytest.raises(ValueError, match="n_hidden=3: this model was fitted with n_hidden=8"):
        model.set_params(n_hidden=3)
    with pytest.raises(ValueError, match="lambda_2"):
        model.set_params(lambda_2=1.0, verbose=True)
    assert model.get_params() == before             # nothing of either call was applied
    model.set_params(verbose=True, device="cpu", n_hidden=8)   # unchanged values may be named
    model.save(tmp_path / "again.npz")
    assert GLocalK.load(tmp_path / "again.npz").config == model.config
    fresh = GLocalK(TINY)
    with pytest.raises(ValueError, match="lambda_2 must be a number"):
        fresh.set_params(verbose=True, lambda_2=-1.0)
    assert fresh.verbose is False
    assert fresh.set_params(n_hidden=3).config.n_hidden == 3    # unfitted: anything goes


# ---------------------------------------------------------------- hangs and memory

INPUT_ROLES = {
    "ratings": lambda x: ["fit", x, "--out", "o.npz"],
    "test": lambda x: ["fit", "r.csv", "--test", x, "--out", "o.npz"],
    "config": lambda x: ["fit", "r.csv", "--config", x, "--out", "o.npz"],
    "model": lambda x: ["predict", x, "p.csv"],
    "pairs": lambda x: ["predict", "m.npz", x],
    "users": lambda x: ["recommend", "m.npz", "--users", x],
    "evaluate": lambda x: ["evaluate", "m.npz", x],
    "update": lambda x: ["update", "m.npz", x, "--out", "o.npz"],
}


@pytest.mark.parametrize("role", INPUT_ROLES)
def test_a_fifo_or_a_device_as_any_input_is_refused_at_once(work, role):
    os.mkfifo(work / "fifo")
    with unchanged(work):
        for special, kind in (("fifo", "a FIFO (named pipe)"), ("/dev/zero", "a character device"),
                              ("/dev/urandom", "a character device")):
            measured_refusal(*INPUT_ROLES[role](special), cwd=work, timeout=60,
                             fragments=(f"{special}: is {kind}, not a regular file",))


def test_the_readers_refuse_a_fifo_too(tmp_path):
    """The root, not only the command's options: an API call never blocks."""
    from glocalk_np.data import DataError, read_pairs
    from glocalk_np.modelfile import ModelFileError
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for read, error in ((read_ratings, DataError), (read_pairs, DataError),
                        (GLocalK.load, ModelFileError)):
        with pytest.raises(error, match="is a FIFO"):
            read(fifo)


def test_a_huge_or_binary_ratings_file_is_refused_before_it_is_read(tmp_path):
    sparse = tmp_path / "sparse.csv"
    with open(sparse, "wb") as f:        # a 2 GiB hole after one good line: no disk used
        f.write(b"1,1,4\n")
        f.truncate(2 << 30)
    line = measured_refusal("fit", sparse, "--out", tmp_path / "o.npz")
    assert "of memory to read" in line or "sparse.csv:2: a NUL byte" in line, line
    (tmp_path / "bin.csv").write_bytes(b"1,1,4\n2,2,\x00\x01\x02\n")
    measured_refusal("fit", tmp_path / "bin.csv", "--out", tmp_path / "o.npz",
                     fragments=("bin.csv:2: a NUL byte; expected text, not a binary file",))


def _npz_with(src, dst, entries=(), inflate=None):
    """A copy of the npz ``src`` with extra ``entries`` (name, bytes) stored
    as they are, and ``inflate`` (name, n_bytes): that entry replaced by a
    deflated float64 array of n_bytes zeros (a few KB on disk)."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            if inflate and info.filename == inflate[0]:
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {
                    "descr": "<f8", "fortran_order": False, "shape": (inflate[1] // 8,)})
                with b.open(zi, "w", force_zip64=True) as w:
                    w.write(header.getvalue())
                    for _ in range(inflate[1] >> 24):
                        w.write(bytes(1 << 24))
            else:
                b.writestr(info, a.read(info))
        for name, data in entries:
            b.writestr(zipfile.ZipInfo(name), data)
    return dst


def _npy(a):
    out = io.BytesIO()
    np.save(out, a)
    return out.getvalue()


@pytest.mark.parametrize("entries, inflate, problem", [
    ((), ("param/W1.npy", 512 << 20), "entry 'param/W1' is compressed"),
    ((("extra/x.npy", _npy(np.zeros(3))),), None, "unexpected entry 'extra/x'"),
    ((("../../x.npy", _npy(np.zeros(3))),), None, "unexpected entry '../../x.npy'"),
    ((("param/W0.npy", _npy(np.zeros(3))),), None, "entry 'param/W0.npy' appears twice"),
], ids=["inflates 512 MiB", "unknown entry", "climbing name", "twice"])
def test_a_model_archive_holds_only_what_glocalk_np_writes(work, entries, inflate, problem):
    with pytest.warns(UserWarning, match="Duplicate name") if len(entries) and \
            entries[0][0] == "param/W0.npy" else contextlib.nullcontext():
        bad = _npz_with(work / "m.npz", work / "x.npz", entries, inflate)
    with unchanged(work):
        measured_refusal("predict", bad, "p.csv", cwd=work, fragments=(problem,))


def test_an_archive_declaring_millions_of_entries_is_refused_from_its_end_record(work):
    """zipfile would build an object per entry of the central directory
    before any check of ours: the count in the end record is read first."""
    data = bytearray((work / "m.npz").read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 8:end + 12] = (0xFFFE).to_bytes(2, "little") * 2
    (work / "many.npz").write_bytes(bytes(data))
    with unchanged(work):
        measured_refusal("predict", "many.npz", "p.csv", cwd=work,
                         fragments=("many.npz: 65534 entries; a glocalk-np file has far fewer",))


def test_a_mat_variable_whose_data_lives_in_another_file_is_refused(tmp_path):
    """An external link (to a FIFO here: HDF5 would wait for a writer) or
    external storage: nothing outside the named file is opened."""
    h5py = pytest.importorskip("h5py")
    os.mkfifo(tmp_path / "fifo")
    with h5py.File(tmp_path / "linked.mat", "w") as f:
        f["M"] = h5py.ExternalLink(str(tmp_path / "fifo"), "/M")
        f["Otraining"] = f["Otest"] = np.eye(3)
    measured_refusal("fit", tmp_path / "linked.mat", "--out", tmp_path / "o.npz", timeout=60,
                     fragments=("variable 'M' is a link to another file",))
    (tmp_path / "raw.bin").write_bytes(bytes(72))
    with h5py.File(tmp_path / "external.mat", "w") as f:
        f.create_dataset("M", shape=(3, 3), dtype="f8", external=[(str(tmp_path / "raw.bin"),
                                                                   0, 72)])
        f["Otraining"] = f["Otest"] = np.eye(3)
    measured_refusal("fit", tmp_path / "external.mat", "--out", tmp_path / "o.npz",
                     fragments=("variable 'M' keeps its data in other files",))


def test_declared_sizes_allocate_nothing_before_they_are_checked(work, tmp_path):
    with np.load(work / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["config"]["n_layers"] = 10 ** 8
    with open(work / "layers.npz", "wb") as f:
        np.savez(f, **{**arrays, "meta": np.array(json.dumps(meta))})
    with unchanged(work):
        measured_refusal("predict", "layers.npz", "p.csv", cwd=work,
                         fragments=("n_layers must be at most 1000, got 100000000",))
        measured_refusal("fit", "r.csv", "--layers", 10 ** 8, "--out", "o.npz", cwd=work,
                         fragments=("--layers", "100000000 is not in [1, 1000]"))
        measured_refusal("fit", "r.csv", "--ensemble", 10 ** 9, "--checkpoint-dir", "ck",
                         "--out", "o.npz", cwd=work, fragments=("--ensemble",))
    done, peak = cli_process.run_measured("evaluate", "m.npz", "r.csv", "--k", 10 ** 12,
                                          cwd=work)
    assert done.returncode == 0 and peak < PEAK_MIB, (done.stderr, peak)
    assert f"precision@{10 ** 12}" in done.stdout


def test_a_mat_file_is_read_in_blocks_whatever_it_declares(tmp_path):
    """A 2 KB file declaring three 12000 x 12000 matrices (1.1 GiB each
    dense, never written) is read in bounded memory and refused for what it
    holds; one declaring more than any Monti file could hold, at once."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "big.mat", "w") as f:
        for name in ("M", "Otraining", "Otest"):
            f.create_dataset(name, shape=(12000, 12000), dtype="f8", chunks=(12000, 2),
                             compression="gzip")
    assert (tmp_path / "big.mat").stat().st_size < 10_000
    measured_refusal("fit", tmp_path / "big.mat", "--out", tmp_path / "o.npz",
                     fragments=("big.mat: Otraining selects no ratings",))
    with h5py.File(tmp_path / "huge.mat", "w") as f:
        for name in ("M", "Otraining", "Otest"):
            f.create_dataset(name, shape=(10 ** 7, 10 ** 7), dtype="f8", chunks=(1000, 2))
    measured_refusal("fit", tmp_path / "huge.mat", "--out", tmp_path / "o.npz",
                     fragments=("declares 10000000 x 10000000 ratings", "text file"))


def test_a_budget_that_never_ends_is_refused(work):
    from glocalk_np.tune import tune
    for budget in ("nan", "inf", "1e400"):
        measured_refusal("tune", "r.csv", "--budget", budget, "--out", "t.json", cwd=work,
                         timeout=60, fragments=("--budget",))
    ratings = read_ratings(work / "r.csv")
    for budget_s in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget_s must be a positive, finite number"):
            tune(ratings, ratings, TINY, budget_s=budget_s)


# ---------------------------------------------------------------- tracebacks and signals

def test_json_nested_past_python_s_parser_is_one_line(work):
    (work / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (work / "bigint.json").write_text('{"config": {"n_hidden": ' + "9" * 5000 + "}}")
    with np.load(work / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    with open(work / "deep.npz", "wb") as f:
        np.savez(f, **{**arrays, "meta": np.array("[" * 100_000 + "]" * 100_000)})
    with unchanged(work):
        measured_refusal("fit", "r.csv", "--config", "deep.json", "--out", "o.npz", cwd=work,
                         fragments=("deep.json: JSON nested too deeply",))
        measured_refusal("predict", "deep.npz", "p.csv", cwd=work,
                         fragments=("deep.npz: metadata: JSON nested too deeply",))
        measured_refusal("fit", "r.csv", "--config", "bigint.json", "--out", "o.npz", cwd=work,
                         fragments=("bigint.json: not valid JSON",))


def _signalled(cwd, signals, after_line=None, delay=0.0, gaps=()):
    """Start a long fit, wait for ``after_line`` (a prefix of a stdout line)
    or ``delay`` seconds, send ``signals`` ``gaps`` seconds apart: (status,
    stderr)."""
    proc = cli_process.start("fit", "r.csv", *TINY_ARGS[:6], "--epochs-finetune", "100000",
                             "--patience", "0", "--checkpoint-dir", "ck", "--out", "m.npz",
                             cwd=cwd)
    try:
        if after_line:
            for line in proc.stdout:
                if line.startswith(after_line):
                    break
        time.sleep(delay)
        for signum, gap in zip(signals, (0.0, *gaps)):
            time.sleep(gap)
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize("delay", [0.3, 0.5, 0.8])
def test_sigterm_while_numpy_and_numba_load_is_one_line(work, delay):
    """(The first ~50 ms are the interpreter's own start, before any code of
    glocalk-np runs: a signal there ends the process as it ends any Python
    program.)"""
    with unchanged(work):
        status, err = _signalled(work, [signal.SIGTERM], delay=delay)
    assert status == 143 and err.splitlines() == ["Terminated"], (status, err)


@pytest.mark.parametrize("signum, status, word", [(signal.SIGTERM, 143, "Terminated"),
                                                  (signal.SIGINT, 130, "Interrupted")])
@pytest.mark.parametrize("gap", [0.0005, 0.01, 0.1])
def test_a_second_signal_does_not_cut_the_first_one_s_cleanup(work, signum, status, word, gap):
    """The second signal comes while the first one's exception unwinds (the
    checkpoint being written, temporary files being removed, the line being
    printed): still one line, the status, no death by the signal, and the
    model file and checkpoint as they were or whole."""
    model = (work / "m.npz").read_bytes()
    got, err = _signalled(work, [signum, signum], after_line="finetune", gaps=[gap])
    assert got == status and "Traceback" not in err, (got, err)
    assert len(err.splitlines()) == 1 and err.startswith(word), err
    assert (work / "m.npz").read_bytes() == model
    assert not list(work.rglob("*.tmp"))
    from glocalk_np import modelfile      # the checkpoint is whole
    modelfile.read(work / "ck" / "checkpoint.npz", modelfile.CHECKPOINT)


def test_a_full_or_closed_standard_output_is_one_line(work):
    with open("/dev/full", "w") as full:
        done = subprocess.run(cli_process.command("recommend", "m.npz", "--all-users"),
                              cwd=work, stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=180)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "Error: standard output cannot be written (No space left on device) before "
        "everything was written"]
    proc = cli_process.start("predict", "m.npz", "--all", cwd=work)
    proc.stdout.close()                  # as `| head` does
    assert proc.wait(timeout=180) == 1 and "Traceback" not in proc.stderr.read()


def test_a_bad_numba_setting_is_one_warning_line(work):
    """Numba loads where a command first needs it (gradcheck), not at start."""
    done = subprocess.run(cli_process.command("gradcheck"), capture_output=True, text=True,
                          env={**os.environ, "NUMBA_NUM_THREADS": "abc"}, timeout=180)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("Warning")]
    assert warned == [
        "Warning: Environment variable 'NUMBA_NUM_THREADS' is defined but its associated "
        "value 'abc' could not be parsed."]


@pytest.mark.parametrize("first, then", [(signal.SIGTERM, signal.SIGINT),
                                         (signal.SIGINT, signal.SIGTERM)])
def test_sigterm_and_sigint_at_once_are_one_line(work, first, then):
    """Both pending before either handler ran: CPython runs SIGINT's first,
    so the status is either; what matters is one line and no traceback (a
    handler set to SIG_IGN while the other was pending made CPython report
    'Signal 15 ignored due to race condition')."""
    got, err = _signalled(work, [first, then], after_line="finetune", gaps=[0.0005])
    assert got in (130, 143) and "Traceback" not in err and "race" not in err, (got, err)
    assert len(err.splitlines()) == 1, err


def test_a_table_with_movielens_column_names_fits(tmp_path):
    """userId, movieId, rating: the names of MovieLens' ratings.csv, read by
    pd.read_csv; and a columns object whose truth value is an error, as a
    pandas Index's is, never reaches that error."""
    class Columns(list):
        def __bool__(self):
            raise ValueError("The truth value of an Index is ambiguous")

    class Frame(dict):
        @property
        def columns(self):
            return Columns(self.keys())

    ratings = low_rank_ratings(20, 15, 0.5, 2, seed=3)
    table = Frame(userId=ratings.users, movieId=ratings.items, rating=ratings.values,
                  timestamp=np.zeros(len(ratings)))
    model = GLocalK(TINY).fit(table)
    assert model.index_.n_users == 20
    with pytest.raises(DataError_, match=r"no item column 'item' \(columns: userId, film, "):
        GLocalK(TINY).fit(Frame(userId=[1], film=[2], rating=[3.0]))
    pd = pytest.importorskip("pandas")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r:g},0\n" for u, i, r in zip(ratings.users, ratings.items, ratings.values)))
    frame = GLocalK(TINY).fit(pd.read_csv(tmp_path / "ratings.csv"))
    np.testing.assert_array_equal(frame.index_.users, model.index_.users)


# ---------------------------------------------------------------- silent wrong results

@pytest.mark.parametrize("rating, problem", [
    ("4_5", "rating '4_5' is not written as a decimal number"),
    ("\u0664", "rating '\u0664' is not written as a decimal number"),
    ("inf", "rating 'inf' is not a finite number"),
    ("0x10", "rating '0x10' is not a number"),
])
def test_ratings_are_read_by_one_strict_rule(tmp_path, rating, problem):
    path = tmp_path / "r.csv"
    path.write_text(f"1,1,4\n2,2,{rating}\n3,3,+1.5e0\n")
    measured_refusal("fit", path, "--out", tmp_path / "o.npz", fragments=(f"r.csv:2: {problem}",))
    from glocalk_np.data import Ratings
    with pytest.raises(DataError_, match=problem.split(" is ")[0]):
        Ratings([1, 2], [1, 2], ["4", rating], "table")


def test_ids_from_the_api_follow_the_rules_of_ids_from_files(files):
    from glocalk_np.data import Ratings
    for users, problem in (([1, None], "row 1: missing user id"),
                           ([1.0, np.nan], r"row 1: missing user id \(NaN\)"),
                           (np.array([1, "1"], dtype=object), "user ids mix text and numbers"),
                           ([1.5, 2.0], "row 0: user id 1.5 is not an id"),
                           ([True, False], "dtype bool are not ids"),
                           (["a", ""], "row 1: empty user id"),
                           (["a", "b\x00"], "row 1: user id 'b.x00' holds a line break or a "
                                             "NUL character")):
        with pytest.raises(DataError_, match=problem):
            Ratings(users, [1, 2], [3.0, 4.0], "table")
    assert Ratings(["1", " 2 "], [1, 2], [3, 4], "t").users.tolist() == [1, 2]   # as a file's
    model = GLocalK.load(files / "m.npz")
    user, item = model.index_.users[0], model.index_.items[0]
    as_int = model.predict([user], [item])
    for form in ([float(user)], np.array([user], dtype=np.float64), [str(user)],
                 np.array([user], dtype=object)):
        got = model.predict(form, [item])
        assert got[0].tolist() == as_int[0].tolist() and got[1].tolist() == [""], form
    with pytest.raises(DataError_, match="missing user id"):
        model.predict([None], [item])
    pd = pytest.importorskip("pandas")
    with pytest.raises(DataError_, match="row 1: missing user id"):
        Ratings(pd.array([1, None], dtype="Int64"), [1, 2], [3.0, 4.0], "frame")


def test_a_users_file_is_read_as_a_ratings_file_s_ids(tmp_path):
    """Ids with blanks and quotes, a header, mixed forms: as in the ratings file."""
    ratings = low_rank_ratings(12, 10, 0.7, 2, seed=4)
    names = {u: f'"user {u}"' if u % 2 else f"user {u}" for u in ratings.users.tolist()}
    (tmp_path / "r.csv").write_text("".join(f"{names[u]},{i},{r:g}\n" for u, i, r in zip(
        ratings.users, ratings.items, ratings.values)))
    done = g("fit", "r.csv", *TINY_ARGS, "--quiet", "--out", "m.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first, second = sorted(names)[:2]
    (tmp_path / "users.csv").write_text(f"user,comment\n{names[first]},x\n{names[second]},y\n")
    done = g("recommend", "m.npz", "--users", "users.csv", "--top", "1", "--format", "json",
             cwd=tmp_path)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["user"], r["fallback"]) for r in rows] == [(names[first], False),
                                                          (names[second], False)]


def test_a_quoted_number_beside_plain_ones_is_named(tmp_path):
    (tmp_path / "r.csv").write_text('1,1,4\n"1",2,3\n')
    with pytest.warns(DataWarning, match="""user id '"1"' is a number not written as a plain"""):
        r = read_ratings(tmp_path / "r.csv")
    assert r.users.tolist() == ["1", '"1"']


def test_minus_zero_is_not_zero(tmp_path):
    (tmp_path / "r.csv").write_text("0,1,4\n-0,2,3\n1,1,2\n1,2,5\n")
    with pytest.warns(DataWarning, match="user id '-0' is a number not written as a plain"):
        r = read_ratings(tmp_path / "r.csv")
    assert r.users.tolist() == ["0", "-0", "1", "1"]
    ints = low_rank_ratings(10, 8, 0.8, 2, seed=5)
    (tmp_path / "i.csv").write_text("".join(f"{u},{i},{v:g}\n" for u, i, v in zip(
        ints.users, ints.items, ints.values)))
    done = g("fit", "i.csv", *TINY_ARGS, "--quiet", "--val-frac", "0", "--out", "m.npz",
             cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = g("recommend", "m.npz", "--user", "-0", "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0 and "user '-0' has no training ratings" in done.stderr
    assert {line.split(",")[4] for line in done.stdout.splitlines()[1:]} == {"True"}


# ---------------------------------------------------------------- unclear output

def test_json_on_standard_output_is_only_json(work):
    done = g("fit", "r.csv", *TINY_ARGS, "--metrics-json", "-", "--out", "n.npz", cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config"]["n_hidden"] == 8
    assert "model saved to n.npz" in done.stderr
    done = g("tune", "r.csv", *TINY_ARGS, "--trials", "1", "--out", "-", cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config"]["n_hidden"] == 8


def test_an_output_that_cannot_be_written_is_refused_before_training(work):
    long_ok, too_long = "a" * 251 + ".npz", "a" * 252 + ".npz"
    with unchanged(work):
        measured_refusal("fit", "r.csv", *TINY_ARGS, "--out", "new/", cwd=work,
                         fragments=("new/: names a folder, not a file",))
        measured_refusal("fit", "r.csv", *TINY_ARGS, "--out", too_long, cwd=work,
                         fragments=("name too long",))
        measured_refusal("fit", "r.csv", *TINY_ARGS, "--out", "/proc/self/new.npz", cwd=work,
                         fragments=("cannot write in /proc/self",))
    done = g("fit", "r.csv", *TINY_ARGS, "--quiet", "--out", long_ok, cwd=work)
    assert done.returncode == 0 and GLocalK.load(work / long_ok).config.n_hidden == 8


def test_every_message_names_its_file_and_stays_short(work):
    (work / "latin1.txt").write_bytes(b"1\n\xff\n")
    (work / "field.csv").write_text("1,1," + "x" * (10 << 20) + "\n")
    with unchanged(work):
        measured_refusal("recommend", "m.npz", "--users", "latin1.txt", cwd=work,
                         fragments=("latin1.txt:2: not UTF-8 text (byte 0xff)",))
        measured_refusal("fit", "field.csv", "--out", "o.npz", cwd=work,
                         fragments=("field.csv:1: rating of 10,485,760 characters",))
        done = g("recommend", "m.npz", "--user", "u" * 100_000, cwd=work)   # a warning quotes it
    assert done.returncode == 0
    assert [len(line) <= 600 for line in done.stderr.splitlines()] == [True], done.stderr[:300]


# ================================================================ round 2, second probe
# What a second probe of about 480 cases found after the fixes above.

def test_a_benchmark_s_own_files_are_inputs_too(work, tmp_path):
    """RATINGS named by a dataset name: its downloaded files are inputs, which
    no output may replace."""
    data = tmp_path / "data" / "ml-100k"
    data.mkdir(parents=True)
    for name in ("u1.base", "u1.test"):
        (data / name).write_text((work / "r.csv").read_text().replace(",", "\t"))
    env = {**os.environ, "GLOCALK_NP_DATA": str(tmp_path / "data")}
    with unchanged(tmp_path / "data"):
        for args in (["fit", "ml-100k", *TINY_ARGS, "--out", data / "u1.base"],
                     ["fit", "ml-100k", *TINY_ARGS, "--out", "m2.npz", "--metrics-json",
                      data / "u1.test"],
                     ["tune", "ml-100k", *TINY_ARGS, "--trials", "1", "--out", data / "u1.base"]):
            done = subprocess.run(cli_process.command(*args), cwd=work, env=env,
                                  capture_output=True, text=True, timeout=180)
            refused(done, "this output would replace the input")


@pytest.mark.parametrize("tail", ["\x1c", "\x1f", "\u00a0", "\u2028"])
def test_a_rating_with_a_stray_character_is_one_line(tmp_path, tail):
    path = tmp_path / "r.csv"
    path.write_text(f"1,1,4\n2,2,3{tail}\n")
    measured_refusal("fit", path, "--out", tmp_path / "o.npz",
                     fragments=(f"r.csv:2: rating {('3' + tail)!r} is not",))


def test_ratings_too_small_for_float32_are_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,1,1e-321\n2,2,5e-321\n")
    measured_refusal("fit", path, "--out", tmp_path / "o.npz",
                     fragments=("r.csv:1: rating '1e-321' is within ±1e-06 of 0 but not 0",))


@pytest.mark.parametrize("flag", [0x01, 0x20, 0x40])
def test_an_archive_with_encrypted_or_patched_entries_is_one_line(work, flag):
    data = bytearray((work / "m.npz").read_bytes())
    start = data.rfind(b"PK\x05\x06")
    offset = int.from_bytes(data[start + 16:start + 20], "little")   # central directory
    data[offset + 8:offset + 10] = (int.from_bytes(data[offset + 8:offset + 10], "little")
                                    | flag).to_bytes(2, "little")
    (work / "flagged.npz").write_bytes(bytes(data))
    with unchanged(work):
        measured_refusal("predict", "flagged.npz", "p.csv", cwd=work, fragments=("flagged.npz",))


def test_an_entry_of_zero_byte_elements_is_refused(work):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<U0", "fortran_order": False,
                                                  "shape": (300_000_000,)})
    with zipfile.ZipFile(work / "m.npz") as a, zipfile.ZipFile(work / "zero.npz", "w") as b:
        for info in a.infolist():
            b.writestr(info, header.getvalue() if info.filename == "index/users.npy"
                       else a.read(info))
    with unchanged(work):
        measured_refusal("predict", "zero.npz", "p.csv", cwd=work,
                         fragments=("entry 'index/users' has dtype <U0",))


def _with_ids(src, dst, users):
    """The model ``src`` with its user ids replaced by the text ids ``users``."""
    from glocalk_np.schema import pack_ids
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("index/users")}
    arrays.update(pack_ids("index/users", np.array(users, dtype=object)))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def test_stored_text_ids_stay_text_and_odd_ones_are_refused(work):
    model = GLocalK.load(work / "m.npz")
    as_text = sorted(str(u) for u in model.index_.users.tolist())      # '1', '10', '11', ...
    loaded = GLocalK.load(_with_ids(work / "m.npz", work / "text.npz", as_text))
    assert loaded.index_.users.tolist() == as_text                       # not turned into ints
    pairs = (work / "p.csv").read_text().split(",")
    _, kind = loaded.predict([pairs[0]], [int(pairs[1])])
    assert kind.tolist() == [""]                                         # found, not a fallback
    padded = sorted([" u10", "u10"] + [f"v{k}" for k in range(len(as_text) - 2)])
    for ids, what in ((padded, "' u10'"), (["", *as_text[1:]], "''"),
                      ([*as_text[:-1], "x\ny"], "'x\\ny'")):
        bad = _with_ids(work / "m.npz", work / "odd.npz", sorted(ids))
        with unchanged(work):
            measured_refusal("predict", bad, "p.csv", cwd=work,
                             fragments=(f"index/users: id {what}", "no ratings file has"))


def test_ids_no_ratings_file_could_hold_are_refused_from_the_api(tmp_path):
    from glocalk_np.data import Ratings
    for bad in ("a\nb", "a\rb"):
        with pytest.raises(DataError_, match="holds a line break or a NUL"):
            Ratings(["u1", bad], [1, 2], [3.0, 4.0], "table")


def test_update_of_a_text_id_model_with_a_numeric_new_item(tmp_path):
    from glocalk_np.data import Ratings
    ratings = low_rank_ratings(12, 10, 0.7, 2, seed=4)
    text = Ratings([f"u{u}" for u in ratings.users], [f"i{i}" for i in ratings.items],
                   ratings.values, "text")
    GLocalK(TINY, validation_fraction=0).fit(text).save(tmp_path / "m.npz")
    (tmp_path / "n.csv").write_text(f"u{ratings.users[0]},5,3\n")
    done = g("update", "m.npz", "n.csv", "--out", "u.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "5" in GLocalK.load(tmp_path / "u.npz").index_.items.tolist()


def test_standard_output_closed_or_broken_is_one_line(work):
    import shlex
    closed = shlex.join(cli_process.command("predict", "m.npz", "p.csv")) + " >&-"
    proc = subprocess.run(["bash", "-c", closed], cwd=work, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["Error: standard output is closed"]
    proc = cli_process.start("predict", "m.npz", "--all", cwd=work)
    proc.stdout.close()                     # `| head` closing the pipe
    assert proc.wait(timeout=180) == 1
    assert proc.stderr.read().splitlines() == [
        "Error: standard output was closed before everything was written"]


def test_an_integer_option_of_thousands_of_digits_names_the_option(work):
    measured_refusal("fit", "r.csv", "--hidden", "9" * 5000, "--out", "o.npz", cwd=work,
                     fragments=("--hidden", "5000 digits) is too large"))


def test_a_writer_s_error_without_an_errno_names_the_output(work, monkeypatch):
    def short(f, array, **kwargs):
        raise OSError("1200 requested and 496 written")
    monkeypatch.setattr(np, "save", short)
    with unchanged(work):
        result = CliRunner().invoke(cli, ["predict", str(work / "m.npz"), "--all", "--out",
                                          str(work / "a.npy")])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {work / 'a.npy'}: cannot write (1200 requested and 496 written)"]


def test_one_mixed_id_column_is_one_warning(work):
    (work / "mixed.csv").write_text("01,1\n1,2\n")
    done = g("predict", "m.npz", "mixed.csv", cwd=work)
    assert done.returncode == 0
    assert [line for line in done.stderr.splitlines() if line.startswith("Warning")] == [
        "Warning: mixed.csv:1: user id '01' is a number not written as a plain integer, so "
        "all user ids are read as text and '01' is another user than any plain integer id"]


def test_many_users_to_recommend_for_take_bounded_memory(work):
    (work / "users.txt").write_text("1\n" * 200_000)
    done, peak = cli_process.run_measured("recommend", "m.npz", "--users", "users.txt",
                                          "--top", "5", "--out", "recs.csv", cwd=work)
    assert done.returncode == 0 and peak < PEAK_MIB, (done.stderr[-500:], peak)
    assert sum(1 for _ in open(work / "recs.csv")) == 1 + 200_000 * 5


# ================================================================ round 3 (issue 29)

# A command whose process signals itself, twice, as soon as np.savez has opened
# the writing handle of the entry argv[1] of a zip archive: the worst moment,
# inside the archive's bookkeeping, reached every time.
_SIGNAL_IN_THE_ZIP = """
import os, signal, sys, zipfile
signal.signal(signal.SIGINT, signal.SIG_DFL)
entry, signum = sys.argv[1], int(sys.argv[2])
real = zipfile.ZipFile.open
def opened(self, name, mode="r", **kwargs):
    handle = real(self, name, mode, **kwargs)
    if mode == "w" and name == entry:
        os.kill(os.getpid(), signum)
        os.kill(os.getpid(), signum)
    return handle
zipfile.ZipFile.open = opened
del sys.argv[1:3]
from glocalk_np.__main__ import main
main()
"""


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "Interrupted"),
                                                  (signal.SIGTERM, 143, "Terminated")])
def test_two_signals_inside_the_model_archive_s_bookkeeping_are_one_line(work, signum, status,
                                                                         word):
    """A signal that cut np.savez's zip bookkeeping left an archive that
    could not be closed: 'Can't close the ZIP file', then a traceback as
    it was collected. Now the save holds the signals, ends at once, and the
    signal ends the command."""
    (work / "new.csv").write_text("1,1,3\n")
    (work / "out.npz").write_bytes((work / "m.npz").read_bytes())
    with unchanged(work):
        done = subprocess.run([sys.executable, "-c", _SIGNAL_IN_THE_ZIP, "param/W1.npy",
                               str(int(signum)), "update", "m.npz", "new.csv", "--out",
                               "out.npz"], cwd=work, capture_output=True, text=True, timeout=180)
    assert done.returncode == status, (done.returncode, done.stderr)
    assert done.stderr.split() == [word], done.stderr


def test_double_ctrl_c_while_a_large_model_is_saved(tmp_path):
    """SIGINT twice, at several moments after the save's temporary file
    appeared: each time status 130 and one line (or, where the signals came
    after the output was in place, a whole new model), no temporary file
    left, and the old model as it was or whole."""
    from glocalk_np.data import Ratings
    from glocalk_np import modelfile
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 8_000, 40_000), rng.integers(0, 1_000, 40_000)
    GLocalK(n_hidden=500, epochs_pretrain=0, epochs_finetune=0, validation_fraction=0).fit(
        Ratings(users, items, np.full(users.size, 3.0), "r")).save(tmp_path / "big.npz")
    (tmp_path / "new.csv").write_text(f"{users[0]},999999,3\n")      # a new item
    old = (tmp_path / "big.npz").read_bytes()
    outcomes = []
    for delay, gap in [(0.0, 0.0005), (0.002, 0.01), (0.02, 0.0005), (0.1, 0.05), (0.3, 0.2)]:
        (tmp_path / "out.npz").write_bytes(old)
        proc = cli_process.start("update", "big.npz", "new.csv", "--out", "out.npz",
                                 cwd=tmp_path)
        try:
            while not list(tmp_path.glob(".out.npz.*.tmp")) and proc.poll() is None:
                time.sleep(0.001)
            time.sleep(delay)
            for pause in (0, gap):
                time.sleep(pause)
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode in (0, 130) and "Traceback" not in err, (delay, err)
        assert len(err.split()) <= 1, err            # "Interrupted" (after click's blank line)
        assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp")), delay
        intact = (tmp_path / "out.npz").read_bytes() == old
        if not intact:
            modelfile.read(tmp_path / "out.npz", modelfile.MODEL)      # the new one, whole
        outcomes.append((proc.returncode, intact))
    assert (130, True) in outcomes, outcomes       # at least once the save itself was cut


def test_a_save_split_or_checkpoint_folder_that_is_a_dangling_link_is_named(work):
    """os.makedirs answers a link to nothing with 'File exists': refused up
    front, naming the option and the link (also where it is an ancestor)."""
    (work / "gone").symlink_to(work / "nowhere")
    with unchanged(work):
        for option, folder in (("--save-split", "gone"), ("--save-split", "gone/sub"),
                               ("--checkpoint-dir", "gone")):
            line = refused(g("fit", "r.csv", *TINY_ARGS, option, folder, "--out", "x.npz",
                             cwd=work), f"'{option}'", f"{folder}: ")
            assert line.endswith(f"a symbolic link to {work / 'nowhere'}, which does not exist")
    assert not (work / "x.npz").exists()


def _format_2(src, dst, summary):
    """``src`` as a format-2 file held it: no blend weight, no seen pattern,
    'dropped' for 'unseen', and ``summary``."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("seen/")}
    meta = json.loads(str(arrays["meta"]))
    meta.pop("blend")
    meta["dropped"] = meta.pop("unseen")
    arrays.update(format_version=np.int64(2), meta=np.array(json.dumps({**meta,
                                                                         "summary": summary})))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def test_info_and_plot_print_a_format_2_file(work):
    """Format 2 summaries held three scores and no protocol: the loader takes
    the file, so info and plot print it (they ended in a KeyError)."""
    old = _format_2(work / "m.npz", work / "old.npz",
                    {"select": "last", "best_epoch": 2, "test": {"rmse": 1.2, "mae": 0.9,
                                                                 "ndcg": 0.8}})
    done = g("info", old)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = {line[:16].strip(): line[17:] for line in done.stdout.splitlines()}
    assert lines["file"].endswith("(format version 2)")
    assert lines["epoch chosen by"] == "-" and lines["test scores"] == "RMSE 1.2000 MAE 0.9000"
    assert json.loads(g("info", old, "--json").stdout)["scores"] == {
        "test": {"rmse": 1.2, "mae": 0.9, "ndcg": 0.8}}
    if importlib.util.find_spec("matplotlib") is not None:
        done = g("plot", old, "--out", work / "old.png")
        assert done.returncode == 0 and (work / "old.png").exists(), done.stderr


# Summaries the loader takes (every field optional, each of its type) and
# those it refuses, naming the field: nothing between that info cannot print
@pytest.mark.parametrize("summary, problem", [
    ({}, None),
    ({"val": {}, "test": {"rmse": float("nan")}, "baseline": {}}, None),
    ({"val": {"rmse": 1, "n": 3}, "baseline": {"val": {"mae": 0.5}}, "protocol": ""}, None),
    ({"val": {"rmse": "1.0"}}, "summary field 'val' is not a map of score names to numbers"),
    ({"test": {"n": -1}}, "summary field 'test' is not a map of score names to numbers"),
    ({"test": [1.0]}, "summary field 'test' is not a map of score names to numbers"),
    ({"baseline": []}, "summary field 'baseline' is not a map of held-out sets to scores"),
    ({"baseline": {"val": 3}}, "summary field 'baseline' is not a map of held-out sets"),
    ({"protocol": 5}, "summary field 'protocol' is not a text"),
    ({"epochs_run": {"pretrain": True}}, "summary field 'epochs_run' is not a map of stages"),
])
def test_info_prints_every_summary_the_loader_takes(work, summary, problem):
    bad = rewrite(work / "m.npz", work / "x.npz", meta={"summary": summary})
    for args in (["info"], ["info", "--json"], ["plot", "--out", str(work / "x.png")]):
        if args[0] == "plot" and importlib.util.find_spec("matplotlib") is None:
            continue
        result = CliRunner().invoke(cli, [args[0], str(bad), *args[1:]])
        if problem is None:
            assert result.exit_code == 0 and result.stderr == "", result.output
        else:
            lines = result.stderr.splitlines()
            assert result.exit_code == 2 and len(lines) == 1, result.output
            assert lines[0].startswith(f"Error: {bad}: metadata {problem}"), lines
