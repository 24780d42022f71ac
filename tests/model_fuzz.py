"""Seeded random mutations of a valid model file, and a runner that predicts
with each one in a process of its own (see test_hostile.py).

Run as ``python model_fuzz.py PAIRS FILE...``: for every FILE it prints a
line ``start NAME`` before loading it, then one JSON line with the exit
status and the output of ``glocalk-np predict FILE PAIRS``, so that a crash
of the process names the file that caused it.
"""
import json
import sys

import numpy as np

# dtypes a mutation may turn an array into: glocalk-np writes only some of them
DTYPES = [np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64, np.bool_,
          np.complex128, "U5"]
VALUES = [np.nan, np.inf, -np.inf, -1, 0, 1e30, 10 ** 9, -(10 ** 9), 3]
JSON_VALUES = [None, 5, -1, 0, 1.5, "x", "finetune", [], [1], [5, "W0"], {}, {"a": 1}, True]


def _reshaped(rng, a):
    ops = [lambda a: a[:-1], lambda a: np.concatenate([a, a[:1]]), lambda a: a.T,
           lambda a: np.array(a.ravel()[0]), lambda a: a[None], lambda a: a[:0],
           lambda a: a.reshape(-1)]
    a = np.atleast_1d(a)
    return ops[rng.integers(len(ops))](a) if a.size else np.zeros(3)


def _revalued(rng, a):
    a = np.array(a)
    if a.size == 0 or a.dtype.kind not in "biuf":
        return a
    flat = a.astype(np.float64).ravel()
    flat[rng.integers(flat.size, size=rng.integers(1, 4))] = VALUES[rng.integers(len(VALUES))]
    with np.errstate(invalid="ignore", over="ignore"):
        out = flat.reshape(a.shape)
        return out.astype(a.dtype) if a.dtype.kind == "f" else out


def _retyped(rng, a):
    a = np.asarray(a)
    if a.dtype.kind == "U":
        return a.astype("U5")
    with np.errstate(invalid="ignore", over="ignore"):
        return a.astype(DTYPES[rng.integers(len(DTYPES))])


def _mutate_meta(rng, meta):
    key = list(meta)[rng.integers(len(meta))]
    choice = rng.integers(4)
    if choice == 0:
        del meta[key]
    elif choice == 1 or not isinstance(meta[key], (dict, list)) or not meta[key]:
        meta[key] = JSON_VALUES[rng.integers(len(JSON_VALUES))]
    elif isinstance(meta[key], dict):
        sub = list(meta[key])[rng.integers(len(meta[key]))]
        meta[key][sub] = JSON_VALUES[rng.integers(len(JSON_VALUES))]
    else:
        i = rng.integers(len(meta[key]))
        meta[key][i] = JSON_VALUES[rng.integers(len(JSON_VALUES))]


def mutate(arrays, seed):
    """A copy of the npz contents ``arrays`` with 1 to 3 random changes:
    an array reshaped, retyped, given odd values, dropped or added, or a
    metadata field dropped or replaced (at the top level or one below)."""
    rng = np.random.default_rng(seed)
    arrays = dict(arrays)
    meta = json.loads(str(arrays["meta"]))
    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(6)
        key = sorted(arrays)[rng.integers(len(arrays))]
        if kind == 0:
            arrays[key] = _reshaped(rng, arrays[key])
        elif kind == 1:
            arrays[key] = _retyped(rng, arrays[key])
        elif kind == 2:
            arrays[key] = _revalued(rng, arrays[key])
        elif kind == 3:
            del arrays[key]
        elif kind == 4:
            arrays[f"param/X{rng.integers(9)}"] = np.zeros(rng.integers(1, 5))
        else:
            _mutate_meta(rng, meta)
    if "meta" in arrays:
        arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def main(pairs, paths):
    from click.testing import CliRunner

    from glocalk_np.cli import cli
    for path in paths:
        print(f"start {path}", flush=True)
        result = CliRunner().invoke(cli, ["predict", path, pairs])
        print(json.dumps({"path": path, "code": result.exit_code, "stdout": result.stdout,
                          "stderr": result.stderr,
                          "exception": type(result.exception).__name__}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
