"""The pareto pruner's one rule (nas.study.pareto), its properties checked on generated vectors, and
the rule as the Optuna pruner and the Ray Tune scheduler apply it."""

from __future__ import annotations

import itertools
import math
import re

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.errors import NasError
from nas.study.pareto import (
    ParetoRule,
    count_dominators,
    dominates,
    hypervolume,
    intermediate_key,
    metric_keys,
    prune_now,
    should_prune,
    tune_vector,
)
from nas.study.strategies import get_pruner

optuna.logging.set_verbosity(optuna.logging.WARNING)

DIRECTIONS = ("maximize", "minimize", "minimize")  # accuracy up, cost down, parameters down
value = st.floats(min_value=0, max_value=10, allow_nan=False).map(lambda x: round(x, 1))  # ties happen
vector = st.lists(value, min_size=3, max_size=3)
vectors = st.lists(vector, max_size=12)


def _prune(v, others, k, warmup=0, epoch=1, epochs=3, n_complete=10):
    return should_prune(v, others, DIRECTIONS, epoch=epoch, n_complete=n_complete, rule=ParetoRule(epochs, k, warmup))


@given(vector)
def test_a_vector_never_dominates_itself(v):
    assert not dominates(v, v, DIRECTIONS)


@given(vector, vector)
def test_dominance_is_asymmetric(a, b):
    assert not (dominates(a, b, DIRECTIONS) and dominates(b, a, DIRECTIONS))


@given(vector, st.integers(1, 5), st.integers(1, 5))
def test_a_trial_is_never_pruned_by_itself_however_often_it_is_seen(v, copies, k):
    assert not _prune(v, [v] * copies, k)


@given(vector, vectors, st.integers(1, 5))
def test_never_pruned_when_no_other_vector_dominates_it(v, others, k):
    undominating = [o for o in others if not dominates(o, v, DIRECTIONS)]
    assert not _prune(v, undominating, k)


@given(vector, vectors, st.integers(1, 6))
def test_pruning_is_monotone_in_k_and_exact_at_the_count(v, others, k):
    n = count_dominators(v, others, DIRECTIONS)
    assert n == sum(dominates(o, v, DIRECTIONS) for o in others)
    assert _prune(v, others, k) == (n >= k)
    if _prune(v, others, k + 1):
        assert _prune(v, others, k)


@given(vector, vectors, vector, st.integers(1, 4))
def test_more_peers_never_save_a_trial(v, others, extra, k):
    if _prune(v, others, k):
        assert _prune(v, [*others, extra], k)


@given(vector, vectors, st.integers(1, 4), st.integers(1, 6), st.integers(0, 8), st.integers(0, 8))
def test_never_at_or_after_the_last_epoch_nor_during_warmup(v, others, k, epochs, warmup, n_complete):
    others = others + [[v[0] + 1, v[1] - 1, v[2] - 1]] * k  # dominated k times over at least
    for epoch in range(1, epochs + 3):
        pruned = _prune(v, others, k, warmup=warmup, epoch=epoch, epochs=epochs, n_complete=n_complete)
        assert pruned == (epoch < epochs and n_complete >= warmup)


def test_non_finite_vectors_count_for_nothing():
    assert count_dominators([0.5, 1, 1], [[math.nan, 0, 0], [0.9, math.inf, 0]], DIRECTIONS) == 0
    assert count_dominators([math.nan, 1, 1], [[0.9, 0, 0]], DIRECTIONS) == 0
    with pytest.raises(ValueError, match="3 objectives"):
        dominates([1, 2], [1, 2, 3], DIRECTIONS)


def test_hypervolume_of_known_fronts():
    # One point: a box; two points: two boxes less their overlap; a dominated point adds nothing.
    assert hypervolume([[0.5, 1, 1]], [0, 2, 2], DIRECTIONS) == pytest.approx(0.5)
    two = hypervolume([[0.5, 1, 1], [0.8, 1.5, 1]], [0, 2, 2], DIRECTIONS)
    assert two == pytest.approx(0.5 * 1 * 1 + 0.8 * 0.5 * 1 - 0.5 * 0.5 * 1)
    assert hypervolume([[0.5, 1, 1], [0.8, 1.5, 1], [0.4, 1.6, 1.5]], [0, 2, 2], DIRECTIONS) == pytest.approx(two)
    assert hypervolume([[0.5, 3, 1]], [0, 2, 2], DIRECTIONS) == 0.0  # beyond the reference
    assert hypervolume([], [0, 2, 2], DIRECTIONS) == 0.0


@settings(max_examples=60)
@given(st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3), max_size=6))
def test_hypervolume_matches_counting_unit_cells(points):
    # Integer points: the exact volume is the number of unit cells some point dominates.
    ref = [0, 5, 5]
    cells = sum(
        any(a + 1 <= p[0] and b >= p[1] and c >= p[2] for p in points)
        for a, b, c in itertools.product(range(5), range(5), range(5))
    )
    assert hypervolume(points, ref, DIRECTIONS) == pytest.approx(cells)


def test_parameters_travel_in_the_name_and_bad_ones_are_named():
    pruner = get_pruner("pareto:dominators=3,warmup=7").optuna(5)
    assert (pruner.rule.dominators, pruner.rule.warmup, pruner.rule.epochs) == (3, 7, 5)
    assert get_pruner("pareto").optuna(5).rule == ParetoRule(5, 2, 4)
    for spec, bad in [
        ("pareto:dominators=0", "dominators must be an integer in [1, 1000000], got 0"),
        ("pareto:warmup=-1", "warmup must be an integer in [0, 1000000], got -1"),
        ("pareto:k=2", "unknown parameter 'k'; pareto's parameters: dominators, warmup"),
        ("pareto:dominators", "'dominators' is not KEY=VALUE"),
        ("pareto:dominators=two", "dominators must be an integer, got 'two'"),
        ("median:warmup=3", "median's parameters: none"),
    ]:
        with pytest.raises(NasError, match=re.escape(bad)):
            get_pruner(spec)


def _report(trial, epoch, v):
    trial.set_user_attr(intermediate_key(epoch), v)


def test_the_optuna_pruner_judges_a_multi_objective_study_from_stored_vectors():
    study = optuna.create_study(
        directions=list(DIRECTIONS), pruner=get_pruner("pareto:dominators=2,warmup=2").optuna(3)
    )
    for acc in [0.9, 0.8]:  # two complete trials, both better and cheaper
        t = study.ask()
        _report(t, 1, [acc, 1.0, 100.0])
        assert not prune_now(t)  # warm-up: nothing complete yet
        study.tell(t, [acc, 1.0, 100.0])
    t = study.ask()
    _report(t, 1, [0.5, 2.0, 200.0])
    assert prune_now(t)  # dominated by both at epoch 1
    _report(t, 3, [0.5, 2.0, 200.0])
    assert not prune_now(t)  # the last epoch: never
    u = study.ask()
    _report(u, 1, [0.85, 1.0, 100.0])
    assert not prune_now(u)  # dominated by one only
    _report(u, 2, [0.5, 2.0, 200.0])
    assert not prune_now(u)  # nobody else reached epoch 2


def test_the_optuna_pruner_also_judges_a_single_objective_study():
    study = optuna.create_study(direction="maximize", pruner=get_pruner("pareto:dominators=1,warmup=1").optuna(3))
    t = study.ask()
    t.report(0.9, 1)
    study.tell(t, 0.9)
    u = study.ask()
    u.report(0.5, 1)
    assert u.should_prune()
    u.report(0.95, 2)
    assert not u.should_prune()


def test_tune_results_carry_one_key_per_objective():
    assert metric_keys("m", 1) == ["m"] and metric_keys("m", 3) == ["m_0", "m_1", "m_2"]
    assert tune_vector({"epoch": 2, "m_0": 0.5, "m_1": 3, "m_2": 7}, "m", 3) == [0.5, 3.0, 7.0]
    assert tune_vector({"m_0": 0.5, "m_1": 3, "m_2": 7}, "m", 3) is None  # no epoch: the final row
    assert tune_vector({"epoch": 1, "m_0": 0.5}, "m", 3) is None


def test_the_tune_scheduler_applies_the_same_rule():
    pytest.importorskip("ray")
    from ray.tune.schedulers import TrialScheduler

    scheduler = get_pruner("pareto:dominators=1,warmup=1").tune(3, "so", DIRECTIONS)

    class Trial:
        def __init__(self, trial_id, status="RUNNING", last_result=None):
            self.trial_id, self.status, self.last_result = trial_id, status, last_result or {}

    a, b = Trial("a"), Trial("b")
    result = {"epoch": 1, "so_0": 0.9, "so_1": 1.0, "so_2": 10.0}
    assert scheduler.on_trial_result(None, a, result) == TrialScheduler.CONTINUE
    worse = {"epoch": 1, "so_0": 0.5, "so_1": 2.0, "so_2": 20.0}
    assert scheduler.on_trial_result(None, b, worse) == TrialScheduler.CONTINUE  # warm-up: none complete
    scheduler.on_trial_complete(None, a, {"final": True, "state": "COMPLETE"})
    assert scheduler.on_trial_result(None, b, worse) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, b, {**worse, "epoch": 3}) == TrialScheduler.CONTINUE  # last epoch
    assert scheduler.on_trial_result(None, b, {"final": True, "state": "COMPLETE"}) == TrialScheduler.CONTINUE

    # A restored experiment: its complete trials are added again, finished, and count for the warm-up.
    restored = get_pruner("pareto:dominators=1,warmup=1").tune(3, "so", DIRECTIONS)
    restored.on_trial_add(None, Trial("a", "TERMINATED", {"final": True, "state": "COMPLETE"}))
    restored.on_trial_add(None, Trial("p", "TERMINATED", {"epoch": 1}))  # one the scheduler had stopped
    restored.on_trial_add(None, Trial("c", "PENDING"))
    assert restored.n_complete == 1
    assert restored.on_trial_result(None, Trial("c"), result) == TrialScheduler.CONTINUE
    assert restored.on_trial_result(None, b, worse) == TrialScheduler.STOP
