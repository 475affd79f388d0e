"""What a run searches, apart from how trials are scheduled.

A :class:`Problem` is the part of a run that differs between ``nas search`` (architectures sampled
from a space, :class:`nas.study.space.SearchProblem`) and ``nas grid-scale`` (fixed compound-scaling
candidates, :class:`nas.study.grid.GridProblem`): how a proposal is drawn from an Optuna trial,
the seed and pruning signal of a trial, what the study is told, the result columns, the best, the
plot and the summary. Backends (:mod:`nas.backends`) only schedule; the driver (:mod:`nas.search.driver`)
and the objective (:func:`nas.trial.objective.run_objective`) are the same for every problem.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import pandas as pd

from nas.study.results import EXTRA_COLUMNS, TRIAL_COLUMNS, finished_row, frame


class Problem(abc.ABC):
    kind: str = ""  # stored in config.json: "search" or "grid-scale"
    results_file: str = "trials.csv"
    study_name: str = "nas-search"
    directions: tuple[str, ...] = ("maximize",)
    objective_names: tuple[str, ...] = ()  # a multi-objective study's: the row fields its values are
    incremental: bool = True  # results can be appended line by line (else rewritten whole)
    unit: str = "trials"
    space_matters = True  # a target table must be of the settings' space (not for a grid of one scaled base)

    def __init__(self, settings):
        self.settings = settings

    # -- identity ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """What defines the run (stored in config.json; ``options`` may change between reruns)."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: dict[str, Any]) -> tuple[Problem, str, str, str | None]:
        """The problem of a stored config, with its sampler, pruner and storage."""

    def with_settings(self, settings) -> Problem:
        """The same problem with other (resolved) settings."""
        return type(self).from_config({**self.config(), "settings": settings.to_dict()})[0]

    # -- proposals -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def propose(self, trial) -> dict[str, Any]:
        """The trial's proposal from an Optuna trial (define-by-run): ``{"arch": str, "facts": {...},
        "image_scale": float}``, plain JSON so it can travel to a worker."""

    def fixed_points(self) -> list[dict[str, Any]] | None:
        """Parameters to enqueue, for a problem with fixed proposals (None: sampled)."""
        return None

    def pending(self, rows: list[dict[str, Any]], n_trials: int) -> tuple[int, int]:
        """(finished, still to run) of the ``n_trials`` the run asks for."""
        done = sum(1 for r in rows if finished_row(r))
        return done, n_trials - done

    def reference_arch(self):
        """What S and P are relative to (None: the space's reference)."""
        return None

    @abc.abstractmethod
    def seed(self, number: int) -> int: ...

    def pruning_value(self, reward, known: dict[str, Any], accuracy: float) -> float | list[float] | None:
        """The value a pruner or scheduler judges a trial by after an epoch: one number, or one per
        objective of a multi-objective study (in ``directions``' order); None: no pruning."""
        return None

    @abc.abstractmethod
    def values(self, row: dict[str, Any]) -> float | list[float]:
        """What the study is told for a complete trial."""

    # -- results -------------------------------------------------------------------------------------
    def columns(self) -> list[str]:
        return TRIAL_COLUMNS + EXTRA_COLUMNS + self.param_columns()

    def param_columns(self) -> list[str]:
        return []

    def table(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """The results file's contents (default: one line per trial, by number)."""
        return frame(rows, self.columns())

    @abc.abstractmethod
    def best_key(self, row: dict[str, Any]) -> float | None:
        """Ranks complete rows for the best (higher is better; None: not eligible)."""

    @abc.abstractmethod
    def write_best(self, run_dir: Path, df: pd.DataFrame, extra: dict[str, Any]) -> dict[str, Any] | None:
        """Write best.json (and whatever else depends on the best); return the best row or None."""

    def plot(self, run_dir: Path, df: pd.DataFrame, extra: dict[str, Any]) -> Path | None:
        return None

    @abc.abstractmethod
    def summary(self, df: pd.DataFrame) -> str: ...

    def finish(self, run_dir: Path, df: pd.DataFrame, echo, evaluator) -> dict[str, Any]:
        """Work after every trial finished (with the driver's evaluator); sections for ``fidelity.json``."""
        return {}

    def closing_line(self, best: dict[str, Any], run_dir: Path) -> str:
        """The last line of a run that found a best."""
        return f"best architecture (reward {best['reward']:.4f}): {best['arch']}"

    def files(self) -> str:
        """The result files, for the closing line."""
        return "trials.csv, best.json"
