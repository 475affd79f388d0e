"""EfficientNetV2's training-aware reward (V2 section 3.3): ``A * S**w * P**v``."""

from __future__ import annotations

import math

from rewards.base import Reward, _need, register
from nas.errors import NasError


@register("trainaware")
class TrainAwareReward(Reward):
    """A: accuracy, S: training step time normalised by a reference, P: parameter size (normalised
    the same way, so the reward is unit-free); w = -0.07, v = -0.05 as in the paper."""

    def __init__(self, w: float = -0.07, v: float = -0.05):
        for k, x in (("w", w), ("v", v)):
            if not isinstance(x, (int, float)) or not math.isfinite(x):
                raise NasError(f"reward exponent {k} must be a finite number, got {x!r}")
        self.w, self.v = float(w), float(v)

    def __call__(self, metrics):
        a = _need(metrics, "accuracy", positive=False)
        s, p = _need(metrics, "S"), _need(metrics, "P")
        return a * s ** self.w * p ** self.v

    def config(self):
        return {"name": self.name, "w": self.w, "v": self.v}
