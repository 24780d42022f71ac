"""A WSGI server on the standard library's sockets that no client can tie
up (`glocalk-np serve` runs serve.py's application on it, with serve.py's
limits).

One thread reads every request and writes every answer without blocking,
and ``limits.workers`` threads compute answers, so a slow client costs a
socket and its bytes, never a thread. A request must arrive whole within
``limits.deadline_s`` of its connection (else 408 and closed), and its
answer be taken within as long; at most ``limits.connections`` connections
are open (more get 503 at once, fewer where the process may open fewer
files) and ``limits.buffered`` bytes of requests and answers held; a
request's head is at most ``limits.head`` bytes (431), its body at most
``limits.body`` (413), and a body needs a Content-Length (411). Refusals
are answered in JSON, {"error": "..."}, and close the connection.
"""
import http.client
import io
import json
import queue
import re
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .safeio import shorten

SWEEP_S = 0.1               # how often deadlines are enforced


@dataclass(frozen=True)
class Limits:
    """What clients may hold of the server (serve.py gives its constants)."""
    deadline_s: float       # from connection to a request's last byte; as long to take the answer
    linger_s: float         # after an answer, how long the client's late bytes are read
    connections: int        # open at once (and below the process's file limit)
    buffered: int           # bytes of requests and answers held for clients
    head: int               # bytes of a request line and headers
    body: int               # bytes of a request body
    workers: int            # threads computing answers


class BadRequest(ValueError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, message, status="400 Bad Request"):
        super().__init__(message)
        self.status = status


def body_length(length, chunked, limit):
    """A body's length from its Content-Length (ASCII digits, at most
    ``limit``; empty or absent: none); a Transfer-Encoding is refused, as
    wsgiref does not decode one."""
    if chunked:
        raise BadRequest("a body must come with a Content-Length (a Transfer-Encoding such "
                         "as chunked is not read)", "411 Length Required")
    if not length:
        return 0
    if not (length.isascii() and length.isdigit()):
        raise BadRequest(f"Content-Length {shorten(repr(length))} is not a length "
                         "(ASCII digits)")
    if len(length) > 20 or int(length) > limit:
        raise BadRequest(f"the body is over {limit} bytes", "413 Payload Too Large")
    return int(length)


def _answer(status, message):
    """The bytes of an answer {"error": message} that closes its connection."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class _Handler(WSGIRequestHandler):
    """wsgiref's handler run on a request already read whole, its answer
    written to memory (the serving loop sends it)."""

    def __init__(self, data, client_address, server):
        self.rfile, self.wfile = io.BytesIO(data), io.BytesIO()
        super().__init__(None, client_address, server)

    def setup(self):
        pass

    def finish(self):
        pass

    def send_error(self, code, message=None, explain=None):
        """A malformed request line or header, answered in JSON like the rest."""
        short = self.responses.get(code, ("Error",))[0]
        self.wfile.write(_answer(f"{code} {short}", message or short))

    def log_message(self, *args):          # one line per request is for a proxy to write
        pass


class _Connection:
    """A client's socket, what it sent and what it is sent, its deadline."""
    __slots__ = ("sock", "address", "state", "data", "length", "out", "deadline")

    def __init__(self, sock, address, deadline_s):
        self.sock, self.address = sock, address
        self.state, self.data, self.length, self.out = "reading", bytearray(), None, b""
        self.deadline = time.monotonic() + deadline_s


_HEAD_END = re.compile(rb"\n\r?\n")


def _request_length(data, new, limits):
    """The bytes of the request that ``data`` starts with, None while its
    head is incomplete; BadRequest for a head that no body length can be
    read from. ``new``: how many bytes of ``data`` are new (its head's end
    is looked for among them only: one trickled byte costs no scan of all)."""
    end = _HEAD_END.search(data, max(0, len(data) - new - 3))
    if end is None or end.end() > limits.head:
        if len(data) > limits.head:
            raise BadRequest(f"the request's head is over {limits.head} bytes",
                             "431 Request Header Fields Too Large")
        return None
    try:
        headers = http.client.parse_headers(io.BytesIO(data[data.index(b"\n") + 1:end.end()]))
    except http.client.HTTPException as e:
        raise BadRequest(f"bad headers: {shorten(e, 100)}",
                         "431 Request Header Fields Too Large") from None
    lengths = headers.get_all("Content-Length") or []
    if len(lengths) > 1:
        raise BadRequest("Content-Length is given more than once")
    return end.end() + body_length(lengths[0] if lengths else None,
                                   "Transfer-Encoding" in headers, limits.body)


class _Server(WSGIServer):
    """wsgiref's server for its socket and WSGI environment, with its own
    serving loop (serve) in place of a thread per connection."""
    request_queue_size = 128       # socketserver's 5 makes a burst of clients wait 1 s

    def __init__(self, address, limits):
        self.limits = limits
        super().__init__(address, _Handler)

    def serve(self, stop=None):
        """Serve until ``stop`` (a threading.Event) is set."""
        self._held, self._total = {}, 0          # open connection -> bytes held for it
        self._cap = _connection_cap(self.limits.connections)
        self._jobs, self._done = queue.SimpleQueue(), queue.SimpleQueue()
        self._wake, wake = socket.socketpair()
        self._wake.setblocking(False)
        wake.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self.socket.setblocking(False)
        self._sel.register(self.socket, selectors.EVENT_READ, "accept")
        self._sel.register(wake, selectors.EVENT_READ, "wake")
        for _ in range(self.limits.workers):
            threading.Thread(target=self._work, daemon=True).start()
        swept = time.monotonic()
        try:
            while stop is None or not stop.is_set():
                for key, _ in self._sel.select(SWEEP_S):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._answered(wake)
                    elif key.data.state == "writing":
                        self._write(key.data)
                    else:
                        self._read(key.data)
                now = time.monotonic()
                if now - swept >= SWEEP_S:
                    swept = now
                    for conn in [c for c in self._held if c.state != "working"
                                 and now > c.deadline]:
                        self._close(conn, "408 Request Timeout" if conn.state == "reading"
                                    else None)
        finally:
            for _ in range(self.limits.workers):
                self._jobs.put(None)
            for conn in list(self._held):
                self._close(conn)
            self._sel.close()
            self._wake.close()
            wake.close()

    def _hold(self, conn, n_bytes):
        self._total += n_bytes - self._held[conn]
        self._held[conn] = n_bytes

    def _accept(self):
        for _ in range(64):                      # a burst, then the others' turn
            try:
                sock, address = self.socket.accept()
            except OSError:                      # none left (or the client left)
                return
            sock.setblocking(False)
            if len(self._held) >= self._cap:
                _send_and_close(sock, _answer("503 Service Unavailable",
                                              f"over {self._cap} connections; try again"))
                continue
            conn = _Connection(sock, address, self.limits.deadline_s)
            self._held[conn] = 0
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn):
        try:
            chunk = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
        elif conn.state == "draining":           # late bytes of an answered request
            pass
        elif self._total + len(chunk) > self.limits.buffered:
            self._close(conn, "503 Service Unavailable", "the server holds too many bytes of "
                        "other requests; try again")
        else:
            conn.data += chunk
            self._hold(conn, len(conn.data))
            try:
                if conn.length is None:          # the head is read once, when whole
                    conn.length = _request_length(conn.data, len(chunk), self.limits)
            except BadRequest as e:
                self._reply(conn, _answer(e.status, str(e)))
                return
            if conn.length is not None and len(conn.data) >= conn.length:
                conn.state = "working"
                self._sel.unregister(conn.sock)
                self._jobs.put(conn)

    def _work(self):
        """A worker: answers requests read whole, until told to stop (None)."""
        for conn in iter(self._jobs.get, None):
            try:
                out = _Handler(bytes(conn.data), conn.address, self).wfile.getvalue()
            except Exception as e:            # noqa: BLE001 - a bug: answer and say it
                print(f"glocalk-np serve: unexpected {type(e).__name__}: {shorten(e, 200)} "
                      "(a bug in glocalk-np; please report it)", file=sys.stderr)
                out = _answer("500 Internal Server Error", "internal error (a bug in "
                              "glocalk-np; the server's log names it)")
            self._done.put((conn, out))
            try:
                self._wake.send(b"\0")
            except OSError:                   # a wake-up already pending, or the server stopped
                pass

    def _answered(self, wake):
        try:
            wake.recv(1 << 16)
        except OSError:
            pass
        while not self._done.empty():
            conn, out = self._done.get()
            if conn in self._held:               # not closed meanwhile
                self._reply(conn, out)

    def _reply(self, conn, out):
        """Send ``out`` as far as the client takes it now, the rest as it
        takes it, within the deadline."""
        if conn.state == "working":
            self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
        else:
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        conn.state, conn.data, conn.out = "writing", bytearray(), out
        conn.deadline = time.monotonic() + self.limits.deadline_s
        self._hold(conn, len(out))
        self._write(conn)

    def _write(self, conn):
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        self._hold(conn, len(conn.out))
        if conn.out:
            return
        # answered: the client's late bytes are read for a while, as closing
        # with bytes unread would reset the connection under the answer
        conn.state = "draining"
        conn.deadline = min(conn.deadline, time.monotonic() + self.limits.linger_s)
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)

    def _close(self, conn, status=None, message=None):
        """Close ``conn``, sending what it takes at once of an error answer
        ``status`` first where given."""
        if conn.state != "working":
            self._sel.unregister(conn.sock)
        self._hold(conn, 0)
        del self._held[conn]
        _send_and_close(conn.sock, status and _answer(status, message or (
            f"the request did not arrive whole within {self.limits.deadline_s:g} s")))


def _send_and_close(sock, data=None):
    """Close ``sock``, sending first what it takes at once of ``data``."""
    try:
        if data:
            sock.send(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:                              # the client is gone
        pass
    sock.close()


def _connection_cap(limit):
    """``limit`` connections, fewer where the process may open fewer files."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError):               # not POSIX
        return limit
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(1, min(limit, soft - 64))         # room for the model, logs, sockets


def serve_app(app, host, port, limits, ready=None, stop=None):
    """Serve the WSGI application ``app`` on ``host``:``port`` within
    ``limits`` until interrupted, or until ``stop`` (a threading.Event) is
    set; ``ready(url)`` is called once it listens. OSError where it cannot
    listen there."""
    with _Server((host, port), limits) as server:
        server.set_app(app)
        if ready is not None:
            ready(f"http://{host}:{server.server_port}")
        server.serve(stop)
