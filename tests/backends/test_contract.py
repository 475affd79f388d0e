"""The backend contract: every backend, given the same seed and the same stand-in evaluations,
produces the same trials and the same result files. (Ray's run of the same contract is in
tests/test_ray.py, which starts a cluster.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.helpers import STANDIN, TINY, nas_env, run_nas, write_plugin

# What a trial computes and how it ended: identical whatever scheduled it.
SAME = ["number", "state", "arch", "params", "step_time_ms", "S", "P", "accuracy", "reward"]
SEARCH = ["search", "--sampler", "random", "--seed", "7", "--trials", "5", "--pruner", "none", *TINY]


def contract_frame(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "trials.csv")[SAME].sort_values("number").reset_index(drop=True)


def embedded_reference(tmp_path, standin):
    """The embedded backend in this process, on the stand-in evaluations."""
    from nas.cli import main

    out = tmp_path / "embedded"
    assert main([*SEARCH, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_embedded_and_workers_produce_the_same_trials_and_files(tmp_path, standin):
    ref = embedded_reference(tmp_path, standin)
    plugins = write_plugin(tmp_path / "plugins", "nas_standin", STANDIN)
    out = tmp_path / "workers"
    rc, stdout, stderr = run_nas(
        *SEARCH, "--plugin", "nas_standin", "--workers", "1", "--out", out, env=nas_env(plugins), cwd=tmp_path
    )
    assert rc == 0, stdout + stderr
    pd.testing.assert_frame_equal(contract_frame(out), contract_frame(ref))
    a, b = (json.loads((d / "best.json").read_text()) for d in (ref, out))
    assert a["arch"] == b["arch"] and a["metrics"]["reward"] == b["metrics"]["reward"]
    assert a["pareto_front"] == b["pareto_front"]
    for d in (ref, out):
        assert (d / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The backends share one storage format: the embedded driver resumes the workers' run as its own.
    from nas.cli import main

    assert main([*SEARCH, "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(contract_frame(out), contract_frame(ref))


def test_resumed_embedded_run_equals_an_uninterrupted_one(tmp_path, standin):
    """Three trials, then two more by rerunning with --trials 5: the same five trials as one run of five
    would give for the first three, every finished trial kept as it was."""
    from nas.cli import main

    ref = embedded_reference(tmp_path, standin)
    out = tmp_path / "resumed"
    args = [a if a != "5" else "3" for a in SEARCH]
    assert main([*args, "--out", str(out)]) == 0
    first = contract_frame(out)
    assert main([*SEARCH, "--out", str(out)]) == 0
    again = contract_frame(out)
    pd.testing.assert_frame_equal(again.iloc[:3], first)
    pd.testing.assert_frame_equal(again.iloc[:3], contract_frame(ref).iloc[:3])
    assert len(again) == 5 and set(again["state"]) == {"COMPLETE"}
