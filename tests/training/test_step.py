"""The training step: when it is compiled, and that compiling changes its speed, not its results."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import nas.training.step as step_mod
from nas.core.device import Runtime
from nas.errors import NasError
from nas.steptime.measure import measure_step_time
from nas.training.config import TrainConfig
from nas.training.loop import fit
from nas.training.step import AUTO_COMPILE_MIN_STEPS, TrainStep, resolve_compile
from search_spaces import Architecture, build
from tests.helpers import TINY_TRAIN

CPU = Runtime.resolve("cpu")
CUDA = Runtime(torch.device("cuda"), torch.bfloat16, True)  # built, never run: CI has no GPU


def test_auto_compiles_long_cuda_runs_only(monkeypatch):
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: True)
    assert resolve_compile("auto", CUDA, AUTO_COMPILE_MIN_STEPS) is True
    assert resolve_compile("auto", CUDA, AUTO_COMPILE_MIN_STEPS - 1) is False  # a search proxy, a short run
    assert resolve_compile("auto", CPU, 10**9) is False
    assert resolve_compile("on", CPU, 0) is True and resolve_compile("on", CUDA, 0) is True
    assert resolve_compile("off", CUDA, 10**9) is False


def test_compile_on_cuda_without_triton_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: False)
    assert resolve_compile("auto", CUDA, 10**9) is False  # auto quietly stays eager
    with pytest.raises(NasError, match="needs triton"):
        resolve_compile("on", CUDA, 0)


def test_compile_on_cpu_without_a_cxx_compiler_is_refused(monkeypatch):
    monkeypatch.setattr(step_mod.shutil, "which", lambda name: None)
    with pytest.raises(NasError, match="C\\+\\+ compiler"):
        resolve_compile("on", CPU, 0)


@pytest.mark.parametrize("bad", ["yes", True, None])
def test_bad_compile_values(bad):
    with pytest.raises(NasError, match="compile"):
        resolve_compile(bad, CPU, 0)
    with pytest.raises(NasError, match="compile"):
        TrainConfig(compile=bad)


def test_train_step_takes_a_resolved_switch():
    model = build(Architecture.from_string(TINY_TRAIN), 10)
    with pytest.raises(NasError, match="resolve 'auto'"):
        TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), CPU, compile="auto")
    assert TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), CPU).compiled is False


@pytest.mark.slow  # compiles a network: 20-40 s on 2 busy CPU cores without Inductor's cache
def test_compiled_training_gives_the_eager_result_and_measure_times_it(small):
    c = TrainConfig(epochs=2, batch_size=32, device="cpu", image_size=12, mixup=0.2, compile="off")

    def run(cfg):
        torch.manual_seed(0)
        return fit(build(Architecture.from_string(TINY_TRAIN), 10), small, cfg, progress=False)

    eager, compiled = run(c), run(dataclasses.replace(c, compile="on"))
    assert compiled.compiled and not eager.compiled
    # Same dropout masks and mixup draws (eager's random streams): only rounding differs.
    for a, b in zip(eager.history, compiled.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert abs(b["val_accuracy"] - a["val_accuracy"]) <= 2 / 128

    def timed(compile: bool):
        arch = Architecture.from_string(TINY_TRAIN)
        setting = dict(device="cpu", batch_size=32, image_size=12, num_classes=10, warmup=1, min_run_time=0.05)
        return measure_step_time(arch, **setting, compile=compile)

    t = timed(compile=True)
    assert t.compiled and t.compile_s is not None and t.compile_s >= 0 and t.step_time_ms > 0
    assert timed(compile=False).compile_s is None
