"""Evaluating a model: top-1 accuracy, and BatchNorm statistics re-estimated before it.

Both take any iterable of ``(images, labels)`` batches (:class:`nas.data.batches.Epoch` yields them
already on the device; then :meth:`nas.core.device.Runtime.images` only sets the memory format).
"""

from __future__ import annotations

import torch
from torch import nn

from nas.core.device import Runtime
from nas.errors import NasError


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, runtime: Runtime | str, batches: int) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average over
    ``batches`` training batches (the BN recalibration used to evaluate weight-shared or briefly
    trained candidates in NAS). Restores each layer's momentum and the train/eval mode."""
    runtime = _runtime(runtime)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for i, (images, _) in enumerate(loader):
            if i >= batches:
                break
            with runtime.autocast():
                model(runtime.images(images))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, loader, runtime: Runtime | str) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` over ``loader``; restores the train/eval mode."""
    runtime = _runtime(runtime)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=runtime.device)
    total = 0
    try:
        for images, labels in loader:
            with runtime.autocast():
                logits = model(runtime.images(images))
            correct += (logits.argmax(1) == labels.to(runtime.device, non_blocking=True)).sum()
            total += labels.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise NasError("cannot evaluate on an empty data set")
    return int(correct) / total


def _runtime(r: Runtime | str) -> Runtime:
    """A Runtime, or a device name resolved with full precision and the default layout."""
    return r if isinstance(r, Runtime) else Runtime.resolve(str(r), amp="off", channels_last="off")
