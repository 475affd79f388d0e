"""Samplers and pruners: how a study proposes candidates and stops unpromising trials, one registry
each, so the command line's choices and help come from here and a new strategy is one entry.

A sampler entry makes an Optuna sampler from a seed (``parallel``: other processes draw from the
same study at the same time). A pruner entry makes an Optuna pruner for the embedded and workers
backends and the equivalent Ray Tune scheduler for the Ray backend, so ``--pruner`` means the same
on every backend; both judge a trial by the same per-epoch signal (the reward so far; for a
multi-objective study its objective vector so far, which only ``pareto`` and ``none`` can judge).
A pruner with parameters takes them in its name: ``pareto:dominators=3,warmup=8``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import optuna

from nas.errors import NasError
from nas.study.pareto import ParetoPruner, ParetoRule, tune_scheduler


@dataclass(frozen=True)
class SamplerKind:
    name: str
    help: str
    make: Callable[[int, bool], optuna.samplers.BaseSampler]
    multi_objective: bool = False  # proposes for several objectives (accuracy, step time, parameters)


@dataclass(frozen=True)
class PrunerKind:
    name: str
    help: str
    optuna: Callable[..., optuna.pruners.BasePruner]  # (epochs, **params)
    # (epochs, metric, directions, **params) -> a Ray Tune scheduler, or None: run every trial out
    tune: Callable[..., Any]
    multi_objective: bool = False  # works on a multi-objective study
    prunes: bool = True
    params: dict[str, int] = field(default_factory=dict)  # name -> default (integers; checked by the factories)


SAMPLERS: dict[str, SamplerKind] = {}
PRUNERS: dict[str, PrunerKind] = {}


def register_sampler(kind: SamplerKind) -> SamplerKind:
    SAMPLERS[kind.name] = kind
    return kind


def register_pruner(kind: PrunerKind) -> PrunerKind:
    PRUNERS[kind.name] = kind
    return kind


def get_sampler(name: str) -> SamplerKind:
    if name not in SAMPLERS:
        raise NasError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def get_pruner(spec: str) -> PrunerKind:
    """The pruner ``spec`` names, ``NAME`` or ``NAME:KEY=VALUE,...``, with its parameters bound (its
    factories are then called as ``optuna(epochs)`` and ``tune(epochs, metric, directions)``)."""
    name, _, given = str(spec).partition(":")
    if name not in PRUNERS:
        raise NasError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
    kind = PRUNERS[name]
    params = dict(kind.params)
    for item in filter(None, given.split(",")):
        key, eq, value = (x.strip() for x in item.partition("="))
        known = ", ".join(kind.params) or "none"
        if not eq:
            raise NasError(f"--pruner {spec}: {item!r} is not KEY=VALUE ({name}'s parameters: {known})")
        if key not in kind.params:
            raise NasError(f"--pruner {spec}: unknown parameter {key!r}; {name}'s parameters: {known}")
        try:
            params[key] = int(value)
        except ValueError:
            raise NasError(f"--pruner {spec}: {key} must be an integer, got {value!r}") from None
    if not params:
        return kind
    bound = replace(kind, optuna=partial(kind.optuna, **params), tune=partial(kind.tune, **params))
    bound.optuna(1)  # the parameters' ranges are checked now, before anything runs
    return bound


def default_pruner(sampler: str) -> str:
    """The pruner a run gets when it names none: the first registered one that works with the
    sampler's number of objectives."""
    multi = get_sampler(sampler).multi_objective
    return next(p.name for p in PRUNERS.values() if p.multi_objective or not multi)


def check_pair(sampler: str, pruner: str) -> None:
    """A pruner that cannot judge the sampler's study is refused before anything runs."""
    s, p = get_sampler(sampler), get_pruner(pruner)
    if s.multi_objective and not p.multi_objective:
        ok = ", ".join(k.name for k in PRUNERS.values() if k.multi_objective)
        raise NasError(
            f"--pruner {pruner} cannot judge the multi-objective {sampler} sampler's trials "
            f"(it judges one number); use --pruner {ok}"
        )


def help_text(registry: dict[str, Any], default: str | None = None) -> str:
    return "; ".join(f"{k.name}{' (default)' if k.name == default else ''}: {k.help}" for k in registry.values())


# -- the built-in samplers -----------------------------------------------------------------------------

register_sampler(
    SamplerKind(
        "tpe",
        "Optuna's multivariate TPE, 5 random start-up trials (constant liar when trials run in parallel)",
        lambda seed, parallel: optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=5, constant_liar=parallel
        ),
    )
)
register_sampler(
    SamplerKind(
        "tpe-independent",
        "Optuna's TPE with one density per decision (no joint model), 5 random start-up trials",
        lambda seed, parallel: optuna.samplers.TPESampler(
            seed=seed, multivariate=False, n_startup_trials=5, constant_liar=parallel
        ),
    )
)
register_sampler(
    SamplerKind("random", "uniform random search", lambda seed, parallel: optuna.samplers.RandomSampler(seed))
)


class _NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: Ray Tune stores its searcher with the sampler, and Optuna's holds
    a thread lock (a new one is made when it is loaded)."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


register_sampler(
    SamplerKind(
        "nsga2",
        "NSGA-II, multi-objective (accuracy up, step time down, parameters down; best.json lists the front)",
        lambda seed, parallel: _NSGAIISampler(seed=seed, population_size=8),
        multi_objective=True,
    )
)


# -- the built-in pruners ------------------------------------------------------------------------------


def _median_optuna(epochs: int) -> optuna.pruners.BasePruner:
    # One check, halfway through the proxy training: a proxy's per-epoch figures are noisy, and a
    # trial checked at every epoch has to beat the median every time (all but 5 of 20 pruned).
    return optuna.pruners.MedianPruner(
        n_startup_trials=5, n_warmup_steps=max(1, epochs // 2), interval_steps=max(1, epochs)
    )


def _median_tune(epochs: int, metric: str, directions=("maximize",)):
    from ray.tune.schedulers import MedianStoppingRule  # Ray is optional and heavy: only for --backend ray

    class FinalRowsAside(MedianStoppingRule):
        # Tune's rule keeps every complete trial's last result and later averages its metric; a trial's
        # final row (a failed one's only result) carries the objective, not objective_so_far, and
        # crashed the run with a KeyError. Only results that carry the metric are kept.
        def on_trial_complete(self, tune_controller, trial, result) -> None:
            if result and self._metric in result and self._time_attr in result:
                super().on_trial_complete(tune_controller, trial, result)

    return FinalRowsAside(
        time_attr="training_iteration",
        metric=metric,
        mode="max",
        grace_period=max(1, epochs // 2),
        min_samples_required=5,
    )


def _hyperband_tune(epochs: int, metric: str, directions=("maximize",)):
    from ray.tune.schedulers import ASHAScheduler  # Ray is optional and heavy: only for --backend ray

    return ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode="max",
        max_t=max(1, epochs) + 1,
        grace_period=1,
        reduction_factor=3,
    )


register_pruner(
    PrunerKind("median", "stop a trial below the median of finished ones halfway through", _median_optuna, _median_tune)
)
register_pruner(
    PrunerKind(
        "hyperband",
        "Hyperband over the proxy's epochs (asynchronous successive halving on Ray)",
        lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3),
        _hyperband_tune,
    )
)
register_pruner(
    PrunerKind(
        "pareto",
        "stop a trial whose objectives so far (accuracy, cost, parameters: every objective the study has) are "
        "dominated by DOMINATORS other trials' at the same epoch, once WARMUP trials completed; never after the "
        "last epoch. Multi-objective samplers too; parameters: pareto:dominators=2,warmup=4",
        lambda epochs, dominators=2, warmup=4: ParetoPruner(ParetoRule(epochs, dominators, warmup)),
        lambda epochs, metric, directions=("maximize",), dominators=2, warmup=4: tune_scheduler(
            ParetoRule(epochs, dominators, warmup), metric, directions
        ),
        multi_objective=True,
        params={"dominators": 2, "warmup": 4},
    )
)
register_pruner(
    PrunerKind(
        "none",
        "run every trial to the end",
        lambda epochs: optuna.pruners.NopPruner(),
        lambda epochs, metric, directions=("maximize",): None,
        multi_objective=True,
        prunes=False,
    )
)
