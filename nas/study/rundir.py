"""A run directory: one owner at a time, one experiment, never replaced by less, no trace of a failed start.

* **Ownership.** A driver (``nas search``, ``nas grid-scale``) holds an exclusive ``flock`` on
  ``RUN_DIR/.owner.lock`` for its whole run and writes its process id, host and command into it. A
  second driver on the same directory is refused at once with one line naming the holder; a lock left
  by a dead process is released by the kernel, so the next driver simply takes it. (``nas worker``
  joins a run on purpose and takes no ownership.)
* **One experiment.** ``config.json`` stores what defines the run; a rerun with other settings is
  refused with the keys that differ, old and new value. Its ``options`` (how results are ranked or
  extended, not what a trial computes) may change and are updated.
* **Never replaced by less.** When ``trials.csv`` records finished trials that the storage no longer
  holds (``study.db`` deleted, emptied or replaced), the run is refused: rerun with ``--restart`` to
  move the old files into ``RUN_DIR/replaced-<time>/`` and start over on purpose.
* **Checked before written.** :meth:`RunDir.check` runs before anything is created (not a file, not
  under a file, writable); a start that fails before its first trial removes what it created.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nas.core.files import _json_default, atomic_write_json, read_json
from nas.errors import NasError

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


class RunDir:
    def __init__(self, path: str | os.PathLike, what: str = "run"):
        self.path = Path(path)
        self.what = what
        self.created = False
        self._lock_fd: int | None = None
        self._wrote_config = False

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
    def own(self, config: dict[str, Any], *, restart: bool = False) -> Iterator[RunDir]:
        """Take the directory for this process and this experiment (see the module docstring). Until
        :meth:`started` is called, an exception removes what this start created."""
        self.check()
        self.created = not self.path.exists()
        self._started = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            if restart:
                self.move_aside()
            self._check_config(config)
            yield self
        except BaseException:
            if not self._started:
                self._undo()
            raise
        finally:
            self._unlock()

    def started(self) -> None:
        """From here on the directory holds results: a failure leaves it as it is."""
        self._started = True

    def _lock(self) -> None:
        fd = os.open(self.path / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                h = json.loads(holder)
                who = f"{h.get('command', 'nas')} (pid {h.get('pid')} on {h.get('host')}, since {h.get('since')})"
            except (ValueError, AttributeError):
                who = "another nas process"
            raise NasError(
                f"run directory {str(self.path)!r} is in use by {who}; wait for it to finish, use another "
                f"--out, or add a process to it with: nas worker {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(["nas", *sys.argv[1:2]]),
                }
            ).encode(),
        )
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _undo(self) -> None:
        self._unlock()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self._wrote_config:
            (self.path / CONFIG).unlink(missing_ok=True)

    # -- one experiment ------------------------------------------------------------------------------
    def _check_config(self, config: dict[str, Any]) -> None:
        path = self.path / CONFIG
        fresh = json.loads(json.dumps({"format": RUN_FORMAT, **config}, default=_json_default))
        if not path.exists():
            atomic_write_json(path, fresh)
            self._wrote_config = True
            return
        stored = read_json(path, "run configuration")
        if not isinstance(stored, dict):
            raise NasError(f"{str(path)!r} is not a run configuration (a JSON object)")
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
        if stored.get("options") != fresh.get("options"):
            atomic_write_json(path, fresh)

    # -- never replaced by less --------------------------------------------------------------------------
    def check_not_less(self, results_file: str, stored: int) -> None:
        """Refuse when the results file records more finished trials than the storage holds."""
        from nas.study.results import finished_row, read_rows

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
