"""The real server (serve.run, and `glocalk-np serve`) against hostile
clients, through raw sockets: malformed lengths and chunked bodies, clients
that trickle past the whole-request deadline or hold connections, HEAD and
other methods, lenient parameters, JSON that once gave 500s. The deadline
and cap are made small here, so that the file runs in seconds."""
import contextlib
import json
import select
import signal
import socket
import struct
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest

import cli_process
from glocalk_np import serve
from glocalk_np.estimator import GLocalK
from test_serve import fit

DEADLINE_S = 1.0
RESET = struct.pack("ii", 1, 0)        # SO_LINGER on, 0 s: close() resets the connection


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "model.npz"
    fit(1).save(path)
    return path


@contextlib.contextmanager
def served(model_file, **constants):
    """The port of serve.run serving ``model_file`` in a thread, with the
    module's constants set as given (deadline DEADLINE_S, linger 0.5 s
    unless given); stopped and joined at the end."""
    urls, stop = [], threading.Event()
    constants = {"REQUEST_DEADLINE_S": DEADLINE_S, "LINGER_S": 0.5, **constants}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in constants.items():
            mp.setattr(serve, name, value)
        thread = threading.Thread(target=serve.run, args=(model_file, "127.0.0.1", 0,
                                                          urls.append, stop))
        thread.start()
        for _ in range(600):
            if urls or not thread.is_alive():
                break
            time.sleep(0.05)
        try:
            yield int(urls[0].rsplit(":", 1)[1])
        finally:
            stop.set()
            thread.join(30)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def port(model_file):
    with served(model_file) as p:
        yield p


def read_all(sock, timeout=20):
    """Everything the server sends until it closes (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    out = b""
    with contextlib.suppress(ConnectionResetError, socket.timeout):
        while chunk := sock.recv(1 << 16):
            out += chunk
    return out


def parse(raw):
    """(status code, {header: value} lower-cased names, body bytes)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def exchange(port, data):
    """(status, headers, body) of the raw bytes ``data`` sent on a connection of their own."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        return parse(read_all(sock))


def request(port, method, target, body=None, headers=()):
    """(status, headers, JSON answer or None) of one request; ``body``: a
    JSON value, or bytes as they are."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    lines = [f"{method} {target} HTTP/1.1", "Host: x", *headers]
    if body is not None and not any(h.lower().startswith("content-length") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    status, got, raw = exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
                                + (body or b""))
    assert got.get("content-length") == str(len(raw)) or method == "HEAD"
    return status, got, json.loads(raw) if raw else None


def error(port, method, target, body=None, headers=()):
    """(status, error message) of a refused request."""
    status, _, answer = request(port, method, target, body, headers)
    assert 400 <= status < 500, answer
    return status, answer["error"]


# ----- lengths and bodies ---------------------------------------------------

@pytest.mark.parametrize("length", ["-1", "-600000000", "+5", "1_0", "0x10", "5 5", "5, 5",
                                    "\u0665".encode().decode("latin-1"), "abc"])
def test_a_malformed_content_length_gets_400_before_the_body_is_read(port, length):
    status, message = error(port, "POST", "/predict", b'{"pairs": []}',
                            headers=[f"Content-Length: {length}"])
    assert status == 400 and "Content-Length" in message


def test_several_content_lengths_and_an_oversized_one_are_refused(port):
    assert error(port, "POST", "/predict", b"{}", headers=["Content-Length: 2"] * 2) == (
        400, "Content-Length is given more than once")
    # refused at the head: the body is never sent, and the answer comes anyway
    raw = (b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (serve.MAX_BODY + 1))
    status, _, body = exchange(port, raw)
    assert status == 413 and "over" in json.loads(body)["error"]


def test_a_client_still_sending_a_refused_body_gets_the_answer(port):
    """The server reads and drops the rest for a while before it closes, so
    the close does not reset the connection under the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                     % (4 * serve.MAX_BODY))
        sender = threading.Thread(target=_send_quietly, args=(sock, b" " * (2 * serve.MAX_BODY)))
        sender.start()
        status, _, _ = parse(read_all(sock))
        sender.join()
    assert status == 413


def _send_quietly(sock, data):
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_a_chunked_body_is_refused_not_ignored(port):
    body = b'{"user": 1}'
    raw = (b"POST /recommend HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    status, _, answer = exchange(port, raw)
    assert status == 411 and "Content-Length" in json.loads(answer)["error"]


def test_a_get_with_a_body_and_an_oversized_head_are_refused(port):
    assert error(port, "GET", "/health", b"{}")[1] == "only a POST has a body (a JSON object)"
    raw = b"GET /health HTTP/1.1\r\nX: " + b"a" * serve.MAX_HEAD + b"\r\n\r\n"
    assert exchange(port, raw)[0] == 431


def test_a_malformed_request_line_gets_a_json_400(port):
    status, headers, body = exchange(port, b"GARBAGE\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert "Bad request" in json.loads(body)["error"]


# ----- the deadline and the cap ---------------------------------------------

@pytest.mark.parametrize("sent, trickled", [
    (b"", b"GET /recommend?user=1&top=3 HTTP/1.1\r\n\r\n"),                  # request line
    (b"GET /health HTTP/1.1\r\n", b"Host: x\r\nAccept: */*\r\nX-Long: aaaaaaaa\r\n\r\n"),
    (b"POST /predict HTTP/1.1\r\nContent-Length: 40\r\n\r\n", b'{"pairs": [[1, 1]]}' + b" " * 21),
], ids=["request line", "headers", "body"])
def test_a_trickling_client_is_answered_408_at_the_deadline(port, sent, trickled):
    """One byte every 0.25 s would take 10 s; the whole request has DEADLINE_S."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(sent)
        for k in range(len(trickled)):
            if select.select([sock], [], [], 0.25)[0]:       # the server spoke or closed
                break
            with contextlib.suppress(OSError):
                sock.sendall(trickled[k:k + 1])
        else:
            pytest.fail("the whole request was trickled in and never cut off")
        status, _, body = parse(read_all(sock))
    assert k < len(trickled) and status == 408 and "within" in json.loads(body)["error"]


def test_a_request_in_pieces_within_the_deadline_is_answered(port):
    data = b'POST /predict HTTP/1.1\r\nContent-Length: 19\r\n\r\n{"pairs": [[1, 1]]}'
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for k in range(len(data)):
            sock.sendall(data[k:k + 1])
            time.sleep(0.005)
        status, _, body = parse(read_all(sock))
    assert status == 200 and len(json.loads(body)["predictions"]) == 1


def test_idle_and_vanishing_clients_leave_no_traceback(model_file, capfd):
    with served(model_file) as port:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
        for k, sock in enumerate(idle[:10]):          # half a request, then a reset
            sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            sock.close()
        for sock in idle[10:20]:                     # a whole request, gone before the answer
            sock.sendall(b"GET /recommend?user=1 HTTP/1.1\r\n\r\n")
            sock.close()
        # the other 10 send nothing: closed at the deadline, with a 408
        assert all(parse(read_all(s))[0] == 408 for s in idle[20:])
        assert request(port, "GET", "/health")[0] == 200
        for sock in idle[20:]:
            sock.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err[:2000]


def test_300_trickling_clients_hold_no_threads_and_others_are_answered(model_file):
    with served(model_file, REQUEST_DEADLINE_S=60.0) as port:
        threads = threading.active_count()
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        try:
            for sock in slow:
                sock.sendall(b"G")
            user = int(GLocalK.load(model_file).index_.users[0])
            for _ in range(5):
                status, _, answer = request(port, "GET", f"/recommend?user={user}&top=2")
                assert status == 200 and len(answer["items"]) == 2
            assert threading.active_count() <= threads
        finally:
            for sock in slow:
                sock.close()


def test_connections_over_the_cap_get_503_at_once_and_the_cap_frees(model_file):
    with served(model_file, MAX_CONNECTIONS=4, REQUEST_DEADLINE_S=60.0) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.3)                              # accepted by now
        status, _, body = exchange(port, b"GET /health HTTP/1.1\r\n\r\n")
        assert status == 503 and "connections" in json.loads(body)["error"]
        for sock in held:
            sock.close()
        for _ in range(100):                         # the closes are seen within moments
            status = exchange(port, b"GET /health HTTP/1.1\r\n\r\n")[0]
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200


# ----- methods and parameters ------------------------------------------------

def test_head_answers_get_s_headers_without_a_body(port):
    status, headers, answer = request(port, "HEAD", "/health")
    assert status == 200 and answer is None and int(headers["content-length"]) > 0
    assert int(headers["content-length"]) == len(json.dumps(request(port, "GET",
                                                                   "/health")[2]))


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "OPTIONS", "TRACE", "FOO"])
def test_other_methods_get_405_with_allow(port, method):
    status, headers, answer = request(port, method, "/recommend?user=1")
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"
    assert "not allowed" in answer["error"]


@pytest.mark.parametrize("top", ["+5", "05", "1_0", "\u0665", " 5", "5 ", "5.0", "1e1", "",
                                 "-1", "0", "1001", "9" * 5000])
def test_top_in_a_query_string_is_plain_digits(port, top):
    status, message = error(port, "GET", f"/recommend?user=1&top={quote(top)}")
    assert status == 400 and message.startswith("top must be")


@pytest.mark.parametrize("top", [b"true", b"2.9", b'"5"', b"5.0", b"1e400", b"null", b"[5]",
                                 b'{"n": 5}', b"0", b"-5", b"1001", b"9" * 4000])
def test_top_in_json_is_an_integer(port, top):
    status, message = error(port, "POST", "/recommend", b'{"user": 1, "top": ' + top + b"}")
    assert status == 400 and message.startswith("top must be")


@pytest.mark.parametrize("text", [b"Infinity", b"-Infinity", b"NaN"])
def test_json_s_non_numbers_are_refused(port, text):
    status, message = error(port, "POST", "/recommend", b'{"user": 1, "top": ' + text + b"}")
    assert status == 400 and "not a JSON number" in message


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"pairs": ' + b"[" * 900 + b"]" * 900 + b"}",
                                  b'{"pairs": [' + b"[" * 5000 + b"]" * 5000 + b"]}"])
def test_deep_json_is_a_400(port, body):
    assert error(port, "POST", "/predict", body)[0] == 400


def test_garbage_bodies_never_get_a_500(port):
    rng = np.random.default_rng(0)
    pieces = [b"{", b"}", b"[", b"]", b'"user"', b'"pairs"', b'"top"', b":", b",", b"1",
              b"-0", b"1e999", b"true", b"null", b'"\\ud800"', b"\xff", b"2.5", b'"a"']
    for _ in range(120):
        body = b"".join(rng.choice(pieces, rng.integers(1, 30)))
        for path in ("/recommend", "/predict", "/similar"):
            status, _, _ = request(port, "POST", path, body)
            assert status < 500, body


@pytest.mark.parametrize("target, body, message", [
    ("/recommend?user=1&user=2", None, "'user' is given more than once"),
    ("/recommend?user=1", {"user": 1}, "'user' is given more than once"),
    ("/recommend?user=1&colour=red", None, "/recommend takes no 'colour'"),
    ("/recommend", {"user": 1, "topp": 3}, "/recommend takes no 'topp'"),
    ("/health?verbose=1", None, "/health takes no 'verbose'"),
    ("/recommend?user=1&exclude=notanid", None, "item id 'notanid' is not an id of this model"),
    ("/recommend?user=1&items=1,,2", None, "item id '' is not an id"),
    ("/recommend?user=1&items=%201", None, "item id ' 1' is not an id"),
    ("/recommend", {"user": 1, "exclude": [1, 2.5]}, "item ids are text or integers"),
    ("/recommend", {"user": 1, "exclude": "1,2"}, "exclude must be a list of item ids"),
    ("/recommend", {"user": 1, "items": None}, "items must be a list"),
    ("/recommend?user=01", None, "user id '01' is not an id of this model"),
    ("/recommend?user=1%0A", None, "is not an id"),
    ("/recommend", {"user": True}, "user ids are text or integers"),
    ("/recommend", {"user": 10**30}, "beyond 64-bit integers"),
    ("/recommend?user=1&include_seen=yes", None, "include_seen must be true or false"),
    ("/recommend", {"user": 1, "include_seen": "true"}, "include_seen must be true or false"),
    ("/similar?item=x", None, "item id 'x' is not an id of this model"),
    ("/predict", {"pairs": [[1, "x"]]}, "item id 'x' is not an id of this model"),
    ("/predict?pairs=1", None, "pairs must be a JSON list"),
    ("/recommend?user=%ff", None, "bad query string"),
    ("/recommend?user", None, "bad query string"),
])
def test_lenient_parameters_are_refused(port, target, body, message):
    status, got = error(port, "POST" if body is not None else "GET", target, body)
    assert status == 400 and message in got, got


def test_get_and_post_give_the_same_answer(port, model_file):
    model = GLocalK.load(model_file)
    user, items = int(model.index_.users[2]), [int(i) for i in model.index_.items[:6]]
    get = request(port, "GET", f"/recommend?user={user}&top=3&include_seen=1&items="
                               + ",".join(map(str, items)))
    post = request(port, "POST", "/recommend", {"user": user, "top": 3, "include_seen": True,
                                                "items": items})
    assert get[0] == post[0] == 200 and get[2] == post[2] and get[2]["user"] == user
    # a JSON string that is an integer written plainly names the same user (as in a file)
    assert request(port, "POST", "/recommend", {"user": str(user), "top": 3,
                                                "include_seen": True, "items": items})[2] \
        == post[2]
    get = request(port, "GET", f"/similar?item={items[0]}&top=2")
    post = request(port, "POST", "/similar", {"item": items[0], "top": 2})
    assert get[2] == post[2] and get[2]["item"] == items[0]
    pred = request(port, "POST", "/predict", {"pairs": [[str(user), items[0]]]})[2]
    assert pred["predictions"][0]["user"] == user


# ----- the command ------------------------------------------------------------

@pytest.mark.parametrize("port_arg", ["99999", "65536", "-1", "eighty", "80.0"])
def test_serve_refuses_a_port_that_is_not_one_in_a_line(model_file, port_arg):
    done = cli_process.run("serve", model_file, "--port", port_arg, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "--port" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "a bug" not in done.stderr


def test_the_command_meets_vanishing_clients_quietly_and_stops_on_ctrl_c(model_file):
    proc = cli_process.start("serve", model_file, "--port", "0")
    try:
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            sock.close()                             # a reset mid-request
        assert request(port, "HEAD", "/health")[0] == 200
        assert request(port, "GET", "/recommend?user=1&top=2")[0] == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and err.strip() == "Interrupted", err
