"""Parameter layout and initialisation (docs/model.md §1, §8).

A parameter set is a plain ``dict[str, ndarray]``, in this order:

    W0 U0 V0 b0   W1 U1 V1 b1   ...   W{L} U{L} V{L} b{L}   [C]

Layers 0..L-1 are the sigmoid hidden layers (n -> h, then h -> h), layer L is
the identity output layer (h -> n), with L = n_layers. Per layer W is
n_in x n_out, U n_in x d, V n_out x d, b n_out. C (m x gk^2) is the global
kernel's weight, present once fine-tuning has begun. The dict order is the
order of the flat optimiser vector.
"""
import math

import numpy as np

LAYER_KEYS = ("W", "U", "V", "b")
STAGES = ("pretrain", "finetune")


def layer_count(params):
    """Number of kernel layers (hidden layers + output layer) in ``params``."""
    return sum(1 for k in params if k.startswith("W"))


def user_axes(params):
    """{name: axis} of the parameter arrays with one slice per user: the
    first layer's W and U rows, the output layer's W columns, V rows and
    biases. The rest is replicated on every share."""
    last = layer_count(params) - 1
    return {"W0": 0, "U0": 0, f"W{last}": 1, f"V{last}": 0, f"b{last}": 0}


def layer(params, l):
    """(W, U, V, b) of layer ``l``."""
    return tuple(params[f"{k}{l}"] for k in LAYER_KEYS)


def shapes(n_items, n_users, n_hidden, n_layers, kernel_dim, gk_size=None):
    """The shape of every parameter array, in the flat vector's order; C
    (n_items x gk^2) only when ``gk_size`` is given."""
    dims = [n_users] + [n_hidden] * n_layers + [n_users]
    out = {}
    for l, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        out.update({f"W{l}": (n_in, n_out), f"U{l}": (n_in, kernel_dim),
                    f"V{l}": (n_out, kernel_dim), f"b{l}": (n_out,)})
    if gk_size is not None:
        out["C"] = (n_items, gk_size * gk_size)
    return out


def check_shapes(params, expected, what="parameters"):
    """ValueError unless ``params`` holds exactly the arrays named in
    ``expected``, each float32 or float64 of the expected shape. This is what
    keeps the compiled kernels, which do not check bounds, inside their arrays."""
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        raise ValueError(f"{what}: " + "; ".join(
            f"{label} {', '.join(map(str, keys))}"
            for label, keys in (("missing", missing), ("unexpected", extra)) if keys))
    for k, shape in expected.items():
        a = params[k]
        if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
            got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{what}: {k} is {got}, expected float32 or float64")
        if a.shape != shape:
            raise ValueError(f"{what}: {k} has shape {a.shape}, expected {shape}")


def check_for_matrix(params, stage, n_items, n_users):
    """check_shapes against the network that ``params`` describe (hidden
    width from W0, kernel dimension from U0, gk from C) on an n_items x
    n_users matrix; C is needed for 'finetune' and ignored for 'pretrain'."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    context = f"parameters for a {n_items} x {n_users} (items x users) matrix"
    W0, U0 = params.get("W0"), params.get("U0")
    if np.ndim(W0) != 2 or np.ndim(U0) != 2 or layer_count(params) < 2:
        raise ValueError(f"{context}: need 2-D W0 and U0 and at least two layers")
    gk = None
    if stage == "finetune":
        if "C" not in params:
            raise ValueError(f"{context}: missing C, the global kernel's weight")
        cells = np.shape(params["C"])
        gk = math.isqrt(cells[1]) if len(cells) == 2 else 0
        if gk * gk != (cells[1] if len(cells) == 2 else -1) or gk % 2 == 0:
            raise ValueError(f"{context}: C must be 2-D with gk^2 columns for an odd gk, "
                             f"got shape {cells}")
    expected = shapes(n_items, n_users, W0.shape[1], layer_count(params) - 1, U0.shape[1], gk)
    check_shapes(optimised(stage, params), expected, context)


def optimised(stage, params):
    """The arrays ``stage`` optimises, in the flat vector's order: every layer
    array for 'pretrain', and C (the last array) as well for 'finetune'.
    The one statement of this rule; the trainer, the engines, gradcheck,
    the benchmarks and the tests all use it."""
    return {k: v for k, v in params.items() if k != "C" or stage == "finetune"}


def truncated_normal(rng, shape, stddev):
    """Normal(0, stddev) redrawn beyond 2 stddev, as tf.random.truncated_normal."""
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2.0
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > 2.0
    return x * stddev


def init_layers(n_users, n_hidden=500, n_layers=2, kernel_dim=5, seed=0):
    """Layer parameters initialised as TF1 does in the official code (docs/model.md §8).

    W is Glorot uniform, b is Glorot uniform with fan_in = fan_out = n_out
    (TF1's default for a 1-D variable), U and V truncated normal with
    stddev 1e-3. Returned in float64; the model casts to its compute dtype.
    """
    rng = np.random.default_rng(seed)
    dims = [n_users] + [n_hidden] * n_layers + [n_users]
    params = {}
    for l, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        a = np.sqrt(6.0 / (n_in + n_out))
        params[f"W{l}"] = rng.uniform(-a, a, size=(n_in, n_out))
        params[f"U{l}"] = truncated_normal(rng, (n_in, kernel_dim), 1e-3)
        params[f"V{l}"] = truncated_normal(rng, (n_out, kernel_dim), 1e-3)
        a_b = np.sqrt(3.0 / n_out)
        params[f"b{l}"] = rng.uniform(-a_b, a_b, size=n_out)
    return params


def init_global_kernel(n_items, gk_size=3, seed=0):
    """C (m x gk^2): truncated normal with stddev 0.1 (docs/model.md §8)."""
    rng = np.random.default_rng([seed, 1])
    return truncated_normal(rng, (n_items, gk_size * gk_size), 0.1)


def flatten(params):
    """One float64 vector of all arrays in ``params``, in dict order."""
    out = np.empty(sum(a.size for a in params.values()))
    pos = 0
    for a in params.values():
        out[pos:pos + a.size] = a.ravel()
        pos += a.size
    return out


def placeholders(params):
    """Arrays of ``params``' shapes and dtypes that hold no memory (one
    broadcast zero each): all that objective_into, parameters_in and the
    like need to know of parameters kept in a workspace's vector. Such
    parameters (engines.base.RemoteParams, which imports this module) give
    their own, unread."""
    own = getattr(params, "placeholders", None)
    if own is not None:
        return own()
    return {k: np.broadcast_to(np.zeros((), v.dtype), v.shape) for k, v in params.items()}


def unflatten(x, template, dtype=None):
    """Arrays shaped like ``template``'s, read in order from the flat ``x``."""
    need = sum(a.size for a in template.values())
    if x.size != need:
        raise ValueError(f"flat vector has {x.size} values, parameters need {need}")
    out, pos = {}, 0
    for k, a in template.items():
        out[k] = x[pos:pos + a.size].reshape(a.shape).astype(dtype or a.dtype, copy=False)
        pos += a.size
    return out
