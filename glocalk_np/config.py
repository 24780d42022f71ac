"""GLocal-K's hyper-parameters (Config), the paper's presets, the epoch
selection rules and the memory check of a network before training
(docs/model.md §9-10). Nothing here trains: the file format, the CLI and
the trainer all read it.
"""
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import scipy.sparse as sp

from .safeio import gib, physical_memory, shorten
from .scale import SCALES

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
# Penalties and scales beyond this leave float32's range at TF1's initial
# weights; the presets use at most 70.
MAX_LAMBDA = 1e6
# Far more hidden layers than anyone trains; the bound keeps a list of
# n_layers arrays (a crafted model file's 10^8) from being built at all.
MAX_LAYERS = 1000
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
        for name in ("n_hidden", "n_layers", "kernel_dim", "gk_size",
                     "iters_pretrain", "iters_finetune"):
            value = getattr(self, name)
            if not _is_integer(value) or value < 1:
                raise bad(name, "a positive integer")
        for name in ("epochs_pretrain", "epochs_finetune", "seed", "patience"):
            value = getattr(self, name)
            if not (name == "patience" and value is None) and (not _is_integer(value)
                                                              or value < 0):
                raise bad(name, "a non-negative integer")
        if self.n_layers > MAX_LAYERS:
            raise bad("n_layers", f"at most {MAX_LAYERS}")
        if self.gk_size % 2 == 0:
            raise bad("gk_size", "odd")
        for name in ("lambda_2", "lambda_s", "dot_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) \
                    or isinstance(value, bool) \
                    or not 0 <= value <= MAX_LAMBDA:
                raise bad(name, f"a number in [0, {MAX_LAMBDA:g}]")
        for name, allowed in (("dtype", ("float32", "float64")), ("optimizer", OPTIMIZERS),
                              ("scale", SCALES)):
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
