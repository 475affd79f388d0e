"""``--trials-per-device auto``: how many trials one device should train side by side.

A proxy is small (EfficientNetV2 section 3.3 trains candidates shrunk in width, depth and image
size), so on a large GPU one trial leaves most of the device idle: the host launches kernels faster
than they run only when each kernel is big enough. Several trials per GPU fill the gaps, until the
device is busy or its memory is spent. ``auto`` measures both on the run's own proxy before the first
trial (:func:`probe`): the reference architecture's proxy training step at the proxy's image size and
batch size, timed for a few seconds while NVIDIA's management library samples how much of the time a
kernel was running (SM busy share) and PyTorch records the step's peak memory. Then
(:func:`choose_per_device`)::

    N = clamp(ceil(BUSY_GOAL / busy), 1, AUTO_CAP), lowered until N steps' peak memory fits in
        MEMORY_SHARE of the free memory

On a CPU one trial already uses every core (a second would only split them), so ``auto`` is 1.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from nas.core.device import Runtime
from nas.core.utilisation import GpuUtilisation
from nas.errors import NasError, NasRuntimeError, check_int
from nas.steptime.measure import measure_step_time
from nas.trial.settings import TrialSettings, proxy_arch
from search_spaces import get_space

AUTO = "auto"
AUTO_CAP = 8  # more than this many trials per device: the driver and data loading dominate
BUSY_GOAL = 0.9  # SM busy share the trials together should reach
MEMORY_SHARE = 0.8  # of the device's free memory, for the trials' steps together (the rest: fragmentation)
PROBE_S = 3.0  # seconds of timed proxy steps while utilisation is sampled
SAMPLE_S = 0.1  # NVML's utilisation sample period is about 1/6 s on current GPUs


def per_device_arg(text: str) -> int | str:
    """The ``--trials-per-device`` value: a count in [1, 64] or ``auto``."""
    if text == AUTO:
        return AUTO
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise NasError(f"--trials-per-device must be an integer in [1, 64] or auto, got {text!r}")
    return int(text)


def per_device_flag(text: str) -> int | str:
    """argparse's type for ``--trials-per-device``: a word that is neither a count nor ``auto`` is
    argparse's usage line; the range is checked with the run's settings (:func:`per_device_arg`)."""
    if text == AUTO or text.isdigit():
        return text if text == AUTO else int(text)
    raise argparse.ArgumentTypeError(f"an integer in [1, 64] or auto, got {text!r}")


def choose_per_device(busy: float, peak_bytes: int, free_bytes: int, *, cap: int = AUTO_CAP) -> int:
    """Trials per device for one trial's SM busy share ``busy`` (0..1] and its step's peak memory:
    enough to reach :data:`BUSY_GOAL`, no more than fit in :data:`MEMORY_SHARE` of ``free_bytes``,
    at least 1 and at most ``cap``."""
    if not 0.0 <= busy <= 1.0 or math.isnan(busy):
        raise NasError(f"an SM busy share is in [0, 1], got {busy!r}")
    if peak_bytes <= 0 or free_bytes < 0:
        raise NasError(f"memory figures must be positive, got peak {peak_bytes!r} and free {free_bytes!r}")
    check_int("cap", cap, 1, 64)
    by_busy = math.ceil(BUSY_GOAL / busy) if busy > 0 else cap
    by_memory = int(MEMORY_SHARE * free_bytes // peak_bytes)
    return max(1, min(cap, by_busy, by_memory))


@dataclass(frozen=True)
class Probe:
    """What one trial's proxy does to the device, and the choice it leads to."""

    device: str
    per_device: int
    busy: float | None = None  # SM busy share with one trial (None on a CPU)
    peak_bytes: int | None = None
    free_bytes: int | None = None
    step_ms: float | None = None

    def describe(self) -> str:
        if self.busy is None:
            return f"--trials-per-device auto: {self.per_device} on {self.device} (one trial uses every core)"
        return (
            f"--trials-per-device auto: {self.per_device} on {self.device} (one trial's proxy step "
            f"{self.step_ms:.1f} ms keeps it {100 * self.busy:.0f}% busy with {self.peak_bytes / 2**30:.2f} GiB "
            f"at peak, {self.free_bytes / 2**30:.0f} GiB free)"
        )


def probe(settings: TrialSettings, device: str | None = None, *, num_classes: int = 10) -> Probe:
    """Measure one trial's proxy (``num_classes``: the data set's) on ``device`` (the run's) and
    choose the trials per device."""
    runtime = Runtime.resolve(device or settings.device)
    dev = runtime.device
    if dev.type != "cuda":
        return Probe(device=str(dev), per_device=1)
    proxy = settings.proxy
    arch = proxy_arch(get_space(settings.space).reference(), proxy)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    shape = {"runtime": runtime, "batch_size": proxy.train.batch_size, "image_size": proxy.image_size}
    measure_step_time(arch, **shape, num_classes=num_classes, min_run_time=0.5)  # warm-up: cuDNN picks kernels
    with GpuUtilisation(dev, interval=SAMPLE_S) as util:
        step = measure_step_time(arch, **shape, num_classes=num_classes, min_run_time=PROBE_S)
    if util.median is None:
        raise NasRuntimeError(
            f"--trials-per-device auto measures GPU utilisation and got none ({util.why or 'no NVML sample'}); "
            "give --trials-per-device N"
        )
    peak = max(1, torch.cuda.max_memory_allocated(dev) - base)
    free, _ = torch.cuda.mem_get_info(dev)
    # The median: the first samples still see the device idle from before the block.
    busy = util.median / 100.0
    return Probe(
        device=f"{dev} ({torch.cuda.get_device_name(dev)})",
        per_device=choose_per_device(busy, peak, free),
        busy=busy,
        peak_bytes=peak,
        free_bytes=free,
        step_ms=step.step_time_ms,
    )
