"""Rewards that score a candidate: one file each, selected by name with :func:`get_reward`."""

from rewards.base import (
    Reward,
    get_reward,
    param_names,
    parse_params,
    register,
    reward_class,
    reward_names,
    short_flags,
)
from rewards.mnasnet import MnasNetReward
from rewards.trainaware import TrainAwareReward

__all__ = [
    "MnasNetReward",
    "Reward",
    "TrainAwareReward",
    "get_reward",
    "param_names",
    "parse_params",
    "register",
    "reward_class",
    "reward_names",
    "short_flags",
]
