"""One optimiser step (:class:`TrainStep`), the optimiser it steps, and whether it is compiled.

:func:`nas.training.loop.fit` runs a :class:`TrainStep` for every batch and :mod:`nas.steptime.measure` times the
same object, so a measured step time is the step that training runs (precision, memory format,
optimiser, loss, compiled or not).

Compiled training (``compile``): ``torch.compile`` of the forward pass and the loss (TorchInductor;
AOTAutograd compiles the backward with it). The optimiser step and the loss scaling stay eager: the
learning-rate schedule changes the optimiser's learning rate every step, which a compiled optimiser
step would treat as a new constant (one recompilation per step). Shapes are compiled static
(``dynamic=False``): every progressive-learning stage has one image size, which then gets kernels
specialised to it, at one compilation per stage. Random ops (dropout, stochastic depth) use eager
PyTorch's generator (``fallback_random``), so a compiled run draws exactly the masks an eager run
draws and the two differ by floating-point rounding only; that is why ``compile`` is a runtime
setting a resumed run may change (:data:`nas.training.checkpoint.RUNTIME_FIELDS`).

``auto`` (the default) compiles on CUDA when every image size of the run trains for at least
:data:`AUTO_COMPILE_MIN_STEPS` steps, and never on the CPU; see :func:`resolve_compile` for why.
``torch._dynamo`` and Inductor are imported only when a step is compiled.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

import torch
from torch import nn

from nas.core.device import SWITCHES, Runtime
from nas.errors import NasError, check_choice

# ``compile="auto"`` compiles on CUDA when each image size trains for at least this many steps.
# torch.compile made EfficientNet-B0's step 1.35x faster on an H100 (42.3 against 57.1 ms at batch
# 256, 224 px, bf16, channels_last): 14.8 ms saved per step. A compilation (forward and backward of
# one image size) takes tens of seconds, so it pays for itself after a few thousand steps; a search
# proxy (about 100 steps) or a short run never gets there.
AUTO_COMPILE_MIN_STEPS = 2000


def resolve_compile(mode: str, runtime: Runtime, steps_per_size: int) -> bool:
    """Whether to compile the step: ``on``, ``off``, or ``auto`` (see the module docstring).

    ``auto`` is off on the CPU: on 2 cores the compiled step of the networks ``nas`` trains there
    was no faster than the eager one (see README, "Compiled training"), and every compilation costs
    seconds to minutes. On CUDA, compiling needs triton; ``on`` without it is refused here rather
    than failing at the first step."""
    check_choice("compile", mode, SWITCHES)
    if mode == "off":
        return False
    if runtime.device.type == "cuda":
        from torch.utils._triton import has_triton  # private, and pulls in torch's compiler stack: CUDA only

        if not has_triton():
            if mode == "on":
                raise NasError(
                    "compile on a CUDA device needs triton, which is not installed "
                    "(pip install triton), or use compile off"
                )
            return False
        return mode == "on" or steps_per_size >= AUTO_COMPILE_MIN_STEPS
    if mode == "on" and runtime.device.type == "cpu" and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        raise NasError("compile on the CPU needs a C++ compiler (g++ or clang++) on PATH, or use compile off")
    return mode == "on"


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimiser of a :class:`nas.training.config.TrainConfig` over ``model``'s parameters. Weight decay is
    not applied to biases and BatchNorm parameters (as in the authors' code)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = cfg.learning_rate
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1e-3, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))


class TrainStep:
    """One optimiser step on a batch: forward under autocast, loss, backward (loss-scaled for fp16),
    optimiser step; the forward and loss compiled when ``compile`` is true."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        *,
        compile: bool = False,
    ):
        if not isinstance(compile, bool):
            raise NasError(
                f"TrainStep's compile must be true or false, got {compile!r} (resolve 'auto' with "
                "nas.training.step.resolve_compile)"
            )
        self.model, self.optimizer, self.runtime = model, optimizer, runtime
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.scaler = runtime.grad_scaler()
        self.compiled = compile
        self._forward_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self._eager_forward_loss
        if compile:
            import torch._inductor.config as inductor_config  # heavy: only when a step is compiled

            # Inductor imports cpp_extension, which warns on a machine without a CUDA runtime although
            # nothing of it is used; that line would bury the ones a user should read (as in nas.steptime.measure).
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

            # Eager's random streams inside compiled graphs: same dropout / stochastic-depth masks.
            inductor_config.fallback_random = True
            self._forward_loss = torch.compile(self._eager_forward_loss, dynamic=False)

    def _eager_forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.runtime.autocast():
            return self.loss_fn(self.model(images), labels)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Returns the batch's loss (detached, on the device: reading it would synchronise)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_loss(images, labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()
