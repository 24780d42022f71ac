"""GLocal-K's hyper-parameters (Config) and the range of each, the paper's
presets, the epoch selection rules, the checks of a fit's settings and
data, and the memory check of a network before training (docs/model.md
§9-10). Nothing here trains: the file format, the CLI and the trainer all
read it.
"""
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .data import DataError
from .safeio import gib, physical_memory, shorten

# docs/model.md §9; the n_hidden, n_layers, kernel_dim and gk_size defaults are common to all.
PRESETS = {
    "ml-100k": dict(lambda_2=20.0, lambda_s=0.006, iters_pretrain=5, iters_finetune=5,
                    epochs_pretrain=30, epochs_finetune=60, dot_scale=1.0),
    "ml-1m": dict(lambda_2=70.0, lambda_s=0.018, iters_pretrain=50, iters_finetune=10,
                  epochs_pretrain=20, epochs_finetune=30, dot_scale=0.5),
    "douban": dict(lambda_2=10.0, lambda_s=0.022, iters_pretrain=5, iters_finetune=5,
                   epochs_pretrain=20, epochs_finetune=60, dot_scale=2.0),
}
SELECTIONS = ("test", "val", "last")
# Fitting a user's own data (no preset), by default: this share of the
# training ratings is held out to choose the epochs, each stage ends after
# this many epochs without a better validation RMSE (tune's trials too), and
# the model is then refit on all the training ratings for the epochs chosen
# (why: BENCHMARKS.md)
DEFAULT_VALIDATION = 0.05
DEFAULT_PATIENCE = 5


# From this many training ratings, a user's own file trains with the ML-1M
# preset's penalties and schedule instead of ML-100K's (Config's defaults):
# the paper tuned those two for 100k and 1M ratings, and on ML-1M 90/10 the
# own-data protocol gave 0.8587 test RMSE with ML-100K's and 0.8253 with
# ML-1M's; the files of 24k-123k ratings measured kept ML-100K's and beat
# every peer with them (BENCHMARKS.md, issue 20).
LARGE_FILE_RATINGS = 500_000


def own_file_config(config, n_ratings):
    """The Config a user's own file (no preset) of ``n_ratings`` training
    ratings trains with: ``config``, with, from LARGE_FILE_RATINGS on, the
    ML-1M preset's value for every field of it still at Config's default."""
    if n_ratings < LARGE_FILE_RATINGS:
        return config
    defaults = Config()
    return replace(config, **{k: v for k, v in PRESETS["ml-1m"].items()
                              if getattr(config, k) == getattr(defaults, k)})


def check_select(select, val, test):
    """ValueError unless ``select`` is a selection rule whose held-out set
    (``val`` or ``test``; 'last' needs none) is given."""
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    if {"test": test, "val": val}.get(select, True) is None:
        raise ValueError(f"select={select!r} needs a {select} set")


def check_positive_for_scale(values, scale, source):
    """DataError unless the training ratings ``values`` (from ``source``)
    can be trained on with ``scale``: as given ('none'), they must be > 0
    (the one statement of it: scale.RatingScale.of calls it too)."""
    if scale == "none" and values.min() <= 0:
        raise DataError(f"{source}: ratings must be > 0 with scale='none' (the "
                        "network reads 0 as a missing rating; the smallest is "
                        f"{values.min():g}): use scale='auto', which maps any "
                        "ratings onto 1-5")


def default_selection(val, test, benchmark=False):
    """The selection rule when none is asked for: the validation set's when
    there is one; on a benchmark named by name (the CLI's ``fit ml-100k``)
    with a test set, the paper's protocol, where the test set picks the
    epoch; else the last epoch."""
    if val is not None:
        return "val"
    return "test" if benchmark and test is not None else "last"
# What each selection rule means, for summaries and metrics files.
PROTOCOLS = {"val": "fine-tuning epoch with the best validation RMSE",
             "test": "fine-tuning epoch with the best TEST RMSE (the paper's protocol: the "
                     "test set picks the epoch, so its test scores are optimistic)",
             "last": "last fine-tuning epoch"}
OPTIMIZERS = ("scipy", "numba")
# Config.scale (scale.py): map the training ratings onto [1, 5], or train on them as given
SCALES = ("auto", "none")
DTYPES = ("float32", "float64")
# Where the loss and gradient are computed (engines/: one engine each)
DEVICES = ("cpu", "cuda", "dask")
# The most models of a seed ensemble
MAX_ENSEMBLE = 1000
# Penalties and scales beyond this leave float32's range at TF1's initial
# weights; the presets use at most 70.
MAX_LAMBDA = 1e6
# Far more hidden layers than anyone trains; the bound keeps a list of
# n_layers arrays (a crafted model file's 10^8) from being built at all.
MAX_LAYERS = 1000


class Range(NamedTuple):
    """The values a numeric hyper-parameter takes: an integer or a number
    (``kind``) in [low, high] (high None: no bound), odd where ``odd``."""
    kind: type
    low: int
    high: float | None = None
    odd: bool = False


# What Config accepts and the CLI's options offer, read by both (in the
# order Config checks them): the numbers' ranges, and the texts' choices.
# patience may also be None (the estimator's choice).
RANGES = {
    "n_hidden": Range(int, 1), "n_layers": Range(int, 1, MAX_LAYERS),
    "kernel_dim": Range(int, 1), "gk_size": Range(int, 1, odd=True),
    "iters_pretrain": Range(int, 1), "iters_finetune": Range(int, 1),
    "epochs_pretrain": Range(int, 0), "epochs_finetune": Range(int, 0),
    "seed": Range(int, 0), "patience": Range(int, 0),
    "lambda_2": Range(float, 0, MAX_LAMBDA), "lambda_s": Range(float, 0, MAX_LAMBDA),
    "dot_scale": Range(float, 0, MAX_LAMBDA),
}
CHOICES = {"dtype": DTYPES, "optimizer": OPTIMIZERS, "scale": SCALES}
# Memory a fit needs per parameter at least: the float64 vector and gradient,
# scipy's 2 x maxcor history and its copies per call, the compute-dtype W,
# K, W_eff and their gradients (an ML-10M-shaped epoch measured ~300).
BYTES_PER_PARAMETER = 200


@dataclass(frozen=True)
class Config:
    """GLocal-K's hyper-parameters; the defaults are the ML-100K preset."""
    n_hidden: int = 500
    n_layers: int = 2
    kernel_dim: int = 5
    gk_size: int = 3
    lambda_2: float = 20.0
    lambda_s: float = 0.006
    dot_scale: float = 1.0
    epochs_pretrain: int = 30
    epochs_finetune: int = 60
    iters_pretrain: int = 5
    iters_finetune: int = 5
    dtype: str = "float32"
    seed: int = 0
    optimizer: str = "scipy"
    scale: str = "auto"          # scale.py: map the training ratings onto [1, 5], or 'none'
    # > 0: end a stage after this many epochs without a better val RMSE; None:
    # the estimator's choice (5 for a user's own data with a validation set)
    patience: int | None = None

    def __post_init__(self):
        def bad(name, expected):
            got = shorten(repr(getattr(self, name)))
            return ValueError(f"{name} must be {expected}, got {got}")
        # every integer's kind and low end first, then their high ends, then the numbers
        integers = {name: r for name, r in RANGES.items() if r.kind is int
                    and not (name == "patience" and self.patience is None)}
        for name, r in integers.items():
            value = getattr(self, name)
            if not _is_integer(value) or value < r.low:
                raise bad(name, "a positive integer" if r.low == 1 else "a non-negative integer")
        for name, r in integers.items():
            if r.high is not None and getattr(self, name) > r.high:
                raise bad(name, f"at most {r.high}")
            if r.odd and getattr(self, name) % 2 == 0:
                raise bad(name, "odd")
        for name, r in RANGES.items():
            value = getattr(self, name)
            if r.kind is float and (not isinstance(value, (int, float, np.integer, np.floating))
                                    or isinstance(value, bool)
                                    or not r.low <= value <= r.high):
                raise bad(name, f"a number in [{r.low}, {r.high:g}]")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"one of {allowed}")

    @classmethod
    def from_preset(cls, preset=None, **overrides):
        """The official hyper-parameters of ``preset`` (docs/model.md §9); explicit
        keyword arguments override them; None values are ignored."""
        values = {}
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got "
                                 f"{shorten(repr(preset))}")
            values.update(PRESETS[preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError("unknown hyper-parameter(s): "
                             + shorten(", ".join(map(str, unknown))))
        return cls(**values)

    def as_dict(self):
        return asdict(self)

    def epochs(self, stage):
        """The epoch budget of ``stage`` ('pretrain' or 'finetune')."""
        return self.epochs_pretrain if stage == "pretrain" else self.epochs_finetune


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parameter_count(n_items, n_users, config, gk_size=None):
    """The number of parameters of ``config``'s network on an n_items x
    n_users matrix (params.shapes' arrays, C with ``gk_size``), in closed
    form: nothing of size n_layers is built."""
    n, h, d, L = n_users, config.n_hidden, config.kernel_dim, config.n_layers

    def layer(n_in, n_out):          # W, U, V, b
        return n_in * n_out + (n_in + n_out) * d + n_out
    return (layer(n, h) + (L - 1) * layer(h, h) + layer(h, n)
            + (n_items * gk_size ** 2 if gk_size else 0))


def check_problem(config, train, members=1):
    """ValueError, before any training time is spent, when ``config``'s
    network cannot be trained on the items x users matrix ``train`` in this
    machine's memory (e.g. a hidden width of 10^9, or a global kernel whose
    convolution map of nnz x gk^2 entries would not fit), with ``members``
    such networks kept (a seed ensemble: each keeps its parameters and its
    best epoch's, 16 bytes per parameter)."""
    m, n = train.shape
    n_params = parameter_count(m, n, config, config.gk_size)
    cells = config.gk_size ** 2
    need = (n_params * (BYTES_PER_PARAMETER + 16 * (members - 1))
            + sp.csr_matrix(train).nnz * cells * 16)
    have = physical_memory()
    if have is not None and need > have:
        raise ValueError(f"n_hidden={config.n_hidden}, n_layers={config.n_layers}, "
                         f"kernel_dim={config.kernel_dim}, gk_size={config.gk_size}"
                         + (f", {members} ensemble members" if members > 1 else "")
                         + f" on {m} items x {n} users: training would need about "
                         f"{gib(need)} ({n_params:,} parameters), more than this "
                         f"machine's {gib(have)} of memory")
