"""Every registered reward passes one suite: a new reward is tested by being registered."""

from __future__ import annotations

import dataclasses
import math

import pytest

from nas.steptime.costs import COSTS
from rewards import get_reward, parse_params, reward_class, reward_names, short_flags

METRICS = {
    "accuracy": 0.8,
    "S": 1.2,
    "P": 0.9,
    "cost_ms": 120.0,
    "step_time_ms": 120.0,
    "params": 5e6,
    "arch": "stem8,r1_k3_s1_e1_i8_o8,head32,res32",
}


@pytest.mark.parametrize("name", reward_names())
def test_every_reward_scores_reads_what_it_declares_and_round_trips(name):
    cls = reward_class(name)
    reward = get_reward(name)
    assert set(reward.needs) <= set(METRICS), "a reward reads only metrics a trial produces"
    value = reward({k: METRICS[k] for k in reward.needs})
    assert math.isfinite(value)
    better = reward({**{k: METRICS[k] for k in reward.needs}, "accuracy": 0.9})
    assert better > value, "more accurate, all else equal, scores higher"
    config = reward.config()
    assert config["name"] == name
    again = get_reward(name, **{k: v for k, v in config.items() if k != "name"})
    assert again.config() == config and again({k: METRICS[k] for k in again.needs}) == value
    assert cls.default_cost in COSTS


@pytest.mark.parametrize("name", reward_names())
def test_every_short_flag_names_a_parameter_of_the_reward_that_declares_it(name):
    cls = reward_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    for flag, (param, text) in short_flags().items():
        if param in fields and fields[param].metadata.get("flag") == flag:
            assert flag.startswith("--") and text
            default = fields[param].default
            if isinstance(default, float):  # a value given as text on the command line arrives typed
                assert parse_params(cls, [], {param: str(default)}) == {param: default}
