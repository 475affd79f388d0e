"""Backends: how a run's trials are scheduled, and nothing else.

Every backend runs the same objective (:func:`nas.trial.objective.run_objective`) on the same problem
(:mod:`nas.study.problem`) under the same driver (:func:`nas.search.driver.run`), which owns the run directory,
checks everything before writing, writes results through one :class:`nas.study.results.ResultsWriter` and
prints the summary. A backend implements the small protocol of :class:`Backend`:

* ``check()``: its own options, before anything is written;
* ``open(run)``: its state (an Optuna storage, a Ray Tune experiment), created or resumed;
* ``rows()``: one result row per trial its state holds;
* ``execute(run, remaining)``: run trials until ``remaining`` more have finished, appending each
  finished trial's row with ``run.writer.append``.

Built in: ``embedded`` (Optuna in this process), ``workers`` (N processes sharing the run's Optuna
storage, several per GPU if asked), ``ray`` (Ray Tune on a cluster). A new backend is one module with
a :class:`Backend` subclass and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any

from nas.errors import NasError

BACKENDS = {
    "embedded": "nas.backends.embedded:EmbeddedBackend",
    "workers": "nas.backends.workers:WorkersBackend",
    "ray": "nas.backends.ray:RayBackend",
}


class Backend(abc.ABC):
    name: str = ""

    def __init__(self, job):
        self.job = job

    def check(self) -> None:  # noqa: B027 (an optional hook: most backends have nothing to check)
        """Refuse impossible options (one NasError line) before the run directory is touched."""

    @abc.abstractmethod
    def open(self, run) -> None:
        """Create or resume this backend's state for the run."""

    @abc.abstractmethod
    def rows(self) -> list[dict[str, Any]]:
        """A result row for every trial in this backend's state."""

    def config(self) -> dict[str, Any]:
        """What of this backend's options is part of the run's identity (stored in config.json)."""
        return {}

    def close_dead(self) -> list[int]:
        """Close trials left running by a process that is gone; their numbers."""
        return []

    @abc.abstractmethod
    def execute(self, run, remaining: int) -> None:
        """Run trials until ``remaining`` more have finished."""

    def extra(self) -> dict[str, Any]:
        """What best.json records about where the run's step times were normalised."""
        return {"backend": self.name}


def get_backend(name: str, job) -> Backend:
    if name not in BACKENDS:
        raise NasError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(job)
