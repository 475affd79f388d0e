"""One target per run, on every backend and process (issue "S means the target device").

A step-time table built in this process is the run's target (``--target FILE``). Whatever process
scores a trial (this one, ``nas worker`` processes with other thread counts, a foreign machine's
table), a candidate's S is the table's prediction relative to the table's reference: the same
number everywhere. Direct timings happen only where the process matches the target's device (its
CPU threads matched for the moment under the device lock), and a target that does not fit is one
line before anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nas.core.device import Runtime
from nas.core.plugins import import_plugins
from nas.steptime import StepTimeModel, Target
from search_spaces import Architecture, get_space
from tests.helpers import REPO, main_in_process, nas_env, run_nas, write_plugin

# Six tiny networks: kernel 3, 5 or 7, one or two layers.
TARGET_SPACE = """
from search_spaces import Architecture, Stage
from search_spaces.base import SearchSpace, register


@register("test-target")
class TargetSpace(SearchSpace):
    description = "six tiny networks"

    def decisions(self):
        return [("kernel", [3, 5, 7]), ("layers", [1, 2])]

    def make(self, choice):
        stage = Stage("mbconv", choice["kernel"], 2, 4, 16, choice["layers"], 0.0, "id")
        return Architecture(stem=8, stages=(stage,), head=32, resolution=32)

    def reference(self):
        return self.make({"kernel": 3, "layers": 1})
"""
FAST = {"piece_run_time": 0.002, "measure_run_time": 0.01, "calibration_samples": 3}
TRIAL = [
    "--plugin",
    "nas_target_space",
    "--space",
    "test-target",
    "--dataset",
    "fake",
    "--epochs",
    "1",
    "--image-size",
    "16",
    "--width-mult",
    "1",
    "--depth-mult",
    "1",
    "--batch-size",
    "32",
    "--pruner",
    "none",
    "--sampler",
    "random",
    "--seed",
    "3",
    "--measure-time",
    "0.02",
    "--no-progress",
]


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    d = write_plugin(tmp_path_factory.mktemp("plugins"), "nas_target_space", TARGET_SPACE)
    sys.path.insert(0, str(d))
    import_plugins(["nas_target_space"])
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def table(tmp_path_factory, plugins) -> Path:
    """The target: this process's CPU on one thread, 16 px, batch 2, ten classes (the fake data's)."""
    path = tmp_path_factory.mktemp("target") / "target.json"
    StepTimeModel.load_or_build("test-target", Runtime.resolve("cpu"), Target(16, 2), path=path, num_classes=10, **FAST)
    return path


def _env(plugins, threads: int) -> dict:
    return nas_env(plugins, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def _expected_s(table: Path) -> dict[str, float]:
    model = StepTimeModel.from_file(table)
    ref = model.predict(get_space("test-target").reference())
    space = get_space("test-target")
    return {
        a.to_string(): model.predict(a) / ref
        for a in (space.make({"kernel": k, "layers": n}) for k in (3, 5, 7) for n in (1, 2))
    }


def test_every_process_scores_against_the_one_target(tmp_path, plugins, table):
    """Two nas worker processes with different thread counts (one and two: different fingerprints),
    against one target file: every row's S is the table's, as in a single-process run."""
    expected = _expected_s(table)
    single = tmp_path / "single"
    rc, out, err = run_nas(
        "search",
        *TRIAL,
        "--trials",
        "3",
        "--target",
        table,
        "--fidelity-every",
        "1",
        "--out",
        single,
        env=_env(plugins, 2),
        cwd=tmp_path,
    )
    assert rc == 0, out + err
    assert f"[target {StepTimeModel.from_file(table).identity}]" in out
    run = tmp_path / "workers"
    rc, out, err = run_nas(
        "search",
        *TRIAL,
        "--trials",
        "1",
        "--target",
        table,
        "--fidelity-every",
        "1",
        "--out",
        run,
        env=_env(plugins, 1),
        cwd=tmp_path,
    )
    assert rc == 0, out + err
    cmd = [sys.executable, "-m", "nas.cli", "worker", str(run), "--trials", "2", "--plugin", "nas_target_space"]
    procs = [
        subprocess.Popen(
            cmd, env=_env(plugins, n), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for n in (1, 2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read()
        p.stdout.close()
    for d in (single, run):
        df = pd.read_csv(d / "trials.csv")
        assert set(df["state"]) == {"COMPLETE"}
        for _, row in df.iterrows():
            assert row["S"] == pytest.approx(expected[row["arch"]], rel=1e-12), row["arch"]
            # Each process timed its fidelity sample on the target's one thread, whatever its own count.
            assert row["measured_ms"] > 0 and pd.isna(row["fidelity_skipped"])
    df = pd.read_csv(run / "trials.csv")
    own = df[df["duplicate_of"].isna()]  # a duplicate's row is its owner's, threads included
    assert set(own["threads"]) == {1, 2}, "the workers really ran with different thread counts"
    assert df["target_id"].nunique() == 1 == pd.read_csv(single / "trials.csv")["target_id"].nunique()


def _foreign(table: Path, tmp_path: Path) -> Path:
    """The same table as if timed on another device: every prediction stands, no timing is possible."""
    data = json.loads(table.read_text())
    data["fingerprint"]["device_name"] = "Imaginary Accelerator X1"
    out = tmp_path / "foreign.json"
    out.write_text(json.dumps(data))
    return out


def test_a_foreign_target_predicts_everywhere_and_says_no_direct_check_was_possible(tmp_path, plugins, table):
    foreign = _foreign(table, tmp_path)
    out = tmp_path / "run"
    rc, stdout, err = run_nas(
        "search",
        *TRIAL,
        "--trials",
        "2",
        "--target",
        foreign,
        "--fidelity-every",
        "1",
        "--out",
        out,
        env=_env(plugins, 1),
        cwd=tmp_path,
    )
    assert rc == 0, stdout + err
    expected = _expected_s(table)
    df = pd.read_csv(out / "trials.csv")
    for _, row in df.iterrows():
        assert row["S"] == pytest.approx(expected[row["arch"]], rel=1e-12)
        assert pd.isna(row["measured_ms"]) and "Imaginary Accelerator X1" in row["fidelity_skipped"]
    fid = json.loads((out / "fidelity.json").read_text())["step_time"]
    assert fid["n"] == 0 and fid["not_checked"]["trials"] == [0, 1]
    assert "no direct check of the step-time model was possible for 2" in stdout


def test_a_piece_the_target_lacks_is_timed_only_on_the_target(tmp_path, plugins, table):
    """nas grid-scale needs the base scaled at other resolutions: on the target's own device those
    pieces are timed and added to the run's copy; with a foreign target, one line naming nas calibrate."""
    base = "stem8,r1_k3_s2_e4_i8_o16,head32,res32"
    grid = [
        "grid-scale",
        "--base",
        base,
        "--max-candidates",
        "1",
        "--dataset",
        "fake",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--width-mult",
        "1",
        "--depth-mult",
        "1",
        "--no-progress",
        "--plugin",
        "nas_target_space",
    ]
    rc, out, err = run_nas(*grid, "--target", table, "--out", tmp_path / "here", env=_env(plugins, 2))
    assert rc in (0, 1) and "Traceback" not in err, out + err  # the tiny base may fail to train: that is allowed
    copy = json.loads((tmp_path / "here" / "steptime.json").read_text())
    assert len(copy["pieces"]) > len(json.loads(table.read_text())["pieces"])
    rc, out, err = run_nas(
        *grid, "--target", _foreign(table, tmp_path), "--out", tmp_path / "there", env=_env(plugins, 1)
    )
    assert rc == 1 and "no trial completed" in out, out + err
    df = pd.read_csv(tmp_path / "there" / "grid.csv")
    scaled = df[df["candidate"] != "base"]
    assert set(scaled["state"]) == {"FAIL"}
    for e in scaled["error"]:
        assert "OffTarget" in e and "Imaginary Accelerator X1" in e and "nas calibrate" in e, e


def _bad_files(table: Path, tmp_path: Path) -> list[tuple[Path, str]]:
    data = json.loads(table.read_text())
    out = []
    for name, text, word in [
        ("truncated.json", table.read_text()[:100], "corrupt or truncated"),
        ("other-format.json", json.dumps({"format": "nas.run/1"}), "not a step-time table"),
        (
            "other-space.json",
            json.dumps({**data, "setting": {**data["setting"], "space": "trainaware"}}),
            "trainaware step table",
        ),
        ("other-cost.json", json.dumps({**data, "setting": {**data["setting"], "cost": "latency"}}), "latency table"),
        (
            "other-classes.json",
            json.dumps({**data, "setting": {**data["setting"], "num_classes": 1000}}),
            "1000 classes",
        ),
        ("unfinished.json", json.dumps({**data, "correction": None}), "unfinished"),
    ]:
        (tmp_path / name).write_text(text)
        out.append((tmp_path / name, word))
    out.append((tmp_path / "missing.json", "does not exist"))
    (tmp_path / "a-dir").mkdir()
    out.append((tmp_path / "a-dir", "directory"))
    return out


def test_a_target_that_does_not_fit_is_one_line_and_nothing_is_written(tmp_path, plugins, table, capsys):
    # The first through a real interpreter (its exit status and streams), the rest in this process.
    for k, (path, word) in enumerate(_bad_files(table, tmp_path)):
        out = tmp_path / f"run-{path.stem}"
        args = ("search", *TRIAL, "--trials", "1", "--target", path, "--out", out)
        rc, stdout, err = run_nas(*args, env=_env(plugins, 1)) if k == 0 else main_in_process(args, capsys)
        assert rc == 2 and err.startswith("nas: error:") and err.count("\n") == 1 and word in err, (path, err)
        assert stdout == "", stdout
        assert not out.exists(), path


def test_a_resume_with_another_table_is_refused_naming_both(tmp_path, plugins, table):
    out = tmp_path / "run"
    assert run_nas("search", *TRIAL, "--trials", "1", "--target", table, "--out", out, env=_env(plugins, 1))[0] == 0
    other = tmp_path / "rebuilt.json"
    data = json.loads(table.read_text())
    other.write_text(json.dumps({**data, "created": "2001-01-01T00:00:00+00:00"}))  # a rebuild: another identity
    rc, stdout, err = run_nas("search", *TRIAL, "--trials", "2", "--target", other, "--out", out, env=_env(plugins, 1))
    ident = StepTimeModel.from_file(table).identity
    assert rc == 2 and ident in err and StepTimeModel.from_file(other).identity in err and "--restart" in err, err
    assert len(pd.read_csv(out / "trials.csv")) == 1
    rc, stdout, err = run_nas(
        "search", *TRIAL, "--trials", "2", "--target", other, "--out", out, "--restart", env=_env(plugins, 1)
    )
    assert rc == 0 and f"[target {StepTimeModel.from_file(other).identity}]" in stdout, err
    assert set(pd.read_csv(out / "trials.csv")["target_id"]) == {StepTimeModel.from_file(other).identity}


def test_the_reference_and_the_s_line_come_from_the_target(tmp_path, plugins, table):
    out = tmp_path / "run"
    rc, stdout, err = run_nas("search", *TRIAL, "--trials", "1", "--target", table, "--out", out, env=_env(plugins, 1))
    assert rc == 0, err
    model = StepTimeModel.from_file(table)
    ref = model.predict(get_space("test-target").reference())
    target = json.loads((out / "target.json").read_text())
    assert target["reference"]["ms"] == pytest.approx(ref, rel=1e-12) and target["identity"] == model.identity
    best = json.loads((out / "best.json").read_text())
    assert best["target"]["identity"] == model.identity and best["target"]["reference_ms"] == pytest.approx(ref)
    row = pd.read_csv(out / "trials.csv").iloc[0]
    assert row["reference_ms"] == pytest.approx(ref) and row["target_id"] == model.identity
    assert row["cost_ms"] == pytest.approx(model.predict(Architecture.from_string(row["arch"])), rel=1e-12)
    assert os.path.exists(out / "steptime.json") and "S = the full-size training step at 16 px, batch 2" in stdout
    assert str(REPO)  # the checkout the subprocesses ran
