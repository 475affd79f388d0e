"""What S measures: the cost of a candidate on the target device, one registry entry per kind.

* ``step`` (EfficientNetV2 section 3.3): the training step ``nas train`` runs: forward under
  autocast, loss, backward (loss-scaled for fp16), RMSprop step.
* ``latency`` (MnasNet section 3): the inference forward pass in evaluation mode, without autograd,
  under the runtime's autocast, at the latency batch (1 by default, as MnasNet measured on a phone).

Each cost knows how to time one piece of a network (:meth:`Cost.time_piece`, for the step-time
table) and a whole network (:meth:`Cost.measure`, for the table's calibration networks, its
checks and the ``measure`` method).

Timing a piece's share of a training step: gradients set to None, the forward under autocast, the
backward outside it (loss-scaled through the runtime's GradScaler), then ``nas train``'s default
optimiser, RMSprop as :func:`nas.training.step.make_optimizer` configures it (decay and no-decay
groups), over the piece's parameters. The input is the real activation the full network feeds the
piece (:func:`nas.steptime.pieces.extract`) and requires a gradient, as an activation inside the
network does (except the stem's images). A block's backward starts from a random output gradient,
the tail's from the cross-entropy loss. The optimiser is timed with each piece rather than fitted
as a function of the parameter count: on CPU torch steps RMSprop one tensor at a time, and its cost
per value depends on the tensors' sizes, not only on their total (2 CPU cores, 1 thread: 50M values
in 10 tensors 650 ms, in 1,000 tensors 190 ms), because large tensors' temporaries miss the caches.

Every timing is the fastest of repeated blocks after warm-up (:func:`nas.steptime.measure.time_step`,
``torch.utils.benchmark``, which synchronises CUDA): other jobs on a shared machine only ever slow a
block down.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from nas.core.device import Runtime
from nas.core.memory import saved_for_backward
from nas.errors import NasError
from nas.steptime.measure import MIN_STEPS, fastest_of, measure_step_time
from nas.training.config import TrainConfig
from nas.training.step import make_optimizer
from search_spaces import Architecture

CPU_DEFAULT = (64, 16)  # the training step on a CPU: px, batch
CUDA_PIXELS_BATCH = (224, 128)  # images of this size per batch on CUDA, kept at constant pixels per batch
LATENCY_BATCH = 1  # MnasNet measured one image at a time


class Cost(abc.ABC):
    """One kind of cost S can stand for."""

    name: str = ""
    column: str = ""  # the result column holding the candidate's cost in ms
    what: str = ""  # how a sentence names it
    help: str = ""

    training = True  # networks run in training mode (else evaluation mode) for this cost
    # Passes over a table's calibration networks, each network timed once a pass and its fastest
    # kept (nas.steptime.build): passes a network apart outvote a slow spell on a shared machine.
    calibration_passes = 2
    label = ""  # how a target setting names it ("latency, 224 px, batch 1")

    @abc.abstractmethod
    def default_setting(self, device_type: str, resolution: int | None) -> tuple[int, int]:
        """(image size, batch) of the default target on a device type for a space of this resolution
        (:mod:`nas.steptime.target` says why)."""

    @abc.abstractmethod
    def piece_step(self, module: nn.Module, x: torch.Tensor, runtime: Runtime, *, kind: str, num_classes: int):
        """A closure running this cost's work for one piece on its real input."""

    def piece_act_mb(self, module: nn.Module, x: torch.Tensor, runtime: Runtime, *, kind: str) -> float:
        """Megabytes of activations the piece's work holds (:mod:`nas.steptime.correction` says why
        that matters): by default every tensor its modules output, once each."""
        sizes: dict[int, int] = {}

        def hook(_m, _inputs, out) -> None:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    sizes.setdefault(id(t), t.numel() * t.element_size())

        handles = [m.register_forward_hook(hook) for m in module.modules() if not any(m.children())]
        try:
            with torch.inference_mode(), runtime.autocast():
                module.eval()(x.detach())
        finally:
            for h in handles:
                h.remove()
        return sum(sizes.values()) / 1e6

    def time_piece(
        self,
        module: nn.Module,
        x: torch.Tensor,
        runtime: Runtime,
        *,
        kind: str,
        num_classes: int,
        min_run_time: float,
        runs: int = 8,
        warmup: int = 1,
        clock: str = "wall",
    ) -> tuple[float, float]:
        """Fastest sample and IQR (ms) of the piece's share of the cost, timed for ``min_run_time``
        seconds or ``runs`` samples, whichever is longer: a piece that takes 100 ms gets as many
        chances to run undisturbed as one that takes 1 ms (a heavy piece counts many times over in a
        network, so its error does too)."""
        step = self.piece_step(module, x, runtime, kind=kind, num_classes=num_classes)
        return fastest_of(step, runtime, runs=runs, min_run_time=min_run_time, warmup=warmup, clock=clock)

    def measure(
        self,
        arch: Architecture,
        runtime: Runtime,
        *,
        batch_size: int,
        image_size: int,
        num_classes: int,
        min_run_time: float,
        clock: str = "wall",
        repeats: int = 1,
        statistic: str = "min",
        warmup: int = 2,
        seed: int = 0,
        min_steps: int = MIN_STEPS,
    ) -> float:
        """The whole network's cost (ms) at this setting, timed directly."""
        r = measure_step_time(
            arch,
            runtime=runtime,
            batch_size=batch_size,
            image_size=image_size,
            num_classes=num_classes,
            cost=self.name,
            min_run_time=min_run_time,
            clock=clock,
            repeats=repeats,
            statistic=statistic,
            warmup=warmup,
            seed=seed,
            min_steps=min_steps,
        )
        return r.step_time_ms


class StepCost(Cost):
    name = "step"

    def default_setting(self, device_type, resolution):
        if device_type != "cuda":
            return CPU_DEFAULT
        image = resolution or CUDA_PIXELS_BATCH[0]
        size, per_batch = CUDA_PIXELS_BATCH
        # The batch follows the image size, so a smaller image gets the larger batch of the same memory.
        return image, max(8, round(per_batch * (size / image) ** 2 / 8) * 8)

    column = "step_time_ms"
    what = "training step"
    help = "the full-size training step (forward, loss, backward, RMSprop step): EfficientNetV2's S"

    def piece_step(self, module, x, runtime, *, kind, num_classes):
        x = x.detach().requires_grad_(kind != "stem")
        module.train()
        scaler = runtime.grad_scaler()
        opt = make_optimizer(module, TrainConfig(optimizer="rmsprop"))
        if kind == "tail":
            loss_fn = nn.CrossEntropyLoss()
            labels = torch.randint(0, num_classes, (x.shape[0],), device=runtime.device)

            def loss() -> torch.Tensor:
                with runtime.autocast():
                    return loss_fn(module(x), labels)

            def backward() -> None:
                scaler.scale(loss()).backward()
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

        return step

    def piece_act_mb(self, module, x, runtime, *, kind):
        """Every tensor the piece's forward saves for its backward, once each, its parameters left out
        (:func:`nas.core.memory.estimate_step_memory` counts a whole network's the same way): what the
        backward reads back."""
        x = x.detach().requires_grad_(kind != "stem")
        with saved_for_backward(module.train()) as saved, runtime.autocast():
            module(x)
        return sum(t.numel() * t.element_size() for t in saved.values()) / 1e6


class LatencyCost(Cost):
    name = "latency"
    training = False
    # A forward pass at batch 1 costs a fifth of a training step at its setting, so twice the passes
    # fit a build's minute (2 cores: 28 s with 2). With 2, the calibration networks ran 1.10-1.52x
    # their piece sums, the unseen candidates 1.02-1.20x: a correction fitted on slow spells.
    calibration_passes = 4
    label = "latency, "

    def default_setting(self, device_type, resolution):
        return resolution or CUDA_PIXELS_BATCH[0], LATENCY_BATCH

    column = "latency_ms"
    what = "inference latency"
    help = "the forward pass in evaluation mode at the latency batch (1): MnasNet's latency"

    def piece_step(self, module, x, runtime, *, kind, num_classes):
        module.eval()
        x = x.detach()

        def step() -> None:
            with torch.inference_mode(), runtime.autocast():
                module(x)

        return step


COSTS: dict[str, Cost] = {c.name: c for c in (StepCost(), LatencyCost())}


def get_cost(name: str) -> Cost:
    if name not in COSTS:
        raise NasError(f"unknown cost {name!r}; known: {', '.join(COSTS)}")
    return COSTS[name]
