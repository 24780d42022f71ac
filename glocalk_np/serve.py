"""A saved model over HTTP: a WSGI application (PEP 3333), so that any WSGI
server runs it unchanged (gunicorn, waitress, uWSGI); `glocalk-np serve`
runs it with `run` below.

Every answer is JSON. GET or HEAD (query parameters) or POST (a JSON object)
to one of ENDPOINTS (below: each with the parameters it takes and what it
answers).

Parameters are read strictly. Each is given once (query string and body
together) and an endpoint refuses any it does not take. Ids follow the rule
of ids in files (data.as_ids): an integer written plainly is an integer,
anything else text; an empty id, blanks around one or a line break are
refused, and so is text where the model's ids are integers (it can never
match one). In a query string lists are comma-separated (items=1,2,3), top
is written plainly (data.PLAIN_INT: ASCII digits, no sign, leading zero or
'_') and include_seen is true, false, 1 or 0; in JSON top is an integer (not
"5", 5.0 or true) and include_seen true or false. rank is one of
ranking.RANKS, written as it is, in both. Answers give ids as the
model holds them (42 where its ids are integers, "42" where they are text),
whatever the method. HEAD answers GET's status and headers without the body
(RFC 9110); other methods get 405 with an Allow header. A body needs one
Content-Length of ASCII digits, at most MAX_BODY (413 above): a chunked one
(Transfer-Encoding) gets 411. A bad request gets a 4xx answer {"error":
"..."}; 500 is left to bugs, named in the server's log (wsgi.errors).

Reloading. The first request RECHECK_S (1 s) or more after the last look at
the model file looks at its stamp: device, inode, size, modification and
change times in ns and a CRC of its last 64 KiB (where an npz keeps the CRC
of every array), so a replacement with the same size and modification time
is seen too. A changed file is loaded and checked in a background thread
while requests go on with the model they have, and swapped in once usable.
One over RELOAD_GROWTH times the served file's size (RELOAD_FLOOR at least)
is refused unread; an unusable one is not swapped in. Either way /health
says why in reload_error, the old model is served on, and that file is not
tried again until it changes. GLocalK.save writes atomically, so a half
written file is not seen.

`run` serves on the standard library's sockets (httpd.py) so that no client
can tie it up: one thread reads every request and writes every answer
without blocking, and WORKERS threads compute answers, so a slow client
costs a socket and its bytes, never a thread. A request must arrive whole
within REQUEST_DEADLINE_S of its connection (else 408 and closed), and its
answer be taken within as long; at most MAX_CONNECTIONS connections are
open (more get 503 at once) and MAX_BUFFERED bytes of requests and answers
held; a request's head is at most MAX_HEAD bytes (431).
"""
import json
import os
import sys
import threading
import time
import zlib
from urllib.parse import parse_qsl

import numpy as np

from .console.output import jsonable
from .data import PLAIN_INT, as_ids, bad_text_id
from .httpd import BadRequest, Limits, body_length, serve_app
from .model import Model
from .modelfile import ModelFileError
from .ranking import RANKS
from .safeio import gib, open_input, shorten

MAX_BODY = 1 << 20          # bytes of a request body
MAX_HEAD = 1 << 16          # bytes of a request line and headers
MAX_TOP = 1000              # items per list
MAX_PAIRS = 10_000          # pairs per /predict
MAX_FIELDS = 16             # fields of a query string (endpoints take at most 5)
RECHECK_S = 1.0             # how often the model file's stamp is looked at
RELOAD_GROWTH = 4           # a replacement this many times the served file's size is not read
RELOAD_FLOOR = 256 << 20    # ... unless it is at most this many bytes
STAMP_TAIL = 1 << 16        # bytes at the end of the model file its stamp holds a CRC of
REQUEST_DEADLINE_S = 10.0   # from connection to a request's last byte; as long to take the answer
LINGER_S = 2.0              # after an answer, how long the client's late bytes are read
MAX_CONNECTIONS = 512       # open at once (and below the process's file limit)
MAX_BUFFERED = 64 << 20     # bytes of requests and answers held for clients
WORKERS = 8                 # threads computing answers
_ALLOWED = "GET, HEAD, POST"
# The endpoints, in the order the help lists them: name -> the parameters it
# takes (what it answers in the comment by it). The routing, its 404 message
# and `glocalk-np serve`'s help read it.
ENDPOINTS = {
    # {"user", "items": [{"item", "score"}], "fallback"}; top: 10 by default,
    # items: the candidates, exclude: items left out, rank: the order
    # (ranking.RANKS; auto by default)
    "recommend": ("user", "top", "include_seen", "items", "exclude", "rank"),
    # {"predictions": [{"user", "item", "rating", "fallback"}]}; pairs: [[user, item], ...]
    "predict": ("pairs",),
    "similar": ("item", "top", "rank"),     # {"item", "similar": [{"item", "similarity"}]}
    "info": (),                     # GLocalK.info()
    # {"status": "ok", "model": path, "loaded": time, "users", "items", "reload_error"}
    "health": (),
}


def load_model(path):
    """The saved model at ``path``, as the server loads every one: a Model,
    without the trainer."""
    return Model.load(path)


class _Query(str):
    """A value from the query string: text, read by a parameter's text rule."""


class ModelServer:
    """The WSGI application serving the model file at ``path``."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = threading.Lock()          # held while a replacement loads
        self._stamp, self._checked = self._file_stamp(), time.monotonic()
        self.model, self.loaded, self.reload_error = self._load(), time.time(), None
        self._size = self._stamp[2]

    def _file_stamp(self):
        """(device, inode, size, mtime_ns, ctime_ns, CRC of the last
        STAMP_TAIL bytes); ModelFileError for what is no regular file."""
        with open_input(self.path, ModelFileError) as f:
            st = os.fstat(f.fileno())
            f.seek(max(0, st.st_size - STAMP_TAIL))
            return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, \
                zlib.crc32(f.read(STAMP_TAIL))

    def _load(self):
        """The model file, checked, its forward pass done now rather than in a request."""
        model = load_model(self.path)
        model.recommend(model.index_.users[:1], 1)
        return model

    def current(self):
        """The model to answer with; a changed file starts loading in the
        background (see the module's docstring), never in a request."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S and self._lock.acquire(blocking=False):
            self._checked = now
            try:
                stamp = self._file_stamp()
            except (OSError, ModelFileError) as e:    # gone, or not a file: serve on
                self.reload_error, self._stamp = str(e), None   # whatever comes back is loaded
                stamp = None
            if stamp == self._stamp:
                self._lock.release()
            else:
                threading.Thread(target=self._reload, args=(stamp,), daemon=True).start()
        return self.model

    def _reload(self, stamp):
        """Load the file of ``stamp`` and swap it in if usable; release the lock."""
        try:
            self._stamp = stamp                  # loaded or refused, it is not tried again
            limit = max(RELOAD_GROWTH * self._size, RELOAD_FLOOR)
            if stamp[2] > limit:
                raise ModelFileError(
                    f"{self.path}: the replacement is {gib(stamp[2])}, over the {gib(limit)} "
                    f"a replacement may be ({RELOAD_GROWTH} times the served file, "
                    f"{gib(RELOAD_FLOOR)} at least); not read: restart the server to serve it")
            model = self._load()
            self.model, self.loaded, self.reload_error, self._size = \
                model, time.time(), None, stamp[2]
        except (OSError, ValueError, MemoryError) as e:   # ModelFileError is a ValueError
            self.reload_error = str(e) or type(e).__name__
        except Exception as e:                 # noqa: BLE001 - keep serving; say it in /health
            self.reload_error = f"{self.path}: unexpected {type(e).__name__}: {e}"
        finally:
            self._lock.release()

    # ----- WSGI ----------------------------------------------------------
    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        headers = [("Content-Type", "application/json")]
        try:
            if method not in ("GET", "HEAD", "POST"):
                headers.append(("Allow", _ALLOWED))
                raise BadRequest(f"method {shorten(method, 20)!r} is not allowed; use GET or "
                                 "POST", "405 Method Not Allowed")
            route = ROUTES.get(path)
            if route is None:
                raise BadRequest(f"no such endpoint {shorten(path, 100)!r}; "
                                 f"try {', '.join(ROUTES)}", "404 Not Found")
            endpoint, takes = route
            args = _arguments(environ)
            unknown = sorted(set(args) - takes)
            if unknown:
                raise BadRequest(f"{path} takes no {', '.join(repr(shorten(u)) for u in unknown)}"
                                 f"; it takes {', '.join(sorted(takes)) or 'no parameters'}")
            body = endpoint(self, self.current(), args)
            status = "200 OK"
        except ValueError as e:       # BadRequest, and the library's checks (DataError too)
            status, body = getattr(e, "status", "400 Bad Request"), {"error": str(e)}
        except Exception as e:        # noqa: BLE001 - a bug: answer, say it in the log
            print(f"glocalk-np serve: unexpected {type(e).__name__} on {shorten(path, 100)}: "
                  f"{shorten(e, 200)} (a bug in glocalk-np; please report it)",
                  file=environ.get("wsgi.errors", sys.stderr))
            status, body = "500 Internal Server Error", {
                "error": "internal error (a bug in glocalk-np; the server's log names it)"}
        data = json.dumps(jsonable(body), allow_nan=False).encode()
        start_response(status, headers + [("Content-Length", str(len(data)))])
        return [] if method == "HEAD" else [data]

    # ----- endpoints -----------------------------------------------------
    def health(self, model, args):
        return {"status": "ok", "model": self.path, "loaded": self.loaded,
                "users": model.index_.n_users, "items": model.index_.n_items,
                "reload_error": self.reload_error}

    def info(self, model, args):
        return model.info()

    def recommend(self, model, args):
        user = _ids([_given(args, "user")], model.index_.users, "user")[0]
        recs, warning = model.recommend(
            user, _top(args), include_seen=_flag(args, "include_seen"),
            items=_id_list(args, "items", model), filter_items=_id_list(args, "exclude", model),
            rank=_rank(args))
        return {"user": user, "fallback": warning is not None,
                "items": [{"item": i, "score": s} for i, s in recs]}

    def predict(self, model, args):
        pairs = args.get("pairs")
        if isinstance(pairs, _Query) or not isinstance(pairs, list) or \
                not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise BadRequest("pairs must be a JSON list of [user, item] pairs (POST)")
        if len(pairs) > MAX_PAIRS:
            raise BadRequest(f"at most {MAX_PAIRS} pairs per request, got {len(pairs)}")
        users = _ids([p[0] for p in pairs], model.index_.users, "user")
        items = _ids([p[1] for p in pairs], model.index_.items, "item")
        pred, fallback = model.predict(users, items)
        return {"predictions": [{"user": u, "item": i, "rating": float(r), "fallback": f or None}
                                for u, i, r, f in zip(users, items, pred, fallback.tolist())]}

    def similar(self, model, args):
        item = _ids([_given(args, "item")], model.index_.items, "item")[0]
        return {"item": item, "similar": [
            {"item": i, "similarity": s}
            for i, s in model.similar(item, _top(args), rank=_rank(args))]}


# path -> (endpoint, the parameters it takes)
ROUTES = {f"/{name}": (getattr(ModelServer, name), frozenset(takes))
          for name, takes in ENDPOINTS.items()}


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _arguments(environ):
    """The request's arguments, each given once: the query string's (as
    _Query text) and a POST's JSON object's."""
    try:
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True,
                          strict_parsing=True, errors="strict", max_num_fields=MAX_FIELDS)
    except ValueError as e:                       # UnicodeDecodeError is one
        raise BadRequest(f"bad query string: {shorten(e, 100)}") from None
    args = {}
    for name, value in query:
        _put(args, name, _Query(value))
    length = body_length(environ.get("CONTENT_LENGTH"), "HTTP_TRANSFER_ENCODING" in environ,
                         MAX_BODY)
    raw = environ["wsgi.input"].read(length) if length else b""
    if environ.get("REQUEST_METHOD") != "POST":
        if raw:
            raise BadRequest("only a POST has a body (a JSON object)")
        return args
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    except ValueError as e:                       # UnicodeDecodeError is one
        raise BadRequest(f"the body is not JSON: {shorten(e, 100)}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for name, value in body.items():
        _put(args, name, value)
    return args


def _put(args, name, value):
    if name in args:
        raise BadRequest(f"{shorten(name)!r} is given more than once")
    args[name] = value


def _shown(value):
    """A request's value in a message: a list or an object by its kind (it
    may be nested too deeply to print), anything else as JSON, shortened."""
    if isinstance(value, (list, dict)):
        return f"a JSON {'list' if isinstance(value, list) else 'object'}"
    return shorten(json.dumps(value))


def _given(args, name):
    if name not in args:
        raise BadRequest(f"missing {name!r}")
    return args[name]


def _ids(values, known, what):
    """``values`` (JSON integers or text) as a list of ids as the model
    holds them, ``known`` being its user or item ids (see the module's
    docstring)."""
    odd = next((v for v in values if isinstance(v, bool) or not isinstance(v, (str, int))),
               None)
    if odd is not None:
        raise BadRequest(f"{what} ids are text or integers, not {_shown(odd)}")
    texts = [v if isinstance(v, str) else str(v) for v in values]
    bad = bad_text_id(np.array(texts, dtype=object))
    if bad is not None:
        raise BadRequest(f"{what} id {shorten(repr(str(bad)))} is not an id: ids are not "
                         "empty, have no blanks around them and no line break or NUL")
    ids = as_ids(texts, "the request", what, warn=False)
    if known.dtype.kind not in "iu":
        return ids.astype(str).tolist()
    if ids.dtype.kind not in "iu":
        odd = next((t for t in texts if not PLAIN_INT.fullmatch(t)), None)
        raise BadRequest(f"{what} id {shorten(repr(str(odd)))} is not an id of this model: "
                         f"its {what} ids are integers" if odd is not None else
                         f"a {what} id is beyond 64-bit integers, which this model's ids are")
    return ids.tolist()


def _id_list(args, name, model):
    """The item ids of list parameter ``name``, None where not given."""
    if name not in args:
        return None
    value = args[name]
    if isinstance(value, _Query):
        value = value.split(",")
    elif not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of item ids, not {_shown(value)}")
    return _ids(value, model.index_.items, "item")


def _top(args):
    """top, in [1, MAX_TOP]: a JSON integer, or in a query string an
    integer written plainly (data.PLAIN_INT)."""
    value = args.get("top", 10)
    if isinstance(value, _Query):
        if not PLAIN_INT.fullmatch(value):
            raise BadRequest(f"top must be an integer written in ASCII digits (no sign, "
                             f"leading zero or '_'), got {shorten(repr(str(value)))}")
        number = int(value) if len(value) <= 20 else MAX_TOP + 1   # int() refuses 4,300 digits
    elif type(value) is int:                       # not True, 2.9 or "5"
        number = value
    else:
        raise BadRequest(f"top must be a JSON integer, got {_shown(value)}")
    if not 1 <= number <= MAX_TOP:
        raise BadRequest(f"top must be in [1, {MAX_TOP}], got {shorten(value)}")
    return number


def _rank(args):
    """rank: one of ranking.RANKS, as text (query string or JSON)."""
    value = args.get("rank", "auto")
    if not isinstance(value, str) or value not in RANKS:
        raise BadRequest(f"rank must be one of {', '.join(RANKS)}, got {_shown(value)}")
    return str(value)


_FLAGS = {"true": True, "false": False, "1": True, "0": False}


def _flag(args, name):
    """A yes/no parameter: JSON true or false; true, false, 1 or 0 in a query string."""
    value = args.get(name, False)
    if isinstance(value, _Query):
        value = _FLAGS.get(value, value)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {_shown(value)}")
    return value


def run(path, host="127.0.0.1", port=8000, ready=None, stop=None):
    """Serve the model at ``path`` until interrupted, or until ``stop`` (a
    threading.Event) is set; ``ready(url)`` is called once it listens. See
    the module's docstring for what a client may hold."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {shorten(port)} is not a port number (0 to 65535)")
    limits = Limits(deadline_s=REQUEST_DEADLINE_S, linger_s=LINGER_S,
                    connections=MAX_CONNECTIONS, buffered=MAX_BUFFERED, head=MAX_HEAD,
                    body=MAX_BODY, workers=WORKERS)
    serve_app(ModelServer(path), host, port, limits, ready, stop)
