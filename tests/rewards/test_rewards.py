"""Rewards against values worked out by hand (the expected numbers are literals, not the formula again)."""

from __future__ import annotations

import math

import pytest

from rewards import MnasNetReward, Reward, TrainAwareReward, get_reward, reward_names
from search_spaces import NasError


def test_registry():
    assert {"trainaware", "mnasnet"} <= set(reward_names())
    assert isinstance(get_reward("trainaware"), TrainAwareReward)
    assert isinstance(get_reward("mnasnet"), MnasNetReward)
    for name in reward_names():
        r = get_reward(name)
        assert isinstance(r, Reward) and r.config()["name"] == name
    with pytest.raises(NasError, match="'nope'") as e:
        get_reward("nope")
    assert "trainaware" in str(e.value)


# -- EfficientNetV2: A * S**w * P**v ---------------------------------------------------------------------


def test_trainaware_default_exponents():
    r = get_reward("trainaware")
    assert (r.w, r.v) == (-0.07, -0.05)
    # 2**-0.07 = exp(-0.07 ln 2) = exp(-0.0485203) = 0.9526380; 0.5**-0.05 = 2**0.05 = exp(0.0346574) = 1.0352649;
    # 0.8 * 0.9526380 * 1.0352649 = 0.7889862.
    assert r({"accuracy": 0.8, "S": 2.0, "P": 0.5}) == pytest.approx(0.7889862, rel=1e-6)
    # The reference itself (S = P = 1) scores its accuracy.
    assert r({"accuracy": 0.8, "S": 1.0, "P": 1.0}) == pytest.approx(0.8, rel=1e-12)
    # Slower or bigger always scores lower at equal accuracy.
    assert r({"accuracy": 0.8, "S": 1.1, "P": 1.0}) < 0.8
    assert r({"accuracy": 0.8, "S": 1.0, "P": 1.1}) < 0.8
    assert r.config() == {"name": "trainaware", "w": -0.07, "v": -0.05}


@pytest.mark.parametrize(
    "w,v,metrics,expected",
    [
        (-1.0, 0.0, {"accuracy": 0.8, "S": 2.0, "P": 0.5}, 0.4),  # 0.8 / 2
        (-1.0, -1.0, {"accuracy": 0.8, "S": 2.0, "P": 0.5}, 0.8),  # 0.8 / (2 * 0.5)
        (-2.0, 1.0, {"accuracy": 0.8, "S": 2.0, "P": 0.5}, 0.1),  # 0.8 * 0.25 * 0.5
        (0.0, 0.0, {"accuracy": 0.6, "S": 3.0, "P": 7.0}, 0.6),
        (-0.5, 0.0, {"accuracy": 0.9, "S": 4.0, "P": 1.0}, 0.45),  # 0.9 / sqrt(4)
    ],
)
def test_trainaware_custom_exponents(w, v, metrics, expected):
    r = get_reward("trainaware", w=w, v=v)
    assert r(metrics) == pytest.approx(expected, rel=1e-12)
    assert r.config() == {"name": "trainaware", "w": w, "v": v}


# -- MnasNet: ACC * (LAT/T)**w, w = alpha if LAT <= T else beta --------------------------------------------


@pytest.mark.parametrize(
    "constraint,lat,expected",
    [
        # soft: alpha = beta = -0.07
        ("soft", 50.0, 0.7872875),  # 0.75 * 0.5**-0.07 = 0.75 * 2**0.07 = 0.75 * 1.0497167
        ("soft", 100.0, 0.75),  # at the target
        ("soft", 200.0, 0.7144785),  # 0.75 * 2**-0.07 = 0.75 * 0.9526380
        ("soft", 150.0, 0.7290123),  # 0.75 * 1.5**-0.07 = 0.75 * exp(-0.07 * 0.4054651)
        # hard: alpha = 0 (no bonus under the target), beta = -1 (accuracy scaled by T/LAT above it)
        ("hard", 50.0, 0.75),
        ("hard", 100.0, 0.75),
        ("hard", 200.0, 0.375),
        ("hard", 400.0, 0.1875),
    ],
)
def test_mnasnet_reward_around_the_target(constraint, lat, expected):
    r = get_reward("mnasnet", target_ms=100.0, constraint=constraint)
    assert r({"accuracy": 0.75, "cost_ms": lat}) == pytest.approx(expected, rel=1e-6)


def test_mnasnet_constants():
    soft, hard = get_reward("mnasnet", constraint="soft"), get_reward("mnasnet", constraint="hard")
    assert (soft.alpha, soft.beta) == (-0.07, -0.07)
    assert (hard.alpha, hard.beta) == (0.0, -1.0)
    assert get_reward("mnasnet").constraint == "soft"


def test_mnasnet_without_target_uses_normalised_step_time():
    # T = the reference's own latency, so LAT / T is S.
    soft, hard = get_reward("mnasnet"), get_reward("mnasnet", constraint="hard")
    assert soft({"accuracy": 0.9, "S": 1.25}) == pytest.approx(0.8860512, rel=1e-6)  # 0.9 * 1.25**-0.07
    assert soft({"accuracy": 0.9, "S": 0.8}) == pytest.approx(0.9141684, rel=1e-6)  # 0.9 * 0.8**-0.07
    assert hard({"accuracy": 0.9, "S": 1.25}) == pytest.approx(0.72, rel=1e-12)  # 0.9 / 1.25
    assert hard({"accuracy": 0.9, "S": 0.8}) == pytest.approx(0.9, rel=1e-12)


def test_mnasnet_custom_alpha_beta():
    r = get_reward("mnasnet", target_ms=100.0, alpha=-0.1, beta=-0.5)
    assert r({"accuracy": 0.75, "cost_ms": 400.0}) == pytest.approx(0.375, rel=1e-12)  # 0.75 * 4**-0.5
    assert r({"accuracy": 0.75, "cost_ms": 25.0}) == pytest.approx(0.8615238, rel=1e-6)  # 0.75 * 2**0.2
    assert r.config() == {"name": "mnasnet", "target_ms": 100.0, "constraint": "soft", "alpha": -0.1, "beta": -0.5}


# -- bad settings and bad metrics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,params,names",
    [
        ("trainaware", {"w": "x"}, "'x'"),
        ("trainaware", {"v": math.nan}, "nan"),
        ("trainaware", {"typo": 1}, "'typo'"),
        ("mnasnet", {"constraint": "medium"}, "'medium'"),
        ("mnasnet", {"target_ms": 0}, "got 0"),
        ("mnasnet", {"target_ms": -5.0}, "got -5.0"),
        ("mnasnet", {"target_ms": "100"}, "'100'"),
        ("mnasnet", {"alpha": "x"}, "'x'"),
        ("mnasnet", {"beta": math.inf}, "inf"),
    ],
)
def test_bad_reward_settings(name, params, names):
    with pytest.raises(NasError, match=names):
        get_reward(name, **params)


GOOD = {"accuracy": 0.8, "S": 1.2, "P": 0.9, "cost_ms": 120.0, "params": 5e6}


@pytest.mark.parametrize("name,params", [("trainaware", {}), ("mnasnet", {}), ("mnasnet", {"target_ms": 100.0})])
@pytest.mark.parametrize(
    "key,value",
    [
        ("accuracy", None),
        ("S", 0.0),
        ("S", -1.0),
        ("S", math.inf),
        ("S", math.nan),
        ("P", 0.0),
        ("P", math.nan),
        ("accuracy", math.nan),
        ("cost_ms", 0.0),
        ("cost_ms", -3.0),
        ("S", "fast"),
        ("accuracy", "high"),
        ("P", None),
    ],
)
def test_bad_metrics(name, params, key, value):
    r = get_reward(name, **params)
    metrics = dict(GOOD)
    if value is None:
        del metrics[key]
    else:
        metrics[key] = value
    try:
        r(dict(metrics, **{key: GOOD[key]}))  # sanity: the same call with the good value works
    except NasError:  # pragma: no cover
        pytest.fail("the good metrics were refused")
    used = {
        "trainaware": {"accuracy", "S", "P"},
        "mnasnet": {"accuracy", "cost_ms"} if params else {"accuracy", "S"},
    }[name]
    if key not in used:
        assert r(metrics) == r(GOOD)  # a metric the reward does not read cannot make it fail
        return
    with pytest.raises(NasError, match=repr(key)):
        r(metrics)
