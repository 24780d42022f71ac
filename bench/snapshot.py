"""Digests of glocalk-np's numbers, to show that a change of structure
changed none (issue 30; the same idea as issue 21's check): the engines'
loss and gradient after short fits in both dtypes; fits with the defaults,
in float64 without validation and as a 2-seed ensemble (parameters,
histories, predictions, top-N lists, similar, predict_all, evaluate,
update, fold-in, a saved and loaded model); the output of every command
but serve, tune and plot, timings masked; with ``full``, the ML-100K
paper-protocol fit (its output, every epoch's record, parameters and test
predictions). Run it in two checkouts and compare the JSON files:

    cd OLD && PYTHONPATH=$PWD python bench/snapshot.py /tmp/old.json full
    cd NEW && PYTHONPATH=$PWD python bench/snapshot.py /tmp/new.json full
    python bench/snapshot.py --compare /tmp/old.json /tmp/new.json

Run from a checkout's root, with PYTHONPATH set to it (the package that is
measured must be that checkout's). Data (full): ../shared/data.
"""
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import scipy.sparse as sp

if sys.argv[1] == "--compare":
    old, new = (json.load(open(p)) for p in sys.argv[2:4])
    keys = [k for k in sorted(set(old) | set(new)) if not k.endswith(":text")]
    differ = [k for k in keys if old.get(k) != new.get(k)]
    print(f"{len(keys) - len(differ)} of {len(keys)} the same; differ: {', '.join(differ) or 'none'}")
    sys.exit(1 if differ else 0)
out_path = sys.argv[1]
full = len(sys.argv) > 2 and sys.argv[2] == "full"
import glocalk_np  # noqa: E402
assert glocalk_np.__file__.startswith(os.getcwd()), glocalk_np.__file__
from glocalk_np.estimator import GLocalK  # noqa: E402
from glocalk_np.data import read_ratings, Ratings  # noqa: E402
from glocalk_np.synthetic import low_rank_ratings  # noqa: E402
from glocalk_np.config import Config  # noqa: E402
from glocalk_np import train as tr  # noqa: E402

# {"rank": "rating"} where lists have orders (issue 31), else {}
RATING = ({"rank": "rating"} if "rank" in inspect.signature(GLocalK.recommend).parameters
          else {})
D = {}
def dig(name, *arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        if a.dtype == object:
            h.update(repr(a.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(a).tobytes())
    D[name] = h.hexdigest()[:16]

def digtext(name, text):
    text = re.sub(r"\d+(\.\d+)?\s*(s|ms|min)\b", "T", text)   # timings
    text = re.sub(r"/tmp/\S+", "P", text)
    D[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    D[name + ":text"] = text[-3000:]

# 1. engines: loss and gradient, both stages, f32/f64
rng = np.random.default_rng(0)
m, n = 40, 30
R = sp.random(m, n, density=0.15, random_state=1, format="csr")
R.data = rng.integers(1, 6, R.nnz).astype(float)
for dtype in ("float32", "float64"):
    st = tr.fit(R, Config(n_hidden=8, kernel_dim=3, dtype=dtype, gk_size=3, epochs_pretrain=2, epochs_finetune=2, iters_pretrain=3, iters_finetune=3))
    dig(f"trainfit-{dtype}", *[st.params[k] for k in sorted(st.params)])
    dig(f"trainhist-{dtype}", np.array([[r.epoch, r.train_rmse] for r in st.history]))

# 2. API on synthetic ratings
ratings = low_rank_ratings(200, 150, 0.08, 4, 0)
def api(tag, **kw):
    model = GLocalK(n_hidden=16, epochs_pretrain=3, epochs_finetune=3, iters_pretrain=4, iters_finetune=4, **kw)
    model.fit(ratings)
    users, items = ratings.users[:500], ratings.items[:500]
    p, f = model.predict(users, items)
    dig(f"{tag}.predict", p, f.astype(str))
    dig(f"{tag}.params", *[model.params_[k] for k in sorted(model.params_)])
    dig(f"{tag}.history", np.array([[r.epoch, r.train_rmse] for r in model.history_]))
    # Issue 31 made another order the default: the digests of before are the
    # 'rating' order's (RATING), the new default's get names of their own.
    for suffix, kw in ((("", RATING), ("_default", {})) if RATING else (("", {}),)):
        rec = model.recommend(np.unique(ratings.users)[:40], top=10, **kw)
        dig(f"{tag}.recommend{suffix}", rec["item"], rec["score"], rec["rank"])
        dig(f"{tag}.similar{suffix}",
            np.array(model.similar(ratings.items[0], top=10, **kw), dtype=object))
        dig(f"{tag}.predict_all{suffix}", *model.predict_all(ranks=True, **kw))
        D[f"{tag}.evaluate{suffix}"] = repr(sorted(model.evaluate(ratings, **kw).items()))
    D[f"{tag}.summary"] = repr(sorted((k, v) for k, v in model.summary_.items() if k != "engine"))
    d = tempfile.mkdtemp()
    model.save(f"{d}/m.npz")
    m2 = GLocalK.load(f"{d}/m.npz")
    p2, _ = m2.predict(users, items)
    dig(f"{tag}.loaded_predict", p2)
    D[f"{tag}.info"] = repr(sorted((k, v) for k, v in m2.info().items() if k != "file"))
    new = Ratings.checked(np.r_[ratings.users[:20], np.array([10**6, 10**6 + 1] * 5)], np.r_[ratings.items[20:40], ratings.items[:10]], np.r_[np.full(20, 4.0), np.full(10, 5.0)], "new")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = m2.update(new)
    dig(f"{tag}.update", m2.predict(users, items)[0])
    m3 = GLocalK.load(f"{d}/m.npz")
    c = m3.update(new, fold_in=True)
    D[f"{tag}.foldin_counts"] = repr(c)
    dig(f"{tag}.foldin", m3.predict(np.r_[users, [10**6] * 20], np.r_[items, ratings.items[:20]])[0])
    dig(f"{tag}.foldin_params", *[m3.params_[k] for k in sorted(m3.params_)])
api("default")
api("preset", preset=None, validation_fraction=0, dtype="float64")
api("ens", ensemble=2)

# 3. CLI
exe = [sys.executable, "-m", "glocalk_np"]
d = tempfile.mkdtemp()
def run(tag, *args):
    r = subprocess.run(exe + list(args), capture_output=True, text=True, cwd=d)
    digtext(tag, r.stdout + "\n--\n" + r.stderr + f"\nrc={r.returncode}")
run("demo", "demo")
ratings_csv = os.path.join(d, "r.csv")
with open(ratings_csv, "w") as f:
    for u, i, v in zip(ratings.users, ratings.items, ratings.values):
        f.write(f"{u},{i},{v:g}\n")
run("fit", "fit", ratings_csv, "--test-frac", "0.1", "--save-split", "split", "--out", "model.npz", "--hidden", "16", "--epochs-pretrain", "3", "--epochs-finetune", "3")
run("evaluate", "evaluate", "model.npz", "split/test.csv")
RANK_ARGS = ["--rank", "rating"] if RATING else []
run("predict", "predict", "model.npz", "split/test.csv")
for suffix, rank in (("", RANK_ARGS), ("_default", [])) if RATING else (("", []),):
    run(f"recommend{suffix}", "recommend", "model.npz", "--user", str(ratings.users[0]), "--top",
        "10", *rank)
    run(f"recommend_all{suffix}", "recommend", "model.npz", "--all-users", "--top", "5", *rank)
    run(f"similar{suffix}", "similar", "model.npz", "--item", str(ratings.items[0]), *rank)
run("info", "info", "model.npz")
run("update", "update", "model.npz", "split/test.csv", "--out", "model2.npz")
run("info2", "info", "model2.npz", "--json")
run("gradcheck", "gradcheck")

if full:   # ML-100K paper protocol
    base = os.path.abspath("../shared/data/ml-100k")
    r = subprocess.run(exe + ["fit", f"{base}/u1.base", "--test", f"{base}/u1.test", "--preset", "ml-100k", "--select", "test", "--out", f"{d}/ml.npz", "--threads", "2"], capture_output=True, text=True)
    digtext("ml100k", r.stdout + r.stderr)
    m = GLocalK.load(f"{d}/ml.npz")
    dig("ml100k.history", np.array([[r.epoch, r.train_rmse] + [v for s in sorted(r.metrics) for k, v in sorted(r.metrics[s].items()) if isinstance(v, float)] for r in m.history_], dtype=float))
    dig("ml100k.params", *[m.params_[k] for k in sorted(m.params_)])
    t = read_ratings(f"{base}/u1.test")
    p, _ = m.predict(t.users, t.items)
    dig("ml100k.predict", p)
json.dump(D, open(out_path, "w"), indent=1, sort_keys=True)
print("wrote", out_path, len(D))
