"""The backend interface and its registry: how a run's trials are scheduled, and nothing else.

Every backend runs the same objective (:func:`nas.trial.objective.run_objective`) on the same
problem (:mod:`nas.study.problem`) under the same driver (:func:`nas.search.driver.run`), which owns
the run directory, checks everything before writing, prepares the run's target, writes results
through one :class:`nas.study.results.ResultsWriter` and prints the summary. A backend implements
the small protocol of :class:`Backend` and declares its own command-line flags (:class:`Flag`), so
the CLI offers them without naming any backend; a new backend is one module with a
:func:`register_backend` class and one import line in :mod:`nas.backends`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import NasError
from nas.study.rundir import ConfigStore, FileConfigStore

STATE_CONFIG = "nas-config.json"  # the run's configuration inside a backend's own state directory


@dataclass(frozen=True)
class Flag:
    """A command-line flag a backend owns: ``--name`` with argparse's type, default, help, metavar."""

    name: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    help: str = ""
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


class Backend(abc.ABC):
    name: str = ""
    help: str = ""
    selectable = True  # the user names it with --backend (else another backend's flags select it)
    family = ""  # the kind of state it keeps: runs of the same family resume each other's
    parallel = False  # several processes append to the run's results at the same time
    flags: tuple[Flag, ...] = ()
    group = ""  # the help heading of its flags

    def __init__(self, job):
        self.job = job

    @classmethod
    def options(cls, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(backend name, options) from the parsed flags of this backend: it may hand over to another
        (``--workers N`` with the embedded backend runs the workers backend)."""
        return cls.name, {f.dest: args.get(f.dest, f.default) for f in cls.flags}

    def check(self) -> None:  # noqa: B027 (an optional hook: most backends have nothing to check)
        """Refuse impossible options (one NasError line) before the run directory is touched."""

    def target_device(self) -> str:
        """Where the run's target is when no table file names one: the device the trials run on."""
        return self.job.settings.device

    def prepare_target(self, prepare: Callable[[str], Any]):
        """Prepare the run's target (``prepare(device)``) where that device is: here, by default."""
        return prepare(self.target_device())

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
        """What best.json records about the backend."""
        return {"backend": self.name}

    def config_store(self) -> ConfigStore:
        """Where the backend's own state keeps the run's configuration beside ``config.json``: by
        default a file in its state directory (``OUT/<backend>/nas-config.json``), which goes wherever
        that state goes."""
        return FileConfigStore(Path(self.job.out) / self.name / STATE_CONFIG)


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str) -> type[Backend]:
    if name not in BACKENDS:
        known = ", ".join(n for n, b in BACKENDS.items() if b.selectable)
        raise NasError(f"unknown backend {name!r}; known: {known}")
    return BACKENDS[name]


def backend_from_flags(name: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The backend ``--backend NAME`` and its flags select, refusing a flag another backend owns
    that was set (one line naming the flag and its backend)."""
    chosen = get_backend(name)
    if not chosen.selectable:
        known = ", ".join(n for n, b in BACKENDS.items() if b.selectable)
        raise NasError(f"unknown backend {name!r}; known: {known}")
    for other in BACKENDS.values():
        if other is chosen:
            continue
        for f in other.flags:
            if f not in chosen.flags and args.get(f.dest, f.default) != f.default:
                raise NasError(f"{f.name} is for --backend {other.name}, not {name}")
    return chosen.options(args)
