"""A load test of `glocalk-np serve` on loopback: top-10 recommendations
for random users at 1, 4 and 16 concurrent clients, a bounded number of
requests each; p50 and p99 latency, requests per second, errors, and the
server's peak memory; then hostile requests (malformed JSON, a huge top, a
huge body, unknown ids, clients that send half a request and wait), each
of which must get its 4xx answer while the server keeps serving.

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
    proc = subprocess.Popen([sys.executable, "-m", "glocalk_np.cli", "serve", str(model),
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


def hostile(port):
    """{name: HTTP status} of the hostile requests, each on a fresh connection."""
    cases = {
        "malformed JSON": ("POST", "/predict", b'{"pairs": [[1, '),
        "huge top": ("GET", "/recommend?user=1&top=1000000000", None),
        "unknown user": ("GET", "/recommend?user=no-such-user", None),
        "unknown item": ("GET", "/similar?item=999999999", None),
        "huge body": ("POST", "/predict", b" " * (4 << 20)),
        "not an endpoint": ("GET", "/../../etc/passwd", None),
    }
    out = {}
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a model file instead of the ML-1M quick fit")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=200, help="per client")
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
            subprocess.run([sys.executable, "-m", "glocalk_np.cli", "fit", str(path), "--preset",
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
                row = dict(clients=clients, requests=int(lat.size), errors=int(errors),
                           p50_ms=float(np.percentile(lat, 50) * 1e3),
                           p99_ms=float(np.percentile(lat, 99) * 1e3),
                           requests_per_s=float(lat.size / wall))
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
            peak = common.status_mib("VmHWM", proc.pid)
            print(f"server peak memory {peak:.0f} MiB")
        finally:
            proc.terminate()
            proc.wait()
    if args.out:
        common.write_json(args.out, dict(model=str(args.model or "ml-1m train split, preset, "
                                                                "1+1 epochs"),
                                         ready_s=ready, load=rows, hostile=statuses,
                                         server_peak_mib=peak))


if __name__ == "__main__":
    main()
