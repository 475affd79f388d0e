"""Honest timing of one step of work on a device: a training step (forward, loss, backward,
optimiser step) or an inference step (the forward pass in evaluation mode: latency).

The step is timed with ``torch.utils.benchmark.Timer`` (which synchronises CUDA) after warm-up, and
reported as the median and inter-quartile range over repeated blocks, with the provenance needed to
compare two numbers (device, torch version, threads, dtype, memory format, batch, image size, clock).

Clocks: ``wall`` (default) is elapsed time, what a step costs. ``cpu`` is the process's CPU time,
for a CPU shared with other jobs: it leaves out the time other processes hold the core, so on one
thread it estimates the step's wall time on an idle machine (2-core CPU busy with two other jobs,
EfficientNetV2-S at 64 px, batch 16, 4 repeats: wall 1,426-1,986 ms, CPU 608-800 ms). It needs the
CPU device and one thread: with more, idle threads spinning at barriers count as CPU time.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.core.device import Runtime
from nas.core.interrupt import check as check_interrupt
from nas.errors import NasError, check_choice, check_int, check_positive
from nas.training.config import TrainConfig
from nas.training.step import TrainStep, make_optimizer, resolve_compile
from search_spaces import Architecture, build

# torch.utils.benchmark imports cpp_extension, which warns on every start on a machine without a CUDA
# runtime although nothing is compiled; that line would bury the one line a user should read.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
CLOCKS = ("wall", "cpu")
STATISTICS = ("median", "min")
STEP_KINDS = ("step", "latency")
FORMAT_SWITCH = {"auto": "auto", "channels_last": "on", "contiguous": "off"}
MIN_STEPS = 3  # a median of fewer timed steps is not reported
PROGRESS_AFTER_S = 0.5  # a step at least this slow gets a progress line (nas measure on a CPU)


@dataclass(frozen=True)
class StepTime:
    """One timed step with what it depends on. ``cost`` says which step: ``step`` (training) or
    ``latency`` (the forward pass in evaluation mode; ``optimizer`` is then None)."""

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
    optimizer: str | None
    batch_size: int
    image_size: int
    num_classes: int
    compiled: bool = False  # the step timed is the torch.compile'd one (nas.training.step)
    compile_s: float | None = None  # compiled: how much longer the first (compiling) step took
    clock: str = "wall"
    cost: str = "step"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _runtime_settings(runtime: Runtime) -> dict[str, Any]:
    return {
        "dtype": runtime.dtype_name,
        "amp": runtime.amp is not None,
        "memory_format": "channels_last" if runtime.channels_last else "contiguous",
    }


def make_train_step(
    model: nn.Module,
    *,
    runtime: Runtime,
    batch_size: int,
    image_size: int,
    num_classes: int,
    optimizer: str = "rmsprop",
    compile: bool = False,
):
    """``(step, settings)``: a closure running one :class:`nas.training.step.TrainStep` (the step
    ``nas train`` runs, with ``optimizer`` as it configures it, compiled when ``compile``) on fixed
    random data, and the settings it runs with."""
    model = runtime.prepare(model).train()
    x = runtime.images(torch.randn(batch_size, 3, image_size, image_size))
    y = torch.randint(0, num_classes, (batch_size,), device=runtime.device)
    train_step = TrainStep(model, make_optimizer(model, TrainConfig(optimizer=optimizer)), runtime, compile=compile)

    def step() -> None:
        train_step(x, y)

    return step, {**_runtime_settings(runtime), "optimizer": optimizer, "compiled": compile}


def make_forward_step(model: nn.Module, *, runtime: Runtime, batch_size: int, image_size: int, compile: bool = False):
    """``(step, settings)``: a closure running the model's forward pass in evaluation mode, without
    autograd, under the runtime's autocast, on fixed random images: what inference costs."""
    model = runtime.prepare(model).eval()
    x = runtime.images(torch.randn(batch_size, 3, image_size, image_size))
    forward = torch.compile(model, dynamic=False) if compile else model

    def step() -> None:
        with torch.inference_mode(), runtime.autocast():
            forward(x)

    return step, {**_runtime_settings(runtime), "optimizer": None, "compiled": compile}


STEP_MAKERS = {"step": make_train_step, "latency": make_forward_step}  # STEP_KINDS: what a timing runs


def check_clock(clock: str, runtime: Runtime) -> str:
    """``wall``, or ``cpu`` on a one-thread CPU runtime (see the module docstring)."""
    check_choice("clock", clock, CLOCKS)
    if clock == "cpu" and (runtime.device.type != "cpu" or torch.get_num_threads() != 1):
        raise NasError(
            f"the cpu clock needs the CPU device and 1 thread (--threads 1), got {runtime.device.type} "
            f"with {torch.get_num_threads()} threads"
        )
    return clock


def time_step(
    step,
    runtime: Runtime,
    *,
    warmup: int = 3,
    min_run_time: float = 1.0,
    clock: str = "wall",
    statistic: str = "median",
    progress=None,
    min_steps: int = MIN_STEPS,
) -> tuple[float, float, int, int]:
    """Median (or, with ``statistic="min"``, fastest) and IQR (ms) of one step over repeated blocks;
    Timer synchronises CUDA. The fastest block is the estimate that other jobs on a shared machine,
    which only ever slow a block down, disturb least. At least :data:`MIN_STEPS` steps are timed, in
    as many blocks, whatever ``min_run_time`` says: a step slower than ``min_run_time`` would
    otherwise give a "median" of one step. ``progress(done, total, seconds_per_step)`` is called
    after each of those blocks whose step took :data:`PROGRESS_AFTER_S` or more (a progress line for
    slow steps; fast ones finish before anyone waits)."""
    check_clock(clock, runtime)
    check_choice("statistic", statistic, STATISTICS)
    if min_steps < (MIN_STEPS if statistic == "median" else 1):
        raise NasError(f"a {statistic} of {min_steps} timed steps is not reported; time {MIN_STEPS} at least")

    def checked() -> None:
        check_interrupt()  # Ctrl-C stops here, between steps (nas.core.interrupt)
        step()

    timed = _sampler(checked, runtime, clock)
    last = 0.0
    for _ in range(warmup):
        last = timed(1)
    done = [0]

    def counted(number: int, seconds: float) -> None:
        done[0] += number
        if progress is not None and seconds / number >= PROGRESS_AFTER_S and done[0] < min_steps:
            progress(done[0], min_steps, seconds / number)

    if warmup and min_steps * last >= min_run_time:
        # A slow step (the last warm-up step says): blocks of one step, min_steps of them fill
        # min_run_time. A synchronised loop times them without blocked_autorange's block-size estimate,
        # one more untimed step, and Timer.timeit would run two untimed steps before each timed one.
        times = []
        for _ in range(min_steps):
            times.append(timed(1))
            counted(1, times[-1])
        per_run, (q1, q3) = 1, np.percentile(times, [25, 75])
        iqr = float(q3 - q1)
    else:
        times, per_run, iqr = _autorange(checked, runtime, clock, min_run_time, min_steps, counted)
    value = float(np.median(times)) if statistic == "median" else min(times)
    return value * 1e3, iqr * 1e3, len(times), per_run


def _autorange(step, runtime: Runtime, clock: str, min_run_time: float, min_steps: int, callback):
    """``(times, number_per_run, iqr)`` (s) of a fast step from Timer.blocked_autorange, in more blocks
    until ``min_steps`` blocks are timed."""
    clock_kw = {"timer": time.process_time} if clock == "cpu" else {}
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads(), **clock_kw)
    blocks = [timer.blocked_autorange(min_run_time=min_run_time, callback=callback)]
    while sum(len(b.times) for b in blocks) < min_steps:
        left = min_steps - sum(len(b.times) for b in blocks)
        blocks.append(timer.blocked_autorange(min_run_time=left * min(blocks[-1].times), callback=callback))
    runtime.synchronize()
    m = benchmark.Measurement.merge(blocks)[0] if len(blocks) > 1 else blocks[0]
    return list(m.times), m.number_per_run, m.iqr


def _sampler(step, runtime: Runtime, clock: str):
    """``timed(number)``: the time of one step (s), from ``number`` run in a synchronised loop on ``clock``."""
    now = time.process_time if clock == "cpu" else time.perf_counter

    def timed(number: int) -> float:
        runtime.synchronize()
        t = now()
        for _ in range(number):
            step()
        runtime.synchronize()
        return (now() - t) / number

    return timed


MIN_SAMPLE_S = 0.001  # a sample of a fast step repeats it to last this long (timer resolution, launch noise)


def fastest_of(
    step, runtime: Runtime, *, runs: int, min_run_time: float, warmup: int = 1, clock: str = "wall"
) -> tuple[float, float]:
    """Fastest sample and IQR (ms) of a step, timed ``runs`` times at least and for ``min_run_time``
    seconds at least, after ``warmup`` untimed steps: what a step-time table needs from each piece,
    with none of :func:`time_step`'s calibration of block sizes (a table times hundreds of pieces).
    A sample of a step faster than :data:`MIN_SAMPLE_S` repeats it until it lasts that long.

    Samples are timed by a plain synchronised loop, not ``benchmark.Timer.timeit``: that runs two
    untimed steps before every sample, which made a table build time 16 steps per piece for 7 used."""
    check_clock(clock, runtime)
    for _ in range(max(warmup, 1)):
        step()
    sample = _sampler(step, runtime, clock)
    once = sample(1)
    number = max(1, math.ceil(MIN_SAMPLE_S / max(once, 1e-9)))
    samples = [once] if number == 1 else []
    t0 = time.perf_counter()
    while len(samples) < runs or time.perf_counter() - t0 < min_run_time:
        check_interrupt()  # Ctrl-C stops here, between samples (nas.core.interrupt)
        samples.append(sample(number))
    q1, q3 = np.percentile(samples, [25, 75])
    return min(samples) * 1e3, float(q3 - q1) * 1e3


def _model_and_size(arch_or_model, image_size: int | None, num_classes: int, seed: int) -> tuple[nn.Module, int]:
    if isinstance(arch_or_model, Architecture):
        torch.manual_seed(seed)
        size = arch_or_model.resolution if image_size is None else image_size
        return build(arch_or_model, num_classes), check_int("image size", size, 8, 2048)
    if image_size is None:
        raise NasError("image_size is required when timing a model")
    return arch_or_model, check_int("image size", image_size, 8, 2048)


def measure_step_time(
    arch_or_model: Architecture | nn.Module,
    *,
    device: str = "auto",
    batch_size: int = 32,
    image_size: int | None = None,
    num_classes: int = 1000,
    amp: str = "auto",
    memory_format: str = "auto",
    optimizer: str = "rmsprop",
    cost: str = "step",
    warmup: int = 3,
    min_run_time: float = 1.0,
    seed: int = 0,
    compile: bool = False,
    runtime: Runtime | None = None,
    clock: str = "wall",
    repeats: int = 1,
    statistic: str = "median",
    progress=None,
    min_steps: int = MIN_STEPS,
) -> StepTime:
    """Time the training step (``cost="step"``) or inference step (``cost="latency"``) of an architecture
    or a built model (trained in place: pass a fresh one). ``compile``: the compiled step, the
    compilation reported apart (``compile_s``); ``repeats``: the fastest of that many timings;
    ``statistic="min"``: the fastest block, not the median (:func:`time_step`); ``runtime``: used as
    resolved (``device``, ``amp``, ``memory_format`` ignored), as the step-time model times steps."""
    _check(batch_size, repeats, memory_format, cost, min_run_time, compile)
    model, image_size = _model_and_size(arch_or_model, image_size, num_classes, seed)
    runtime = runtime or Runtime.resolve(device, amp, FORMAT_SWITCH[memory_format])
    check_clock(clock, runtime)
    shape = {"runtime": runtime, "batch_size": batch_size, "image_size": image_size, "compile": compile}
    extra = {"step": {"num_classes": num_classes, "optimizer": optimizer}, "latency": {}}[cost]
    step, settings = STEP_MAKERS[cost](model, **shape, **extra)
    first_s = _first_step_s(step, runtime) if compile else None
    kw = {"min_run_time": min_run_time, "clock": clock, "statistic": statistic, "progress": progress}
    kw["min_steps"] = min_steps
    # A later repeat warms up with one step, which also sizes its blocks (time_step).
    timings = [time_step(step, runtime, warmup=warmup if i == 0 else 1, **kw) for i in range(repeats)]
    value, iqr, _, per_run = min(timings)
    if first_s is not None:
        settings["compile_s"] = max(0.0, first_s - value / 1e3)
    sizes = {"batch_size": batch_size, "image_size": image_size, "num_classes": num_classes, "clock": clock}
    runs = {"runs": sum(t[2] for t in timings), "steps_per_run": per_run}
    return StepTime(step_time_ms=value, iqr_ms=iqr, cost=cost, **runs, **sizes, **_where(runtime), **settings)


def _where(runtime: Runtime) -> dict[str, Any]:
    fp = runtime.fingerprint()
    return {
        "device": fp["device"],
        "device_name": fp["device_name"],
        "torch_version": fp["torch"],
        "threads": torch.get_num_threads(),
    }


def _check(batch_size: int, repeats: int, memory_format: str, cost: str, min_run_time: float, compile) -> None:
    """The arguments a timing refuses, as one NasError line naming the value."""
    check_int("batch size", batch_size, 1, 1 << 16)
    check_int("repeats", repeats, 1, 1000)
    check_choice("memory format", memory_format, MEMORY_FORMATS)
    check_choice("cost", cost, STEP_KINDS)
    check_positive("min_run_time", min_run_time)
    if not isinstance(compile, bool):
        raise NasError(f"compile must be true or false, got {compile!r}")


def _first_step_s(step, runtime: Runtime) -> float:
    """The first (compiling) step's time; refuses a compile this machine cannot run, in one line."""
    resolve_compile("on", runtime, 0)
    t0 = time.perf_counter()
    step()
    runtime.synchronize()
    return time.perf_counter() - t0
