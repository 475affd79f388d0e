"""Training-step timing: what is timed, what is reported with it. No wall-clock thresholds here."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nas.core.device import Runtime, resolve_device
from nas.steptime.measure import StepTime, make_train_step, measure_step_time, time_step
from search_spaces import Architecture, NasError, build

TINY = Architecture.from_string("stem8,r1_k3_s1_e1_i8_o8_se0.25,r2_k3_s2_e4_i8_o16_c1,head32,res32")
FAST = {"batch_size": 2, "image_size": 32, "num_classes": 10, "warmup": 1, "min_run_time": 0.05}


def test_measure_on_cpu_reports_time_and_provenance():
    r = measure_step_time(TINY, device="cpu", **FAST)
    assert isinstance(r, StepTime)
    assert r.step_time_ms > 0 and r.iqr_ms >= 0
    assert r.runs >= 1 and r.steps_per_run >= 1
    assert r.device == "cpu" and r.device_name
    assert r.torch_version == torch.__version__
    assert r.threads == torch.get_num_threads() == 1
    assert (r.dtype, r.amp) == ("float32", False)
    assert r.memory_format == "channels_last"  # the default on CPU too (oneDNN's fast layout)
    assert (r.batch_size, r.image_size, r.num_classes) == (2, 32, 10)
    d = r.to_dict()
    assert d == dataclasses.asdict(r)
    assert {
        "step_time_ms",
        "iqr_ms",
        "device",
        "torch_version",
        "threads",
        "dtype",
        "memory_format",
        "batch_size",
        "image_size",
    } <= set(d)


def test_measure_settings_are_reported():
    r = measure_step_time(TINY, device="cpu", memory_format="contiguous", amp="on", **FAST)
    assert r.memory_format == "contiguous"
    assert (r.dtype, r.amp) == ("bfloat16", True)  # CPU autocast is bf16
    # The image size defaults to the architecture's resolution.
    r = measure_step_time(TINY, device="cpu", **{**FAST, "image_size": None})
    assert r.image_size == TINY.resolution == 32


def test_measure_a_built_model():
    model = build(TINY, 10)
    r = measure_step_time(model, device="cpu", **FAST)
    assert r.step_time_ms > 0
    with pytest.raises(NasError, match="image_size"):
        measure_step_time(model, device="cpu", **{**FAST, "image_size": None})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_unavailable_is_a_user_error(device):
    with pytest.raises(NasError, match=repr(device)):
        measure_step_time(TINY, device=device, **FAST)


@pytest.mark.parametrize(
    "kwargs,names",
    [
        ({"device": "tpu"}, "'tpu'"),
        ({"batch_size": 0}, "got 0"),
        ({"batch_size": 2.5}, "got 2.5"),
        ({"image_size": 4}, "got 4"),
        ({"min_run_time": 0}, "got 0"),
        ({"amp": "maybe"}, "'maybe'"),
        ({"memory_format": "nhwc"}, "'nhwc'"),
    ],
)
def test_bad_settings(kwargs, names):
    with pytest.raises(NasError, match=names):
        measure_step_time(TINY, **{"device": "cpu", **FAST, **kwargs})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_one_training_step_updates_every_parameter(fmt):
    torch.manual_seed(0)
    model = build(TINY, 10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_before = model.features[0][1].running_mean.clone()
    runtime = Runtime.resolve("cpu", "off", "on" if fmt == "channels_last" else "off")
    step, settings = make_train_step(model, runtime=runtime, batch_size=2, image_size=32, num_classes=10)
    assert settings["memory_format"] == fmt
    assert model.training
    step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == set(before)  # forward, backward and optimizer step all happened
    assert not torch.equal(model.features[0][1].running_mean, bn_before)  # in training mode
    conv = model.features[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)


def test_time_step_runs_the_step():
    calls = []
    median, iqr, runs, per_run = time_step(lambda: calls.append(1), Runtime.resolve("cpu"), warmup=3, min_run_time=0.01)
    assert median > 0 and iqr >= 0 and runs >= 1 and per_run >= 1
    assert len(calls) >= 3 + runs * per_run


def test_time_step_says_what_it_does_only_for_slow_steps():
    """A progress line for steps slow enough that someone waits (a full-size network on a CPU), none
    for fast ones (it once printed "took 0.0 s" lines into nas measure's single-line errors)."""
    import time as _time

    from nas.core.device import Runtime
    from nas.steptime.measure import PROGRESS_AFTER_S, time_step

    calls = []
    time_step(lambda: None, Runtime.resolve("cpu"), warmup=0, min_run_time=0.001, progress=lambda *a: calls.append(a))
    assert calls == []
    time_step(
        lambda: _time.sleep(PROGRESS_AFTER_S + 0.05),
        Runtime.resolve("cpu"),
        warmup=0,
        min_run_time=0.01,
        progress=lambda *a: calls.append(a),
    )
    assert calls and all(s >= PROGRESS_AFTER_S for _, _, s in calls) and calls[-1][0] < 3
