"""What commands read: a saved model (as a Model, without the trainer), a
test file, and the files a RATINGS argument stands for."""
import os

from .. import datasets
from ..data import read_any
from ..model import Model


def load_model(path):
    """The saved model at ``path``, as every command that only reads one
    (or updates it) loads it: a Model, without the trainer."""
    return Model.load(path)


def read_test(path, sep):
    """The ratings of a text file, or the test part of a .mat file."""
    ratings, mat_test = read_any(path, sep)
    return ratings if mat_test is None else mat_test


def ratings_inputs(ratings):
    """The files RATINGS stands for: itself, or a downloaded benchmark's."""
    if os.path.exists(ratings):
        return [ratings]
    return datasets.files(ratings) if ratings in datasets.SOURCES else []
