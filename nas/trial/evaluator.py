"""The evaluator: how a candidate is scored in one process, one registry entry per kind.

A trial (EfficientNetV2 section 3.3): take a candidate architecture, count its parameters, get its
cost on the run's target (S, relative to the reference architecture's; :mod:`nas.trial.target`),
measure its accuracy (A) and score it with the reward. :class:`Evaluator` is the interface every
backend's objective (:func:`nas.trial.objective.run_objective`) calls; ``--evaluator`` picks one:

* ``train`` (:class:`TrainingEvaluator`, default): trains a proxy of the candidate briefly at
  reduced width, depth and image size and takes its validation top-1 accuracy;
* others registered with :func:`register_evaluator` (a plugin's, the surrogate evaluator).

An evaluator says whether the run must prepare a step-time target for it (``needs_target``) and
load the data set (``needs_data``), so one that scores without training or timing starts at once.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

from nas.errors import NasError, NasRuntimeError
from nas.steptime.prepared import PreparedTarget
from nas.trial.settings import TrialSettings
from rewards import get_reward
from search_spaces import Architecture, count_macs, count_params, get_space

OnEpoch = Callable[[int, float, dict[str, Any]], bool]


class TrialFailed(NasRuntimeError):
    """A candidate that could not be scored (NaN, out of memory, ...); the reason is the message."""


class TrialPruned(Exception):
    """The pruning hook stopped the trial; ``metrics`` is what was measured before it stopped."""

    def __init__(self, message: str, metrics: dict[str, Any]):
        super().__init__(message)
        self.metrics = metrics


class Evaluator(abc.ABC):
    """Scores candidates for one run in one process. The reference (the space's baseline, or
    ``reference`` for ``nas grid-scale``, which normalises every scaled candidate by its base) is
    what S and P are relative to."""

    name: str = ""
    help: str = ""
    needs_target = True  # the run prepares a step-time target before its first trial
    needs_data = True  # the run loads and probes the data set before anything is written

    def __init__(
        self,
        settings: TrialSettings,
        *,
        target: PreparedTarget | None = None,
        reference: Architecture | None = None,
        data: Any = None,
    ):
        if self.needs_target and target is None:
            raise NasError(f"the {self.name} evaluator needs the run's prepared target (nas.trial.target.prepare)")
        self.settings = settings
        self.target = target
        self.space = get_space(settings.space)
        self.reward = get_reward(settings.reward, **settings.reward_params)
        self.reference_arch = reference or self.space.reference()
        self._data = data

    @classmethod
    @abc.abstractmethod
    def load_data(cls, settings: TrialSettings) -> Any:
        """What the evaluator reads (the data set; it has ``num_classes``), loaded and checked: the
        driver calls it before anything is written and hands the result to the evaluator."""

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = self.load_data(self.settings)
        return self._data

    @property
    def num_classes(self) -> int:
        return int(self.data.num_classes)

    def samples_fidelity(self, number: int) -> bool:
        """Whether trial ``number`` also times its cost directly, checking the prediction."""
        return False

    def samples_repeat(self, number: int) -> bool:
        """Whether trial ``number``, once complete, is trained again with another seed (A's seed noise)."""
        every = self.settings.accuracy_every
        return every > 0 and number % every == 0

    def repeat(self, arch: Architecture, *, seed: int, image_scale: float = 1.0) -> float | None:
        """The candidate's accuracy again, trained with a seed derived from ``seed``: how much of A is
        the seed's (:func:`nas.study.fidelity.accuracy_noise`). None for an evaluator whose accuracy
        has no seed (a surrogate)."""
        return None

    def describe(self) -> str:
        """What S stands for, in one line (printed at the start of a run)."""
        return f"S from the {self.name} evaluator"

    def drift(self) -> dict[str, Any] | None:
        """Re-check the reference's cost; a dict describing a change beyond tolerance, else None."""
        return None

    @abc.abstractmethod
    def known(self, arch: Architecture, *, image_scale: float = 1.0, fidelity: bool = False) -> dict[str, Any]:
        """What is known before training: size, MACs, cost, S and P."""

    @abc.abstractmethod
    def evaluate(
        self,
        arch: Architecture,
        *,
        seed: int = 0,
        image_scale: float = 1.0,
        fidelity: bool = False,
        on_epoch: OnEpoch | None = None,
    ) -> dict[str, Any]:
        """Score one candidate: its metrics with ``accuracy`` and ``reward``. ``on_epoch(epoch, accuracy,
        known)`` runs after every epoch of whatever the evaluator trains and returns True to stop the
        trial (:class:`TrialPruned`). Raises :class:`TrialFailed` for a candidate that cannot be scored."""

    def size(self, arch: Architecture) -> dict[str, Any]:
        """Parameters (absolute and relative to the reference: P) and MACs at the run's class count."""
        params = count_params(arch, self.num_classes)
        ref = count_params(self.reference_arch, self.num_classes)
        return {
            "arch": arch.to_string(),
            "params": params,
            "num_classes": self.num_classes,
            "macs": count_macs(arch, num_classes=self.num_classes),
            "P": params / ref,
            "reference_params": ref,
        }

    def score(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` with the reward; TrialFailed when it is not a finite number."""
        reward = float(self.reward(metrics))
        if not math.isfinite(reward):
            raise TrialFailed(f"reward is {reward}")
        return {**metrics, "reward": reward}


EVALUATORS: dict[str, type[Evaluator]] = {}


def register_evaluator(name: str):
    """Class decorator: ``@register_evaluator("mine")`` makes ``--evaluator mine`` score with it."""

    def deco(cls: type[Evaluator]) -> type[Evaluator]:
        cls.name = name
        EVALUATORS[name] = cls
        return cls

    return deco


def get_evaluator(name: str) -> type[Evaluator]:
    if name not in EVALUATORS:
        raise NasError(f"unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")
    return EVALUATORS[name]
