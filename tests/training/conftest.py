"""Fixtures of the training tests: a small digits split, the tiny network, a training config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.data import Splits, TensorImages, load_dataset
from nas.training.config import TrainConfig
from search_spaces import Architecture, build
from tests.helpers import TINY_TRAIN


@pytest.fixture(scope="session")
def small() -> Splits:
    """256 / 128 digits: enough to learn, small enough for a 1-second epoch."""
    d = load_dataset("digits")
    return Splits(
        "digits-small",
        TensorImages(d.train.images[:256], d.train.labels[:256]),
        TensorImages(d.val.images[:128], d.val.labels[:128]),
        10,
        8,
    )


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(seed=0)``: ``TINY_TRAIN`` for 10 classes, its weights drawn from ``seed``."""

    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return build(Architecture.from_string(TINY_TRAIN), 10)

    return make


@pytest.fixture(scope="session")
def cfg():
    """``cfg(**changes)``: a 2-epoch, batch-32 CPU training config with ``changes``."""

    def make(**changes) -> TrainConfig:
        return TrainConfig(**({"epochs": 2, "batch_size": 32, "device": "cpu"} | changes))

    return make
