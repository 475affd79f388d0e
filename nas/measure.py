"""Honest training-step timing: forward, loss, backward and optimizer step on the target device.

The step is timed with ``torch.utils.benchmark.Timer`` (which synchronises CUDA) after warm-up, and
reported as the median and inter-quartile range over repeated blocks, with the provenance needed to
compare two numbers (device, torch version, threads, dtype, memory format, batch, image size).
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# torch.utils.benchmark imports cpp_extension, which warns on every start on a machine without a CUDA
# runtime although nothing is compiled; that line would bury the one line a user should read.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from search_spaces import Architecture, build
from search_spaces.errors import NasError

DEVICES = ("auto", "cpu", "cuda")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
AMP_MODES = ("auto", "on", "off")


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise NasError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} or cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise NasError(f"device {device!r} requested but CUDA is not available here")
    return torch.device(device)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine() or "cpu"


def amp_dtype(dev: torch.device, amp: str) -> torch.dtype | None:
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision on CPU."""
    if amp not in AMP_MODES:
        raise NasError(f"unknown amp mode {amp!r}; use one of {', '.join(AMP_MODES)}")
    if amp == "off" or (amp == "auto" and dev.type != "cuda"):
        return None
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def memory_format(dev: torch.device, fmt: str) -> torch.memory_format:
    """channels_last is the fast layout for convolutions on CUDA (tensor cores) and on CPU (oneDNN);
    ``benchmarks/bench_step_time.py`` measures both."""
    if fmt not in MEMORY_FORMATS:
        raise NasError(f"unknown memory format {fmt!r}; use one of {', '.join(MEMORY_FORMATS)}")
    return torch.contiguous_format if fmt == "contiguous" else torch.channels_last


@dataclass(frozen=True)
class StepTime:
    step_time_ms: float
    iqr_ms: float
    runs: int
    steps_per_run: int
    device: str
    device_name: str
    torch_version: str
    threads: int
    dtype: str
    amp: bool
    memory_format: str
    batch_size: int
    image_size: int
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_train_step(model: nn.Module, *, dev: torch.device, batch_size: int, image_size: int,
                    num_classes: int, amp: str = "auto", fmt: str = "auto", lr: float = 0.01):
    """A closure doing one full training step on fixed random data; returns (step, settings)."""
    dtype = amp_dtype(dev, amp)
    mf = memory_format(dev, fmt)
    model = model.to(dev, memory_format=mf).train()
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev).contiguous(memory_format=mf)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    settings = {"dtype": str(dtype or torch.float32).replace("torch.", ""), "amp": dtype is not None,
                "memory_format": "channels_last" if mf == torch.channels_last else "contiguous"}
    return step, settings


def time_step(step, dev: torch.device, *, warmup: int = 3, min_run_time: float = 1.0) -> tuple[float, float, int, int]:
    """Median and IQR (ms) of one step over repeated blocks; Timer synchronises CUDA."""
    for _ in range(warmup):
        step()
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return m.median * 1e3, m.iqr * 1e3, len(m.times), m.number_per_run


def measure_step_time(arch_or_model: Architecture | nn.Module, *, device: str = "auto", batch_size: int = 32,
                      image_size: int | None = None, num_classes: int = 1000, amp: str = "auto",
                      memory_format: str = "auto", warmup: int = 3, min_run_time: float = 1.0,
                      seed: int = 0) -> StepTime:
    """Time the real training step of an architecture (or an already built model).

    A model passed in is trained in place by the timed steps (weights, BatchNorm statistics and
    memory format change): pass a fresh or a copied one."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NasError(f"batch size must be a positive integer, got {batch_size!r}")
    if isinstance(arch_or_model, Architecture):
        image_size = image_size or arch_or_model.resolution
        torch.manual_seed(seed)
        model = build(arch_or_model, num_classes)
    else:
        model = arch_or_model
        if image_size is None:
            raise NasError("image_size is required when timing a model")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 2048:
        raise NasError(f"image size must be an integer in [8, 2048], got {image_size!r}")
    if min_run_time <= 0:
        raise NasError(f"min_run_time must be positive, got {min_run_time}")
    dev = resolve_device(device)
    step, settings = make_train_step(model, dev=dev, batch_size=batch_size, image_size=image_size,
                                     num_classes=num_classes, amp=amp, fmt=memory_format)
    median, iqr, runs, per_run = time_step(step, dev, warmup=warmup, min_run_time=min_run_time)
    return StepTime(step_time_ms=median, iqr_ms=iqr, runs=runs, steps_per_run=per_run, device=dev.type,
                    device_name=device_name(dev), torch_version=torch.__version__,
                    threads=torch.get_num_threads(), batch_size=batch_size, image_size=image_size,
                    num_classes=num_classes, **settings)
