"""A run directory: one owner at a time, one experiment, never replaced by less, no trace of a failed start.

* **Ownership.** A driver (``nas search``, ``nas grid-scale``) holds an exclusive ``flock`` on
  ``RUN_DIR/.owner.lock`` for its whole run and writes its process id, host and command into it. A
  second driver on the same directory is refused at once with one line naming the holder; a lock left
  by a dead process is released by the kernel, so the next driver simply takes it. (``nas worker``
  joins a run on purpose and takes no ownership.)
* **One experiment.** ``config.json`` stores what defines the run, and so does the run's own state
  (a :class:`ConfigStore`: the Optuna study's ``config`` user attribute, or a file inside the
  backend's state), so a run that lost ``config.json`` is still recognised: a rerun with other
  settings is refused with the keys that differ, old and new value, whichever copy is left, and a
  lost ``config.json`` is written again from the state when the settings match. Its ``options`` (how
  results are ranked or extended, not what a trial computes) may change and are updated.
* **Never replaced by less.** When ``trials.csv`` records finished trials that the storage no longer
  holds (``study.db`` deleted, emptied or replaced), the run is refused: rerun with ``--restart`` to
  move the old files into ``RUN_DIR/replaced-<time>/`` and start over on purpose. A storage that is
  gone altogether is noticed before anything is created, so the refusal creates no empty study.
* **Checked before written.** :meth:`RunDir.check` runs before anything is created (not a file, not
  under a file, writable). Until :meth:`RunDir.started` (the driver calls it once a trial has
  finished), a failure undoes this start: what it created goes (the directory, or in an existing one
  every entry it added: lock file, ``study.db``, ``config.json``, results), a ``--restart``'s moved
  files come back, and a study it created in a database server is deleted.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nas.core.files import (
    _json_default,
    atomic_write_json,
    describe_holder,
    read_holder,
    read_json,
    write_holder,
)
from nas.errors import NasError
from nas.study.results import finished_row, read_rows

RUN_FORMAT = "nas.run/1"
OWNER_LOCK = ".owner.lock"
CONFIG = "config.json"


def config_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += config_diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


class ConfigStore(abc.ABC):
    """Where a backend's state keeps the run's configuration, beside ``config.json``."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """The state exists (found without creating anything)."""

    @abc.abstractmethod
    def read(self) -> dict[str, Any] | None:
        """The configuration stored there; None when there is none (no state, or an older run's)."""

    @abc.abstractmethod
    def write(self, config: dict[str, Any]) -> None:
        """Store ``config``, creating the state if needed."""

    def undo(self) -> None:  # noqa: B027 (a hook: a store inside the run directory goes with it)
        """Remove what :meth:`write` created outside the run directory."""


class FileConfigStore(ConfigStore):
    """A JSON file inside the backend's own state (``OUT/ray/nas-config.json`` for Ray Tune)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._created: list[Path] = []

    def exists(self) -> bool:
        return self.path.parent.is_dir()

    def read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        data = read_json(self.path, "run configuration")
        if not isinstance(data, dict):
            raise NasError(f"{str(self.path)!r} is not a run configuration (a JSON object)")
        return data

    def write(self, config: dict[str, Any]) -> None:
        for p in (self.path.parent, self.path):
            if not p.exists():
                self._created.append(p)
        atomic_write_json(self.path, config)

    def undo(self) -> None:
        for p in reversed(self._created):
            with contextlib.suppress(OSError):
                p.rmdir() if p.is_dir() else p.unlink()


class RunDir:
    def __init__(self, path: str | os.PathLike, what: str = "run"):
        self.path = Path(path)
        self.what = what
        self.created = False
        self._lock_fd: int | None = None
        self._started = False
        self._before: set[str] = set()
        self._moved: Path | None = None
        self._state: ConfigStore | None = None

    # -- before anything is written --------------------------------------------------------------
    def check(self) -> None:
        """The directory can be used: not a file, not under a file, and writable (or creatable)."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise NasError(f"--out {str(p)!r} is a file, not a directory")
        probe = p
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise NasError(f"--out {str(p)!r} is under {str(probe)!r}, which is a file")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise NasError(f"cannot write to {str(probe)!r} (permission denied); choose another --out")

    # -- ownership -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def own(
        self,
        config: dict[str, Any],
        *,
        restart: bool = False,
        state: ConfigStore | None = None,
        results_file: str | None = None,
    ) -> Iterator[RunDir]:
        """Take the directory for this process and this experiment (see the module docstring): the
        configuration is checked against ``config.json`` and against ``state`` (the backend's copy),
        and a state that is gone while ``results_file`` records finished trials is refused before it
        is created again. Until :meth:`started` is called, an exception undoes this start."""
        self.check()
        self.created = not self.path.exists()
        self._started, self._moved, self._state = False, None, state
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            had_lock = (self.path / OWNER_LOCK).exists()
            self._lock()
            # Listed once it is ours: what the previous owner wrote up to its end is not this start's.
            self._before = set(os.listdir(self.path)) - (set() if had_lock else {OWNER_LOCK})
            if restart:
                self._moved = self.move_aside()
            if state is not None and results_file is not None and not state.exists():
                self.check_not_less(results_file, 0)
            self._check_config(config, state)
            yield self
        except BaseException:
            if not self._started and self._lock_fd is not None:  # refused for another owner: not ours to undo
                self._undo()
            raise
        finally:
            self._unlock()

    def started(self) -> None:
        """From here on the directory holds results: a failure leaves it as it is."""
        self._started = True

    def _lock(self) -> None:
        path = self.path / OWNER_LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(fd)
                os.close(fd)
                who = f"{holder.get('command', 'nas')} ({describe_holder(holder)})" if holder else "another nas process"
                raise NasError(
                    f"run directory {str(self.path)!r} is in use by {who}; wait for it to finish, use another "
                    f"--out, or add a process to it with: nas worker {self.path}"
                ) from None
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
            os.close(fd)  # the file we locked was removed by a start that failed: lock the one there now
        write_holder(fd, command=" ".join(["nas", *sys.argv[1:2]]))
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _undo(self) -> None:
        """Remove what this start created (the lock last, while still held), put back what it moved."""
        if self._state is not None:
            with contextlib.suppress(Exception):  # best effort: the error that brought us here matters more
                self._state.undo()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.is_dir():
            for name in sorted(set(os.listdir(self.path)) - self._before - {OWNER_LOCK}):
                p = self.path / name
                if p != self._moved:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            if self._moved is not None:
                for p in self._moved.iterdir():
                    p.rename(self.path / p.name)
                self._moved.rmdir()
            if OWNER_LOCK not in self._before:
                (self.path / OWNER_LOCK).unlink(missing_ok=True)
        self._unlock()

    # -- one experiment ------------------------------------------------------------------------------
    def _check_config(self, config: dict[str, Any], state: ConfigStore | None) -> None:
        path = self.path / CONFIG
        fresh = json.loads(json.dumps({"format": RUN_FORMAT, **config}, default=_json_default))
        stored = read_json(path, "run configuration") if path.exists() else None
        if stored is not None and not isinstance(stored, dict):
            raise NasError(f"{str(path)!r} is not a run configuration (a JSON object)")
        kept = state.read() if state is not None else None
        for old in (stored, kept):
            if old is not None:
                self._refuse_other_settings(old, fresh)
        if stored is None or stored.get("options") != fresh.get("options"):
            atomic_write_json(path, fresh)
        if state is not None and (kept is None or kept.get("options") != fresh.get("options")):
            state.write(fresh)

    def _refuse_other_settings(self, stored: dict[str, Any], fresh: dict[str, Any]) -> None:
        diffs = config_diff(
            {k: v for k, v in stored.items() if k != "options"}, {k: v for k, v in fresh.items() if k != "options"}
        )
        if diffs:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diffs[:4])
            more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
            raise NasError(
                f"{str(self.path)!r} holds a {self.what} with different settings ({shown}{more}); pass another "
                "--out to start a new run"
            )

    # -- never replaced by less --------------------------------------------------------------------------
    def check_not_less(self, results_file: str, stored: int) -> None:
        """Refuse when the results file records more finished trials than the storage holds."""
        recorded = sum(1 for r in read_rows(self.path / results_file) if finished_row(r))
        if recorded > stored:
            raise NasError(
                f"{str(self.path / results_file)!r} records {recorded} finished trials but the run's storage "
                f"holds {stored} (was study.db deleted, emptied or replaced?); restore it, or rerun with "
                "--restart to move the old results aside and start over"
            )

    def move_aside(self) -> Path | None:
        """``--restart``: move every file of the old run into ``replaced-<time>/``."""
        keep = {OWNER_LOCK}
        old = [p for p in self.path.iterdir() if p.name not in keep and not p.name.startswith("replaced-")]
        if not old:
            return None
        dest = self.path / time.strftime("replaced-%Y%m%d-%H%M%S")
        dest.mkdir()
        for p in old:
            p.rename(dest / p.name)
        return dest
