"""The step-time registries: every cost and every method passes one suite (a new entry is tested by
being registered), a prepared target round-trips through the run directory, and timing happens only
where the device matches the target's."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nas.core.device import Runtime
from nas.errors import NasError
from nas.steptime import StepTimeModel, Target
from nas.steptime import table as tables
from nas.steptime.costs import COSTS, get_cost
from nas.steptime.methods import METHODS, StepTimeConfig, get_method
from nas.steptime.ontarget import OffTarget, mismatch, on_target
from nas.steptime.pieces import decompose, extract
from nas.steptime.prepared import PreparedTarget
from nas.trial.settings import ProxyConfig, TrialSettings
from nas.trial.target import prepare, resolve
from search_spaces import Architecture, build, get_space
from tests.helpers import TINY_ARCH

FAST = {"piece_run_time": 0.002, "measure_run_time": 0.01, "calibration_samples": 3}


TINY = Architecture.from_string(TINY_ARCH)


@pytest.mark.parametrize("name", sorted(COSTS))
def test_every_cost_times_a_piece_and_a_network(name):
    cost = get_cost(name)
    assert cost.name == name and cost.column.endswith("_ms") and cost.what and cost.help
    rt = Runtime.resolve("cpu")
    net = rt.prepare(build(TINY, 10)).train(cost.training)
    refs = [r for r, _ in decompose(TINY, 16, 2, 10)]
    found = extract(net, refs, rt.images(torch.randn(2, 3, 16, 16)), rt)
    for r in refs:
        module, x = found[r.key]
        ms, iqr = cost.time_piece(module, x, rt, kind=r.kind, num_classes=10, min_run_time=0.001, runs=3)
        assert ms > 0 and iqr >= 0, r.key
    assert cost.measure(TINY, rt, batch_size=2, image_size=16, num_classes=10, min_run_time=0.01) > 0


def test_latency_is_the_forward_pass_only():
    """Inference costs less than a training step of the same network (no backward, no optimiser)."""
    rt = Runtime.resolve("cpu")
    kw = dict(batch_size=8, image_size=32, num_classes=10, min_run_time=0.05, repeats=2)
    assert get_cost("latency").measure(TINY, rt, **kw) < get_cost("step").measure(TINY, rt, **kw)


def _settings(method: str) -> TrialSettings:
    step = StepTimeConfig(method=method, min_run_time=0.01)
    if get_method(method).full_size:
        step = dataclasses.replace(step, target_image_size=16, target_batch_size=2)
    proxy = ProxyConfig.of(width=1.0, depth=1.0, image_size=16, batch_size=4)
    return resolve(TrialSettings(dataset="fake", proxy=proxy, step_time=step), "cpu")


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> dict[str, PreparedTarget]:
    """Every method's target for a tiny reference, prepared as a run prepares it."""
    out = {}
    for name in METHODS:
        cache = tmp_path_factory.mktemp(f"cache-{name}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NAS_CACHE_DIR", str(cache))
            if get_method(name).predicted:  # the table prepare() loads, built in seconds (not a minute) first
                st = _settings(name).step_time
                target = Target(st.target_image_size, st.target_batch_size)
                built = StepTimeModel.load_or_build(
                    get_space("trainaware"), Runtime.resolve("cpu"), target, num_classes=10, **FAST
                )
            out[name] = prepare(_settings(name), num_classes=10, reference=TINY, device="cpu")
            if get_method(name).predicted:
                assert out[name].identity == built.table.identity  # the prebuilt table, not a new one
    return out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_a_cost_and_the_reference_from_its_target(name, targets):
    method, target = get_method(name), targets[name]
    assert method.name == name and method.help and target.method == name and target.reference_ms > 0
    source = method.source(target)
    other = TINY.replace(stem=16)
    cost = source.cost(other, 16, 2)
    assert cost["ms"] > 0
    if method.predicted:  # a prediction is a function of the table: the same number every time
        assert source.cost(other, 16, 2)["ms"] == cost["ms"] and cost["measured_ms"] is None
        assert source.cost(TINY, 16, 2)["ms"] == pytest.approx(target.reference_ms, rel=1e-12)
    else:  # timed directly: the timing is the cost
        assert cost["measured_ms"] == cost["ms"]
    direct, why = source.direct(other, 16, 2)
    assert direct > 0 and why is None  # this process is the target


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_prepared_target_round_trips_through_the_run_directory(name, targets, tmp_path):
    target = targets[name]
    saved = target.save(tmp_path)
    again = PreparedTarget.load(tmp_path)
    assert again.identity == saved.identity == target.identity
    assert (again.method, again.cost, again.reference, again.setting) == (
        name,
        "step",
        target.reference,
        target.setting,
    )
    assert (again.table is None) == (not get_method(name).predicted)
    data = json.loads((tmp_path / "target.json").read_text())
    data["reference"]["ms"] *= 2  # tampered: the recorded identity no longer matches
    (tmp_path / "target.json").write_text(json.dumps(data))
    with pytest.raises(NasError, match="does not match"):
        PreparedTarget.load(tmp_path)


def test_settings_a_method_does_not_take_are_refused():
    with pytest.raises(NasError, match="--step-time proxy"):
        StepTimeConfig(method="proxy", target_image_size=32)
    with pytest.raises(NasError, match="--cost latency"):
        StepTimeConfig(method="proxy", cost="latency")
    with pytest.raises(NasError, match="measure does not use"):
        StepTimeConfig(method="measure", target="t.json")
    with pytest.raises(NasError, match="unknown step-time setting"):
        StepTimeConfig.from_dict({"method": "table", "typo": 1})


def test_a_foreign_fingerprint_is_named_and_never_timed():
    here = tables.fingerprint(Runtime.resolve("cpu"))
    assert mismatch(here) is None
    assert "device_name" in mismatch({**here, "device_name": "Imaginary X1"})
    assert "torch" in mismatch({**here, "torch": "0.0.1"})
    assert "CUDA" in mismatch({**here, "device": "cuda"}) or not torch.cuda.is_available()
    with (
        pytest.raises(
            OffTarget,
            match=r"checking it needs a timing on the target device, and device_name is .* "
            r"here and 'Imaginary X1' on the target; cover it",
        ),
        on_target({**here, "device_name": "Imaginary X1"}, needed_for="checking it", cover="cover it"),
    ):
        pass


def test_on_target_matches_the_targets_threads_for_the_block():
    fp = {**tables.fingerprint(Runtime.resolve("cpu")), "threads": 2}
    assert torch.get_num_threads() == 1
    with on_target(fp, needed_for="x", cover="y"):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
