"""The reward interface: a small abstract base and a registry."""

from __future__ import annotations

import abc
import math
from typing import Any, Callable

from nas.errors import NasError


class Reward(abc.ABC):
    """Scores one evaluated candidate. ``metrics`` holds at least ``accuracy`` (0..1), ``S`` (step
    time normalised by the reference), ``P`` (parameters normalised by the reference),
    ``step_time_ms`` and ``params``."""

    name: str = ""

    @abc.abstractmethod
    def __call__(self, metrics: dict[str, float]) -> float: ...

    def config(self) -> dict[str, Any]:
        """The reward's settings, stored with every result so a score can be recomputed."""
        return {"name": self.name}


def _need(metrics: dict[str, float], key: str, positive: bool = True) -> float:
    if key not in metrics:
        raise NasError(f"reward needs metric {key!r}")
    try:
        v = float(metrics[key])
    except (TypeError, ValueError):  # "fast", None, a list: still the user's input, so a NasError
        raise NasError(f"metric {key!r} must be a number, got {metrics[key]!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise NasError(f"metric {key!r} must be a {'positive ' if positive else ''}finite number, got {v}")
    return v


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name: str, **params: Any) -> Reward:
    if name not in _REGISTRY:
        raise NasError(f"unknown reward {name!r}; known: {', '.join(reward_names())}")
    try:
        return _REGISTRY[name](**params)
    except TypeError as e:
        raise NasError(f"reward {name!r}: {e}") from None
