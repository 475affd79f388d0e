"""The search-space interface: a small abstract base, a registry, and two ways to make choices.

A space is written once, as ``sample(chooser)``: the same definition samples define-by-run from an
Optuna trial (:class:`OptunaChooser`) or from a seeded NumPy generator (:class:`RngChooser`).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nas.errors import NasError
from search_spaces.arch import Architecture


class Chooser(abc.ABC):
    @abc.abstractmethod
    def choose(self, name: str, options: Sequence[Any]) -> Any: ...


class OptunaChooser(Chooser):
    """Define-by-run: each decision is ``trial.suggest_categorical(name, options)``."""

    def __init__(self, trial: Any):
        self.trial = trial

    def choose(self, name, options):
        return self.trial.suggest_categorical(name, list(options))


class RngChooser(Chooser):
    def __init__(self, rng: np.random.Generator | int | None):
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def choose(self, name, options):
        return options[int(self.rng.integers(len(options)))]


class SearchSpace(abc.ABC):
    """A space of architectures. Subclasses set ``name`` and implement ``decisions()`` and ``make()``."""

    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def decisions(self) -> list[tuple[str, list[Any]]]:
        """Every decision of the space, in order, with its options (all categorical)."""

    @abc.abstractmethod
    def make(self, choice: dict[str, Any]) -> Architecture:
        """Build the architecture for one full set of decisions."""

    @abc.abstractmethod
    def reference(self) -> Architecture:
        """The baseline of the space: step time and parameters are normalised by it."""

    def sample(self, chooser: Chooser | Any) -> Architecture:
        """Sample from an Optuna trial, a :class:`Chooser`, a NumPy generator or an int seed."""
        if not isinstance(chooser, Chooser):
            chooser = OptunaChooser(chooser) if hasattr(chooser, "suggest_categorical") else RngChooser(chooser)
        return self.make({name: chooser.choose(name, opts) for name, opts in self.decisions()})

    def size(self) -> int:
        """Number of distinct architectures (decisions that give the same architecture count once)."""
        total = 1
        for _, opts in self.decisions():
            total *= len(opts)
        return total

    def describe(self) -> str:
        return self.description


_REGISTRY: dict[str, Callable[[], SearchSpace]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


# The built-in spaces register themselves when their modules are imported; a new space is one new
# file plus one entry here (a plugin module registers itself with @register instead).
_BUILTIN = ("search_spaces.trainaware", "search_spaces.mnasnet", "search_spaces.accelnasbench")


def _load_builtin() -> None:

    for mod in _BUILTIN:
        importlib.import_module(mod)


def space_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_space(name: str) -> SearchSpace:
    _load_builtin()
    if name not in _REGISTRY:
        raise NasError(f"unknown search space {name!r}; known: {', '.join(space_names())}")
    return _REGISTRY[name]()
