"""The rating scale the network trains on.

The presets were tuned on 1-5 star ratings: the penalties lambda_2 and
lambda_s weigh against squared errors in those units, and the global
kernel's dot_scale multiplies ratings of that size. Ratings on another scale
(1-10, 0.5-5, 1-100) are therefore mapped affinely onto [1, 5] before
training, from the range of the training ratings, and every prediction and
metric is mapped back. On 1-5 data that uses both ends the map is the
identity, so the paper presets give the numbers they always did. The map
also lets ratings be any finite numbers, 0 and negatives included (a -10 to
10 scale): the network, which reads 0 as a missing rating, only ever sees
them mapped onto 1-5. Without it (scale 'none') ratings must be > 0.
"""
from dataclasses import dataclass

import numpy as np

from .config import SCALES, check_positive_for_scale

TARGET_LOW, TARGET_HIGH = 1.0, 5.0


@dataclass(frozen=True)
class RatingScale:
    """model = slope * rating + offset, and back. ``low`` and ``high`` are
    the training ratings' range in the user's units (the clipping range of
    predictions)."""
    low: float
    high: float
    slope: float = 1.0
    offset: float = 0.0

    @classmethod
    def of(cls, ratings, scale="auto", source="the training ratings"):
        """The scale of the training ratings (any array of them) under the
        Config's ``scale``: 'auto' maps [low, high] onto [1, 5]; constant
        ratings, which have no range to map, are shifted to 3 (predictions
        are then that constant); 'none' leaves them as they are, and
        refuses them (DataError naming ``source``) unless all are > 0."""
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        values = np.asarray(ratings, dtype=np.float64)
        check_positive_for_scale(values, scale, source)
        low, high = float(values.min()), float(values.max())
        if scale == "none":
            return cls(low, high)
        if high == low:
            return cls(low, high, 1.0, (TARGET_LOW + TARGET_HIGH) / 2 - low)
        slope = (TARGET_HIGH - TARGET_LOW) / (high - low)
        return cls(low, high, slope, TARGET_LOW - slope * low)

    @property
    def identity(self):
        return self.slope == 1.0 and self.offset == 0.0

    def to_model(self, ratings):
        """Ratings (float64) in the units the network trains on."""
        r = np.asarray(ratings, dtype=np.float64)
        return r if self.identity else r * self.slope + self.offset

    def to_user(self, values):
        """Network outputs (float64) in the user's units."""
        v = np.asarray(values, dtype=np.float64)
        return v if self.identity else (v - self.offset) / self.slope

    def matrix_to_model(self, R):
        """The sparse rating matrix ``R`` in model units (R itself if the
        map is the identity)."""
        if self.identity:
            return R
        out = R.copy()
        out.data = self.to_model(out.data)
        return out
