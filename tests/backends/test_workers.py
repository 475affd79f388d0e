"""Several worker processes on one run: ``nas search --workers N`` and ``nas worker RUN_DIR``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nas.backends.workers import Claims, plan_workers
from nas.core.plugins import import_plugins
from nas.errors import NasError
from tests.helpers import TINY, TWO_SPACE, nas_env, write_plugin


def _nas(*args, cwd: Path, plugin_dir: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        env=nas_env(*filter(None, [plugin_dir])),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _plugin(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "plugins", "nas_two_space", TWO_SPACE)


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
    p = _nas(
        "search",
        "--space",
        "test-two",
        "--plugin",
        "nas_two_space",
        "--workers",
        2,
        "--trials",
        4,
        "--out",
        run,
        *TINY,
        cwd=tmp_path,
        plugin_dir=plugin_dir,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "starting 2 workers for 4 trials (2, 2)" in p.stdout
    df = pd.read_csv(run / "trials.csv")
    assert sorted(df["number"]) == [0, 1, 2, 3]
    assert (df["state"] == "COMPLETE").all()
    assert set(df["worker"]) == {0, 1} and df["pid"].nunique() == 2
    _check_no_double_work(df)
    assert df["duplicate_of"].notna().sum() >= 2  # two architectures, four trials

    # Two more workers started by hand, at the same time: N workers x k trials = N*k more trials.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nas.cli", "worker", str(run), "--trials", "1", "--plugin", "nas_two_space"],
            env=nas_env(plugin_dir),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
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
    assert (
        main(["search", "--space", "test-two", "--plugin", "nas_two_space", "--trials", "6", "--out", str(run), *TINY])
        == 0
    )
    assert "6 of 6 trials already finished" in capsys.readouterr().out
    best = json.loads((run / "best.json").read_text())
    assert best["arch"] in set(df["arch"])


def test_claims_make_each_architecture_evaluated_once(tmp_path):
    """Two workers' claims, interleaved by hand: a duplicate of a failed owner fails with its reason; a
    duplicate of a killed owner takes over; a duplicate of a complete owner copies its row."""
    import optuna

    from nas.study.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(None, tmp_path)
    optuna.create_study(storage=storage, study_name="s", direction="maximize")
    a, b = (Claims(optuna.load_study(study_name="s", storage=storage), tmp_path) for _ in range(2))
    x, y, z = ({"arch": name} for name in ("x", "y", "z"))

    # The owner fails with its reason recorded: the duplicate fails with that reason, untrained.
    t0 = a.study.ask()
    assert a.evaluate(t0, x) is None  # t0 owns x: evaluate it
    t1 = b.study.ask()
    assert b.claim(t1, "x@1.0") == t0.number
    t0.set_user_attr("error", "TrialFailed: boom")
    t0.set_user_attr("row", {"arch": "x", "error": "TrialFailed: boom"})
    a.study.tell(t0, state=optuna.trial.TrialState.FAIL)
    row = b.evaluate(t1, x)
    assert row["number"] == t1.number and row["duplicate_of"] == t0.number and row["state"] == "FAIL"
    assert row["error"] == f"same architecture as trial {t0.number}, which failed: TrialFailed: boom"
    b.study.tell(t1, state=optuna.trial.TrialState.FAIL)

    # The owner is killed (FAIL without a reason): the duplicate takes the architecture over.
    t2 = a.study.ask()
    assert a.evaluate(t2, y) is None
    t3 = b.study.ask()
    assert b.claim(t3, "y@1.0") == t2.number
    a.study.tell(t2, state=optuna.trial.TrialState.FAIL)
    assert b.evaluate(t3, y) is None  # t3 evaluates y itself now
    assert b.study.get_trials(deepcopy=False)[t3.number].user_attrs["duplicate_of"] is None
    t3.set_user_attr("row", {"arch": "y", "reward": 0.5})
    b.study.tell(t3, 0.5)

    # The owner completes: the duplicate returns its row, marked, without evaluating.
    t4 = a.study.ask()
    assert a.evaluate(t4, z) is None
    t4.set_user_attr("row", {"arch": "z", "reward": 0.7, "step_time_ms": 3.0})
    a.study.tell(t4, 0.7)
    t5 = b.study.ask()
    row = b.evaluate(t5, z)
    assert (row["reward"], row["step_time_ms"], row["duplicate_of"], row["number"]) == (0.7, 3.0, t4.number, t5.number)
    # A later claim of y finds t3, which took it over, as the owner.
    assert a.claim(a.study.ask(), "y@1.0") == t3.number


def test_plan_splits_trials_and_divides_cores():
    plan = plan_workers(3, 7, "cpu", cpu_count=6)
    assert plan.trials == (3, 2, 2)
    assert [e["OMP_NUM_THREADS"] for e in plan.envs] == ["2", "2", "2"]
    assert plan.note is None
    plan = plan_workers(4, 2, "cpu", cpu_count=2)  # never more workers than trials
    assert plan.trials == (1, 1)
    plan = plan_workers(3, 9, "cpu", cpu_count=2)
    assert plan.envs[0]["OMP_NUM_THREADS"] == "1" and "contention" in plan.note
    with pytest.raises(NasError, match="--workers must be an integer in"):
        plan_workers(0, 4, "cpu")
    with pytest.raises(NasError, match="one of --workers N or --trials-per-device N"):
        plan_workers(2, 4, "cpu", per_device=2)
    plan = plan_workers(None, 9, "cpu", per_device=3, cpu_count=6)
    assert plan.trials == (3, 3, 3) and all(e["NAS_DEVICE_LOCK"] == "cpu" for e in plan.envs)


def test_plan_spreads_workers_over_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    plan = plan_workers(None, 8, "cuda", per_device=2, gpu_count=2)  # two per GPU on both GPUs
    assert [e["CUDA_VISIBLE_DEVICES"] for e in plan.envs] == ["0", "0", "1", "1"] and plan.trials == (2, 2, 2, 2)
    plan = plan_workers(None, 8, "cuda:1", per_device=3, gpu_count=2)  # only the named GPU
    assert [e["CUDA_VISIBLE_DEVICES"] for e in plan.envs] == ["1", "1", "1"]
    plan = plan_workers(3, 3, "cuda", gpu_count=2)  # round-robin
    assert [e["CUDA_VISIBLE_DEVICES"] for e in plan.envs] == ["0", "1", "0"] and "side by side" in plan.note


def test_plugin_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NasError, match="plugin module 'no_such_plugin_xyz' not found"):
        import_plugins(["no_such_plugin_xyz"])
    with pytest.raises(NasError, match="Python module name"):
        import_plugins(["bad/name.py"])
    (tmp_path / "nas_broken_plugin.py").write_text("raise ValueError('broken on purpose')\n")
    with pytest.raises(NasError, match=r"nas_broken_plugin.*ValueError: broken on purpose"):
        import_plugins(["nas_broken_plugin"])


def test_worker_refuses_what_it_cannot_join(tmp_path, capsys):
    from nas.cli import main

    assert main(["worker", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"nas: error: run directory {str(tmp_path / 'nowhere')!r} does not exist; start the search with nas search "
        "first"
    ]
    ray_run = tmp_path / "ray-run"
    ray_run.mkdir()
    (ray_run / "config.json").write_text(json.dumps({"format": "nas.run/1", "kind": "search", "backend": "ray"}))
    assert main(["worker", str(ray_run)]) == 2
    assert "holds a 'ray' backend run" in capsys.readouterr().err
    assert main(["search", "--backend", "ray", "--workers", "2", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "--workers is for --backend embedded, not ray" in capsys.readouterr().err
