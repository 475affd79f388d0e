"""The Optuna side of a run: storage, samplers, pruners, and a study's trials as result rows.

The study lives in ``RUN_DIR/study.db`` (SQLite) unless ``--storage`` names another Optuna storage URL
(PostgreSQL, MySQL). A trial's row (every figure it produced) is stored as one user attribute, so the
result files can always be rebuilt from the study, which is the run's truth.

A trial counts toward the requested total once it is *finished*: complete, pruned, or failed with a
recorded reason. A trial that was running when its process died is not: a rerun closes it
(:func:`close_dead_trials`: at once when its process is gone from this machine, else when its
heartbeat, a ``heartbeat`` user attribute renewed every :data:`HEARTBEAT_S` seconds, is older than
:data:`GRACE_S`) and runs a replacement.

The study also keeps the run's configuration (what ``config.json`` holds) in its :data:`CONFIG_ATTR`
user attribute, written when the study is created (:class:`StudyConfigStore`), so a run directory
that lost ``config.json`` is still checked against the settings its trials were run with.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from nas.core.interrupt import check as check_interrupt
from nas.core.interrupt import critical
from nas.errors import NasError
from nas.study.rundir import ConfigStore

# A running trial renews its heartbeat every HEARTBEAT_S; one silent for GRACE_S is taken as killed
# (needed only for trials of processes on other machines: this machine's are checked by process id).
HEARTBEAT_S, GRACE_S = 30, 120
# A live process records where its trial runs (hostname, pid) within milliseconds of creating it (a few
# seconds on a busy database); one that has said nothing after UNPLACED_S was killed in between.
UNPLACED_S = 30
DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
INTERRUPTED = "interrupted (the process running it stopped)"
CONFIG_ATTR = "config"  # study user attribute: the run's configuration, as config.json holds it


def storage_url(url: str | None, run_dir: Path) -> str:
    return url or f"sqlite:///{(Path(run_dir) / 'study.db').resolve()}"


def check_storage_url(url: str | None) -> None:
    """Open a connection to a user-given storage without writing to it (the default SQLite file
    lives in the run directory, which is checked with it)."""
    if url is None:
        return
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # SQLAlchemy raises a zoo of types for a bad URL or unreachable server
        raise NasError(f"cannot open storage {url!r}: {str(e).splitlines()[0]}") from None


def make_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """The run's Optuna storage. SQLite gets a long lock timeout (its 5 s default is short for a busy
    machine with parallel workers) and write-ahead logging with ``synchronous=NORMAL``: a commit then
    costs no fsync (about 17 ms each on a busy disk, 15 commits a trial), readers never block the
    writer, and a killed process still leaves a consistent database (a power cut may lose the last
    commits, never corrupt it). WAL needs a local disk: put a SQLite run directory on a network file
    system and use ``--storage`` with a database server instead."""
    url = storage_url(url, run_dir)
    try:
        if not url.startswith("sqlite"):
            return optuna.storages.RDBStorage(url)
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})

        def pragmas(conn, _record) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        sqlalchemy.event.listen(storage.engine, "connect", pragmas)
        storage.engine.dispose()  # connections opened while Optuna set the schema up get the pragmas too
        return storage
    except Exception as e:
        raise NasError(f"cannot open storage {url!r}: {str(e).splitlines()[0]}") from None


class StudyConfigStore(ConfigStore):
    """The run's configuration in its Optuna study (:data:`CONFIG_ATTR`). Looking never creates: a
    default ``study.db`` that is missing or empty (0 bytes) is no study, and is not opened."""

    def __init__(self, url: str | None, run_dir: Path, name: str, directions):
        self.url, self.run_dir, self.name, self.directions = url, Path(run_dir), name, list(directions)
        self._storage: optuna.storages.BaseStorage | None = None
        self._created = False
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # its creation log is not ours to print

    def _study(self) -> optuna.Study | None:
        if self.url is None:
            db = self.run_dir / "study.db"
            if not db.is_file() or db.stat().st_size == 0:
                return None
        if self._storage is None:
            self._storage = make_storage(self.url, self.run_dir)
        return load_study(self._storage, self.name)

    def exists(self) -> bool:
        return self._study() is not None

    def read(self) -> dict[str, Any] | None:
        study = self._study()
        return None if study is None else study.user_attrs.get(CONFIG_ATTR)

    def write(self, config: dict[str, Any]) -> None:
        study = self._study()
        if self._storage is None:
            self._storage = make_storage(self.url, self.run_dir)
        with critical():
            if study is None:
                study = optuna.create_study(storage=self._storage, study_name=self.name, directions=self.directions)
                self._created = True
            study.set_user_attr(CONFIG_ATTR, config)
        self._release()

    def undo(self) -> None:
        if self._created and self._storage is not None:
            optuna.delete_study(study_name=self.name, storage=self._storage)
        self._release()

    def _release(self) -> None:
        """Close the connections (the backend opens its own), so no open file outlives this check."""
        if isinstance(self._storage, optuna.storages.RDBStorage):
            self._storage.engine.dispose()


def finished(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that counts toward the requested total (an interrupted one does not: it is rerun)."""
    return trial.state in DONE_STATES or (trial.state == optuna.trial.TrialState.FAIL and "error" in trial.user_attrs)


def load_study(storage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _unplaced(t: optuna.trial.FrozenTrial) -> bool:
    """A trial that has not said where it runs (its process was killed between creating and tagging it)."""
    return not isinstance(t.user_attrs.get("pid"), int) and "heartbeat" not in t.user_attrs


def _age(t: optuna.trial.FrozenTrial, now: float) -> float:
    return now - t.datetime_start.timestamp() if t.datetime_start else 0.0


def wait_for_unplaced_trials(study: optuna.Study, echo=None) -> None:
    """Wait until every RUNNING trial has said where it runs or is :data:`UNPLACED_S` old, so that
    :func:`close_dead_trials` can judge it: a run killed between creating a trial and tagging it
    leaves one, which a rerun straight after the kill would otherwise leave RUNNING for good."""
    told = False
    while True:
        now = time.time()
        young = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if _unplaced(t) and _age(t, now) < UNPLACED_S
        ]
        if not young:
            return
        if echo is not None and not told:
            numbers = ", ".join(str(t.number) for t in young)
            echo(f"waiting up to {UNPLACED_S} s for trial(s) {numbers} to say which process runs them")
            told = True
        check_interrupt()
        time.sleep(0.5)


def close_dead_trials(study: optuna.Study) -> list[int]:
    """Fail (without a reason, so they are rerun) the RUNNING trials whose process is gone: at once
    for this machine's trials (by process id), by heartbeat for other machines', after
    :data:`UNPLACED_S` for a trial that never said where it runs. Returns their numbers."""
    host, now = socket.gethostname(), time.time()
    closed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, where = t.user_attrs.get("pid"), t.user_attrs.get("hostname")
        if where == host and isinstance(pid, int):
            dead = pid != os.getpid() and not _alive(pid)
        elif _unplaced(t):
            dead = _age(t, now) > UNPLACED_S
        else:  # another machine's: its heartbeat decides
            beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
            dead = now - float(beat) > GRACE_S
        if dead:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            closed.append(t.number)
    return closed


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The result row of one stored trial (its recorded row, or what is known of an unfinished one)."""
    row: dict[str, Any] = dict(t.user_attrs.get("row") or {})
    row.update({"number": t.number, "state": t.state.name})
    for k in ("arch", "hostname", "pid", "worker", "duplicate_of"):
        if k not in row and k in t.user_attrs:
            row[k] = t.user_attrs[k]
    if t.state == optuna.trial.TrialState.FAIL and not row.get("error"):
        row["error"] = t.user_attrs.get("error") or INTERRUPTED
    if row.get("duration_s") is None and t.duration is not None:
        row["duration_s"] = t.duration.total_seconds()
    row.update({f"param_{k}": v for k, v in t.params.items()})
    return row


def study_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Rows of every trial that started (enqueued, never started ones are not trials yet)."""
    return [trial_row(t) for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
