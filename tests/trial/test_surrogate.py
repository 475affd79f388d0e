"""The surrogate evaluators: Accel-NASBench's records fitted well enough to rank held-out
architectures, stored and reloaded without pickle, and run through the real driver and command line
on every backend, resumable, with bad input refused in one line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from nas.errors import NasError
from nas.trial import anb
from nas.trial.factory import evaluator_for
from nas.trial.settings import TrialSettings
from search_spaces import get_space
from tests.backends.test_ray import _env, _nas_cmd, cluster  # noqa: F401  (the suite's private Ray cluster)
from tests.helpers import error_line, main_in_process

SPACE = get_space("accel-nasbench")
# Floors below the figures measured (accuracy Kendall 0.924 / Spearman 0.992, training time
# 0.857 / 0.957, A100 throughput 0.95+ / 0.99+): a change that breaks the fit or the features falls below.
FLOORS = {"accuracy": (0.91, 0.988), "train_time": (0.83, 0.945), "throughput_a100": (0.93, 0.99)}
RUN = ("search", "--space", "accel-nasbench", "--evaluator", "surrogate", "--no-progress")


@pytest.mark.parametrize("quantity", sorted(FLOORS))
def test_surrogates_rank_held_out_records_above_a_floor(quantity):
    s = anb.surrogate(quantity)
    kendall, spearman = FLOORS[quantity]
    assert s.kendall >= kendall and s.spearman >= spearman, s.describe()
    assert s.held_out == round(0.2 * len(anb.load_records()))
    # The stored trees predict what the fitted ones did: the held-out figures recomputed from them.
    x, ys = anb._table()
    _, test = anb.split(len(x))
    pred = s.predict(x[test])
    from scipy.stats import kendalltau  # the figure's own definition

    assert kendalltau(pred, ys[quantity][test])[0] == pytest.approx(s.kendall, abs=1e-9)


def test_a_cached_surrogate_reloads_and_a_broken_cache_file_is_refitted(monkeypatch):
    s = anb.surrogate("accuracy")
    path = anb.cache_dir() / f"accel-nasbench-accuracy-{anb.cache_key('accuracy')}.npz"
    again = anb._load(path, "accuracy")
    x = anb.features([SPACE.choice_of(SPACE.sample(k)) for k in range(20)])
    assert np.array_equal(again.predict(x), s.predict(x)) and again.kendall == s.kendall
    path.write_bytes(b"not an npz")
    refits = []
    monkeypatch.setattr(anb, "fit", lambda q: refits.append(q) or s)
    anb.surrogate.cache_clear()
    try:
        assert anb.surrogate("accuracy") is s and refits == ["accuracy"]
        assert np.array_equal(anb._load(path, "accuracy").predict(x), s.predict(x))  # rewritten
    finally:
        anb.surrogate.cache_clear()


def test_trees_refuse_inconsistent_arrays():
    arrays = anb.surrogate("accuracy").trees.arrays()
    arrays["left"] = arrays["left"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        anb.Trees.from_arrays(arrays)


def test_the_evaluator_scores_a_b0_of_the_space_with_exact_p_and_refuses_other_spaces():
    ev = evaluator_for(TrialSettings(space="accel-nasbench", evaluator="surrogate-a100"))
    m = ev.evaluate(SPACE.reference())
    assert m["P"] == 1.0 and m["S"] == pytest.approx(1.0) and m["params"] == 5_288_548
    assert m["latency_ms"] == pytest.approx(1000 / m["throughput_a100"]) and 0.5 < m["accuracy"] < 0.8
    with pytest.raises(NasError, match=r"scores the accel-nasbench space only.*--space trainaware"):
        evaluator_for(TrialSettings(space="trainaware", evaluator="surrogate"))
    with pytest.raises(NasError, match="not an accel-nasbench architecture"):
        ev.evaluate(get_space("trainaware").reference())


def test_search_through_the_cli_and_a_rerun_resumes_losing_nothing(run_nas, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run_nas(*RUN, "--trials", 30, "--out", out)
    assert rc == 0, err
    first = pd.read_csv(out / "trials.csv")
    assert len(first) == 30 and (first["state"] == "COMPLETE").all()
    assert first["params"].gt(0).all() and first["cost"].eq("train_time").all()
    best = json.loads((out / "best.json").read_text())
    assert best["metrics"]["reward"] == pytest.approx(first["reward"].max())
    rc, stdout, err = main_in_process([*RUN, "--trials", 40, "--out", out], capsys)  # the rerun: no new interpreter
    assert rc == 0, err
    assert "30 of 40 trials already finished" in stdout + err
    second = pd.read_csv(out / "trials.csv")
    assert sorted(second["number"]) == list(range(40))
    kept = second[second["number"] < 30].sort_values("number").reset_index(drop=True)
    pd.testing.assert_frame_equal(kept[first.columns], first.sort_values("number").reset_index(drop=True))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--evaluator", "surrogate-h100"), "'surrogate-h100'"),
        (("--evaluator", "surrogate", "--space", "trainaware"), "--space trainaware"),
    ],
)
def test_bad_values_are_one_error_line(tmp_path, capsys, args, named):
    base = [a for a in RUN if a not in ("--evaluator", "surrogate")]
    rc, _, err = main_in_process([*base, *args, "--trials", 2, "--out", tmp_path / "run"], capsys)
    assert named in error_line(rc, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # starts worker processes
def test_workers_backend_runs_the_surrogate(run_nas, tmp_path):
    out = tmp_path / "run"
    rc, _, err = run_nas(*RUN, "--trials", 12, "--workers", 2, "--out", out)
    assert rc == 0, err
    df = pd.read_csv(out / "trials.csv")
    assert sorted(df["number"]) == list(range(12)) and (df["state"] == "COMPLETE").all()


@pytest.mark.slow  # starts a Ray cluster
def test_ray_backend_runs_the_surrogate(cluster, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    cmd = _nas_cmd(*RUN, "--backend", "ray", "--address", cluster.address, "--trials", 6, "--out", out)
    p = subprocess.run(cmd, env=_env(cluster, tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_csv(out / "trials.csv")
    assert sorted(df["number"]) == list(range(6)) and (df["state"] == "COMPLETE").all()
    assert df["S"].gt(0).all() and df["P"].gt(0).all()


def test_bad_records_are_refused_naming_the_field(tmp_path):
    rec = json.loads(json.dumps(RECORD))
    assert anb.parse_record(rec, "r.json").values["accuracy"] == pytest.approx(0.62054)
    rec["metrics"]["val_top1"] = "high"
    with pytest.raises(NasError, match=r"r\.json has metrics\.val_top1='high'"):
        anb.parse_record(rec, "r.json")
    rec = json.loads(json.dumps(RECORD))
    del rec["model_info"]["params"]
    with pytest.raises(NasError, match=r"r\.json lacks model_info\.params"):
        anb.parse_record(rec, "r.json")
    rec = json.loads(json.dumps(RECORD))
    rec["architecture"]["block2_e"] = 3
    with pytest.raises(NasError, match=r"r\.json: .*block2_e=3"):
        anb.parse_record(rec, "r.json")
    not_a_tarball = tmp_path / "records.tar.gz"
    not_a_tarball.write_text("{}")
    with pytest.raises(NasError, match="cannot read the Accel-NASBench records"):
        anb.load_records(not_a_tarball)


ARCH = {f"block{i}_{k}": v for i in range(7) for k, v in (("e", 4), ("k", 5), ("l", 1), ("se", False))}
RECORD = {
    "architecture": ARCH,
    "metrics": {"val_top1": 62.054, "val_top5": 84.354, "train_time": 1560.6},
    "model_info": {"macs": 369.019616, "params": 4.042824},
    "platform_perf": {f"throughput_{p}": {"throughput_mean": 100.0, "throughput_std": None} for p in anb.PLATFORMS},
}
