"""The WSGI application (serve.py): answers equal the API's, bad requests
get 4xx JSON, and the reload rules: a replaced model file is looked at after
RECHECK_S, loaded in the background while the old one answers and swapped
in; an unusable or oversized one is not. The server itself against hostile
clients: test_serve_hostile.py."""
import io
import json
import os
import shutil
import threading
import time
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import pytest

from glocalk_np import serve
from glocalk_np.config import Config
from glocalk_np.data import Ratings
from glocalk_np.ranking import RANKS
from glocalk_np.estimator import GLocalK
from glocalk_np.synthetic import low_rank_ratings

CONFIG = Config(n_hidden=8, kernel_dim=3, epochs_pretrain=1, epochs_finetune=1,
                iters_pretrain=2, iters_finetune=2)


def fit(seed):
    ratings = low_rank_ratings(40, 30, 0.4, 2, seed=seed)
    return GLocalK(CONFIG, validation_fraction=0, refit=False, blend=False, seed=seed).fit(
        Ratings(ratings.users, ratings.items, ratings.values, "mem"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    fit(1).save(path)
    return path


@pytest.fixture()
def app(model_file, monkeypatch):
    monkeypatch.setattr(serve, "RECHECK_S", 0.0)
    return serve.ModelServer(model_file)


def call(app, path, query=None, body=None, raw=None):
    """(status code, JSON answer) of one request to the WSGI app."""
    environ = {"PATH_INFO": path, "QUERY_STRING": urlencode(query or {})}
    if body is not None or raw is not None:
        data = raw if raw is not None else json.dumps(body).encode()
        environ.update(REQUEST_METHOD="POST", CONTENT_LENGTH=str(len(data)),
                       **{"wsgi.input": io.BytesIO(data)})
    setup_testing_defaults(environ)
    got = {}

    def start_response(status, headers):
        got["status"], got["headers"] = status, dict(headers)
    out = b"".join(app(environ, start_response))
    assert got["headers"]["Content-Type"] == "application/json"
    assert int(got["headers"]["Content-Length"]) == len(out)
    return int(got["status"].split()[0]), json.loads(out)


def test_answers_equal_the_api_s(app, model_file):
    model = GLocalK.load(model_file)
    user = int(model.index_.users[3])
    code, rec = call(app, "/recommend", {"user": user, "top": 5})
    want, _ = model.recommend(user, 5)
    assert code == 200 and [(r["item"], r["score"]) for r in rec["items"]] == want
    code, rec = call(app, "/recommend", body={"user": user, "top": 3,
                                              "exclude": [want[0][0]]})
    assert [r["item"] for r in rec["items"]] == [i for i, _ in want[1:4]]
    candidates = [int(i) for i in model.index_.items[::3]]
    code, rec = call(app, "/recommend", {"user": user, "items": ",".join(map(str, candidates))})
    assert rec["items"] and all(r["item"] in candidates for r in rec["items"])
    pairs = [[user, int(model.index_.items[0])], [user, 99999], [12345, 1]]
    code, pred = call(app, "/predict", body={"pairs": pairs})
    ratings, fallback = model.predict([p[0] for p in pairs], [p[1] for p in pairs])
    assert code == 200 and [p["rating"] for p in pred["predictions"]] == ratings.tolist()
    assert [p["fallback"] or "" for p in pred["predictions"]] == fallback.tolist()
    item = int(model.index_.items[2])
    code, sim = call(app, "/similar", {"item": item, "top": 4})
    assert [(s["item"], s["similarity"]) for s in sim["similar"]] == model.similar(item, 4)
    for rank in RANKS:
        code, rec = call(app, "/recommend", body={"user": user, "top": 4, "rank": rank})
        assert [(r["item"], r["score"]) for r in rec["items"]] == \
            model.recommend(user, 4, rank=rank)[0]
        code, sim = call(app, "/similar", {"item": item, "top": 4, "rank": rank})
        assert [(s["item"], s["similarity"]) for s in sim["similar"]] == \
            model.similar(item, 4, rank=rank)
    assert call(app, "/info")[1]["data"]["users"] == model.index_.n_users
    code, health = call(app, "/health")
    assert code == 200 and health["status"] == "ok" and health["reload_error"] is None


@pytest.mark.parametrize("path, query, raw, status, message", [
    ("/nope", {}, None, 404, "no such endpoint"),
    ("/recommend", {}, None, 400, "missing 'user'"),
    ("/recommend", {"user": 1, "top": 10**9}, None, 400, "top must be in [1, 1000]"),
    ("/recommend", {"user": 1, "top": "ten"}, None, 400, "top must be an integer"),
    ("/similar", {"item": 99999}, None, 400, "is not in the model"),
    ("/predict", {}, b'{"pairs": [[1, ', 400, "not JSON"),
    ("/predict", {}, b"[1, 2]", 400, "a JSON object"),
    ("/predict", {}, b'{"pairs": [[1, 2, 3]]}', 400, "[user, item] pairs"),
    ("/predict", {}, b'{"pairs": [[1, 1.5]]}', 400, "text or integers"),
    ("/predict", {}, b'{"pairs": [[1, 2]] }' + b" " * serve.MAX_BODY, 413, "over"),
    ("/predict", {}, json.dumps({"pairs": [[1, 1]] * (serve.MAX_PAIRS + 1)}).encode(), 400,
     "at most"),
    ("/recommend", {}, b"\xff\xfe", 400, "not JSON"),
    ("/recommend", {"user": 1, "rank": "popular"}, None, 400, "rank must be one of"),
    ("/recommend", {}, b'{"user": 1, "rank": 1}', 400, "rank must be one of"),
    ("/similar", {"item": 1, "rank": "Rating"}, None, 400, "rank must be one of"),
])
def test_bad_requests_get_a_4xx_json_error(app, path, query, raw, status, message):
    code, body = call(app, path, query, raw=raw)
    assert code == status and message in body["error"] and "Traceback" not in body["error"]


@pytest.mark.parametrize("length", ["-1", " 5", "5 ", "+5", "1_0", "\u0665", "5,5"])
def test_the_app_refuses_a_malformed_content_length(app, length):
    environ = {"PATH_INFO": "/predict", "REQUEST_METHOD": "POST", "CONTENT_LENGTH": length,
               "wsgi.input": io.BytesIO(b"{}" * 10)}
    setup_testing_defaults(environ)
    got = {}
    out = json.loads(b"".join(app(environ, lambda status, headers: got.update(status=status))))
    assert got["status"].startswith("400") and "Content-Length" in out["error"]


@pytest.fixture()
def served(model_file, tmp_path, monkeypatch):
    """(app, path): an app serving a copy of the model file, replaced at will."""
    monkeypatch.setattr(serve, "RECHECK_S", 0.0)
    path = tmp_path / "served.npz"
    shutil.copy(model_file, path)
    return serve.ModelServer(path), path


def until(condition, timeout=60):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def rating(app):
    return call(app, "/predict", body={"pairs": [[1, 1]]})[1]["predictions"][0]["rating"]


def test_a_replaced_model_is_swapped_in_and_an_unusable_one_is_not(served, tmp_path):
    app, path = served
    before = rating(app)
    fit(2).save(tmp_path / "other.npz")
    os.replace(tmp_path / "other.npz", path)       # as save() replaces a file
    want = GLocalK.load(path).predict([1], [1])[0][0]
    until(lambda: rating(app) != before)
    assert rating(app) == want and call(app, "/health")[1]["reload_error"] is None
    path.write_bytes(b"not a model")
    until(lambda: call(app, "/health")[1]["reload_error"] is not None)
    assert "not a glocalk-np file" in call(app, "/health")[1]["reload_error"]
    assert rating(app) == want


def padded(data, size):
    """An npz's bytes grown to ``size`` by a zip comment (savez writes
    none: the end record is the last 22 bytes, its comment length the last 2)."""
    pad = size - len(data)
    return data[:-2] + pad.to_bytes(2, "little") + b" " * pad


def test_a_replacement_of_the_same_size_and_times_is_seen(model_file, tmp_path, monkeypatch):
    """In place (the same inode), the same size, the modification time set
    back: the change time and the CRC of the file's end still tell."""
    monkeypatch.setattr(serve, "RECHECK_S", 0.0)
    fit(2).save(tmp_path / "other.npz")
    old, new = model_file.read_bytes(), (tmp_path / "other.npz").read_bytes()
    size = max(len(old), len(new))
    path = tmp_path / "served.npz"
    path.write_bytes(padded(old, size))
    app = serve.ModelServer(path)
    before, st = rating(app), os.stat(path)
    with open(path, "r+b") as f:
        f.write(padded(new, size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_ino, os.stat(path).st_size, os.stat(path).st_mtime_ns) == \
        (st.st_ino, st.st_size, st.st_mtime_ns)
    until(lambda: rating(app) != before)
    assert call(app, "/health")[1]["reload_error"] is None


def test_an_oversized_replacement_is_refused_unread(served, tmp_path, monkeypatch):
    app, path = served
    before = rating(app)
    monkeypatch.setattr(serve, "RELOAD_FLOOR", 0)
    reads = []
    monkeypatch.setattr(serve, "load_model", lambda *a, **k: reads.append(a))
    big = tmp_path / "big.npz"
    with open(big, "wb") as f:
        f.truncate(serve.RELOAD_GROWTH * path.stat().st_size + 1)
    os.replace(big, path)
    until(lambda: call(app, "/health")[1]["reload_error"] is not None)
    assert "not read" in call(app, "/health")[1]["reload_error"] and not reads
    assert rating(app) == before


def test_requests_are_answered_by_the_old_model_while_the_new_one_loads(served, tmp_path,
                                                                       monkeypatch):
    app, path = served
    before, release = rating(app), threading.Event()
    load = serve.ModelServer._load

    def slow_load(self):
        release.wait(60)
        return load(self)
    monkeypatch.setattr(serve.ModelServer, "_load", slow_load)
    fit(2).save(path)
    for _ in range(20):                              # the load waits; requests do not
        assert rating(app) == before
    release.set()
    until(lambda: rating(app) != before)


def test_the_file_is_looked_at_only_recheck_s_after_the_last_look(served, tmp_path,
                                                                  monkeypatch):
    app, path = served
    before = rating(app)
    monkeypatch.setattr(serve, "RECHECK_S", 3600.0)
    rating(app)                                      # a look, the last for an hour
    fit(2).save(path)
    time.sleep(0.2)
    assert rating(app) == before and call(app, "/health")[1]["reload_error"] is None
    monkeypatch.setattr(serve, "RECHECK_S", 0.0)
    until(lambda: rating(app) != before)
