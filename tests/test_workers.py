"""Several worker processes on one run: ``nas search --workers N`` and ``nas worker RUN_DIR``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from nas.errors import NasError
from nas.workers import import_plugins, plan_workers

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "fake", "--epochs", "1", "--image-size", "16", "--measure-time", "0.05", "--width-mult", "0.1",
        "--depth-mult", "0.1", "--batch-size", "32"]

# A space of exactly two architectures: four trials must propose some architecture twice, so the
# test sees the claim at work (each architecture trained once, the other trials reuse the result).
PLUGIN = '''
from search_spaces import Architecture, Stage
from search_spaces.base import SearchSpace, register


@register("test-two")
class TwoArchitectures(SearchSpace):
    description = "two tiny networks: kernel 3 or 5"

    def decisions(self):
        return [("kernel", [3, 5])]

    def make(self, choice):
        stage = Stage("mbconv", choice["kernel"], 1, 1, 16, 1, 0.0, "id")
        return Architecture(stem=16, stages=(stage,), head=64, resolution=32)

    def reference(self):
        return self.make({"kernel": 3})
'''


def _env(plugin_dir: Path | None = None) -> dict:
    path = os.pathsep.join(filter(None, [str(plugin_dir or ""), str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _nas(*args, cwd: Path, plugin_dir: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *map(str, args)], env=_env(plugin_dir), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _plugin(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "nas_two_space.py").write_text(textwrap.dedent(PLUGIN))
    return d


def _check_no_double_work(df: pd.DataFrame) -> None:
    """Unique trial numbers; each architecture trained by one trial; the others copy its result."""
    assert df["number"].is_unique
    owners = df[df["duplicate_of"].isna()]
    assert owners["arch"].is_unique, owners[["number", "arch"]]
    by_n = df.set_index("number")
    for _, dup in df[df["duplicate_of"].notna()].iterrows():
        owner = by_n.loc[int(dup["duplicate_of"])]
        assert owner["arch"] == dup["arch"]
        assert pd.isna(owner["duplicate_of"])
        assert (owner["step_time_ms"], owner["reward"]) == (dup["step_time_ms"], dup["reward"])


@pytest.mark.slow
def test_workers_share_one_study_without_double_work(tmp_path):
    plugin_dir = _plugin(tmp_path)
    run = tmp_path / "run"
    p = _nas("search", "--space", "test-two", "--plugin", "nas_two_space", "--workers", 2, "--trials", 4,
             "--no-progress", "--out", run, *TINY, cwd=tmp_path, plugin_dir=plugin_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "starting 2 workers for 4 trials (2, 2)" in p.stdout
    df = pd.read_csv(run / "trials.csv")
    assert sorted(df["number"]) == [0, 1, 2, 3]
    assert (df["state"] == "COMPLETE").all()
    assert set(df["worker"]) == {0, 1} and df["pid"].nunique() == 2
    _check_no_double_work(df)
    assert df["duplicate_of"].notna().sum() >= 2  # two architectures, four trials

    # Two more workers started by hand, at the same time: N workers x k trials = N*k more trials.
    procs = [subprocess.Popen([sys.executable, "-m", "nas.cli", "worker", str(run), "--trials", "1", "--plugin",
                               "nas_two_space"], env=_env(plugin_dir), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [pr.communicate(timeout=300)[0] for pr in procs]
    assert [pr.returncode for pr in procs] == [0, 0], outs
    df = pd.read_csv(run / "trials.csv")
    assert sorted(df["number"]) == list(range(6))
    assert (df["state"] == "COMPLETE").all()
    _check_no_double_work(df)

    # The run stays an ordinary embedded run: nas search (no workers) resumes it.
    p = _nas("search", "--space", "test-two", "--plugin", "nas_two_space", "--trials", 6, "--no-progress",
             "--out", run, *TINY, cwd=tmp_path, plugin_dir=plugin_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "6 of 6 trials already finished" in p.stdout
    best = json.loads((run / "best.json").read_text())
    assert best["arch"] in set(df["arch"])


@pytest.mark.slow
def test_a_failing_trial_is_recorded_by_its_worker(tmp_path):
    plugin_dir = _plugin(tmp_path)
    (plugin_dir / "nas_nan_reward.py").write_text(textwrap.dedent('''
        import math
        from rewards import Reward, register

        @register("test-nan")
        class NanReward(Reward):
            def __call__(self, metrics):
                return math.nan
    '''))
    run = tmp_path / "run"
    p = _nas("search", "--space", "test-two", "--reward", "test-nan", "--plugin", "nas_two_space", "--plugin",
             "nas_nan_reward", "--workers", 2, "--trials", 2, "--no-progress", "--out", run, *TINY,
             cwd=tmp_path, plugin_dir=plugin_dir)
    assert p.returncode == 1, p.stdout + p.stderr  # no trial completed
    df = pd.read_csv(run / "trials.csv")
    assert sorted(df["number"]) == [0, 1]
    assert (df["state"] == "FAIL").all()
    # The owner's reason; a duplicate (same architecture) reports the owner's failure.
    assert df["error"].str.contains("reward is nan").all(), df["error"]


def test_plan_splits_trials_and_divides_cores():
    plan = plan_workers(3, 7, "cpu", cpu_count=6)
    assert plan.trials == (3, 2, 2)
    assert [e["OMP_NUM_THREADS"] for e in plan.envs] == ["2", "2", "2"]
    assert plan.note is None
    plan = plan_workers(4, 2, "cpu", cpu_count=2)  # never more workers than trials
    assert plan.trials == (1, 1)
    plan = plan_workers(3, 9, "cpu", cpu_count=2)
    assert plan.envs[0]["OMP_NUM_THREADS"] == "1" and "contention" in plan.note
    with pytest.raises(NasError, match="--workers must be a positive integer"):
        plan_workers(0, 4, "cpu")


def test_plugin_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NasError, match="plugin module 'no_such_plugin_xyz' not found"):
        import_plugins(["no_such_plugin_xyz"])
    with pytest.raises(NasError, match="Python module name"):
        import_plugins(["bad/name.py"])
    (tmp_path / "nas_broken_plugin.py").write_text("raise ValueError('broken on purpose')\n")
    with pytest.raises(NasError, match="nas_broken_plugin.*ValueError: broken on purpose"):
        import_plugins(["nas_broken_plugin"])


def test_worker_refuses_what_it_cannot_join(tmp_path, capsys):
    from nas.cli import main

    assert main(["worker", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"nas: error: run directory {str(tmp_path / 'nowhere')!r} does not exist; start the search with nas search "
        "first"]
    ray_run = tmp_path / "ray-run"
    ray_run.mkdir()
    (ray_run / "config.json").write_text(json.dumps({"format": "nas.run/1", "kind": "search", "backend": "ray"}))
    assert main(["worker", str(ray_run)]) == 2
    assert "holds a 'ray' backend run" in capsys.readouterr().err
    assert main(["search", "--backend", "ray", "--workers", "2", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "--workers is for the embedded backend" in capsys.readouterr().err
