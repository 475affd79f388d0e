"""MnasNet's latency-target reward (MnasNet section 3, equation 2): ``ACC * (LAT/T)**w``,
``w = alpha`` if ``LAT <= T`` else ``beta``.

Soft constraint: alpha = beta = -0.07. Hard constraint: alpha = 0, beta = -1.
"""

from __future__ import annotations

import math

from rewards.base import Reward, _need, register
from nas.errors import NasError

CONSTRAINTS = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}


@register("mnasnet")
class MnasNetReward(Reward):
    def __init__(self, target_ms: float | None = None, constraint: str = "soft",
                 alpha: float | None = None, beta: float | None = None):
        if constraint not in CONSTRAINTS:
            raise NasError(f"unknown constraint {constraint!r}; known: {', '.join(CONSTRAINTS)}")
        if target_ms is not None and (not isinstance(target_ms, (int, float)) or not math.isfinite(target_ms) or target_ms <= 0):
            raise NasError(f"latency target must be a positive number of ms, got {target_ms!r}")
        for k, x in (("alpha", alpha), ("beta", beta)):
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)):
                raise NasError(f"reward exponent {k} must be a finite number, got {x!r}")
        a, b = CONSTRAINTS[constraint]
        self.alpha = a if alpha is None else float(alpha)
        self.beta = b if beta is None else float(beta)
        self.constraint = constraint
        # Without a target, T is the reference architecture's own latency (LAT/T == S).
        self.target_ms = None if target_ms is None else float(target_ms)

    def __call__(self, metrics):
        acc = _need(metrics, "accuracy", positive=False)
        if self.target_ms is None:
            ratio = _need(metrics, "S")
        else:
            ratio = _need(metrics, "step_time_ms") / self.target_ms
        w = self.alpha if ratio <= 1.0 else self.beta
        return acc * ratio ** w

    def config(self):
        return {"name": self.name, "target_ms": self.target_ms, "constraint": self.constraint,
                "alpha": self.alpha, "beta": self.beta}
