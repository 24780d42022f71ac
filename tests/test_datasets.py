"""`datasets download` against a local HTTP server, `fit NAME` on what it
unpacked, and the synthetic data generator."""
import hashlib
import http.server
import io
import json
import threading
import zipfile
from functools import partial

import numpy as np
import pytest
from click.testing import CliRunner

from glocalk_np import datasets
from glocalk_np.cli import cli
from glocalk_np.data import DataError
from glocalk_np.estimator import GLocalK
from glocalk_np.synthetic import low_rank_ratings

TINY = ["--hidden", "8", "--kernel-dim", "3", "--epochs-pretrain", "1", "--epochs-finetune", "1",
        "--iters-pretrain", "2", "--iters-finetune", "2", "--quiet"]


def run(*args, code=0, env=None):
    result = CliRunner(env=env).invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def lines(ratings, sep, timestamp=True):
    return "".join(sep.join(map(str, (u, i, int(r), *([881250949] if timestamp else [])))) + "\n"
                   for u, i, r in zip(ratings.users, ratings.items, ratings.values))


def make_zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def ml100k_zip():
    """u1.base has items 1..30; u1.test adds item 31 (as in ML-100K, where
    the index over both files has items the training file lacks)."""
    r = low_rank_ratings(25, 30, 0.4, 2, seed=0)
    base = lines(r, "\t")
    test = "1\t31\t4\t881250949\n" + lines(low_rank_ratings(25, 30, 0.1, 2, seed=1), "\t")
    return make_zip({"ml-100k/u1.base": base, "ml-100k/u1.test": test,
                     "ml-100k/u.data": base + test, "ml-100k/README": "tiny copy"})


def ml1m_zip():
    return make_zip({"ml-1m/ratings.dat": lines(low_rank_ratings(30, 20, 0.5, 2, seed=2), "::"),
                     "ml-1m/movies.dat": "1::Toy Story (1995)::Animation\n"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server over a folder holding the zips; yields (url, folder)."""
    root = tmp_path_factory.mktemp("www")
    for name, data in {"ml-100k.zip": ml100k_zip(), "ml-1m.zip": ml1m_zip(),
                       "broken.zip": b"PK this is no zip", "lacking.zip": make_zip(
                           {"ml-100k/u1.base": "1\t1\t5\t0\n"})}.items():
        (root / name).write_bytes(data)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def serve(monkeypatch, server, name, file=None, sha256=None):
    """Point SOURCES[name] at the local server (the zip's true sha256 unless given)."""
    url, root = server
    file = file or f"{name}.zip"
    digest = sha256 or hashlib.sha256((root / file).read_bytes()).hexdigest()
    monkeypatch.setitem(datasets.SOURCES, name, (f"{url}/{file}", digest))


def test_sources_are_the_grouplens_zips():
    for name, (url, sha256) in datasets.SOURCES.items():
        assert url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert len(sha256) == 64 and int(sha256, 16) >= 0


def test_download_then_fit_ml100k_with_the_paper_protocol(tmp_path, monkeypatch, server):
    serve(monkeypatch, server, "ml-100k")
    result = run("datasets", "download", "ml-100k", "--dir", tmp_path)
    folder = tmp_path / "ml-100k"
    assert f"ml-100k: checksum verified, unpacked in {folder}" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["README", "u.data", "u1.base", "u1.test"]
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]      # no temp files left
    assert "already downloaded" in run("datasets", "download", "ml-100k", "--dir", tmp_path).stdout

    model, report = tmp_path / "m.npz", tmp_path / "m.json"
    run("fit", "ml-100k", *TINY, "--out", model, "--metrics-json", report,
        env={"GLOCALK_NP_DATA": str(tmp_path)})
    est = GLocalK.load(model)
    assert est.index_.n_items == 31 and est.index_.n_users == 25    # index over both files
    data = json.loads(report.read_text())
    assert data["unseen"] == {"test": 0} and data["summary"]["select"] == "test"


def test_download_then_fit_ml1m_uses_its_split_and_preset(tmp_path, monkeypatch, server):
    serve(monkeypatch, server, "ml-1m")
    monkeypatch.setenv("GLOCALK_NP_DATA", str(tmp_path))
    run("datasets", "download", "ml-1m")
    train, test, index = datasets.load("ml-1m")
    assert index is None and len(test) == int(0.1 * (len(train) + len(test)))
    model = tmp_path / "m.npz"
    run("fit", "ml-1m", *TINY, "--out", model)
    config = GLocalK.load(model).config
    assert (config.lambda_2, config.dot_scale, config.n_hidden) == (70.0, 0.5, 8)


@pytest.mark.parametrize("file, sha256, message", [
    ("ml-100k.zip", "0" * 64, "sha256 mismatch (got "),
    ("missing.zip", "0" * 64, "download failed: "),
    ("broken.zip", None, "not a valid zip file"),
    ("lacking.zip", None, "the zip lacks ml-100k/u1.test"),
])
def test_failed_downloads_leave_nothing_behind(tmp_path, monkeypatch, server, file, sha256,
                                               message):
    serve(monkeypatch, server, "ml-100k", file, sha256)
    result = run("datasets", "download", "ml-100k", "--dir", tmp_path, code=1)   # at run time
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]
    assert errors[0].startswith(f"Error: {server[0]}/{file}: ")
    assert list(tmp_path.iterdir()) == []
    assert datasets.locate("ml-100k", tmp_path) is None


def test_a_folder_of_the_user_s_under_the_dataset_s_name_is_never_replaced(
        tmp_path, monkeypatch, server):
    serve(monkeypatch, server, "ml-100k")
    mine = tmp_path / "ml-100k"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work")
    result = run("datasets", "download", "ml-100k", "--dir", tmp_path, code=2)
    assert result.stderr.splitlines() == [f"Error: {mine}: exists but is not a complete "
                                          "ml-100k download (needs u1.base, u1.test); move it "
                                          "away or choose another --dir"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_fit_names_the_download_command_when_a_dataset_is_missing(tmp_path):
    result = run("fit", "ml-1m", *TINY, env={"GLOCALK_NP_DATA": str(tmp_path)}, code=2)
    assert result.stderr == (f"Error: ml-1m has not been downloaded to {tmp_path}: "
                             "run `glocalk-np datasets download ml-1m` first\n")


def test_cache_dir_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("GLOCALK_NP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / ".cache" / "glocalk-np"
    monkeypatch.setenv("GLOCALK_NP_DATA", str(tmp_path / "data"))
    assert datasets.cache_dir() == tmp_path / "data"
    assert datasets.cache_dir(tmp_path / "x") == tmp_path / "x"
    with pytest.raises(DataError, match="unknown dataset 'netflix'"):
        datasets.locate("netflix")


# ---------------------------------------------------------------- synthetic data

def test_low_rank_ratings_are_reproducible_integer_stars():
    a = low_rank_ratings(50, 40, 0.2, 3, seed=7)
    b = low_rank_ratings(50, 40, 0.2, 3, seed=7)
    c = low_rank_ratings(50, 40, 0.2, 3, seed=8)
    assert len(a) == 400 and np.array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)
    assert set(np.unique(a.values)) <= {1.0, 2.0, 3.0, 4.0, 5.0} and len(np.unique(a.values)) >= 4
    pairs = a.users * 1000 + a.items
    assert np.unique(pairs).size == len(a)                       # no repeated cell
    assert a.users.min() >= 1 and a.users.max() <= 50 and a.items.max() <= 40
