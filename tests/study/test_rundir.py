"""nas.study.rundir: one owner at a time, one experiment, never replaced by less, no trace of a failed start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from nas.errors import NasError
from nas.study.rundir import FileConfigStore, RunDir, config_diff
from tests.helpers import REPO


def test_a_second_owner_is_refused_with_the_holder_named(tmp_path):
    with (
        RunDir(tmp_path / "run").own({"kind": "search", "a": 1}),
        pytest.raises(NasError, match=rf"in use by nas .*\(pid {os.getpid()} on "),
        RunDir(tmp_path / "run").own({"kind": "search", "a": 1}),
    ):
        pass
    with RunDir(tmp_path / "run").own({"kind": "search", "a": 1}):  # released at exit
        pass


def test_a_start_refused_for_another_owner_leaves_that_owners_files_alone(tmp_path, monkeypatch):
    run = tmp_path / "run"
    take = RunDir._lock

    def owner_writes_meanwhile(self):  # the owner writes a file while this start waits to be refused
        (self.path / "fidelity.json").write_text("written by the owner")
        take(self)

    with RunDir(run).own({"kind": "search"}):
        monkeypatch.setattr(RunDir, "_lock", owner_writes_meanwhile)
        with pytest.raises(NasError, match="in use by"), RunDir(run).own({"kind": "search"}):
            pass
        assert sorted(p.name for p in run.iterdir()) == [".owner.lock", "config.json", "fidelity.json"]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    code = (
        f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from nas.study.rundir import RunDir\n"
        f"with RunDir({str(run)!r}).own({{'kind': 'search'}}):\n    print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(NasError, match=f"pid {p.pid}"), RunDir(run).own({"kind": "search"}):
            pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with RunDir(run).own({"kind": "search"}):  # the kernel dropped the dead process's lock
        pass


def test_different_settings_name_only_the_keys_that_differ(tmp_path):
    cfg = {"kind": "search", "settings": {"space": "trainaware", "proxy": {"width": 0.25, "epochs": 4}}}
    with RunDir(tmp_path).own(cfg):
        pass
    other = json.loads(json.dumps(cfg))
    other["settings"]["proxy"]["epochs"] = 8
    with pytest.raises(NasError) as e, RunDir(tmp_path).own(other):
        pass
    msg = str(e.value)
    assert "settings.proxy.epochs: 4 there, 8 now" in msg and "width" not in msg and "\n" not in msg
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == [("a.c", "<absent>", 2)]


def test_options_may_change_and_are_stored(tmp_path):
    with RunDir(tmp_path).own({"kind": "grid-scale", "options": {"max_candidates": 2}}):
        pass
    with RunDir(tmp_path).own({"kind": "grid-scale", "options": {"max_candidates": 4}}):
        pass
    assert json.loads((tmp_path / "config.json").read_text())["options"] == {"max_candidates": 4}


def test_a_failed_start_leaves_no_trace(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(RuntimeError), RunDir(run).own({"kind": "search"}):
        raise RuntimeError("the storage could not be opened")
    assert not run.exists()
    # An existing directory keeps what it had; only the configuration this start wrote goes.
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), RunDir(run).own({"kind": "search"}):
        raise RuntimeError("boom")
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["notes.txt"]
    # Once started, a failure leaves the results alone.
    with pytest.raises(RuntimeError), RunDir(run).own({"kind": "search"}) as rd:
        rd.started()
        raise RuntimeError("a trial crashed the driver")
    assert (run / "config.json").exists()


def test_a_failed_start_in_an_existing_directory_removes_all_it_created_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    state = FileConfigStore(run / "ray" / "nas-config.json")
    with pytest.raises(RuntimeError), RunDir(run).own({"kind": "search"}, state=state) as rd:
        for name in ("study.db", "study.db-wal", "trials.csv"):
            (rd.path / name).write_text("written by this start")
        assert (run / ".owner.lock").exists() and (run / "ray" / "nas-config.json").exists()
        raise RuntimeError("the first trial never finished")
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # no lock file, study, config or results


def test_a_failed_restart_puts_the_old_run_back(tmp_path):
    run = tmp_path / "run"
    with RunDir(run).own({"kind": "search"}) as rd:
        rd.started()
        (run / "trials.csv").write_text("number,state\n0,COMPLETE\n")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".owner.lock"}
    with pytest.raises(RuntimeError), RunDir(run).own({"kind": "search"}, restart=True):
        assert not (run / "trials.csv").exists()
        raise RuntimeError("boom")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".owner.lock"} == before


def test_the_state_keeps_the_settings_when_config_json_is_lost(tmp_path):
    run = tmp_path / "run"
    state = lambda: FileConfigStore(run / "ray" / "nas-config.json")  # noqa: E731
    cfg = {"kind": "search", "settings": {"epochs": 1}, "options": {"top": 1}}
    with RunDir(run).own(cfg, state=state()) as rd:
        rd.started()
    saved = (run / "config.json").read_text()
    assert json.loads((run / "ray" / "nas-config.json").read_text()) == json.loads(saved)
    (run / "config.json").unlink()
    other = {**cfg, "settings": {"epochs": 2}}
    with (
        pytest.raises(NasError, match=r"different settings \(settings.epochs: 1 there, 2 now\)"),
        RunDir(run).own(other, state=state()),
    ):
        pass
    assert not (run / "config.json").exists()
    with RunDir(run).own({**cfg, "options": {"top": 2}}, state=state()):  # options may change, in both copies
        pass
    assert json.loads((run / "config.json").read_text())["options"] == {"top": 2}
    assert json.loads((run / "ray" / "nas-config.json").read_text())["options"] == {"top": 2}
    (run / "config.json").write_text(saved.replace('"epochs": 1', '"epochs": 3'))  # the two copies disagree
    with pytest.raises(NasError, match="epochs: 3 there, 1 now"), RunDir(run).own(cfg, state=state()):
        pass


def test_a_lost_state_with_recorded_results_is_refused_before_it_is_created(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trials.csv").write_text("number,state,error\n0,COMPLETE,\n")
    state = FileConfigStore(run / "ray" / "nas-config.json")
    with (
        pytest.raises(NasError, match="records 1 finished trials but the run's storage holds 0"),
        RunDir(run).own({"kind": "search"}, state=state, results_file="trials.csv"),
    ):
        pass
    assert sorted(p.name for p in run.iterdir()) == ["trials.csv"]


def test_results_are_never_replaced_by_less(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trials.csv").write_text(
        "number,state,error\n0,COMPLETE,\n1,PRUNED,\n2,FAIL,boom\n"
        "3,FAIL,interrupted (the process running it stopped)\n4,RUNNING,\n"
    )
    with RunDir(run).own({"kind": "search"}) as rd:
        rd.check_not_less("trials.csv", 3)  # the storage holds all three finished ones: fine
        with pytest.raises(NasError, match=r"records 3 finished trials but the run's storage holds 0.*--restart"):
            rd.check_not_less("trials.csv", 0)
    with RunDir(run).own({"kind": "search"}, restart=True):
        pass
    [old] = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert (old / "trials.csv").exists() and not (run / "trials.csv").exists()


def test_output_paths_that_cannot_work_are_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NasError, match="is a file"):
        RunDir(f).check()
    with pytest.raises(NasError, match="which is a file"):
        RunDir(f / "run").check()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(NasError, match="permission denied"):
            RunDir(ro / "run").check()
