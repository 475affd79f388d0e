"""How much memory a training step needs, checked against what the device has before it runs.

A step that cannot fit fails after seconds to minutes of work with a long traceback from deep inside
an operator (or, on Linux, the kernel kills the process), so the commands that run a step estimate
it first and refuse it in one line (:func:`check_step_memory`), and turn an allocator's refusal that
still happens into the same line (:func:`out_of_memory_as_error`).

The estimate (:func:`estimate_step_memory`) counts what a training step holds at its peak, the start
of the backward pass:

* the activations autograd saves for the backward pass, found by running the forward pass and the
  loss on the meta device (shapes only: no memory, no compute, a fraction of a second) with a
  ``saved_tensors_hooks`` pack hook that records every saved tensor once (views by their base;
  parameters and buffers excluded);
* parameters, their gradients and the optimiser's state (RMSprop and AdamW two tensors per
  parameter, SGD one), and an EMA copy of the weights when one is kept;
* in flight during the backward pass, the gradients of about two of the largest activations; under
  mixed precision also the half-precision copies of the weights autocast keeps.

Floating-point activations are counted at the autocast dtype's size under mixed precision. Not
counted: the CUDA context, cuDNN's workspaces, the data set and the evaluation pass.

Accuracy, CPU (float32, channels_last, RMSprop; the peak resident memory two training steps add to a
warmed-up process, ``tests/core/test_memory.py``): the estimate is 0.97 to 1.15 times the measured
peak for EfficientNet-B0 (batch 8 at 96 and 128 px, 16 at 224 px, 64 at 64 px), EfficientNetV2-S (8
at 160 px), MobileNetV2 (16 at 160 px) and MnasNet-small (16 at 128 px): a slight overestimate, and
the check refuses a step only when the estimate exceeds the available memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas.core.device import Runtime
from nas.errors import NasRuntimeError, check_choice, check_int
from search_spaces import Architecture, build

# Tensors of optimiser state per parameter tensor (nas.training.step.make_optimizer): RMSprop keeps a
# square average and a momentum buffer, AdamW two moments, SGD a momentum buffer.
OPTIMIZER_SLOTS = {"rmsprop": 2, "adamw": 2, "sgd": 1}
HINT = "lower --batch-size or --image-size"
# Backward holds the gradients of about two of the largest activations on top of the saved ones.
WORKSPACE_ACTIVATIONS = 2


class OutOfMemory(NasRuntimeError):
    """A training step does not fit in the device's memory (estimated ahead, or refused by the allocator)."""


@dataclass(frozen=True)
class StepMemory:
    """Bytes a training step holds at its peak, by kind (see the module docstring)."""

    params: int
    gradients: int
    optimizer: int
    ema: int
    activations: int  # saved for the backward pass
    workspace: int  # in flight during the backward pass

    @property
    def total(self) -> int:
        return self.params + self.gradients + self.optimizer + self.ema + self.activations + self.workspace


def _meta_step(
    arch: Architecture, batch_size: int, image_size: int, num_classes: int
) -> tuple[list[torch.Tensor], int]:
    """Every tensor the forward pass and the loss save for the backward pass (once each, on the meta
    device), and the network's parameter count."""
    with torch.device("meta"):
        model = build(arch, num_classes).train()
    x = torch.empty(batch_size, 3, image_size, image_size, device="meta")
    y = torch.zeros(batch_size, dtype=torch.int64, device="meta")
    with saved_for_backward(model) as saved:
        nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
    return list(saved.values()), sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def saved_for_backward(module: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
    """Every tensor autograd saves for the backward pass inside the block, once each (by its base
    storage), ``module``'s own parameters and buffers left out: a dict filled as the block runs."""
    own = {id(t) for t in (*module.parameters(), *module.buffers())}
    saved: dict[int, torch.Tensor] = {}  # holding them keeps every id unique while the pass runs

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in own:
            saved.setdefault(id(base), base)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def estimate_step_memory(
    arch: Architecture,
    batch_size: int,
    image_size: int,
    num_classes: int,
    *,
    amp: torch.dtype | None = None,
    optimizer: str = "rmsprop",
    ema: bool = False,
) -> StepMemory:
    """The memory one training step of ``arch`` needs (module docstring), ``amp`` the autocast dtype."""
    check_int("batch size", batch_size, 1, 1 << 16)
    check_int("image size", image_size, 8, 2048)
    check_choice("optimizer", optimizer, tuple(OPTIMIZER_SLOTS))
    saved, n_params = _meta_step(arch, batch_size, image_size, num_classes)
    low = torch.empty((), dtype=amp).element_size() if amp is not None else 4

    def nbytes(t: torch.Tensor) -> int:
        size = low if t.is_floating_point() else t.element_size()
        return t.numel() * size

    sizes = sorted((nbytes(t) for t in saved), reverse=True)
    params = n_params * 4
    workspace = sum(sizes[:WORKSPACE_ACTIVATIONS]) + (params * low // 4 if amp is not None else 0)
    return StepMemory(
        params=params,
        gradients=params,
        optimizer=params * OPTIMIZER_SLOTS[optimizer],
        ema=params if ema else 0,
        activations=sum(sizes),
        workspace=workspace,
    )


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What a cgroup v2 memory limit leaves (a container's limit is not in /proc/meminfo); the page
    cache the kernel can drop (``inactive_file``) counts as available, as in MemAvailable."""
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text())
        stat = dict(line.split() for line in (root / "memory.stat").read_text().splitlines())
        return max(0, int(limit) - used + int(stat.get("inactive_file", 0)))
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device) -> int | None:
    """Bytes a new step can still allocate on ``device``; None where that cannot be known. On CUDA:
    the free memory plus what torch's caching allocator holds unused; on a CPU: MemAvailable (Linux),
    or less where a cgroup limit leaves less."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        found = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
        return min(found) if found else None
    return None


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_step_memory(
    arch: Architecture,
    batch_size: int,
    image_size: int,
    num_classes: int,
    runtime: Runtime,
    *,
    optimizer: str = "rmsprop",
    ema: bool = False,
    hint: str = HINT,
) -> int:
    """The estimated bytes of one training step (:func:`estimate_step_memory`); raises
    :class:`OutOfMemory` in one line when that exceeds the memory available on the runtime's device."""
    need = estimate_step_memory(
        arch, batch_size, image_size, num_classes, amp=runtime.amp, optimizer=optimizer, ema=ema
    )
    have = available_memory(runtime.device)
    if have is not None and need.total > have:
        raise OutOfMemory(
            f"out of memory: a training step at batch {batch_size}, {image_size} px needs about "
            f"{gigabytes(need.total)} (estimated, {gigabytes(need.activations)} of it activations), more than "
            f"the {gigabytes(have)} available on {runtime.device}; {hint}"
        )
    return need.total


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator refusing memory (CUDA, or the CPU's ``DefaultCPUAllocator``)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def out_of_memory_as_error(doing: str, hint: str = HINT) -> Iterator[None]:
    """Inside the block, an allocator's refusal becomes one :class:`OutOfMemory` line: ``out of memory
    while <doing> (<the allocator's first line>); <hint>``."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, NasRuntimeError) or not is_out_of_memory(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = first if len(first) <= 200 else first[:197] + "..."
        raise OutOfMemory(f"out of memory while {doing} ({detail}); {hint}") from None
