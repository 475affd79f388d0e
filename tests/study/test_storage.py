"""nas.study.storage: a study's trials as rows, and trials of dead processes closed at once."""

from __future__ import annotations

import socket
import subprocess
import time

import optuna
import pytest

from nas.study.storage import (
    CONFIG_ATTR,
    GRACE_S,
    INTERRUPTED,
    UNPLACED_S,
    StudyConfigStore,
    close_dead_trials,
    finished,
    make_storage,
    study_rows,
    wait_for_unplaced_trials,
)


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(storage=make_storage(None, tmp_path), study_name="s", direction="maximize")


def _running(study, **attrs):
    t = study.ask()
    for k, v in attrs.items():
        t.set_user_attr(k, v)
    return t


def test_trials_of_dead_processes_are_closed_at_once_and_live_ones_kept(study):
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        t_dead = _running(study, pid=dead.pid, hostname=host)
        t_alive = _running(study, pid=alive.pid, hostname=host)
        t_remote_old = _running(study, pid=1, hostname="elsewhere", heartbeat=time.time() - GRACE_S - 5)
        t_remote_new = _running(study, pid=1, hostname="elsewhere", heartbeat=time.time())
        assert close_dead_trials(study) == [t_dead.number, t_remote_old.number]
    finally:
        alive.kill()
        alive.wait()
    states = {t.number: t.state for t in study.get_trials()}
    assert states[t_alive.number] == states[t_remote_new.number] == optuna.trial.TrialState.RUNNING
    rows = {r["number"]: r for r in study_rows(study)}
    assert rows[t_dead.number]["state"] == "FAIL" and rows[t_dead.number]["error"] == INTERRUPTED
    # Closed without a reason: it does not count toward the requested trials, so it is run again.
    assert not finished(study.get_trials()[t_dead.number])


def test_a_trial_killed_before_saying_where_it_runs_is_waited_for_then_closed(study, monkeypatch):
    """A process killed between creating a trial and tagging it leaves a RUNNING trial with no process
    id: a rerun straight after the kill waits until it is UNPLACED_S old, then closes it (CI saw such a
    trial left RUNNING at the end of a resumed pruning search)."""
    import nas.study.storage as storage

    t_unplaced = study.ask()
    t_partly = _running(study, hostname=socket.gethostname())  # killed between its two tags
    t_live = _running(study, pid=1, hostname="elsewhere", heartbeat=time.time())
    assert close_dead_trials(study) == []  # young: its process may be about to tag it
    clock = {"now": time.time()}
    monkeypatch.setattr(storage.time, "time", lambda: clock["now"])

    def sleep(s):
        clock["now"] += s

    monkeypatch.setattr(storage.time, "sleep", sleep)
    lines = []
    wait_for_unplaced_trials(study, echo=lines.append)
    assert clock["now"] - study.get_trials()[t_unplaced.number].datetime_start.timestamp() >= UNPLACED_S
    assert len(lines) == 1 and f"{t_unplaced.number}, {t_partly.number}" in lines[0]
    assert close_dead_trials(study) == [t_unplaced.number, t_partly.number]
    assert study.get_trials()[t_live.number].state == optuna.trial.TrialState.RUNNING
    wait_for_unplaced_trials(study, echo=lines.append)  # nothing left to wait for: returns at once
    assert len(lines) == 1


def test_rows_come_from_the_stored_row(study):
    t = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2])})
    t.set_user_attr("row", {"arch": "a", "reward": 0.5, "state": "stale"})
    study.tell(t, 0.5)
    [row] = study_rows(study)
    assert row["state"] == "COMPLETE" and row["reward"] == 0.5 and row["param_x"] in (1, 2)
    study.enqueue_trial({"x": 1})  # waiting trials are not rows
    assert len(study_rows(study)) == 1


def test_the_run_config_lives_in_the_study_and_looking_creates_nothing(tmp_path):
    store = StudyConfigStore(None, tmp_path, "s", ["maximize"])
    assert not store.exists() and store.read() is None
    (tmp_path / "study.db").write_bytes(b"")  # emptied: no study, and left as it is
    assert not store.exists() and store.read() is None
    assert (tmp_path / "study.db").read_bytes() == b""
    (tmp_path / "study.db").unlink()
    assert not list(tmp_path.iterdir())
    store.write({"kind": "search", "options": {}})
    study = optuna.load_study(study_name="s", storage=make_storage(None, tmp_path))
    assert study.user_attrs[CONFIG_ATTR] == {"kind": "search", "options": {}}
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    again = StudyConfigStore(None, tmp_path, "s", ["maximize"])
    assert again.exists() and again.read() == {"kind": "search", "options": {}}
    store.undo()  # the study this store created goes
    assert optuna.study.get_all_study_names(make_storage(None, tmp_path)) == []
