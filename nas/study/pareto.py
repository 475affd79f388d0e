"""Pruning by Pareto dominance: the one rule the ``pareto`` pruner applies on every backend.

Optuna cannot prune a multi-objective study (``trial.report`` and ``trial.should_prune`` refuse
one), and Ray Tune's schedulers judge one metric. A multi-objective search still has a per-epoch
signal: its objective vector so far (for ``nas search --sampler nsga2``: the epoch's validation
accuracy, with the cost and parameters, which are fixed per candidate). :func:`should_prune` stops a
trial whose vector after an epoch is dominated by at least ``dominators`` other trials' vectors at
the same epoch, once ``warmup`` trials completed, never after the last epoch. :class:`ParetoPruner`
applies it to an Optuna study (intermediate vectors stored as trial user attributes,
:func:`intermediate_key`); :mod:`nas.study.tune_pareto` applies it in a Ray Tune scheduler.

:func:`hypervolume` measures a front (the benchmark compares fronts found with and without pruning).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import optuna

from nas.errors import check_int

Vector = Sequence[float]


def _minimised(v: Vector, directions: Sequence[str]) -> list[float]:
    return [-float(x) if d == "maximize" else float(x) for x, d in zip(v, directions)]


def finite(v: Vector) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)


def dominates(a: Vector, b: Vector, directions: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one (``directions``:
    "maximize" or "minimize" per objective)."""
    if len(a) != len(directions) or len(b) != len(directions):
        raise ValueError(f"vectors of {len(a)} and {len(b)} values for {len(directions)} objectives")
    x, y = _minimised(a, directions), _minimised(b, directions)
    return all(p <= q for p, q in zip(x, y)) and any(p < q for p, q in zip(x, y))


def count_dominators(vector: Vector, others: Iterable[Vector], directions: Sequence[str]) -> int:
    """How many of ``others`` dominate ``vector``; vectors with a missing or non-finite value count for
    nothing (and a non-finite ``vector`` is dominated by none: its trial fails on its own)."""
    if not finite(vector):
        return 0
    return sum(1 for o in others if len(o) == len(vector) and finite(o) and dominates(o, vector, directions))


@dataclass(frozen=True)
class ParetoRule:
    """Stop a trial dominated by at least ``dominators`` others at the same epoch, once ``warmup``
    trials completed; never after the last epoch (``epochs``: the work is done, pruning would only
    discard a result)."""

    epochs: int
    dominators: int = 2
    warmup: int = 4

    def __post_init__(self) -> None:
        check_int("--pruner pareto: dominators", self.dominators, 1, 1_000_000)
        check_int("--pruner pareto: warmup", self.warmup, 0, 1_000_000)

    def should_prune(
        self, epoch: int, vector: Vector, others: Iterable[Vector], n_complete: int, directions: Sequence[str]
    ) -> bool:
        return should_prune(vector, others, directions, epoch=epoch, n_complete=n_complete, rule=self)


def should_prune(
    vector: Vector,
    others: Iterable[Vector],
    directions: Sequence[str],
    *,
    epoch: int,
    n_complete: int,
    rule: ParetoRule,
) -> bool:
    """The shared rule (module docstring): ``others`` are the other trials' vectors at ``epoch``,
    ``n_complete`` how many trials completed."""
    if epoch >= rule.epochs or n_complete < rule.warmup:
        return False
    return count_dominators(vector, others, directions) >= rule.dominators


# -- Optuna ------------------------------------------------------------------------------------------------


INTERMEDIATE_PREFIX = "objectives_epoch_"


def intermediate_key(epoch: int) -> str:
    """The user attribute holding a trial's objective vector after ``epoch`` (Optuna stores one
    number per step only, and none at all for a multi-objective study)."""
    return f"{INTERMEDIATE_PREFIX}{int(epoch)}"


def intermediate(t: optuna.trial.FrozenTrial, epoch: int) -> list[float] | None:
    """A stored trial's objective vector after ``epoch``: the user attribute, else (a single-objective
    study) its reported intermediate value; None when it did not reach the epoch."""
    v = t.user_attrs.get(intermediate_key(epoch))
    if isinstance(v, list):
        return [float(x) for x in v]
    if epoch in t.intermediate_values:
        return [float(t.intermediate_values[epoch])]
    return None


def last_epoch(t: optuna.trial.FrozenTrial) -> int | None:
    epochs = [int(k[len(INTERMEDIATE_PREFIX) :]) for k in t.user_attrs if k.startswith(INTERMEDIATE_PREFIX)]
    epochs += list(t.intermediate_values)
    return max(epochs) if epochs else None


class ParetoPruner(optuna.pruners.BasePruner):
    """:class:`ParetoRule` over an Optuna study: the trial's latest vector against every other
    trial's vector at the same epoch (running, pruned, complete or failed: each is a measurement),
    after ``warmup`` complete trials. Works on single- and multi-objective studies alike; for a
    multi-objective one the trial's hook calls :meth:`prune` itself (:func:`prune_now`)."""

    def __init__(self, rule: ParetoRule):
        self.rule = rule

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epoch = last_epoch(trial)
        vector = intermediate(trial, epoch) if epoch is not None else None
        if vector is None:
            return False
        trials = study.get_trials(deepcopy=False)
        n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        others = [v for t in trials if t.number != trial.number and (v := intermediate(t, epoch)) is not None]
        directions = [d.name.lower() for d in study.directions]
        return self.rule.should_prune(epoch, vector, others, n_complete, directions)


def prune_now(trial: optuna.Trial) -> bool:
    """Ask the study's pruner about ``trial`` as it is stored now. ``trial.should_prune()`` does the
    same for a single-objective study and refuses a multi-objective one."""
    study = trial.study
    return bool(study.pruner.prune(study, study._storage.get_trial(trial._trial_id)))


# -- measuring a front ---------------------------------------------------------------------------------------


def hypervolume(points: Iterable[Vector], reference: Vector, directions: Sequence[str]) -> float:
    """The volume the points dominate up to ``reference`` (in every objective no better than any
    point worth counting; points not better than it in every objective add nothing). Exact: the
    objectives are swept one at a time (fine for the tens of points of a search)."""
    ref = _minimised(reference, directions)
    pts = [p for p in (_minimised(v, directions) for v in points if finite(v)) if all(a < r for a, r in zip(p, ref))]
    return _volume(pts, ref)


def _volume(pts: list[list[float]], ref: list[float]) -> float:
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts = sorted(pts, key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            total += (upper - p[-1]) * _volume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return total


# -- Ray Tune ----------------------------------------------------------------------------------------------


def metric_keys(metric: str, n: int) -> list[str]:
    """The result keys a Tune trial reports its ``n`` objectives so far under (one: ``metric`` itself)."""
    return [metric] if n == 1 else [f"{metric}_{i}" for i in range(n)]


def tune_vector(result: dict, metric: str, n: int) -> list[float] | None:
    """A Tune result's objective vector so far (None: a result without one, such as the final row)."""
    keys = metric_keys(metric, n)
    if result.get("epoch") is None or any(result.get(k) is None for k in keys):
        return None
    return [float(result[k]) for k in keys]


def tune_scheduler(rule: ParetoRule, metric: str, directions: Sequence[str]):
    """:class:`ParetoRule` as a Ray Tune scheduler: each trial's vector per epoch as its results come
    (:func:`tune_vector`), judged against the other trials' at the same epoch; complete trials are
    counted from their final results. A restored experiment counts the complete trials it restores,
    but their per-epoch vectors are gone (Tune keeps a trial's last result only): until new trials
    report, it prunes less, never more."""
    from ray.tune.experiment import Trial  # Ray is optional and heavy: --backend ray only
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # Ray is optional and heavy: --backend ray only

    directions = tuple(directions)

    class ParetoScheduler(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.vectors: dict[int, dict[str, list[float]]] = {}  # epoch -> trial id -> vector
            self.n_complete = 0

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            vector = tune_vector(result, metric, len(directions))
            if vector is None:
                return TrialScheduler.CONTINUE
            epoch = int(result["epoch"])
            at = self.vectors.setdefault(epoch, {})
            at[trial.trial_id] = vector
            others = [v for tid, v in at.items() if tid != trial.trial_id]
            stop = should_prune(vector, others, directions, epoch=epoch, n_complete=self.n_complete, rule=rule)
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

        def on_trial_add(self, tune_controller, trial) -> None:
            # A restored experiment adds its finished trials again, with their final results.
            if trial.status == Trial.TERMINATED:
                self.on_trial_complete(tune_controller, trial, trial.last_result)

        def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
            if result and result.get("final") and result.get("state") == "COMPLETE":
                self.n_complete += 1

        def debug_string(self) -> str:
            return f"pareto pruning: {self.n_complete} complete, dominators {rule.dominators}"

    return ParetoScheduler()
