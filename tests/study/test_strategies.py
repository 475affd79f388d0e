"""Every registered sampler and pruner passes one suite: a new one is tested by being registered."""

from __future__ import annotations

import pickle

import optuna
import pytest

from nas.errors import NasError
from nas.study.strategies import PRUNERS, SAMPLERS, check_pair, default_pruner, get_pruner, get_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(n_objectives: int):
    def objective(trial):
        k = trial.suggest_categorical("kernel", [3, 5, 7])
        e = trial.suggest_categorical("expansion", [1, 4, 6])
        return (k + e) / 13 if n_objectives == 1 else [k / 7, e / 6]

    return objective


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_drives_a_study_and_is_repeatable_by_seed(name):
    kind = get_sampler(name)
    n = 2 if kind.multi_objective else 1
    runs = []
    for _ in range(2):
        study = optuna.create_study(directions=["maximize"] * n, sampler=kind.make(7, False))
        study.optimize(_objective(n), n_trials=8)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1] and len(runs[0]) == 8
    assert kind.help and isinstance(kind.make(0, True), optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_survives_pickling_as_ray_tune_stores_its_searcher(name):
    sampler = pickle.loads(pickle.dumps(get_sampler(name).make(3, True)))
    study = optuna.create_study(
        directions=["maximize"] * (2 if get_sampler(name).multi_objective else 1), sampler=sampler
    )
    study.optimize(_objective(len(study.directions)), n_trials=3)
    assert len(study.trials) == 3


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_exists_for_optuna_and_for_ray_tune(name):
    kind = get_pruner(name)
    assert isinstance(kind.optuna(4), optuna.pruners.BasePruner) and kind.help
    scheduler = kind.tune(4, "objective_so_far")
    assert (scheduler is None) == (not kind.prunes)


def test_the_median_tune_scheduler_skips_final_rows_that_lack_the_metric():
    # CI: a failed trial's only result (its final row, no objective_so_far) went into Tune's
    # MedianStoppingRule, and the next trial's epoch result crashed the search with a KeyError.
    pytest.importorskip("ray")
    from ray.tune.schedulers import TrialScheduler

    scheduler = get_pruner("median").tune(2, "so")

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    class Controller:
        def get_live_trials(self):
            return []

    tc = Controller()
    failed, done, running = Trial("f"), Trial("d"), Trial("r")
    scheduler.on_trial_complete(tc, failed, {"training_iteration": 1, "final": True, "state": "FAIL"})
    scheduler.on_trial_result(tc, done, {"training_iteration": 1, "so": 0.5})
    scheduler.on_trial_complete(tc, done, {"training_iteration": 2, "so": 0.6})
    assert scheduler.on_trial_result(tc, running, {"training_iteration": 1, "so": 0.1}) == TrialScheduler.CONTINUE
    assert set(scheduler._results) == {done, running}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_sampler_gets_a_default_pruner_that_can_judge_it_and_others_are_refused(sampler):
    check_pair(sampler, default_pruner(sampler))
    for pruner, kind in PRUNERS.items():
        if get_sampler(sampler).multi_objective and not kind.multi_objective:
            with pytest.raises(NasError, match=f"--pruner {pruner} cannot judge"):
                check_pair(sampler, pruner)
        else:
            check_pair(sampler, pruner)


def test_unknown_names_are_one_line_with_the_known_ones():
    with pytest.raises(NasError, match=r"unknown sampler 'cmaes'; known: .*tpe"):
        get_sampler("cmaes")
    with pytest.raises(NasError, match=r"unknown pruner 'asha'; known: .*median"):
        get_pruner("asha")
