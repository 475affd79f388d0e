"""Evaluation: top-1 accuracy, and BatchNorm statistics re-estimated before it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.data import make_loader
from nas.training.evaluation import evaluate, recalibrate_bn


def test_evaluate_is_top1_accuracy(small):
    class Always(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            out[:, 3] = 1
            return out

    loader = make_loader(small.val, image_size=8, batch_size=50, train=False)
    expected = float((small.val.labels == 3).float().mean())
    assert evaluate(Always(), loader, "cpu") == pytest.approx(expected)


def test_bn_recalibration_replaces_stale_running_stats_with_the_batch_average():
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.1))
    model[0].running_mean.fill_(100.0)  # stale statistics, as after a short run
    batches = [(torch.randn(4, 3, 5, 5) * 2 + k, torch.zeros(4)) for k in range(3)]
    model.eval()
    recalibrate_bn(model, batches, "cpu", batches=2)
    expected = torch.stack([b[0].mean(dim=(0, 2, 3)) for b in batches[:2]]).mean(0)  # only 2 batches used
    assert torch.allclose(model[0].running_mean, expected, atol=1e-5)
    assert model[0].momentum == 0.1 and not model.training  # settings restored
