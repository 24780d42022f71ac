"""The engine contract: what every engine provides, and nothing else is
called on one (by the trainer, the estimator, gradcheck and the benchmarks).

An engine computes GLocal-K's loss, gradient and predictions for one training
matrix, the sparse items x users matrix R it was built with. ``params`` is
a dict of arrays in params.py's layout, checked by the engine
(params.check_for_matrix: a misshaped array is a ValueError naming it), or
what the engine's own parameters_in handed the trainer; ``stage`` is
'pretrain' or 'finetune'. tests/test_engines.py holds every engine (CPU
float32/float64, CUDA, the dense reference) to each method.

A new engine subclasses Engine and implements the abstract methods; the
concrete ones serve any engine whose vectors live in host memory. The model
itself is written once, in network.py, over an engine's operations
(network.Operations): an engine that provides those gets its loss and
gradient from network.Network. An engine whose vectors live elsewhere (on
workers) hands the trainer its parameters there as RemoteParams.

Nothing here imports Numba: the read-only commands import EngineFailure.
"""
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from ..params import flatten, unflatten


def training_matrix(train, lambda_2, lambda_s, dot_scale, dtype):
    """(the items x users matrix ``train`` as a canonical CSR matrix, the
    engine's settings dict) for an engine's set-up; ValueError for no
    ratings, ratings not finite and > 0 (the network reads 0 as missing),
    or a dtype other than float32 and float64."""
    R = sp.csr_matrix(train)
    R.sum_duplicates()
    R.sort_indices()
    R.eliminate_zeros()
    if R.nnz == 0:
        raise ValueError("training matrix has no ratings")
    if not np.all(np.isfinite(R.data)) or R.data.min() <= 0:
        raise ValueError("ratings must be finite and > 0 (0 means missing)")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return R, engine_settings(lambda_2, lambda_s, dot_scale, dtype)


def engine_settings(lambda_2, lambda_s, dot_scale, dtype):
    """What an engine is built with (its ``settings``, which the trainer
    compares with the config's): the loss's penalties and scale, and the
    compute dtype."""
    return dict(lambda_2=float(lambda_2), lambda_s=float(lambda_s), dot_scale=float(dot_scale),
                dtype=np.dtype(dtype))


class EngineFailure(RuntimeError):
    """The engine could not finish an evaluation for a reason outside the
    model (a lost worker of a cluster): a failure at run time."""


class Engine(ABC):
    """Attributes: ``settings``, the dict engines.settings(config) it was
    built with (penalties, dot_scale, compute dtype), and ``shape``, the
    training matrix's (n_items, n_users)."""

    settings: dict
    shape: tuple

    @abstractmethod
    def __call__(self, stage, params):
        """(loss, gradients): the loss a float, the gradients a dict of
        host arrays in compute dtype keyed like params.optimised(stage,
        params)."""

    @abstractmethod
    def objective_into(self, stage, template):
        """fg(x, g) -> loss, what lbfgsb.minimize calls: ``x`` the flat
        float64 vector laid out like ``template`` (params.flatten's order),
        the float64 gradient written into ``g``. x and g are host arrays, or
        the vectors of this engine's ``workspace``."""

    @abstractmethod
    def predict(self, stage, params, rows, cols):
        """The network's outputs at (item position, user position) pairs, a
        host array in compute dtype."""

    @abstractmethod
    def conv_preactivation(self, params):
        """The fine-tuning convolution before its ReLU, on the neighbourhood
        pattern of the ratings (its entries in Pattern.neighbourhood's
        order), as a host array: what gradcheck screens for kinks."""

    def objective(self, stage, template):
        """fun(x) -> (loss, flat float64 gradient), what
        scipy.optimize.minimize calls, ``x`` laid out like ``template``."""
        def fun(x):
            loss, grads = self(stage, unflatten(x, template))
            return float(loss), flatten(grads)
        return fun

    def workspace(self, n, maxcor):
        """lbfgsb's vectors for n parameters where this engine wants them
        (host memory here; the GPU's for the CUDA engine)."""
        from .. import lbfgsb          # Numba's: not at import (see the module docstring)
        return lbfgsb.Workspace(n, maxcor)

    def place(self, workspace, x, params):
        """Write the parameters ``params`` (params.flatten's order: a dict
        of arrays, or what this engine's parameters_in gave, maybe
        with_arrays) into the vector ``x`` of this engine's ``workspace``."""
        workspace.vectors.assign(x, flatten(params))

    def parameters_in(self, workspace, x, template):
        """The parameters in the vector ``x`` of this engine's ``workspace``,
        laid out like ``template``, which later steps on x leave alone: what
        the trainer holds between epochs and gives back to predict and
        place. A plain dict of host arrays (host copies here), or, for an
        engine whose vectors live away from the host, RemoteParams that
        stay there until they are read (ShardedEngine's SharedParams)."""
        return unflatten(workspace.vectors.to_host(x), template)

    def report(self):
        """What a user should hear of how the work was spread (a dict for
        fit's summary), or None: nothing beyond the device."""
        return None

    def spread(self):
        """How the sums of an evaluation are split beyond this process's
        Numba threads, in words ('2 Dask workers of 1, 1 Numba threads'), or
        None: not at all. A checkpoint records it: a fit resumed on another
        spread adds its sums in another order, so its last bits differ."""
        return None


class RemoteParams(Mapping):
    """Parameters an engine keeps where its vectors live (on workers), as
    its parameters_in hands them to the trainer instead of a dict. Read as
    a mapping of names to host arrays (a checkpoint, the fitted model) they
    are fetched; the engine's predict and place take them as they are; and
    the trainer (train.py, params.placeholders) reaches them only through
    the three methods below, none of which fetches them."""

    @abstractmethod
    def placeholders(self):
        """params.placeholders of these parameters: {name: an array of its
        shape and dtype that holds no memory}, in order."""

    @abstractmethod
    def with_arrays(self, arrays):
        """These parameters and the host arrays ``arrays`` (the global
        kernel, where fine-tuning begins), still kept where they are."""

    @abstractmethod
    def kept(self, slot):
        """A copy made where they are, under the name ``slot`` (one per
        selection rule: the best epoch's parameters), which later epochs
        leave alone."""
