"""Checkpoints: a training state on disk, tied to the config and data that
produced it, written atomically after every epoch and resumed bit for bit
(``fit(checkpoint_dir=..., resume=True)``, ``glocalk-np fit --resume``)."""
import hashlib
import warnings
from dataclasses import asdict
from pathlib import Path

import numba
import numpy as np

from . import modelfile
from .data import DataWarning
from .records import TrainState, epochs_run
from .safeio import OutputError, check_target
from .schema import (field, is_fingerprint, pack_ids, pack_params, read_best, read_config,
                     read_history, unpack_params)
from .train import stage_over


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        # string ids by their UTF-8 text and offsets, as a model file holds them
        parts = pack_ids("", a).values() if a.dtype == object else [a]
        for part in parts:
            part = np.ascontiguousarray(part)
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(part.tobytes())
    return h.hexdigest()


def fingerprints(index, R, evals):
    """sha256 digests of the training data (ids and matrix) and of each
    EvalSet of ``evals``."""
    out = {"train": _digest(index.users, index.items, R.indptr, R.indices, R.data)}
    out.update({name: _digest(e.rows, e.cols, e.groups, e.values) for name, e in evals.items()})
    return out


class Checkpoint:
    """A TrainState on disk, tied to the config and data that produced it:
    ``shape`` is the training matrix's (n_items, n_users)."""

    def __init__(self, path, config, fingerprint, shape):
        self.path, self.config, self.fingerprint = Path(path), config, fingerprint
        self.shape = tuple(shape)
        self.spread = None          # the loaded checkpoint's (load, check_spread)

    def check_writable(self):
        """ValueError now, before any training, if the checkpoint could not
        be written after the first epoch; creates its folder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.path.parent}: cannot create the checkpoint folder: "
                              f"{e.strerror}") from None
        check_target(self.path)

    def save(self, state, spread=None):
        """Write ``state`` atomically: an interruption keeps the previous epoch's
        file. The Numba thread count and the engine's ``spread`` (Engine.spread)
        are recorded: the order of the sums depends on them."""
        arrays = pack_params("param/", state.params)
        best = {}
        for sel, pick in state.best.items():
            best[sel] = {"epoch": pick.epoch, "rmse": pick.rmse}
            if sel != "last":   # 'last' is the current parameters
                best[sel]["params"] = list(pick.params)
                arrays.update(pack_params(f"best/{sel}/", pick.params))
        meta = {"config": self.config.as_dict(), "fingerprint": self.fingerprint,
                "params": list(state.params), "best": best, "threads": numba.get_num_threads(),
                "history": [asdict(r) for r in state.history],
                **({"spread": spread} if spread else {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        modelfile.write(self.path, modelfile.CHECKPOINT, arrays, meta)

    def load(self):
        """The saved TrainState, or None (with a DataWarning) if there is no
        checkpoint yet. ValueError if it was made with another config or
        other data, or if any entry is malformed (schema.py); a DataWarning
        if it was written with another Numba thread count."""
        if not self.path.exists():
            warnings.warn(f"{self.path}: no checkpoint yet; starting afresh", DataWarning)
            return None
        f = modelfile.read(self.path, modelfile.CHECKPOINT)
        saved = read_config(f).as_dict()
        diffs = [f"{k}={v!r} (checkpoint: {saved[k]!r})"
                 for k, v in self.config.as_dict().items() if saved[k] != v]
        if diffs:
            raise ValueError(f"{self.path}: cannot resume, the config differs: {', '.join(diffs)}")
        theirs, ours = field(f, "fingerprint", is_fingerprint, "a map of digests"), self.fingerprint
        for name in [*ours, *(n for n in theirs if n not in ours)]:   # 'train' first
            what = "training data" if name == "train" else f"{name} set"
            if name not in ours or name not in theirs:
                made = "with" if name in theirs else "without"
                raise ValueError(f"{self.path}: cannot resume, the checkpoint was made {made} "
                                 f"a {what}")
            if theirs[name] != ours[name]:
                raise ValueError(f"{self.path}: cannot resume, the {what} differs from "
                                 "the checkpoint's")
        history = read_history(f, self.config)
        fine_done = epochs_run(history, "finetune")
        params = unpack_params(f, "param/", f.field("params"), self.config, self.shape,
                               "finetune" if fine_done else "pretrain")
        best = read_best(f, self.config, self.shape)
        fine_over = self.config.epochs_finetune > 0 and stage_over(
            history, "finetune", self.config)
        if ("last" in best) != fine_over \
                or any(pick.epoch > fine_done for pick in best.values()):
            raise f.error("metadata field 'best' does not match the history")
        if "last" in best:
            best["last"].params = params
        threads = f.meta.get("threads")
        if isinstance(threads, int) and threads != numba.get_num_threads():
            warnings.warn(f"{self.path}: written with {threads} Numba threads, resumed with "
                          f"{numba.get_num_threads()} (--threads): parallel sums round "
                          "differently, so the result will differ slightly from an "
                          "uninterrupted run", DataWarning)
        spread = f.meta.get("spread")
        self.spread = spread if isinstance(spread, str) else None
        f.check_all_read()
        return TrainState(params, history, best)

    def check_spread(self, spread):
        """A DataWarning if the loaded checkpoint was written on another
        spread of the sums than ``spread`` (Engine.spread)."""
        if spread != self.spread:
            warnings.warn(f"{self.path}: written on {self.spread or 'one process'}, resumed on "
                          f"{spread or 'one process'}: the sums are split by worker and "
                          "added in worker order, so the result will differ slightly from an "
                          "uninterrupted run", DataWarning)
