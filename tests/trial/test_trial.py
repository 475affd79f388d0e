"""nas.trial.settings: the settings that define a search, and the one objective every backend runs."""

from __future__ import annotations

import json
import math

import pytest

from nas.errors import NasError
from nas.steptime.methods import StepTimeConfig
from nas.trial.evaluator import TrialFailed, get_evaluator
from nas.trial.objective import run_objective
from nas.trial.settings import ProxyConfig, TrialSettings
from nas.trial.target import prepare, resolve
from search_spaces import Architecture
from tests.helpers import TINY_ARCH


def test_settings_round_trip_through_json():
    s = TrialSettings(
        space="mnasnet",
        dataset="fake",
        reward="mnasnet",
        reward_params={"constraint": "hard"},
        seed=5,
        proxy=ProxyConfig.of(image_size=24, progressive="s", epochs=3),
        step_time=StepTimeConfig(method="measure", target_image_size=48, target_batch_size=8),
        compile="off",
    )
    again = TrialSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s
    # The progressive schedule is scaled to end at the proxy's image size (EfficientNetV2 section 4.2).
    assert (s.proxy.train.progressive.size_start, s.proxy.train.progressive.size_end) == (12, 24)
    small = s.proxy.at_image_size(40)
    assert (small.image_size, small.train.eval_image_size, small.train.progressive.size_end) == (40, 40, 40)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"space": "nope"}, "'nope'"),
        ({"reward": "nope"}, "'nope'"),
        ({"dataset": "nope"}, "'nope'"),
        ({"device": "gpu"}, "'gpu'"),
        ({"seed": -1}, "-1"),
        ({"compile": "maybe"}, "'maybe'"),
        ({"reward_params": {"w": "x"}}, "'x'"),
    ],
)
def test_bad_settings_name_the_value(kwargs, word):
    with pytest.raises(NasError, match=word):
        TrialSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"method": "guess"}, "'guess'"),
        ({"target_image_size": 4}, "--target-image-size"),
        ({"target_batch_size": 0}, "--target-batch-size"),
        ({"min_run_time": 0}, "--measure-time"),
        ({"fidelity_every": -1}, "--fidelity-every"),
    ],
)
def test_bad_step_time_settings_name_the_flag(kwargs, word):
    with pytest.raises(NasError, match=word):
        StepTimeConfig(**kwargs)


def test_step_time_target_defaults_by_device_and_the_cost_by_reward():
    st = resolve(TrialSettings(step_time=StepTimeConfig(method="table")), "cpu").step_time
    assert (st.cost, st.target_image_size, st.target_batch_size) == ("step", 64, 16)
    one = TrialSettings(step_time=StepTimeConfig(method="table", target_image_size=96))
    assert resolve(one, "cpu").step_time.target_image_size == 96
    # MnasNet's reward is about latency: one image at the space's resolution (MnasNet section 3).
    st = resolve(TrialSettings(space="mnasnet", reward="mnasnet"), "cpu").step_time
    assert (st.cost, st.target_image_size, st.target_batch_size) == ("latency", 224, 1)
    st = resolve(
        TrialSettings(space="mnasnet", reward="mnasnet", step_time=StepTimeConfig(cost="step")), "cpu"
    ).step_time
    assert (st.cost, st.target_image_size, st.target_batch_size) == ("step", 64, 16)


@pytest.fixture
def search_problem():
    from nas.study.space import SearchOptions, SearchProblem

    return SearchProblem(TrialSettings(dataset="fake", proxy=ProxyConfig.of(image_size=16, epochs=3)), SearchOptions())


def test_objective_completes_with_where_and_when(search_problem, standin):
    ev = get_evaluator("train")(search_problem.settings)
    out = run_objective(search_problem, ev, {"arch": TINY_ARCH}, 4)
    row = out.row
    assert out.state == row["state"] == "COMPLETE" and out.error is None and row["error"] is None
    assert (
        row["number"] == 4
        and row["arch"] == Architecture.from_string(TINY_ARCH).to_string()
        and row["pid"] > 0
        and row["hostname"]
    )
    assert row["t_end"] >= row["t_start"] and row["duration_s"] >= 0
    assert row["reward"] == pytest.approx(row["accuracy"] * row["S"] ** -0.07 * row["P"] ** -0.05)


def test_pruning_hook_sees_the_reward_so_far_and_a_pruned_row_keeps_what_was_measured(search_problem, standin):
    ev = get_evaluator("train")(search_problem.settings)
    seen = []

    def report(epoch, value):
        seen.append((epoch, value))
        return epoch == 2

    out = run_objective(search_problem, ev, {"arch": TINY_ARCH}, 0, report)
    assert out.state == "PRUNED" and [e for e, _ in seen] == [1, 2]
    row = out.row
    for key in ("params", "step_time_ms", "S", "P", "accuracy"):
        assert row[key] is not None, key
    # The signal is the reward a finished trial with this accuracy would get: A * S**w * P**v.
    assert seen[-1][1] == pytest.approx(row["accuracy"] * row["S"] ** -0.07 * row["P"] ** -0.05)


def test_a_failure_is_a_recorded_reason_not_an_exception(search_problem, monkeypatch, standin):
    ev = get_evaluator("train")(search_problem.settings)

    def boom(*a, **k):
        raise TrialFailed("out of memory: CUDA")

    monkeypatch.setattr(ev, "evaluate", boom)
    out = run_objective(search_problem, ev, {"arch": TINY_ARCH}, 2)
    assert out.state == "FAIL" and out.row["error"] == out.error == "TrialFailed: out of memory: CUDA"
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: 1 / 0)
    assert run_objective(search_problem, ev, {"arch": TINY_ARCH}, 3).error.startswith("ZeroDivisionError")


def test_seed_is_the_problems_and_the_proposal_image_scale_reaches_the_evaluation(search_problem, monkeypatch, standin):
    ev = get_evaluator("train")(search_problem.settings)
    calls = []
    monkeypatch.setattr(ev, "evaluate", lambda arch, **k: calls.append(k) or {"reward": 1.0})
    run_objective(search_problem, ev, {"arch": TINY_ARCH, "image_scale": 1.5, "facts": {"candidate": "x"}}, 9)
    assert calls[0]["seed"] == search_problem.settings.seed + 9 and calls[0]["image_scale"] == 1.5


@pytest.mark.slow
def test_real_evaluation_of_a_tiny_candidate():
    s = TrialSettings(
        dataset="fake",
        proxy=ProxyConfig.of(width=1.0, depth=1.0, image_size=16, epochs=1, batch_size=32),
        step_time=StepTimeConfig(method="measure", target_image_size=16, target_batch_size=4, min_run_time=0.05),
    )
    s = resolve(s, "cpu")
    ref = Architecture.from_string(TINY_ARCH).replace(stem=16)
    target = prepare(s, num_classes=10, reference=ref, device="cpu")
    ev = get_evaluator("train")(s, target=target, reference=ref)
    m = ev.evaluate(Architecture.from_string(TINY_ARCH), seed=0)
    assert m["step_time_method"] == "measure" and m["step_image_size"] == 16 and m["step_batch_size"] == 4
    assert m["S"] == pytest.approx(m["step_time_ms"] / target.reference_ms) and m["cost_ms"] == m["step_time_ms"]
    assert 0 <= m["accuracy"] <= 1 and math.isfinite(m["reward"])
    assert m["target_id"] == target.identity and m["target_device"].startswith("cpu (")
