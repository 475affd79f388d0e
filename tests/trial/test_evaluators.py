"""Every registered evaluator passes one suite (a new one is tested by being registered): it loads
what it reads, scores a candidate of a space it serves with the metrics every backend stores, and
stops when its pruning hook says so."""

from __future__ import annotations

import math

import pytest

from nas.steptime.methods import StepTimeConfig
from nas.trial.evaluator import EVALUATORS, TrialPruned, get_evaluator
from nas.trial.factory import evaluator_for
from nas.trial.settings import ProxyConfig, TrialSettings
from search_spaces import get_space

ROW = {"arch", "params", "num_classes", "macs", "S", "P", "accuracy", "reward", "cost_ms"}


def _evaluator(name: str):
    kind = get_evaluator(name)
    space = getattr(kind, "space", None) or "trainaware"
    step = StepTimeConfig(method="measure", target_image_size=16, target_batch_size=2, min_run_time=0.01)
    proxy = ProxyConfig.of(width=0.1, depth=0.1, image_size=16, epochs=2, batch_size=32)
    settings = TrialSettings(space=space, dataset="fake", proxy=proxy, step_time=step, evaluator=name)
    return evaluator_for(settings, device="cpu"), get_space(space)


@pytest.mark.slow  # trains a proxy for the train evaluator
@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_every_evaluator_scores_a_candidate_with_the_metrics_every_backend_stores(name):
    ev, space = _evaluator(name)
    assert ev.name == name and ev.help and ev.num_classes >= 2
    m = ev.evaluate(space.sample(3), seed=0)
    assert set(m) >= ROW, ROW - set(m)
    assert 0 <= m["accuracy"] <= 1 and math.isfinite(m["reward"]) and m["S"] > 0 and m["P"] > 0
    assert m["reward"] == pytest.approx(ev.reward(m))
    known = ev.known(space.sample(3))
    assert known["S"] > 0 and known["P"] == m["P"] and known["params"] == m["params"]  # timed again: S may move


@pytest.mark.slow  # trains a proxy for the train evaluator
@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_every_evaluator_stops_when_its_hook_says_so(name):
    ev, space = _evaluator(name)
    seen = []

    def hook(epoch, accuracy, known):
        seen.append(epoch)
        return True

    with pytest.raises(TrialPruned) as e:
        ev.evaluate(space.sample(4), seed=0, on_epoch=hook)
    assert seen == [1] and "S" in e.value.metrics


@pytest.mark.slow  # trains a proxy three times for the train evaluator
@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_every_evaluator_repeats_a_candidate_with_another_seed_or_says_it_has_none(name):
    ev, space = _evaluator(name)
    arch = space.sample(5)
    first = ev.evaluate(arch, seed=7)["accuracy"]
    again = ev.repeat(arch, seed=7)
    if name != "train":
        assert again is None  # a surrogate's accuracy has no seed
        return
    assert 0 <= again <= 1
    assert ev.repeat(arch, seed=7) == again  # the second training is itself repeatable
    assert ev.evaluate(arch, seed=7)["accuracy"] == first  # and not the first training again
    from nas.trial.proxy import repeat_seed

    assert repeat_seed(7) != 7 and 0 <= repeat_seed(2**31 - 1) < 2**31
