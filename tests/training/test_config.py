"""The training configuration: impossible values refused, a JSON round trip."""

from __future__ import annotations

import json

import pytest

from nas.errors import NasError
from nas.training.config import TrainConfig
from nas.training.progressive import get_schedule


@pytest.mark.parametrize(
    "kw",
    [
        dict(epochs=0),
        dict(optimizer="adam"),
        dict(lr=-1.0),
        dict(lr=float("nan")),
        dict(warmup_epochs=2),
        dict(label_smoothing=1.0),
        dict(ema_decay=1.0),
        dict(image_size=4),
        dict(randaugment=40),
        dict(mixup=-1),
        dict(dropout=1.0),
        dict(device="tpu"),
        dict(amp="yes"),
        dict(seed=-1),
        dict(batch_size=2.5),
        dict(progressive="s"),
    ],
)
def test_impossible_config_values_are_refused(cfg, kw):
    with pytest.raises(NasError):
        cfg(**kw)


def test_config_dict_round_trip(cfg):
    c = cfg(progressive=get_schedule("m", size_end=32), ema_decay=0.99, lr=0.01)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain data only
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(NasError, match="unknown training config"):
        TrainConfig.from_dict({**d, "epoch": 3})
