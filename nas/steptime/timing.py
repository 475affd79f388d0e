"""Timing the parts of a training step: one piece's forward and backward, and the optimiser's step.

Both are timed with :func:`nas.measure.time_step` (``torch.utils.benchmark``, which synchronises
CUDA; median of repeated blocks after warm-up) on the resolved :class:`nas.device.Runtime`, under
its autocast and in its memory format, as :class:`nas.train.TrainStep` runs them:

* a piece: gradients set to None (``zero_grad(set_to_none=True)``), the forward under autocast, the
  backward outside it. Its input is the real activation the full network feeds it
  (:func:`nas.steptime.pieces.extract`) and requires a gradient, as an activation inside the
  network does (except the stem's images). A block's backward starts from a random output
  gradient; the tail's from the cross-entropy loss, loss-scaled as ``TrainStep`` does;
* the optimiser: ``nas train``'s default, RMSprop configured by :func:`nas.train.make_optimizer`
  (decay and no-decay groups), stepped through the runtime's GradScaler. On CPU torch steps it one
  tensor at a time, on CUDA with multi-tensor kernels, so its cost is modelled as a plane in the
  parameter count and the number of parameter tensors, fitted by least squares on synthetic
  parameter sets shaped like a network's (half small 1-D tensors, as BatchNorm's, half weights).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from nas.measure import time_step

def optimizer_points(numel: Sequence[int], tensors: Sequence[int]) -> list[tuple[int, int]]:
    """Where to time the optimiser for networks with these parameter counts and tensor counts: three
    counts spread geometrically from half the smallest to 1.5x the largest, each with few and with
    many tensors (half the fewest, 1.5x the most), so the plane is fitted where it is used."""
    lo, hi = max(1000, min(numel) // 2), max(numel) * 3 // 2
    t_lo, t_hi = max(2, min(tensors) // 2), max(tensors) * 3 // 2
    sizes = sorted({int(lo), int(round((lo * hi) ** 0.5)), int(hi)})
    return [(n, t) for n in sizes for t in (t_lo, t_hi)]


def network_params(arch, num_classes: int) -> tuple[int, int]:
    """(parameter count, parameter tensors) of the network ``arch`` builds, counted on the meta device."""
    from search_spaces import build

    with torch.device("meta"):
        return piece_params(build(arch, num_classes))


def piece_params(module: nn.Module) -> tuple[int, int]:
    """(parameter count, parameter tensors) the optimiser steps for this piece."""
    ps = [p for p in module.parameters() if p.requires_grad]
    return sum(p.numel() for p in ps), len(ps)


def time_piece(module: nn.Module, x: torch.Tensor, runtime, *, kind: str, num_classes: int,
               min_run_time: float, warmup: int = 2) -> tuple[float, float]:
    """Median and IQR (ms) of one forward and backward of ``module`` on ``x`` (see module docstring)."""
    params = [p for p in module.parameters() if p.requires_grad]
    x = x.detach().requires_grad_(kind != "stem")
    module.train()
    if kind == "tail":
        loss_fn = nn.CrossEntropyLoss()
        labels = torch.randint(0, num_classes, (x.shape[0],), device=runtime.device)
        scaler = runtime.grad_scaler()

        def backward() -> None:
            with runtime.autocast():
                loss = loss_fn(module(x), labels)
            scaler.scale(loss).backward()
    else:
        with torch.no_grad(), runtime.autocast():
            grad_out = torch.randn_like(module(x))

        def backward() -> None:
            with runtime.autocast():
                y = module(x)
            y.backward(grad_out)

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        backward()

    median, iqr, _, _ = time_step(step, runtime, warmup=warmup, min_run_time=min_run_time)
    return median, iqr


def _parameter_set(numel: int, tensors: int, device: torch.device) -> nn.Module:
    """``tensors`` parameters holding ``numel`` values: half 1-D of 64 values (BatchNorm-like, in the
    no-decay group), the rest split evenly over 4-D weights (in the decay group)."""
    small = tensors // 2
    big = tensors - small
    rest = max(big, numel - 64 * small)
    sizes = [rest // big + (1 if i < rest % big else 0) for i in range(big)]
    ps = [nn.Parameter(torch.randn(64, device=device)) for _ in range(small)]
    ps += [nn.Parameter(torch.randn(n, 1, 1, 1, device=device) * 0.01) for n in sizes]
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-3
    return nn.ParameterList(ps)


def time_optimizer(numel: int, tensors: int, runtime, *, min_run_time: float, warmup: int = 2) -> float:
    """Median time (ms) of one RMSprop step, as ``nas train`` configures it, over ``numel`` values in
    ``tensors`` tensors."""
    from nas.train import TrainConfig, make_optimizer

    params = _parameter_set(numel, tensors, runtime.device)
    opt = make_optimizer(params, TrainConfig(optimizer="rmsprop"))
    scaler = runtime.grad_scaler()
    scaler.scale(torch.ones((), device=runtime.device))  # initialises the fp16 loss scale, as a step would

    def step() -> None:
        scaler.step(opt)
        scaler.update()

    median, _, _, _ = time_step(step, runtime, warmup=warmup, min_run_time=min_run_time)
    return median


def fit_optimizer(points: Sequence[tuple[int, int, float]]) -> list[float]:
    """Least-squares plane ``ms = c0 + c1 * numel + c2 * tensors`` through ``(numel, tensors, ms)``."""
    a = np.array([[1.0, n, t] for n, t, _ in points])
    y = np.array([ms for _, _, ms in points])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return [float(c) for c in coef]


def optimizer_ms(coef: Sequence[float], numel: int, tensors: int) -> float:
    """The fitted optimiser cost of a step over ``numel`` values in ``tensors`` tensors."""
    return coef[0] + coef[1] * numel + coef[2] * tensors
