"""nas.study.grid: ``nas grid-scale`` through the one driver, on stand-in evaluations (the real
one is covered in test_scale_cli.py): resume, extension, kills, failures, the choice."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

from nas.scaling.grid import BASE, GridSpec, enumerate_candidates, scale_candidate, select_spread
from search_spaces import Architecture
from tests.helpers import TINY

BASE_ARCH = "stem8,r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e4_i8_o16,head32,res32"
NET = Architecture.from_string(BASE_ARCH)


class _Calls(list):
    fail: set

    def __init__(self):
        super().__init__()
        self.fail = set()


@pytest.fixture
def calls(standin, monkeypatch):
    """Every evaluated architecture, in order; ``calls.fail`` holds architectures that raise."""
    seen = _Calls()
    cls = standin.StandinEvaluator
    inner = cls.evaluate

    def evaluate(self, arch, **kw):
        seen.append(arch.to_string())
        if arch.to_string() in seen.fail:
            raise RuntimeError("boom")
        return inner(self, arch, **kw)

    monkeypatch.setattr(cls, "evaluate", evaluate)
    return seen


def grid(tmp_path, n=2, *extra):
    from nas.cli import main

    rc = main(
        ["grid-scale", "--base", BASE_ARCH, "--max-candidates", str(n), "--out", str(tmp_path / "run"), *TINY, *extra]
    )
    df = pd.read_csv(tmp_path / "run" / "grid.csv")
    return rc, df


def arch(c) -> str:
    return scale_candidate(NET, c, 1.0).to_string()


def test_resume_skips_finished_candidates_and_a_larger_count_extends(tmp_path, calls, capsys):
    picks = select_spread(enumerate_candidates(GridSpec()), 4)
    rc, df = grid(tmp_path, 2)
    assert rc == 0 and calls == [arch(BASE), *map(arch, picks[:2])]
    assert "109 of 9261 grid points" in capsys.readouterr().out
    assert list(df["state"]) == ["COMPLETE"] * 3 and df.loc[0, "candidate"] == "base"
    calls.clear()
    rc, df2 = grid(tmp_path, 2)
    assert calls == [] and "3 of 3 candidates already finished" in capsys.readouterr().out
    pd.testing.assert_frame_equal(df, df2)
    rc, df4 = grid(tmp_path, 4)
    assert calls == list(map(arch, picks[2:4])) and len(df4) == 5 and set(df4["state"]) == {"COMPLETE"}


def test_a_killed_candidate_is_rerun_and_stale_waiting_trials_are_dropped(tmp_path, calls):
    grid(tmp_path, 1)
    picks = select_spread(enumerate_candidates(GridSpec()), 3)
    # What a kill leaves behind: a RUNNING trial of a dead process and a WAITING one, never started.
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    study = optuna.load_study(study_name="nas-grid", storage=storage)
    study.enqueue_trial({"alpha": picks[2].alpha, "beta": picks[2].beta, "gamma": picks[2].gamma})
    study.enqueue_trial({"alpha": picks[1].alpha, "beta": picks[1].beta, "gamma": picks[1].gamma})
    killed = study.ask()
    killed.set_user_attr("pid", 2**22 + 1)  # no such process
    import socket

    killed.set_user_attr("hostname", socket.gethostname())
    calls.clear()
    rc, df = grid(tmp_path, 3)
    assert rc == 0
    assert sorted(calls) == sorted(map(arch, picks[1:3]))  # each once, nothing finished redone
    assert list(df["state"]) == ["COMPLETE"] * 4
    states = [t.state for t in optuna.load_study(study_name="nas-grid", storage=storage).get_trials()]
    assert optuna.trial.TrialState.WAITING not in states and optuna.trial.TrialState.RUNNING not in states


def test_a_failed_candidate_is_recorded_not_retried_and_never_chosen(tmp_path, calls):
    rc, df = grid(tmp_path, 3)
    assert rc == 0
    best = df[df["candidate"] != "base"].sort_values("accuracy").iloc[-1]
    # Again in a fresh directory, with the would-be winner failing.
    calls.clear()
    calls.fail.add(best["arch"])
    rc, df = grid(tmp_path / "again", 3)
    assert rc == 0
    row = df[df["candidate"] == best["candidate"]].iloc[0]
    assert row["state"] == "FAIL" and "boom" in row["error"]
    coeffs = json.loads((tmp_path / "again" / "run" / "coefficients.json").read_text())
    assert coeffs["chosen"]["candidate"] != best["candidate"]
    calls.clear()
    grid(tmp_path / "again", 3)
    assert calls == []


def test_choice_by_objective_with_runner_up_and_the_base_excluded(tmp_path, calls):
    rc, df = grid(tmp_path, 4)
    assert rc == 0
    data = json.loads((tmp_path / "run" / "coefficients.json").read_text())
    ok = df[df["candidate"] != "base"]
    assert data["objective"] == "accuracy" and data["objective_value"] == ok["accuracy"].max()
    assert data["runner_up"]["accuracy"] == sorted(ok["accuracy"])[-2]
    assert data["base"]["candidate"] == "base" and data["base"]["arch"] == NET.to_string()
    assert data["n_feasible"] == 109 and data["settings"]["dataset"] == "fake"
    # Re-ranking by reward needs no evaluation: the objective is an option, not the run's identity.
    calls.clear()
    grid(tmp_path, 4, "--objective", "reward")
    assert calls == []
    data_r = json.loads((tmp_path / "run" / "coefficients.json").read_text())
    assert data_r["objective_value"] == ok["reward"].max()
    assert json.loads((tmp_path / "run" / "best.json").read_text())["arch"] == data_r["chosen"]["arch"]


def test_a_changed_grid_in_the_same_run_directory_is_refused_unchanged(tmp_path, calls, capsys):
    grid(tmp_path, 1)
    before = {
        p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file() and not p.name.startswith(".")
    }
    from nas.cli import main

    assert (
        main(
            [
                "grid-scale",
                "--base",
                BASE_ARCH,
                "--max-candidates",
                "1",
                "--tolerance",
                "0.2",
                "--out",
                str(tmp_path / "run"),
                *TINY,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "different settings (grid.tolerance: 0.1 there, 0.2 now)" in err and len(err.strip().splitlines()) == 1
    assert {
        p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file() and not p.name.startswith(".")
    } == before
