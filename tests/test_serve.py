"""The WSGI application (serve.py): answers equal the API's, bad requests
get 4xx JSON, a replaced model file is swapped in (an unusable one is not),
and the threaded server answers while a slow client holds a connection."""
import io
import json
import os
import socket
import threading
import time
import urllib.request
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import pytest

from glocalk_np import serve
from glocalk_np.config import Config
from glocalk_np.data import Ratings
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
    ("/predict", {}, b'{"pairs": [[1, 1.5]]}', 400, "text or an integer"),
    ("/predict", {}, b'{"pairs": [[1, 2]] }' + b" " * serve.MAX_BODY, 413, "over"),
    ("/predict", {}, json.dumps({"pairs": [[1, 1]] * (serve.MAX_PAIRS + 1)}).encode(), 400,
     "at most"),
    ("/recommend", {}, b"\xff\xfe", 400, "not JSON"),
])
def test_bad_requests_get_a_4xx_json_error(app, path, query, raw, status, message):
    code, body = call(app, path, query, raw=raw)
    assert code == status and message in body["error"] and "Traceback" not in body["error"]


def test_a_replaced_model_is_swapped_in_and_an_unusable_one_is_not(app, model_file, tmp_path):
    other = tmp_path / "other.npz"
    fit(2).save(other)
    before = call(app, "/predict", body={"pairs": [[1, 1]]})[1]
    os.replace(other, model_file)                  # as save() replaces a file
    after = call(app, "/predict", body={"pairs": [[1, 1]]})[1]
    assert after != before
    assert after["predictions"][0]["rating"] == GLocalK.load(model_file).predict([1], [1])[0][0]
    model_file.write_bytes(b"not a model")
    time.sleep(0.01)
    code, health = call(app, "/health")
    assert code == 200 and "not a glocalk-np file" in health["reload_error"]
    assert call(app, "/predict", body={"pairs": [[1, 1]]})[1] == after
    fit(1).save(model_file)                        # back, for the other tests


def test_the_threaded_server_answers_beside_a_slow_client(model_file):
    urls = []
    threading.Thread(target=serve.run, args=(model_file, "127.0.0.1", 0, urls.append),
                     daemon=True).start()
    for _ in range(200):
        if urls:
            break
        time.sleep(0.05)
    host, port = urls[0].rsplit(":", 1)
    slow = socket.create_connection(("127.0.0.1", int(port)))
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")       # and then nothing
    with urllib.request.urlopen(urls[0] + "/recommend?user=1&top=2", timeout=10) as r:
        assert r.status == 200 and len(json.load(r)["items"]) == 2
    slow.close()
