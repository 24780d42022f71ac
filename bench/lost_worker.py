"""A worker lost during a command-line fit, end to end: `glocalk-np fit
--device dask --local-workers 2 --checkpoint-dir` on a synthetic file, one
worker process sent SIGKILL after the first checkpoint; the command must
exit 1 with one line naming the worker and the checkpoint, and `--resume`
on a fresh local cluster must end where an uninterrupted run ends, bit for
bit. Too slow for the suite (three fits on a cluster); Linux only (it finds
the worker processes in /proc).

    pip install -e '.[dask]'
    python bench/lost_worker.py --dir /tmp/lost-worker
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from glocalk_np.data import ratings_csv
from glocalk_np.synthetic import low_rank_ratings

FIT = ["fit", "r.csv", "--device", "dask", "--local-workers", "2", "--hidden", "64",
       "--epochs-pretrain", "4", "--epochs-finetune", "6", "--iters-pretrain", "20",
       "--iters-finetune", "20", "--optimizer", "numba", "--quiet"]


def children(pid):
    """The processes whose parent is ``pid``, and theirs."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            parent = int((p / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            out += [int(p.name), *children(int(p.name))]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="lost-worker", help="a folder to work in")
    args = parser.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "r.csv").write_text(ratings_csv(low_rank_ratings(300, 400, 0.1, 4, 0)))
    fit = [sys.executable, "-m", "glocalk_np", *FIT]
    whole = subprocess.run(fit + ["--out", "whole.npz", "--checkpoint-dir", "c0"], cwd=work,
                           capture_output=True, text=True)
    print(f"uninterrupted: exit {whole.returncode}", flush=True)
    proc = subprocess.Popen(fit + ["--out", "m.npz", "--checkpoint-dir", "c1"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (work / "c1" / "checkpoint.npz").exists() and proc.poll() is None:
        time.sleep(0.2)
    workers = [p for p in children(proc.pid)          # multiprocessing's spawned workers
               if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate()
    print(f"one worker killed: exit {proc.returncode}; {err.strip().splitlines()[-1]}")
    resumed = subprocess.run(fit + ["--out", "m.npz", "--checkpoint-dir", "c1", "--resume"],
                             cwd=work, capture_output=True, text=True)
    print(f"resumed: exit {resumed.returncode}")
    a, b = (np.load(work / f, allow_pickle=False) for f in ("whole.npz", "m.npz"))
    floats = [k for k in a.files if a[k].dtype.kind == "f"]
    same = all(np.array_equal(a[k], b[k]) for k in floats)
    print(f"the resumed model's {len(floats)} float arrays equal the uninterrupted one's: {same}")
    sys.exit(0 if (proc.returncode, resumed.returncode, same) == (1, 0, True) else 1)


if __name__ == "__main__":
    main()
