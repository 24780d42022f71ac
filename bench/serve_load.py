"""A load test of `glocalk-np serve` on loopback: top-10 recommendations
for random users at 1, 4 and 16 concurrent clients, a bounded number of
requests each; p50 and p99 latency, requests per second, errors, and the
server's peak memory; then hostile requests (malformed JSON, a huge top, a
huge body, a negative Content-Length, a chunked body, unknown ids, clients
that send half a request and wait), each of which must get its 4xx answer
while the server keeps serving; then --loaded-clients (64) normal clients
alone and beside --trickle (300) clients that each send one byte of a
request every --every (10) s, reconnecting when the server cuts them off:
the normal clients' p50 and p99 both ways (issue 29's target: p99 loaded
within 3x of unloaded), the server's threads and its peak memory.

    python bench/serve_load.py --json bench/results/serve_load.json

The model: ML-1M's ratings (data.ml1m_split's training part) fitted with the
ml-1m preset for one epoch of each stage (the real model's shapes; a
longer fit does not change what a request computes), or --model. The
server runs in its own process, the clients are threads of this one.
Data: ../shared/data (see bench/README.md).
"""
import argparse
import http.client
import json
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import common
from glocalk_np.data import ml1m_split, read_ratings, ratings_csv
from glocalk_np.estimator import GLocalK


def start_server(model):
    """(process, port) of `glocalk-np serve MODEL --port 0`, once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "glocalk_np", "serve", str(model),
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()          # "serving MODEL on http://127.0.0.1:PORT ..."
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def load(port, users, clients, requests):
    """Latencies (s) and error count of ``requests`` GET /recommend per
    client, ``clients`` at once, each on its own keep-alive connection."""
    latencies, errors = [], []

    def client(k):
        rng = np.random.default_rng(k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, bad = [], 0
        for _ in range(requests):
            user = users[rng.integers(users.size)]
            tic = time.perf_counter()
            conn.request("GET", f"/recommend?user={user}&top=10")
            response = conn.getresponse()
            body = json.loads(response.read())
            mine.append(time.perf_counter() - tic)
            bad += response.status != 200 or len(body["items"]) != 10
        conn.close()
        latencies.extend(mine)
        errors.append(bad)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    tic = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.array(latencies), sum(errors), time.perf_counter() - tic


def raw_status(port, data):
    """The HTTP status the server answers the raw bytes ``data`` with."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        return int(sock.recv(1 << 16).split()[1])


def hostile(port):
    """{name: HTTP status} of the hostile requests, each on a fresh connection."""
    cases = {
        "malformed JSON": ("POST", "/predict", b'{"pairs": [[1, '),
        "huge top": ("GET", "/recommend?user=1&top=1000000000", None),
        "unknown user": ("GET", "/recommend?user=999999999", None),
        "text id, integer ids": ("GET", "/recommend?user=1&exclude=notanid", None),
        "unknown item": ("GET", "/similar?item=999999999", None),
        "huge body": ("POST", "/predict", b" " * (4 << 20)),
        "not an endpoint": ("GET", "/../../etc/passwd", None),
        "DELETE": ("DELETE", "/health", None),
    }
    out = {"negative Content-Length": raw_status(
        port, b"POST /predict HTTP/1.1\r\nContent-Length: -600000000\r\n\r\n{}"),
        "chunked body": raw_status(port, b"POST /recommend HTTP/1.1\r\nTransfer-Encoding: "
                                         b"chunked\r\n\r\nb\r\n{\"user\": 1}\r\n0\r\n\r\n")}
    for name, (method, path, body) in cases.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            out[name] = response.status
            response.read()
        except OSError as e:      # the server answered and closed before the body was sent
            out[name] = f"closed while sending ({type(e).__name__})"
        conn.close()
    return out


def trickle(port, n, every, stop, counts):
    """``n`` clients on connections of their own, each sending one byte of a
    request every ``every`` s (in turns, spread over the interval) until
    ``stop`` is set; one cut off by the server (answered or closed)
    reconnects at once. ``counts``: 'cut' (connections cut), 'sent' (bytes)."""
    request = b"GET /recommend?user=1&top=10 HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    sent = [0] * n
    k = 0
    while not stop.wait(every / n):
        i, k = k % n, k + 1
        try:
            if select.select([socks[i]], [], [], 0)[0]:     # answered (408) or closed
                raise ConnectionError
            socks[i].send(request[sent[i] % (len(request) - 1):][:1])   # never the last
            sent[i] += 1
            counts["sent"] += 1
        except OSError:
            socks[i].close()
            counts["cut"] += 1
            socks[i], sent[i] = socket.create_connection(("127.0.0.1", port)), 0
    for sock in socks:
        sock.close()


def latency_row(lat, errors, wall, clients):
    return dict(clients=clients, requests=int(lat.size), errors=int(errors),
                p50_ms=float(np.percentile(lat, 50) * 1e3),
                p99_ms=float(np.percentile(lat, 99) * 1e3), requests_per_s=float(lat.size / wall))


def under_trickle(port, pid, users, args):
    """{unloaded, loaded: latency rows; threads; cut; ...} of --loaded-clients
    normal clients alone, then beside --trickle trickling ones."""
    out = {"unloaded": latency_row(*load(port, users, args.loaded_clients, args.loaded_requests),
                                   args.loaded_clients)}
    stop, counts = threading.Event(), {"cut": 0, "sent": 0}
    thread = threading.Thread(target=trickle, args=(port, args.trickle, args.every, stop, counts))
    thread.start()
    time.sleep(args.every / 2)                    # all connected, half their first turn done
    threads = status_field("Threads", pid)
    out["loaded"] = latency_row(*load(port, users, args.loaded_clients, args.loaded_requests),
                                args.loaded_clients)
    out["server_threads_while_trickled"] = threads
    out["server_threads_after_load"] = status_field("Threads", pid)
    stop.set()
    thread.join()
    out.update(trickling=args.trickle, every_s=args.every, trickle_bytes=counts["sent"],
               trickle_cut=counts["cut"],
               p99_loaded_over_unloaded=out["loaded"]["p99_ms"] / out["unloaded"]["p99_ms"])
    return out


def status_field(field, pid):
    """An integer field of /proc/PID/status (Threads), None where there is none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a model file instead of the ML-1M quick fit")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=200, help="per client")
    ap.add_argument("--trickle", type=int, default=300, help="trickling clients (0: none)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between a trickler's bytes")
    ap.add_argument("--loaded-clients", type=int, default=64)
    ap.add_argument("--loaded-requests", type=int, default=40, help="per client")
    ap.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            common.check_data(["ml-1m"], args.data_dir)
            train, _ = ml1m_split(read_ratings(Path(args.data_dir) / "ml-1m" / "ratings_uir.dat"))
            path = Path(tmp) / "train.csv"
            path.write_text(ratings_csv(train))
            model = Path(tmp) / "ml1m.npz"
            subprocess.run([sys.executable, "-m", "glocalk_np", "fit", str(path), "--preset",
                            "ml-1m", "--epochs-pretrain", "1", "--epochs-finetune", "1",
                            "--optimizer", "numba", "--out", str(model), "--quiet"], check=True)
        tic = time.perf_counter()
        proc, port = start_server(model)
        ready = time.perf_counter() - tic
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/health")
            info = json.loads(conn.getresponse().read())
            conn.close()
            users = GLocalK.load(model).index_.users
            print(f"server ready in {ready:.1f} s: {info['items']} items x {info['users']} users")
            rows = []
            for clients in args.clients:
                lat, errors, wall = load(port, users, clients, args.requests)
                row = latency_row(lat, errors, wall, clients)
                rows.append(row)
                print(f"{clients:3d} clients: {row['requests']} requests, p50 {row['p50_ms']:.1f} "
                      f"ms, p99 {row['p99_ms']:.1f} ms, {row['requests_per_s']:.0f} requests/s, "
                      f"{errors} errors", flush=True)
            slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
            for s in slow:
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            statuses = hostile(port)
            lat, errors, _ = load(port, users, 4, 20)      # still serving beside 8 slow clients
            statuses["served beside 8 half-sent requests"] = "yes" if errors == 0 else "no"
            for s in slow:
                s.close()
            for name, status in statuses.items():
                print(f"  {name}: {status}")
            trickled = None
            if args.trickle:
                trickled = under_trickle(port, proc.pid, users, args)
                for name in ("unloaded", "loaded"):
                    row = trickled[name]
                    print(f"{row['clients']} clients, {name}: p50 {row['p50_ms']:.1f} ms, p99 "
                          f"{row['p99_ms']:.1f} ms, {row['requests_per_s']:.0f} requests/s, "
                          f"{row['errors']} errors")
                print(f"  beside {args.trickle} clients trickling a byte every {args.every:g} s "
                      f"({trickled['trickle_bytes']} bytes, cut off {trickled['trickle_cut']} "
                      f"times): p99 {trickled['p99_loaded_over_unloaded']:.2f}x unloaded; "
                      f"server threads {trickled['server_threads_while_trickled']} while "
                      f"trickled, {trickled['server_threads_after_load']} under load")
            peak = common.status_mib("VmHWM", proc.pid)
            print(f"server peak memory {peak:.0f} MiB")
        finally:
            proc.terminate()
            proc.wait()
    if args.out:
        common.write_json(args.out, dict(model=str(args.model or "ml-1m train split, preset, "
                                                                "1+1 epochs"),
                                         ready_s=ready, load=rows, hostile=statuses,
                                         trickle=trickled, server_peak_mib=peak))


if __name__ == "__main__":
    main()
