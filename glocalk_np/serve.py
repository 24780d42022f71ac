"""A saved model over HTTP: a WSGI application (PEP 3333), so that any WSGI
server runs it unchanged (gunicorn, waitress, uWSGI); `glocalk-np serve`
runs it on the standard library's threaded server.

Every answer is JSON. GET (query parameters) or POST (a JSON object):

    /health      {"status": "ok", "model": path, "loaded": time, "users", "items"}
    /info        GLocalK.info()
    /recommend   user, top (default 10), include_seen, items (candidates),
                 exclude: {"user", "items": [{"item", "score"}], "fallback"}
    /predict     pairs: [[user, item], ...] -> {"predictions": [{"user",
                 "item", "rating", "fallback"}]}
    /similar     item, top -> {"item", "similar": [{"item", "similarity"}]}

Lists in a query string are comma-separated (items=1,2,3). A bad request
gets a 4xx answer {"error": "..."}, never a traceback. The model is checked
when loaded; when its file changes (modification time or size) the next
request loads and checks the new one and swaps it in, keeping the old one
if the new one is unusable (GLocalK.save writes atomically, so a half
written file is never seen).
"""
import json
import os
import threading
import time
from urllib.parse import parse_qs

from .console.output import jsonable
from .data import DataError
from .estimator import GLocalK

MAX_BODY = 1 << 20          # bytes of a request body
MAX_TOP = 1000              # items per list
MAX_PAIRS = 10_000          # pairs per /predict
RECHECK_S = 1.0             # how often the model file's stamp is looked at
CLIENT_TIMEOUT_S = 30       # a connection silent this long is closed


class BadRequest(ValueError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, message, status="400 Bad Request"):
        super().__init__(message)
        self.status = status


class ModelServer:
    """The WSGI application serving the model file at ``path``."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._stamp, self._checked = self._file_stamp(), time.monotonic()
        self.model, self.loaded, self.reload_error = self._load(), time.time(), None

    def _file_stamp(self):
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size

    def _load(self):
        """The model file, checked, its forward pass done now rather than in a request."""
        model = GLocalK.load(self.path)
        model.recommend(model.index_.users[:1], 1)
        return model

    def current(self):
        """The model to answer with: a changed file is loaded and swapped in
        (by one request; the others answer with the model they had)."""
        now = time.monotonic()
        if now - self._checked < RECHECK_S or not self._lock.acquire(blocking=False):
            return self.model
        try:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self.model, self.loaded, self.reload_error = self._load(), time.time(), None
        except (OSError, ValueError) as e:       # ModelFileError is a ValueError
            self.reload_error = str(e)           # keep serving the model we have
        finally:
            self._lock.release()
        return self.model

    # ----- WSGI ----------------------------------------------------------
    def __call__(self, environ, start_response):
        try:
            route = ROUTES.get(environ.get("PATH_INFO", ""))
            if route is None:
                raise BadRequest(f"no such endpoint {environ.get('PATH_INFO', '')[:100]!r}; "
                                 f"try {', '.join(ROUTES)}", "404 Not Found")
            body = route(self, self.current(), _arguments(environ))
            status = "200 OK"
        except BadRequest as e:
            status, body = e.status, {"error": str(e)}
        except (ValueError, TypeError, DataError) as e:   # the library's checks of the input
            status, body = "400 Bad Request", {"error": str(e)}
        except Exception as e:                  # noqa: BLE001 - answer, never crash the server
            status, body = "500 Internal Server Error", {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(jsonable(body), allow_nan=False).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data)))])
        return [data]

    # ----- endpoints -----------------------------------------------------
    def health(self, model, args):
        return {"status": "ok", "model": self.path, "loaded": self.loaded,
                "users": model.index_.n_users, "items": model.index_.n_items,
                "reload_error": self.reload_error}

    def info(self, model, args):
        return model.info()

    def recommend(self, model, args):
        recs, warning = model.recommend(
            _one(args, "user"), _top(args), include_seen=_flag(args, "include_seen"),
            items=_ids(args, "items"), filter_items=_ids(args, "exclude"))
        return {"user": args["user"], "fallback": warning is not None,
                "items": [{"item": i, "score": s} for i, s in recs]}

    def predict(self, model, args):
        pairs = args.get("pairs")
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2
                                                  for p in pairs):
            raise BadRequest("pairs must be a list of [user, item] pairs")
        if len(pairs) > MAX_PAIRS:
            raise BadRequest(f"at most {MAX_PAIRS} pairs per request, got {len(pairs)}")
        pred, fallback = model.predict(*([_id(p[k]) for p in pairs] for k in (0, 1)))
        return {"predictions": [{"user": u, "item": i, "rating": float(r), "fallback": f or None}
                                for (u, i), r, f in zip(pairs, pred, fallback.tolist())]}

    def similar(self, model, args):
        return {"item": args.get("item"), "similar": [
            {"item": i, "similarity": s} for i, s in model.similar(_one(args, "item"), _top(args))]}


ROUTES = {f"/{name}": getattr(ModelServer, name)
          for name in ("health", "info", "recommend", "predict", "similar")}


def _arguments(environ):
    """The request's arguments: the query string's, and a POST's JSON object."""
    args = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ.get("REQUEST_METHOD", "GET") == "POST":
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if length > MAX_BODY:
            raise BadRequest(f"the body is over {MAX_BODY} bytes", "413 Payload Too Large")
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        args.update(body)
    return args


def _id(value):
    """An id as given (JSON number or text), as text: the model maps it as
    a ratings file's id is read (data.as_ids)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRequest(f"an id must be text or an integer, got {json.dumps(value)[:50]}")
    return str(value)


def _one(args, name):
    if name not in args:
        raise BadRequest(f"missing {name!r}")
    return _id(args[name])


def _ids(args, name):
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of ids")
    return [_id(v) for v in value]


def _top(args):
    try:
        top = int(args.get("top", 10))
    except (TypeError, ValueError):
        raise BadRequest(f"top must be an integer, got {str(args.get('top'))[:50]!r}") from None
    if not 1 <= top <= MAX_TOP:
        raise BadRequest(f"top must be in [1, {MAX_TOP}], got {top}")
    return top


def _flag(args, name):
    value = args.get(name, False)
    return value is True or str(value).lower() in ("1", "true", "yes")


def run(path, host="127.0.0.1", port=8000, ready=None):
    """Serve the model at ``path`` on the standard library's threaded WSGI
    server until interrupted; ``ready(url)`` is called once it listens.
    Each connection has its own thread and a socket timeout, so a slow
    client holds only its own."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 128       # socketserver's 5 makes a burst of clients wait 1 s

    class Handler(WSGIRequestHandler):
        timeout = CLIENT_TIMEOUT_S

        def log_message(self, *args):          # one line per request is for a proxy to write
            pass

    app = ModelServer(path)
    with make_server(host, port, app, server_class=Server, handler_class=Handler) as server:
        if ready is not None:
            ready(f"http://{host}:{server.server_port}")
        server.serve_forever()
