"""Where and how a training step runs: device, mixed precision and memory format, decided once.

Measurement (:mod:`nas.steptime.measure`), training (:mod:`nas.training.config`) and every backend resolve a device
through this module, so ``cpu``, ``cuda``, ``cuda:N`` and ``auto`` mean the same everywhere, and a
step time is measured with exactly the precision and layout that ``nas train`` trains with:

* AMP: ``auto`` is on for CUDA only (bf16 where the GPU supports it, else fp16 with a GradScaler);
  on CPU, autocast to bf16 is slower than float32 on most processors, so ``auto`` keeps float32.
* channels_last: ``auto`` is on everywhere: tensor-core convolutions want NHWC on CUDA, and oneDNN's
  are faster in it on CPU too (training step, 2 CPU cores, batch 16, 64 px: EfficientNet-B0 106 ms
  against 161 ms contiguous, EfficientNetV2-S 320-336 ms against 453-543 ms; ``nas measure
  --memory-format``).

:meth:`Runtime.fingerprint` is what a step time depends on beyond the network and its input: the
device's name, torch version, dtype, memory format, CPU threads and allocator
(:mod:`nas.core.allocator`). Two figures with different
fingerprints are not comparable; the step-time tables of :mod:`nas.steptime` are keyed by it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nas.core.allocator import reuse_freed_memory
from nas.errors import NasError, check_choice

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
SWITCHES = ("auto", "on", "off")
_CUDA_N = re.compile(r"^cuda:(\d+)$")


def check_device(name: Any) -> str:
    """The device name as written (``auto``, ``cpu``, ``cuda``, ``cuda:N``), without touching CUDA."""
    if not isinstance(name, str) or (name not in DEVICES and not _CUDA_N.match(name)):
        raise NasError(f"unknown device {name!r}; use one of {', '.join(DEVICES)} or cuda:N")
    return name


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda:N`` must name an existing GPU."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NasError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
        m = _CUDA_N.match(name)
        if m and int(m.group(1)) >= torch.cuda.device_count():
            raise NasError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    return torch.device(name)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return _cpu_name()


def _cpu_name() -> str:
    """The processor's model and how many CPUs this machine has, e.g. ``AMD EPYC (2 CPUs)``: the
    architecture alone (``x86_64``, what ``platform.processor()`` gives on Linux) would let a
    step-time table made on one machine answer for any other."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "cpu"
    return f"{model} ({os.cpu_count()} CPUs)"


def amp_dtype(dev: torch.device, mode: str = "auto") -> torch.dtype | None:
    """Autocast dtype, or None for full precision."""
    check_choice("amp", mode, SWITCHES)
    if mode == "off" or (mode == "auto" and dev.type != "cuda"):
        return None
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16  # CPU autocast supports bf16 only


def use_channels_last(dev: torch.device, mode: str = "auto") -> bool:
    check_choice("channels_last", mode, SWITCHES)
    return mode in ("on", "auto")


@dataclass(frozen=True)
class Runtime:
    """A resolved device with its precision and memory format: how every step runs."""

    device: torch.device
    amp: torch.dtype | None
    channels_last: bool

    @classmethod
    def resolve(cls, device: str = "auto", amp: str = "auto", channels_last: str = "auto") -> Runtime:
        dev = resolve_device(device)
        if dev.type == "cpu":
            reuse_freed_memory()  # nas.core.allocator: a CPU step's time must not depend on the process's past
        return cls(dev, amp_dtype(dev, amp), use_channels_last(dev, channels_last))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def dtype_name(self) -> str:
        return str(self.amp or torch.float32).replace("torch.", "")

    @property
    def cuda_indices(self) -> list[int]:
        """The CUDA device(s) whose random state a seeded epoch forks."""
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def device_context(self) -> contextlib.AbstractContextManager:
        """This GPU as the current CUDA device for the block (for ``cuda:N``); nothing on the CPU."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.cuda.device(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling is needed for fp16 only (bf16 has float32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on this device, in this memory format (non-blocking from pinned memory). Batches
        from :mod:`nas.data.batches` are already on the device: then only the format changes."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if self.channels_last else x

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fingerprint(self) -> dict[str, Any]:
        """What a step time measured here depends on, besides the network and the step's input."""
        return {
            "device": self.device.type,
            "device_name": device_name(self.device),
            "torch": torch.__version__,
            "dtype": self.dtype_name,
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "allocator": reuse_freed_memory() if self.device.type == "cpu" else None,
        }


@contextlib.contextmanager
def cudnn_autotune(enabled: bool = True) -> Iterator[None]:
    """cuDNN's benchmark mode for the block (restored after): each new input shape is timed once
    against the available convolution algorithms and the fastest kept. Training shapes are fixed
    within a progressive-learning stage, so a stage tunes once and then runs the fastest kernels."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (None: unchanged)."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
