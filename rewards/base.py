"""The reward interface: a small abstract base, a parameter declaration per reward, and a registry.

A reward declares its parameters as a frozen dataclass (``Params``), whose ``__post_init__`` checks
them: the CLI offers every declared field as ``--reward-param KEY=VALUE`` (see
:func:`parse_params`) without naming any reward in its code, and the run stores ``config()``. A
reward also says which metrics it reads (``needs``), so the search's pruning hook, which knows the
accuracy so far and what was measured before training, passes it exactly those.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any

from nas.errors import NasError


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A reward without parameters."""


class Reward(abc.ABC):
    """Scores one evaluated candidate from its metrics: ``accuracy`` (0..1), ``S`` (step time
    normalised by the reference), ``P`` (parameters normalised by the reference), ``step_time_ms``,
    ``params``. Subclasses set ``Params`` and implement ``__call__`` and ``needs``."""

    name: str = ""
    Params: type = NoParams
    default_cost = "step"  # what S measures unless --cost says otherwise (nas.steptime.costs)

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - {f.name for f in dataclasses.fields(self.Params)})
        if unknown:
            raise NasError(
                f"reward {self.name!r} has no parameter {unknown[0]!r}; "
                f"its parameters: {', '.join(param_names(type(self))) or 'none'}"
            )
        self.params = self.Params(**params)

    def __getattr__(self, key: str) -> Any:  # r.w, r.target_ms: the parameters read as attributes
        params = self.__dict__.get("params")
        if params is not None and key in {f.name for f in dataclasses.fields(params)}:
            return getattr(params, key)
        raise AttributeError(key)

    @abc.abstractmethod
    def __call__(self, metrics: dict[str, float]) -> float: ...

    @property
    @abc.abstractmethod
    def needs(self) -> tuple[str, ...]:
        """The metrics this reward reads."""

    def config(self) -> dict[str, Any]:
        """The reward's settings, stored with every result so a score can be recomputed."""
        return {"name": self.name, **dataclasses.asdict(self.params)}


def need(metrics: dict[str, float], key: str, positive: bool = True) -> float:
    """``metrics[key]`` as a finite float (and > 0 when ``positive``), or a NasError naming it."""
    if key not in metrics:
        raise NasError(f"reward needs metric {key!r}")
    try:
        v = float(metrics[key])
    except (TypeError, ValueError):  # "fast", None, a list: still the user's input, so a NasError
        raise NasError(f"metric {key!r} must be a number, got {metrics[key]!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise NasError(f"metric {key!r} must be a {'positive ' if positive else ''}finite number, got {v}")
    return v


def check_exponent(name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise NasError(f"reward exponent {name} must be a finite number, got {x!r}")
    return float(x)


# -- parameters from the command line -------------------------------------------------------------------


def param_names(cls: type[Reward]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Params)]


def short_flags() -> dict[str, tuple[str, str]]:
    """``{flag: (parameter, help)}``: the short forms every registered reward declares for its
    parameters (a field's ``metadata={"flag": "--w", "help": ...}``); the CLI offers them all and
    passes the given ones to the chosen reward, which refuses those it does not declare."""
    out: dict[str, tuple[str, str]] = {}
    for cls in _REGISTRY.values():
        for f in dataclasses.fields(cls.Params):
            if "flag" in f.metadata:
                out.setdefault(f.metadata["flag"], (f.name, f.metadata.get("help", "")))
    return out


def parse_params(cls: type[Reward], pairs: list[str], aliases: dict[str, Any] | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--reward-param``) and flag aliases (``{"w": -0.1}``; None = not given)
    as typed keyword arguments for ``cls``. Values are converted by the declared field type (a
    number, a string, or None written ``none``); a key the reward does not declare is refused."""
    hints = typing.get_type_hints(cls.Params)
    out: dict[str, Any] = {}
    for flag, value in (aliases or {}).items():
        if value is None:
            continue
        if flag not in hints:
            raise NasError(
                f"--{flag.replace('_', '-')} does not apply to reward {cls.name!r} "
                f"(its parameters: {', '.join(param_names(cls)) or 'none'})"
            )
        out[flag] = _convert(flag, value.strip(), hints[flag]) if isinstance(value, str) else value
    for pair in pairs or []:
        key, sep, text = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise NasError(f"--reward-param takes KEY=VALUE, got {pair!r}")
        if key not in hints:
            raise NasError(
                f"reward {cls.name!r} has no parameter {key!r}; its parameters: {', '.join(param_names(cls)) or 'none'}"
            )
        out[key] = _convert(key, text.strip(), hints[key])
    return out


def _convert(key: str, text: str, hint: Any) -> Any:
    options = typing.get_args(hint) or (hint,)
    if type(None) in options and text.lower() == "none":
        return None
    if float in options or int in options:
        try:
            return float(text)
        except ValueError:
            raise NasError(f"reward parameter {key} must be a number, got {text!r}") from None
    return text


# -- the registry -----------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def reward_class(name: str) -> type[Reward]:
    if name not in _REGISTRY:
        raise NasError(f"unknown reward {name!r}; known: {', '.join(reward_names())}")
    return _REGISTRY[name]


def get_reward(name: str, **params: Any) -> Reward:
    cls = reward_class(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise NasError(f"reward {name!r}: {e}") from None
