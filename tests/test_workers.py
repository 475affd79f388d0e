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
def test_workers_share_one_study_without_double_work(tmp_path, monkeypatch, capsys):
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

    # The run stays an ordinary embedded run: nas search (no workers) resumes it (in this process:
    # one interpreter start less).
    from nas.cli import main

    monkeypatch.syspath_prepend(str(plugin_dir))
    assert main(["search", "--space", "test-two", "--plugin", "nas_two_space", "--trials", "6", "--no-progress",
                 "--out", str(run), *TINY]) == 0
    assert "6 of 6 trials already finished" in capsys.readouterr().out
    best = json.loads((run / "best.json").read_text())
    assert best["arch"] in set(df["arch"])


def _tiny(stem: int):
    from search_spaces import Architecture, Stage

    return Architecture(stem=stem, stages=(Stage("mbconv", 3, 1, 1, 16, 1, 0.0, "id"),), head=64, resolution=32)


class _StubEvaluator:
    """Stands in for nas.trial.Evaluator: returns fixed metrics and counts evaluations."""

    def __init__(self):
        self.space = self
        self.reward = self.settings = None
        self.next_arch = None
        self.evaluated: list[str] = []

    def sample(self, trial):
        return self.next_arch

    def evaluate(self, arch, *, seed=0, report=None, report_metric="accuracy"):
        self.evaluated.append(arch.to_string())
        return {"arch": arch.to_string(), "reward": 0.5, "step_time_ms": 12.0}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_claims_make_each_architecture_evaluated_once(tmp_path):
    """Two workers' claims, interleaved by hand: a duplicate of a failed owner fails with its reason;
    a duplicate of a killed owner takes over; a duplicate of a complete owner copies its result."""
    import optuna

    from nas.search import make_storage
    from nas.trial import TrialFailed
    from nas.workers import ClaimingEvaluator

    storage = make_storage(None, tmp_path)
    optuna.create_study(storage=storage, study_name="s", direction="maximize")
    studies = [optuna.load_study(study_name="s", storage=storage) for _ in range(2)]  # one per "worker"
    stubs = [_StubEvaluator(), _StubEvaluator()]
    a, b = (ClaimingEvaluator(stub, st, tmp_path, i) for i, (stub, st) in enumerate(zip(stubs, studies)))
    x, y, z = _tiny(8), _tiny(16), _tiny(24)

    def claim(ce, stub, arch):
        t = ce.study.ask()
        stub.next_arch = arch
        assert ce.space.sample(t) == arch
        return t, ce.study.get_trials(deepcopy=False)[t.number].user_attrs["duplicate_of"]

    # Owner fails (its reason recorded): the duplicate fails with that reason, untrained.
    t0, dup = claim(a, stubs[0], x)
    assert dup is None
    t1, dup = claim(b, stubs[1], x)
    assert dup == t0.number
    t0.set_user_attr("error", "TrialFailed: boom")
    a.study.tell(t0, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(TrialFailed, match=f"same architecture as trial {t0.number}, which failed: TrialFailed: boom"):
        b.evaluate(x)
    b.study.tell(t1, state=optuna.trial.TrialState.FAIL)

    # Owner killed (FAIL without a reason, as the heartbeat leaves it): the duplicate takes over.
    t2, dup = claim(a, stubs[0], y)
    t3, dup = claim(b, stubs[1], y)
    assert dup == t2.number
    a.study.tell(t2, state=optuna.trial.TrialState.FAIL)
    assert b.evaluate(y)["reward"] == 0.5
    assert stubs[1].evaluated == [y.to_string()]
    assert b.study.get_trials(deepcopy=False)[t3.number].user_attrs["duplicate_of"] is None
    b.study.tell(t3, 0.5)

    # Owner completes: the duplicate returns its metrics, marked, without evaluating.
    t4, _ = claim(a, stubs[0], z)
    m = a.evaluate(z)
    for k, v in m.items():
        t4.set_user_attr(k, v)
    a.study.tell(t4, m["reward"])
    t5, dup = claim(b, stubs[1], z)
    assert dup == t4.number
    assert b.evaluate(z) == {**m, "duplicate_of": t4.number}
    assert stubs[0].evaluated == [z.to_string()] and stubs[1].evaluated == [y.to_string()]
    # A later claim of y finds t3, which took it over, as the owner.
    _, dup = claim(a, stubs[0], y)
    assert dup == t3.number


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
