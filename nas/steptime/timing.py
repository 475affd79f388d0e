"""Timing one piece's share of a training step: its forward, backward and optimiser step.

A piece's step is the training step :class:`nas.train.TrainStep` runs, restricted to the piece:
gradients set to None (``zero_grad(set_to_none=True)``), the forward under autocast, the backward
outside it (loss-scaled through the runtime's GradScaler), then ``nas train``'s default optimiser,
RMSprop as :func:`nas.train.make_optimizer` configures it (decay and no-decay groups), over the
piece's parameters. The input is the real activation the full network feeds the piece
(:func:`nas.steptime.pieces.extract`) and requires a gradient, as an activation inside the network
does (except the stem's images). A block's backward starts from a random output gradient, the
tail's from the cross-entropy loss. It is timed with :func:`nas.measure.time_step`
(``torch.utils.benchmark``, which synchronises CUDA; the fastest of repeated blocks after warm-up,
which other jobs on a shared machine disturb least, on the model's clock) on the resolved :class:`nas.device.Runtime`, under its autocast and in its memory
format.

Why the optimiser is timed with each piece rather than fitted as a function of the parameter count: on
CPU torch steps RMSprop one tensor at a time, and its cost per value depends on the tensors' sizes,
not only on their total (2 CPU cores, 1 thread: 50M values in 10 tensors 650 ms, in 1,000 tensors
190 ms; 5M values: 22 ms against 48 ms), because large tensors' temporaries miss the caches and
fault in fresh pages. A piece carries its real tensor shapes, so their sum over a network does; and
timing backward and optimiser together lets the optimiser read gradients as freshly allocated as in
a real step.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from nas.measure import time_step


def piece_params(module: nn.Module) -> tuple[int, int]:
    """(parameter count, parameter tensors) the optimiser steps for this piece."""
    ps = [p for p in module.parameters() if p.requires_grad]
    return sum(p.numel() for p in ps), len(ps)


def time_piece(module: nn.Module, x: torch.Tensor, runtime, *, kind: str, num_classes: int,
               min_run_time: float, runs: int = 8, warmup: int = 1, clock: str = "wall") -> tuple[float, float]:
    """Fastest block and IQR (ms) of the piece's share of a training step (see the module docstring),
    timed for ``min_run_time`` seconds or ``runs`` steps, whichever is longer: a piece that takes
    100 ms gets as many chances to run undisturbed as one that takes 1 ms (a heavy piece counts
    many times over in a network, so its error does too)."""
    from nas.train import TrainConfig, make_optimizer

    x = x.detach().requires_grad_(kind != "stem")
    module.train()
    scaler = runtime.grad_scaler()
    opt = make_optimizer(module, TrainConfig(optimizer="rmsprop"))
    if kind == "tail":
        loss_fn = nn.CrossEntropyLoss()
        labels = torch.randint(0, num_classes, (x.shape[0],), device=runtime.device)

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
            y.backward(scaler.scale(grad_out))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        x.grad = None
        backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        step()
        runtime.synchronize()
        once = time.perf_counter() - start
    fastest, iqr, _, _ = time_step(step, runtime, warmup=0, min_run_time=max(min_run_time, runs * once), clock=clock,
                                   statistic="min")
    return fastest, iqr
