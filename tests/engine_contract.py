"""What several test files ask of engines: what an engine hands the
trainer as parameters (engines.base.RemoteParams) and whether a class of
operations is whole (network.Operations), each as a list of problems ([]
for none) that the CUDA simulator's report can carry; and every number an
engine computes, to hold two engines to each other."""
import inspect

import numpy as np

from glocalk_np.engines.base import RemoteParams
from glocalk_np.network import ForwardOperations, Operations
from glocalk_np.params import STAGES, flatten, optimised, placeholders
from glocalk_np.train import holding


def operations_problems(cls):
    """What keeps the class ``cls`` from being a whole set of the network's
    operations (Operations, or ForwardOperations for one that is only
    that): abstract methods left, public methods beyond the contract that
    it does not name in ``own``, names in ``own`` it lacks, no bool leader."""
    contract = (Operations if issubclass(cls, Operations) else ForwardOperations)
    public = {name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("_")}
    own = set(cls.own)
    return ([f"abstract: {name}" for name in sorted(cls.__abstractmethods__)]
            + [f"beyond the contract: {name}"
               for name in sorted(public - contract.__abstractmethods__ - own)]
            + [f"own but missing: {name}" for name in sorted(own - public)]
            + ([] if isinstance(getattr(cls, "leader", None), bool) else ["no bool leader"]))


def _differ(got, want):
    """The names whose arrays in the mappings ``got`` and ``want`` differ
    (in order, shape or any bit)."""
    if list(got) != list(want):
        return [f"names {list(got)} != {list(want)}"]
    return [k for k in want if not (isinstance(got[k], np.ndarray)
                                    and np.array_equal(got[k], want[k]))]


def parameters_problems(engine, stage, params, rows, cols):
    """What is wrong with what ``engine`` hands the trainer between epochs
    (parameters_in, after place into its workspace's vector): a plain dict
    must hold the arrays placed; RemoteParams are used as train.py uses
    them (params.placeholders, predict, place, kept and, where pre-training
    hands over, with_arrays) and must read as the arrays placed, bit for bit."""
    template = {k: np.asarray(v, dtype=np.float64) for k, v in optimised(stage, params).items()}
    ws, x = holding(engine, template)
    handed = engine.parameters_in(ws, x, template)
    if type(handed) is dict:
        return [f"dict: {k}" for k in _differ(handed, template)]
    if not isinstance(handed, RemoteParams):
        return [f"neither a dict nor RemoteParams: {type(handed).__name__}"]
    problems = []
    shapes = {k: (v.shape, v.dtype) for k, v in placeholders(handed).items()}
    if shapes != {k: (v.shape, v.dtype) for k, v in template.items()}:
        problems.append("placeholders")
    if not np.array_equal(engine.predict(stage, handed, rows, cols),
                          engine.predict(stage, template, rows, cols)):
        problems.append("predict")
    kept = handed.kept("val")
    half = {k: v / 2 for k, v in template.items()}
    engine.place(ws, x, half)                                      # a later epoch
    later = engine.parameters_in(ws, x, template)
    problems += [f"kept: {k}" for k in _differ(dict(kept), template)]
    problems += [f"read: {k}" for k in _differ(dict(later), half)]
    if stage == "pretrain":            # where fine-tuning begins: C joins, a new layout
        C = np.asarray(params["C"], dtype=np.float64)
        more = later.with_arrays({"C": C})
        ws, x = holding(engine, more)
        problems += [f"with_arrays: {k}" for k in _differ(
            dict(engine.parameters_in(ws, x, placeholders(more))), {**half, "C": C})]
    return problems


def every_output(engine, params):
    """{name: number or array}: all an engine computes at ``params``, both
    stages: loss, gradient, the outputs at every pair, the loss and flat
    gradient objective_into gives, and the convolution before its ReLU."""
    m, n = engine.shape
    rows, cols = np.divmod(np.arange(m * n), n)
    out = {"conv_preactivation": engine.conv_preactivation(params)}
    for stage in STAGES:
        template = optimised(stage, params)
        loss, grads = engine(stage, params)
        x = flatten(template)
        g = np.full_like(x, np.nan)
        out.update({f"{stage}/loss": loss,
                    f"{stage}/predict": engine.predict(stage, params, rows, cols),
                    f"{stage}/into": engine.objective_into(stage, template)(x, g),
                    f"{stage}/into.g": g, f"{stage}/flat": flatten(grads)})
        out.update({f"{stage}/{k}": v for k, v in grads.items()})
    return out
