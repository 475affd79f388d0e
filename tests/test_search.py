"""`nas search` end to end, as a user runs it (subprocess), on the synthetic `fake` data set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nas.results import TRIAL_COLUMNS, pareto_mask
from search_spaces import Architecture, get_space

from conftest import REPO

TINY = ["--dataset", "fake", "--image-size", "16", "--epochs", "2", "--measure-time", "0.05", "--no-progress"]


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["state"].isin(["COMPLETE", "PRUNED"]) | (df["state"].eq("FAIL") & df["error"].notna()
                                                          & ~df["error"].astype(str).str.startswith("interrupted"))]


@pytest.mark.slow
def test_search_writes_results_a_user_can_act_on(tmp_path, run_nas):
    out = tmp_path / "run"
    rc, stdout, stderr = run_nas("search", "--trials", "4", "--out", out, "--seed", "3", *TINY)
    assert rc == 0, stderr
    df = pd.read_csv(out / "trials.csv")
    assert list(df.columns[: len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    assert len(df) == 4 and sorted(df["number"]) == [0, 1, 2, 3]
    assert set(df["state"]) <= {"COMPLETE", "PRUNED"}
    done = df[df["state"] == "COMPLETE"]
    assert len(done) >= 1
    space = get_space("trainaware")
    for _, row in done.iterrows():
        arch = Architecture.from_string(row["arch"])
        assert len(arch.stages) == len(space.reference().stages)
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["step_time_ms"] > 0 and row["params"] > 0 and row["macs"] > 0
        # The reward is exactly A * S**w * P**v with the paper's exponents.
        assert row["reward"] == pytest.approx(row["accuracy"] * row["S"] ** -0.07 * row["P"] ** -0.05, rel=1e-9)
    best = json.loads((out / "best.json").read_text())
    top = done.loc[done["reward"].idxmax()]
    assert best["arch"] == top["arch"]
    assert best["metrics"]["reward"] == pytest.approx(top["reward"])
    for key in ("device", "device_name", "torch_version", "threads", "memory_format", "dtype"):
        assert key in best["metrics"], key
    assert best["reference"], "the reference measurement is part of the provenance"
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best architecture" in stdout and best["arch"] in stdout

    # The best architecture feeds straight into the other commands.
    rc, stdout, stderr = run_nas("show", out, "--json")
    assert rc == 0, stderr
    assert json.loads(stdout)["arch"] == best["arch"]
    rc, stdout, stderr = run_nas("report", out)
    assert rc == 0, stderr
    assert best["arch"] in stdout and "top" in stdout

    # Rerunning the finished command runs nothing new.
    rc, stdout, stderr = run_nas("search", "--trials", "4", "--out", out, "--seed", "3", *TINY)
    assert rc == 0, stderr
    assert "4 of 4 trials already finished" in stdout
    assert pd.read_csv(out / "trials.csv")["number"].tolist() == df["number"].tolist()


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_without_losing_a_trial(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas.cli", "search", "--trials", "4", "--out", str(out), "--pruner", "none", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    first = None
    try:
        while time.time() < deadline:
            if (out / "trials.csv").exists():
                first = pd.read_csv(out / "trials.csv")
                if (first["state"] == "COMPLETE").sum() >= 1:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup: the hardest kind of stop
        proc.wait()
    assert first is not None and (first["state"] == "COMPLETE").sum() >= 1, "no trial finished before the kill"
    kept = first[first["state"] == "COMPLETE"].set_index("number")

    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stdout
    df = pd.read_csv(out / "trials.csv")
    assert len(_finished(df)) == 4
    # Completed trials survive untouched: same architecture, same reward, not rerun.
    after = df.set_index("number")
    for n, row in kept.iterrows():
        assert after.loc[n, "state"] == "COMPLETE"
        assert after.loc[n, "arch"] == row["arch"]
        assert after.loc[n, "reward"] == pytest.approx(row["reward"])
    assert df["number"].is_unique


@pytest.mark.slow
def test_failing_trials_are_recorded_with_their_reason_and_the_search_goes_on(tmp_path):
    # The test plugin (a user-style --plugin module) makes trial 1's reward NaN and trial 2 raise.
    from test_ray import PLUGIN

    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "nas_failing_plugin.py").write_text(PLUGIN)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(REPO)])}
    p = subprocess.run([sys.executable, "-m", "nas.cli", "search", "--plugin", "nas_failing_plugin",
                        "--space", "test-marked", "--reward", "test-failing", "--trials", "4", "--out", str(out),
                        "--pruner", "none", *TINY], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(out / "trials.csv").set_index("number")
    assert df.loc[1, "state"] == "FAIL" and "reward is nan" in df.loc[1, "error"]
    assert df.loc[2, "state"] == "FAIL" and "deliberate failure of trial 2" in df.loc[2, "error"]
    assert set(df.loc[[0, 3], "state"]) == {"COMPLETE"}, "the search went on after the failures"
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_nsga2_reports_a_pareto_front(tmp_path, run_nas):
    out = tmp_path / "run"
    rc, stdout, stderr = run_nas("search", "--trials", "3", "--out", out, "--sampler", "nsga2",
                                 "--space", "mnasnet", "--reward", "mnasnet", "--constraint", "hard", *TINY)
    assert rc == 0, stderr
    best = json.loads((out / "best.json").read_text())
    df = pd.read_csv(out / "trials.csv")
    ok = df[df["state"] == "COMPLETE"]
    assert set(best["pareto_front"]) <= set(ok["number"]) and best["pareto_front"]
    assert best["reward"]["name"] == "mnasnet" and best["reward"]["beta"] == -1.0
    # The mnasnet reward with the hard constraint: ACC * (LAT/T)**w, T = the reference's step time.
    for _, r in ok.iterrows():
        w = 0.0 if r["S"] <= 1 else -1.0
        assert r["reward"] == pytest.approx(r["accuracy"] * r["S"] ** w)


@pytest.mark.parametrize("args, bad", [
    (["--space", "nope"], "'nope'"),
    (["--reward", "nope"], "'nope'"),
    (["--sampler", "nope"], "'nope'"),
    (["--pruner", "nope"], "'nope'"),
    (["--dataset", "nope"], "'nope'"),
    (["--trials", "0"], "0"),
    (["--image-size", "3"], "3"),
    (["--epochs", "0"], "0"),
    (["--width-mult", "-1"], "-1"),
    (["--sampler", "nsga2", "--pruner", "median"], "median"),
    (["--reward", "mnasnet", "--w", "-0.1"], "--w"),
    (["--optimizer", "lion"], "lion"),
    (["--progressive", "xl"], "xl"),
    (["--backend", "spark"], "spark"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_trial(tmp_path, capsys, args, bad):
    # In-process (main() is the console script) to keep the suite fast; the subprocess test below
    # checks the same through a real interpreter.
    from nas.cli import main

    out = tmp_path / "run"
    rc = main(["search", "--out", str(out), *TINY, *args])
    stderr = capsys.readouterr().err
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error:") and bad in lines[0], stderr
    assert not (out / "study.db").exists()


def test_bad_input_through_a_real_interpreter(tmp_path, run_nas):
    rc, stdout, stderr = run_nas("search", "--out", tmp_path / "run", "--space", "nope", *TINY)
    assert rc == 2 and stderr.strip() == (
        "nas: error: unknown search space 'nope'; known: mnasnet, trainaware"), stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_a_different_command_in_the_same_run_dir_is_refused(tmp_path, run_nas):
    out = tmp_path / "run"
    rc, _, stderr = run_nas("search", "--trials", "1", "--out", out, *TINY)
    assert rc == 0, stderr
    before = (out / "trials.csv").read_bytes()
    rc, _, stderr = run_nas("search", "--trials", "1", "--out", out, "--space", "mnasnet", *TINY)
    assert rc == 2 and "different settings" in stderr and len(stderr.strip().splitlines()) == 1
    assert (out / "trials.csv").read_bytes() == before


def test_pareto_mask():
    acc = [0.9, 0.8, 0.95, 0.7, 0.9]
    cost = [10, 5, 20, 6, 12]
    assert pareto_mask(acc, cost) == [True, True, True, False, False]
