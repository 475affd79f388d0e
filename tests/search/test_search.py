"""`nas search` end to end, as a user runs it (subprocess), and as a hostile tester stops it: kills,
interrupts, a second driver, a lost study, bad data. Trials are real where the test is about what a
trial computes, stand-ins (tests/conftest.py STANDIN) where it is about what schedules and stores them."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nas.study.results import TRIAL_COLUMNS
from search_spaces import Architecture, get_space
from tests.helpers import FAILING, REPO, STANDIN, TINY, in_process, main_in_process, nas_env, run_nas, write_plugin


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[
        df["state"].isin(["COMPLETE", "PRUNED"])
        | (df["state"].eq("FAIL") & df["error"].notna() & ~df["error"].astype(str).str.startswith("interrupted"))
    ]


def _standin_cmd(out: Path, trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nas.cli",
        "search",
        "--plugin",
        "nas_standin",
        "--trials",
        str(trials),
        "--out",
        str(out),
        "--sampler",
        "random",
        *TINY,
        *extra,
    ]


@pytest.fixture
def standin_env(tmp_path):
    return nas_env(write_plugin(tmp_path / "plugins", "nas_standin", STANDIN))


def _consistent(out: Path, trials: int) -> pd.DataFrame:
    """The run's end state a user must always find: exactly ``trials`` finished trials, unique numbers, none
    RUNNING, the same rows in the storage and in trials.csv, no SQLite journal left behind."""
    df = pd.read_csv(out / "trials.csv")
    assert len(_finished(df)) == trials, df[["number", "state", "error"]]
    assert df["number"].is_unique and "RUNNING" not in set(df["state"])
    assert not (out / "study.db-journal").exists()
    import optuna

    study = optuna.load_study(study_name="nas-search", storage=f"sqlite:///{out / 'study.db'}")
    stored = {t.number: t.state.name for t in study.get_trials()}
    assert stored == dict(zip(df["number"], df["state"])), (stored, df[["number", "state"]])
    return df


@pytest.mark.slow
def test_search_writes_results_a_user_can_act_on(tmp_path, capsys):
    out = tmp_path / "run"
    # The full-size step timed directly ("measure"): at 16 px, batch 2 its cheapest setting; 2 trials.
    search = ("search", "--trials", "2", "--out", out, "--seed", "3", *TINY, "--step-time", "measure")
    at_16px = ("--target-image-size", "16", "--target-batch-size", "2")
    rc, stdout, stderr = run_nas(*search, *at_16px, timeout=900)  # full-size V2-S steps: minutes on a busy CPU
    assert rc == 0, stderr
    df = pd.read_csv(out / "trials.csv")
    assert list(df.columns[: len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    assert len(df) == 2 and sorted(df["number"]) == [0, 1]
    assert set(df["state"]) <= {"COMPLETE", "PRUNED"}
    done = df[df["state"] == "COMPLETE"]
    assert len(done) >= 1
    space = get_space("trainaware")
    for _, row in done.iterrows():
        arch = Architecture.from_string(row["arch"])
        assert len(arch.stages) == len(space.reference().stages)
        assert 0.0 <= row["accuracy"] <= 1.0 and row["num_classes"] == 10
        assert row["step_time_ms"] > 0 and row["params"] > 0 and row["macs"] > 0
        # S is the full-size candidate's step at the target setting, over the reference's.
        assert (row["step_time_method"], row["target_image_size"], row["target_batch_size"]) == ("measure", 16, 2)
        assert row["S"] == pytest.approx(row["step_time_ms"] / row["reference_ms"])
        # The reward is exactly A * S**w * P**v with the paper's exponents.
        assert row["reward"] == pytest.approx(row["accuracy"] * row["S"] ** -0.07 * row["P"] ** -0.05, rel=1e-9)
    best = json.loads((out / "best.json").read_text())
    top = done.loc[done["reward"].idxmax()]
    assert best["arch"] == top["arch"] and best["num_classes"] == 10
    assert best["metrics"]["reward"] == pytest.approx(top["reward"])
    for key in ("device", "device_name", "torch_version", "threads"):
        assert key in best["metrics"], key
    target = best["target"]
    assert (target["dtype"], target["memory_format"]) == ("float32", "channels_last")  # how its steps ran
    assert (target["method"], target["cost"], target["image_size"], target["batch_size"]) == ("measure", "step", 16, 2)
    assert target["device"].startswith(f"cpu ({best['metrics']['device_name']}")
    assert target["reference_ms"] == pytest.approx(top["reference_ms"]) and target["identity"] == top["target_id"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best architecture" in stdout and best["arch"] in stdout and "at 10 classes" in stdout

    # The best architecture feeds straight into the other commands (in this process: the search above
    # is the fresh interpreter a user starts).
    rc, stdout, stderr = main_in_process(["show", out, "--json"], capsys)
    assert rc == 0, stderr
    assert json.loads(stdout)["arch"] == best["arch"]
    rc, stdout, stderr = main_in_process(["report", out], capsys)
    assert rc == 0, stderr
    assert best["arch"] in stdout and "top" in stdout

    # Rerunning the finished command runs nothing new.
    rc, stdout, stderr = main_in_process([*search, *at_16px], capsys)
    assert rc == 0, stderr
    assert "2 of 2 trials already finished" in stdout
    assert pd.read_csv(out / "trials.csv")["number"].tolist() == df["number"].tolist()


@pytest.mark.slow
def test_sigkill_mid_trial_keeps_the_appended_rows_and_the_rerun_closes_the_killed_trial(tmp_path, standin_env):
    out = tmp_path / "run"
    env = {**standin_env, "NAS_STANDIN_SLEEP": "0.5"}
    cmd = _standin_cmd(out, 4, "--pruner", "none", "--epochs", "2")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "trials.csv").exists():
                first = pd.read_csv(out / "trials.csv")  # appended row by row while the search runs
                if (first["state"] == "COMPLETE").sum() >= 2:
                    break
            time.sleep(0.1)
        time.sleep(0.3)  # into the next trial
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup: the hardest kind of stop
        proc.wait()
    assert first is not None and (first["state"] == "COMPLETE").sum() >= 2, "no trial finished before the kill"
    kept = first[first["state"] == "COMPLETE"].set_index("number")

    t0 = time.time()
    p = subprocess.run(
        cmd, cwd=tmp_path, env={**env, "NAS_STANDIN_SLEEP": "0"}, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stdout and "closed 1 trial(s) left running" in p.stdout
    assert time.time() - t0 < 60, "the killed trial was closed at once, not after a heartbeat grace"
    df = _consistent(out, 4)
    after = df.set_index("number")
    for n, row in kept.iterrows():  # finished trials survive untouched: same architecture, same reward
        assert after.loc[n, "state"] == "COMPLETE" and after.loc[n, "arch"] == row["arch"]
        assert after.loc[n, "reward"] == pytest.approx(row["reward"])


@pytest.mark.slow
def test_sigint_always_ends_a_search_within_seconds_and_leaves_the_storage_consistent(tmp_path, standin_env):
    out = tmp_path / "run"
    env = {**standin_env, "NAS_STANDIN_SLEEP": "0.05", "PYTHONUNBUFFERED": "1"}
    cmd = _standin_cmd(out, 60, "--pruner", "median", "--epochs", "3")
    rng = random.Random(11)
    for i in range(5):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The search has started (a first line: "resuming ..." from the second round on); a signal
        # before the interpreter has run any of nas's code ends it by SIGINT, as it should.
        first_line = proc.stdout.readline()
        deadline = time.time() + 90
        while time.time() < deadline and not (out / "trials.csv").exists():
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 2.0))  # anywhere: training, storage writes, result files
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        try:
            rest, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"round {i}: still running 10 s after SIGINT")
        assert proc.returncode in (0, 130), f"round {i}: exit {proc.returncode}\n{first_line}{rest}\n{err}"
        assert time.time() - t0 < 10
        assert "Traceback" not in err, err
        df = pd.read_csv(out / "trials.csv")
        assert "RUNNING" not in set(df["state"]) and df["number"].is_unique
    p = subprocess.run(
        cmd, cwd=tmp_path, env={**env, "NAS_STANDIN_SLEEP": "0"}, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    _consistent(out, 60)


@pytest.mark.slow
def test_killed_at_random_points_a_search_always_ends_with_exactly_the_requested_trials(tmp_path, standin_env):
    """Fault injection: SIGKILL at random moments (between trials, inside one, while results are
    written), rerun after each; the end state is always exact. Every kill must land while the search
    runs: a trial takes at least 0.2 s and each round at most 1.5 s, so 4 rounds cannot finish 40."""
    out = tmp_path / "run"
    env = {**standin_env, "NAS_STANDIN_SLEEP": "0.1"}
    cmd = _standin_cmd(out, 40, "--pruner", "none", "--epochs", "2")
    rng = random.Random(5)
    for i in range(4):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and not (out / "study.db").exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        running = proc.poll() is None
        csv = out / "trials.csv"
        rows = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["state", "error"])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert running, f"round {i}: the search had ended (exit {proc.returncode}) before the kill"
        assert len(_finished(rows)) < 40, f"round {i}: all trials had finished before the kill"
    p = subprocess.run(
        cmd, cwd=tmp_path, env={**env, "NAS_STANDIN_SLEEP": "0"}, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    _consistent(out, 40)


@pytest.mark.slow
def test_a_second_search_on_the_same_directory_is_refused_up_front(tmp_path, standin_env):
    out = tmp_path / "run"
    env = {**standin_env, "NAS_STANDIN_SLEEP": "0.1"}
    first = subprocess.Popen(
        _standin_cmd(out, 500), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not (out / "trials.csv").exists():
            time.sleep(0.1)
        p = subprocess.run(_standin_cmd(out, 500), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first search ended before the second started"
        assert p.returncode == 2, p.stdout + p.stderr
        [line] = p.stderr.strip().splitlines()
        assert f"is in use by nas search (pid {first.pid} on" in line and "nas worker" in line, line
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 130
    df = pd.read_csv(out / "trials.csv")
    assert df["number"].is_unique and "RUNNING" not in set(df["state"])
    assert df["pid"].nunique() == 1, "only the first search ran trials"


@pytest.mark.slow
def test_a_lost_study_never_replaces_the_results(tmp_path, standin, capsys):
    out = tmp_path / "run"
    assert in_process(_standin_cmd(out, 3), capsys).returncode == 0
    saved = {n: (out / n).read_bytes() for n in ("trials.csv", "best.json")}
    for damage in ("delete", "truncate"):
        if damage == "delete":
            (out / "study.db").unlink()
        else:
            (out / "study.db").write_bytes(b"")
        p = in_process(_standin_cmd(out, 2), capsys)
        assert p.returncode == 2, p.stdout + p.stderr
        [line] = p.stderr.strip().splitlines()
        assert "records 3 finished trials but the run's storage holds 0" in line and "--restart" in line
        assert {n: (out / n).read_bytes() for n in saved} == saved
    p = in_process(_standin_cmd(out, 2, "--restart"), capsys)
    assert p.returncode == 0, p.stderr
    [old] = [d for d in out.iterdir() if d.name.startswith("replaced-")]
    assert (old / "trials.csv").read_bytes() == saved["trials.csv"]
    assert len(pd.read_csv(out / "trials.csv")) == 2


@pytest.mark.slow
def test_failing_trials_are_recorded_with_their_reason_and_the_search_goes_on(tmp_path):
    # The test plugin (a user-style --plugin module) makes trial 1's reward NaN and trial 2 raise.
    plugin_dir = write_plugin(tmp_path / "plugins", "nas_failing_plugin", FAILING)
    out = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas.cli",
            "search",
            "--plugin",
            "nas_failing_plugin",
            "--space",
            "test-marked",
            "--reward",
            "test-failing",
            "--trials",
            "4",
            "--out",
            str(out),
            "--pruner",
            "none",
            *TINY,
        ],
        cwd=REPO,
        env=nas_env(plugin_dir),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(out / "trials.csv").set_index("number")
    assert df.loc[1, "state"] == "FAIL" and "reward is nan" in df.loc[1, "error"]
    assert df.loc[2, "state"] == "FAIL" and "deliberate failure of trial 2" in df.loc[2, "error"]
    assert set(df.loc[[0, 3], "state"]) == {"COMPLETE"}, "the search went on after the failures"
    # What was measured before the failure stays in the row.
    assert df.loc[1, "step_time_ms"] > 0 and df.loc[1, "params"] > 0
    assert "Traceback" not in p.stderr


def test_when_every_trial_fails_the_reason_is_said_and_no_best_is_claimed(tmp_path, capsys, monkeypatch, standin):
    from nas.cli import main

    def broken(self, arch, **kw):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(standin.StandinEvaluator, "evaluate", broken)
    assert main(["search", "--trials", "3", "--out", str(tmp_path / "run"), *TINY]) == 1
    out = capsys.readouterr().out
    assert "most common error: RuntimeError: CUDA error: device-side assert (3 of 3 trials)" in out
    assert "best architecture" not in out and not (tmp_path / "run" / "best.json").exists()


@pytest.mark.slow
def test_nsga2_reports_a_pareto_front(tmp_path, run_nas):
    out = tmp_path / "run"
    rc, _stdout, stderr = run_nas(
        "search",
        "--trials",
        "3",
        "--out",
        out,
        "--sampler",
        "nsga2",
        "--space",
        "mnasnet",
        "--reward",
        "mnasnet",
        "--constraint",
        "hard",
        *TINY,
    )
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


@pytest.mark.parametrize(
    "args, bad",
    [
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
        (
            ["--sampler", "nsga2", "--pruner", "pareto:dominators=0"],
            "dominators must be an integer in [1, 1000000], got 0",
        ),
        (["--pruner", "pareto:k=1"], "unknown parameter 'k'"),
        (["--reward", "mnasnet", "--w", "-0.1"], "--w"),
        (["--reward-param", "gamma=2"], "'gamma'"),
        (["--reward-param", "w"], "KEY=VALUE"),
        (["--optimizer", "lion"], "lion"),
        (["--progressive", "xl"], "xl"),
        (["--backend", "spark"], "spark"),
        (["--step-time", "guess"], "'guess'"),
        (["--target-image-size", "64"], "--step-time measure or table"),
        (["--step-time", "measure", "--target-batch-size", "0"], "--target-batch-size"),
        (["--trials-per-device", "0"], "--trials-per-device"),
        (["--workers", "2", "--trials-per-device", "2"], "one of --workers N or --trials-per-device N"),
        (["--device", "cuda:x"], "'cuda:x'"),
        (["--compile", "sometimes"], "'sometimes'"),
        (["--batch-size", "100000"], "[1, 65536], got 100000"),
        (["--dataset", "imagefolder:/no/such/folder"], "/no/such/folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_and_leaves_no_trace(tmp_path, capsys, args, bad):
    # In-process (main() is the console script) to keep the suite fast; the subprocess test below
    # checks the same through a real interpreter.
    from nas.cli import main

    out = tmp_path / "run"
    rc = main(["search", "--out", str(out), *TINY, *args])
    stderr = capsys.readouterr().err
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error:") and bad in lines[0], stderr
    assert not out.exists()


def test_bad_input_through_a_real_interpreter(tmp_path, run_nas):
    rc, _stdout, stderr = run_nas("search", "--out", tmp_path / "run", "--space", "nope", *TINY)
    known = "accel-nasbench, mnasnet, trainaware"
    assert rc == 2 and stderr.strip() == f"nas: error: unknown search space 'nope'; known: {known}", stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda d: (d / "one").mkdir(parents=True), "has 1 class(es)"),
        (lambda d: [(d / c).mkdir(parents=True) for c in "ab"], "Found no valid file for the classes a, b"),
    ],
)
def test_bad_image_folders_are_named_before_anything_is_written(tmp_path, capsys, make, word):
    from nas.cli import main

    data = tmp_path / "data"
    make(data)
    if word == "has 1 class(es)":
        from PIL import Image

        Image.new("RGB", (8, 8)).save(data / "one" / "x.png")
    rc = main(["search", "--dataset", f"imagefolder:{data}", "--out", str(tmp_path / "run"), *TINY[2:]])
    err = capsys.readouterr().err
    assert rc == 2 and word in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_corrupt_images_are_named_in_one_line(tmp_path, capsys):
    from PIL import Image

    from nas.cli import main

    for c in "ab":
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    rc = main(["search", "--dataset", f"imagefolder:{tmp_path / 'data'}", "--out", str(tmp_path / "run"), *TINY[2:]])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be decoded" in err and "1.png" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_different_command_in_the_same_run_dir_is_refused(tmp_path, capsys, standin):
    from nas.cli import main

    out = tmp_path / "run"
    assert main(["search", "--trials", "1", "--out", str(out), *TINY]) == 0
    before = (out / "trials.csv").read_bytes()
    capsys.readouterr()
    assert main(["search", "--trials", "1", "--out", str(out), "--space", "mnasnet", *TINY]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "different settings (settings.space: 'trainaware' there, 'mnasnet' now)" in line
    assert (out / "trials.csv").read_bytes() == before


def test_validate_top_retrains_the_top_and_random_trials_and_reports_the_rank_correlation(
    tmp_path, capsys, monkeypatch, standin
):
    from nas.cli import main

    calls = []
    inner = standin.StandinEvaluator.evaluate

    def evaluate(self, arch, **kw):
        calls.append(self.settings.proxy.epochs)
        return inner(self, arch, **kw)

    monkeypatch.setattr(standin.StandinEvaluator, "evaluate", evaluate)
    out = tmp_path / "run"
    args = [
        "search",
        "--trials",
        "8",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--out",
        str(out),
        *TINY,
        "--validate-top",
        "2",
        "--validate-epochs",
        "3",
    ]
    assert main(args) == 0
    assert calls == [1] * 8 + [3] * 4  # 8 proxy trials of 1 epoch, then 2 top + 2 random trials for 3 epochs
    data = json.loads((out / "fidelity.json").read_text())["accuracy"]
    df = pd.read_csv(out / "trials.csv")
    top = df.sort_values("reward", ascending=False)["number"].head(2).tolist()
    assert data["n"] == 4 and data["trials"][:2] == top and data["epochs"] == 3 and data["proxy_epochs"] == 1
    # The stand-in's accuracy does not depend on the epochs: a perfect ranking.
    assert data["kendall_tau"] == pytest.approx(1.0) and data["spearman"] == pytest.approx(1.0)
    assert "Kendall tau 1.00" in capsys.readouterr().out
    assert len(pd.read_csv(out / "validation.csv")) == 4
    calls.clear()
    assert main(args) == 0 and calls == []  # a rerun retrains nothing


@pytest.mark.slow
@pytest.mark.parametrize("method", ["table", "measure", "proxy"])
def test_every_step_time_method_end_to_end(tmp_path, method):
    """S from the step-time table (built on first use), from the full-size step timed directly, and from
    the proxy's step: the same run, the method recorded with every row, S relative to the reference
    obtained the same way; with the table, every 2nd trial is also timed directly (fidelity.json)."""
    from tests.helpers import TWO_SPACE

    plugins = write_plugin(tmp_path / "plugins", "nas_two_space", TWO_SPACE)
    out = tmp_path / method
    env = {**nas_env(plugins), "NAS_CACHE_DIR": str(tmp_path / "cache")}  # this test's own tables
    target = [] if method == "proxy" else ["--target-image-size", "16", "--target-batch-size", "2"]
    rc, stdout, stderr = run_nas(
        "search",
        "--plugin",
        "nas_two_space",
        "--space",
        "test-two",
        "--trials",
        "4",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--out",
        out,
        *TINY,
        "--step-time",
        method,
        *target,
        "--fidelity-every",
        "2",
        env=env,
        cwd=tmp_path,
    )
    assert rc == 0, stdout + stderr
    df = pd.read_csv(out / "trials.csv")
    assert (df["step_time_method"] == method).all() and (df["step_time_ms"] > 0).all()
    assert (df["S"] - df["step_time_ms"] / df["reference_ms"]).abs().max() < 1e-9
    assert df["reference_ms"].nunique() == 1 and df["target_id"].nunique() == 1  # one target, one reference
    if method == "proxy":
        assert df["target_image_size"].isna().all() and (df["step_image_size"] == 16).all()
        return
    assert (df["target_image_size"] == 16).all() and (df["target_batch_size"] == 2).all()
    assert (df["step_image_size"] == 16).all() and (df["step_batch_size"] == 2).all()
    if method == "measure":
        assert (df["measured_ms"] == df["step_time_ms"]).all()
        return
    sampled = df[df["measured_ms"].notna()]
    assert sorted(sampled["number"]) == [0, 2]
    fid = json.loads((out / "fidelity.json").read_text())["step_time"]
    assert fid["n"] == 2 and fid["trials"] == [0, 2]
    # The figures are those of the two sampled trials' predicted and measured step times.
    err = (sampled["step_time_ms"] - sampled["measured_ms"]).abs() / sampled["measured_ms"]
    assert fid["within_10pct"] == pytest.approx((err <= 0.10).mean()) and fid["mape"] == pytest.approx(err.mean())
    assert "step-time model vs direct timing on the target:" in stdout and "on 2 trials (fidelity.json)" in stdout
    assert (
        "S = the full-size training step at 16 px, batch 2, predicted by the step-time table on the target cpu ("
        in stdout
    )
    assert (
        "building the step-time table of test-two (16 px, batch 2)" in stderr and "step-time table built in" in stderr
    )
    # The table is reused: a second run on the same device and setting builds nothing.
    tables = list((tmp_path / "cache" / "steptime").glob("*.json"))
    assert len(tables) == 1
    rc, stdout, stderr = run_nas(
        "search",
        "--plugin",
        "nas_two_space",
        "--space",
        "test-two",
        "--trials",
        "4",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--out",
        tmp_path / "again",
        *TINY,
        "--step-time",
        method,
        *target,
        "--fidelity-every",
        "2",
        env=env,
        cwd=tmp_path,
    )
    assert rc == 0 and "building the step-time table" not in stderr, stderr


@pytest.mark.parametrize(("noise", "verdict"), [("0.001", "yes"), ("0.5", "no")])
def test_every_kth_trial_is_trained_twice_and_the_run_says_whether_accuracy_separates(
    tmp_path, capsys, monkeypatch, standin, noise, verdict
):
    from nas.cli import main

    monkeypatch.setenv("NAS_STANDIN_NOISE", noise)
    out = tmp_path / "run"
    args = ["search", "--trials", "6", "--sampler", "random", "--pruner", "none", "--out", str(out), *TINY]
    assert main([*args, "--accuracy-every", "2"]) == 0
    df = pd.read_csv(out / "trials.csv").set_index("number")
    assert df["accuracy_repeat"].notna().tolist() == [True, False, True, False, True, False]
    assert (df["accuracy_repeat"] != df["accuracy"]).loc[[0, 2, 4]].all()
    section = json.loads((out / "fidelity.json").read_text())["accuracy_noise"]
    assert section["trials"] == [0, 2, 4] and section["separates"] is (verdict == "yes")
    printed = capsys.readouterr().out
    assert f"accuracy separates these candidates: {verdict} (" in printed
    assert ("wins on training speed and size" in printed) is (verdict == "no")
    assert main(["report", str(out)]) == 0
    assert f"accuracy separates these candidates: {verdict} (" in capsys.readouterr().out


def test_accuracy_every_zero_trains_no_trial_twice(tmp_path, standin):
    from nas.cli import main

    out = tmp_path / "run"
    args = ["search", "--trials", "3", "--sampler", "random", "--out", str(out), *TINY, "--accuracy-every", "0"]
    assert main(args) == 0
    df = pd.read_csv(out / "trials.csv")
    assert "accuracy_repeat" not in df or df["accuracy_repeat"].isna().all()
    assert "accuracy_noise" not in json.loads(
        (out / "fidelity.json").read_text() if (out / "fidelity.json").exists() else "{}"
    )
