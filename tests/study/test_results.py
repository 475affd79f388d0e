"""nas.study.results and nas.core.files: one writer from rows, appended line by line, best.json when the best changes,
one atomic write path."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from nas.core.files import append_line, atomic_write_json, atomic_write_text, to_json
from nas.study.results import EXTRA_COLUMNS, TRIAL_COLUMNS, ResultsWriter, common_error, pareto_mask, read_rows
from nas.study.space import SearchOptions, SearchProblem
from nas.trial.settings import TrialSettings


@pytest.fixture
def writer(tmp_path):
    return ResultsWriter(
        tmp_path, SearchProblem(TrialSettings(dataset="fake"), SearchOptions()), {"space": "trainaware"}
    )


def _row(n, reward, state="COMPLETE", **extra):
    return {
        "number": n,
        "state": state,
        "arch": f"arch{n}",
        "reward": reward,
        "accuracy": reward,
        "step_time_ms": 10.0 + n,
        "S": 1.0,
        "P": 1.0,
        "params": 100,
        **extra,
    }


def test_rows_are_appended_as_whole_lines_with_fixed_columns(writer, tmp_path):
    writer.rewrite([], plot=False)
    for r in (_row(2, 0.5), _row(0, 0.7, not_a_column="dropped"), _row(1, None, "FAIL", error="boom, with a comma")):
        writer.append(r)
    text = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(text) == 4 and text[0].split(",")[: len(TRIAL_COLUMNS)] == TRIAL_COLUMNS
    df = pd.read_csv(tmp_path / "trials.csv")
    assert list(df["number"]) == [2, 0, 1]  # in the order they finished
    assert list(df.columns) == writer.columns == TRIAL_COLUMNS + EXTRA_COLUMNS + writer.problem.param_columns()
    assert df.loc[2, "error"] == "boom, with a comma" and "not_a_column" not in df
    # The whole file, rewritten at the end of a run, is sorted by trial number.
    writer.rewrite(read_rows(tmp_path / "trials.csv"), plot=False)
    assert list(pd.read_csv(tmp_path / "trials.csv")["number"]) == [0, 1, 2]


def test_best_json_is_written_when_the_best_changes_only(writer, tmp_path):
    writer.rewrite([], plot=False)
    assert writer.append(_row(0, 0.5)) is True
    best = tmp_path / "best.json"
    first = best.stat().st_mtime_ns
    assert writer.append(_row(1, 0.4)) is False and best.stat().st_mtime_ns == first
    assert writer.append(_row(2, 0.9)) is True
    data = json.loads(best.read_text())
    assert data["arch"] == "arch2" and data["metrics"]["reward"] == 0.9 and data["space"] == "trainaware"
    assert writer.append(_row(3, None, "FAIL", error="x")) is False


def test_nothing_complete_writes_no_best_and_names_the_common_error(writer, tmp_path):
    rows = [
        _row(0, None, "FAIL", error="E: a"),
        _row(1, None, "FAIL", error="E: a"),
        _row(2, None, "FAIL", error="E: b"),
    ]
    df = writer.rewrite(rows, plot=True)
    assert not (tmp_path / "best.json").exists() and not (tmp_path / "pareto.png").exists()
    assert common_error(df) == "E: a (2 of 3 trials)"


def test_files_are_atomic_strict_and_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
        atomic_write_text(tmp_path / "y.txt", "hello")
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.0]}
    assert "NaN" not in to_json({"a": float("nan")})
    for name in ("x.json", "y.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    append_line(tmp_path / "z.csv", "a,b")
    append_line(tmp_path / "z.csv", "c,d\n")
    assert (tmp_path / "z.csv").read_text() == "a,b\nc,d\n"


def test_pareto_mask():
    acc = [0.9, 0.8, 0.95, 0.7, 0.9]
    cost = [10, 5, 20, 6, 12]
    assert pareto_mask(acc, cost) == [True, True, True, False, False]
