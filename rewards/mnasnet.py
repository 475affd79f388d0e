"""MnasNet's latency-target reward (MnasNet section 3, equation 2): ``ACC * (LAT/T)**w``,
``w = alpha`` if ``LAT <= T`` else ``beta``.

Soft constraint: alpha = beta = -0.07. Hard constraint: alpha = 0, beta = -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nas.errors import NasError
from rewards.base import Reward, check_exponent, need, register

CONSTRAINTS = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}


@dataclass(frozen=True)
class MnasNetParams:
    target_ms: float | None = field(
        default=None,
        metadata={
            "flag": "--target-ms",
            "help": "mnasnet: latency target T in ms (MnasNet: 75 on a Pixel 1; default: the "
            "reference's own cost on the target, so LAT/T == S)",
        },
    )
    constraint: str = field(
        default="soft", metadata={"flag": "--constraint", "help": "mnasnet: soft (default) or hard"}
    )
    alpha: float | None = None  # None: the constraint's value
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.constraint not in CONSTRAINTS:
            raise NasError(f"unknown constraint {self.constraint!r}; known: {', '.join(CONSTRAINTS)}")
        t = self.target_ms
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0):
            raise NasError(f"latency target must be a positive number of ms, got {t!r}")
        a, b = CONSTRAINTS[self.constraint]
        object.__setattr__(self, "target_ms", None if t is None else float(t))
        object.__setattr__(self, "alpha", a if self.alpha is None else check_exponent("alpha", self.alpha))
        object.__setattr__(self, "beta", b if self.beta is None else check_exponent("beta", self.beta))


@register("mnasnet")
class MnasNetReward(Reward):
    Params = MnasNetParams
    default_cost = "latency"  # MnasNet's LAT is the inference latency on the target device

    @property
    def needs(self):
        return ("accuracy", "S") if self.target_ms is None else ("accuracy", "cost_ms")

    def __call__(self, metrics):
        acc = need(metrics, "accuracy", positive=False)
        ratio = need(metrics, "S") if self.target_ms is None else need(metrics, "cost_ms") / self.target_ms
        w = self.alpha if ratio <= 1.0 else self.beta
        return acc * ratio**w
