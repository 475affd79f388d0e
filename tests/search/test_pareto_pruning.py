"""`nas search --sampler nsga2 --pruner pareto` end to end on the Optuna backends (embedded and
workers): trials are pruned by the rule, the results and the study record it, and a search killed
in the middle and rerun keeps every finished trial. Stand-in evaluations (tests/helpers.py STANDIN):
what is tested is how trials are judged and stored, not what they compute."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from nas.study.pareto import count_dominators, intermediate
from nas.study.space import OBJECTIVES
from tests.helpers import STANDIN, in_process, nas_env, write_plugin
from tests.search.test_search import _consistent, _standin_cmd

DIRECTIONS = [d for _, d in OBJECTIVES]
EPOCHS = 3
PARETO = ["--sampler", "nsga2", "--pruner", "pareto:dominators=1,warmup=2", "--epochs", str(EPOCHS)]


@pytest.fixture
def standin_env(tmp_path):
    return nas_env(write_plugin(tmp_path / "plugins", "nas_standin", STANDIN))


def _cmd(out: Path, trials: int, *extra: str) -> list[str]:
    cmd = _standin_cmd(out, trials, *PARETO, *extra)
    i = cmd.index("--sampler")
    del cmd[i : i + 2]  # the stand-in command's random sampler: nsga2 here
    return cmd


def _check_pruned_by_the_rule(out: Path) -> pd.DataFrame:
    """Every PRUNED trial in trials.csv was dominated by another trial's stored vector at the epoch it
    stopped, which is never the last; the study and the file agree."""
    df = pd.read_csv(out / "trials.csv")
    study = optuna.load_study(study_name="nas-search", storage=f"sqlite:///{out / 'study.db'}")
    trials = {t.number: t for t in study.get_trials()}
    pruned = df[df["state"] == "PRUNED"]
    assert len(pruned), df[["number", "state"]]
    for n in pruned["number"]:
        t = trials[int(n)]
        assert t.state == optuna.trial.TrialState.PRUNED
        stop = max(e for e in range(1, EPOCHS + 1) if intermediate(t, e) is not None)
        assert stop < EPOCHS
        others = [v for u in trials.values() if u.number != t.number and (v := intermediate(u, stop)) is not None]
        assert count_dominators(intermediate(t, stop), others, DIRECTIONS) >= 1
        row = df[df["number"] == n].iloc[0]
        assert row["accuracy"] == pytest.approx(intermediate(t, stop)[0])  # the accuracy it had when stopped
    copies = set(df[df["duplicate_of"].notna()]["number"]) if "duplicate_of" in df else set()
    for t in trials.values():
        if t.state == optuna.trial.TrialState.COMPLETE and t.number not in copies:  # a copy trained nothing
            assert intermediate(t, EPOCHS)[0] == pytest.approx(t.values[0])  # the last vector is its result
    best = json.loads((out / "best.json").read_text())
    assert set(best["pareto_front"]) <= set(df[df["state"] == "COMPLETE"]["number"])
    return df


@pytest.mark.slow
def test_embedded_search_prunes_dominated_trials_and_a_rerun_extends_it(tmp_path, standin, capsys):
    out = tmp_path / "run"
    p = in_process(_cmd(out, 10), capsys)
    assert p.returncode == 0, p.stdout + p.stderr
    first = _check_pruned_by_the_rule(out)
    assert "pruned" in p.stdout
    p = in_process(_cmd(out, 14), capsys)
    assert p.returncode == 0, p.stdout + p.stderr
    df = _consistent(out, 14)
    kept = df.set_index("number").loc[first["number"], "state"]
    assert kept.tolist() == first["state"].tolist()  # the first run's trials, pruned ones included, unchanged
    _check_pruned_by_the_rule(out)


@pytest.mark.slow
def test_workers_search_prunes_dominated_trials(tmp_path, standin_env):
    out = tmp_path / "run"
    # 16 trials: which vectors a worker's trial is judged against depends on the other worker's timing,
    # and with 10 a run without any dominated trial was seen once (the embedded test's 10 are deterministic).
    p = subprocess.run(_cmd(out, 16, "--workers", "2"), env=standin_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    df = _consistent(out, 16)
    assert set(df["worker"].dropna().astype(int)) == {0, 1}
    _check_pruned_by_the_rule(out)


@pytest.mark.slow
def test_a_pruning_search_killed_mid_trial_keeps_its_finished_trials_on_rerun(tmp_path, standin_env):
    out = tmp_path / "run"
    env = {**standin_env, "NAS_STANDIN_SLEEP": "0.15"}
    proc = subprocess.Popen(_cmd(out, 12), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    rows = pd.DataFrame()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if (out / "trials.csv").exists():
            rows = pd.read_csv(out / "trials.csv")
            if (rows["state"] == "PRUNED").any() and len(rows) >= 6:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (rows["state"] == "PRUNED").any(), rows
    p = subprocess.run(_cmd(out, 12), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    df = _consistent(out, 12)
    after = df.set_index("number")["state"]
    for n, state in zip(rows["number"], rows["state"]):
        assert after[n] == state, (n, state, after[n])  # nothing finished before the kill was lost or redone
    _check_pruned_by_the_rule(out)


@pytest.mark.slow
def test_a_run_started_with_another_pruner_resumes_with_its_own_when_the_command_names_none(tmp_path, standin, capsys):
    """nsga2's default was ``none`` before ``pareto``: rerunning such a run's command resumes it as it
    was started; naming another pruner is refused; a new run gets the default."""
    out = tmp_path / "run"
    cmd = _standin_cmd(out, 3, "--epochs", "2")
    i = cmd.index("--sampler")
    cmd[i + 1] = "nsga2"
    p = in_process([*cmd, "--pruner", "none"], capsys)
    assert p.returncode == 0, p.stdout + p.stderr
    cmd[cmd.index("--trials") + 1] = "5"
    p = in_process(cmd, capsys)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((out / "config.json").read_text())["pruner"] == "none"
    assert len(_consistent(out, 5)) == 5
    p = in_process([*cmd, "--pruner", "pareto"], capsys)
    assert p.returncode == 2 and "'none' there, 'pareto' now" in p.stderr, p.stderr
    fresh = tmp_path / "fresh"
    cmd[cmd.index("--out") + 1] = str(fresh)
    p = in_process(cmd, capsys)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((fresh / "config.json").read_text())["pruner"] == "pareto"
