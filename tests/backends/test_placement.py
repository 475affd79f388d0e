"""``--trials-per-device auto``: the choice from a measured busy share and memory, the flag, and the
CPU path end to end (the CUDA probe runs in benchmarks/gpu_report.py on a lent GPU)."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nas.backends.placement import AUTO_CAP, BUSY_GOAL, MEMORY_SHARE, choose_per_device, per_device_arg, probe
from nas.errors import NasError
from nas.trial.settings import TrialSettings
from tests.helpers import TINY, TWO_SPACE, nas_env, write_plugin

GIB = 2**30
busy = st.floats(0.001, 1.0)
peaks = st.integers(1, 100 * GIB)
frees = st.integers(0, 200 * GIB)


@given(busy, peaks, frees)
def test_the_choice_is_within_bounds_and_fits_in_memory_when_anything_does(b, peak, free):
    n = choose_per_device(b, peak, free)
    assert 1 <= n <= AUTO_CAP
    if MEMORY_SHARE * free >= peak:  # one trial fits: so do all of them together
        assert n * peak <= MEMORY_SHARE * free


@given(busy, peaks, frees)
def test_the_choice_reaches_the_busy_goal_unless_memory_or_the_cap_stop_it(b, peak, free):
    n = choose_per_device(b, peak, free)
    if n < AUTO_CAP and (n + 1) * peak <= MEMORY_SHARE * free:
        assert n * b >= BUSY_GOAL - 1e-9  # one more trial would have fitted: the goal was already met
        assert (n - 1) * b < BUSY_GOAL or n == 1  # and it takes no more than needed


@given(st.floats(0.001, 1.0), st.floats(0.001, 1.0), peaks)
def test_a_busier_trial_never_gets_more_company(b1, b2, peak):
    lo, hi = sorted((b1, b2))
    assert choose_per_device(hi, peak, 200 * GIB) <= choose_per_device(lo, peak, 200 * GIB)


def test_figures_from_the_h200_run():
    # One default proxy kept an H200 13% busy (README, "On a GPU"): seven of them reach 90%.
    assert choose_per_device(0.13, 2 * GIB, 139 * GIB) == math.ceil(0.9 / 0.13) == 7
    assert choose_per_device(0.13, 40 * GIB, 139 * GIB) == 2  # memory caps it
    assert choose_per_device(0.95, GIB, 139 * GIB) == 1
    assert choose_per_device(0.0, GIB, 139 * GIB) == AUTO_CAP


@pytest.mark.parametrize(
    "args, message",
    [
        ((1.5, GIB, GIB), "SM busy share is in [0, 1], got 1.5"),
        ((float("nan"), GIB, GIB), "got nan"),
        ((0.5, 0, GIB), "memory figures must be positive"),
    ],
)
def test_impossible_figures_are_refused(args, message):
    with pytest.raises(NasError, match=message.replace("[", r"\[").replace("]", r"\]")):
        choose_per_device(*args)


def test_the_flag_takes_a_count_or_auto():
    assert per_device_arg("auto") == "auto" and per_device_arg("3") == 3
    for bad in ("0", "65", "two", "3.5", ""):
        with pytest.raises(NasError, match=rf"--trials-per-device must be an integer in \[1, 64\].*{bad!r}"):
            per_device_arg(bad)


def test_a_cpu_runs_one_trial_per_device():
    choice = probe(TrialSettings(device="cpu"))
    assert choice.per_device == 1 and choice.busy is None
    assert "--trials-per-device auto: 1 on cpu" in choice.describe()


@pytest.mark.parametrize(
    "bad, line",
    [
        ("0", "nas: error: --trials-per-device must be an integer in [1, 64] or auto, got '0'"),
        ("many", "nas search: error: argument --trials-per-device: an integer in [1, 64] or auto, got 'many'"),
    ],
)
def test_a_bad_value_is_one_error_line_and_writes_nothing(tmp_path, bad, line):
    p = subprocess.run(
        [sys.executable, "-m", "nas.cli", "search", "--trials-per-device", bad, "--out", tmp_path / "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_auto_on_a_cpu_searches_with_one_worker(tmp_path):
    plugin_dir = write_plugin(tmp_path / "plugins", "nas_two_space", TWO_SPACE)
    cmd = ["search", "--space", "test-two", "--plugin", "nas_two_space", "--trials-per-device", "auto"]
    p = subprocess.run(
        [sys.executable, "-m", "nas.cli", *cmd, "--trials", "2", "--out", str(tmp_path / "run"), *map(str, TINY)],
        env=nas_env(plugin_dir),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "--trials-per-device auto: 1 on cpu" in p.stdout and "starting 1 workers for 2 trials" in p.stdout
    df = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert sorted(df["number"]) == [0, 1] and df["pid"].nunique() == 1
