"""EfficientNetV2's training-aware reward (V2 section 3.3): ``A * S**w * P**v``."""

from __future__ import annotations

from dataclasses import dataclass, field

from rewards.base import Reward, check_exponent, need, register


@dataclass(frozen=True)
class TrainAwareParams:
    w: float = field(default=-0.07, metadata={"flag": "--w", "help": "trainaware: step-time exponent (default -0.07)"})
    v: float = field(default=-0.05, metadata={"flag": "--v", "help": "trainaware: parameter exponent (default -0.05)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "w", check_exponent("w", self.w))
        object.__setattr__(self, "v", check_exponent("v", self.v))


@register("trainaware")
class TrainAwareReward(Reward):
    """A: accuracy, S: training step time normalised by a reference, P: parameter size (normalised
    the same way, so the reward is unit-free); w = -0.07, v = -0.05 as in the paper."""

    Params = TrainAwareParams
    needs = ("accuracy", "S", "P")

    def __call__(self, metrics):
        a = need(metrics, "accuracy", positive=False)
        s, p = need(metrics, "S"), need(metrics, "P")
        return a * s**self.w * p**self.v
