"""Inside a Ray worker: one Tune trial of the run (:func:`tune_trial`).

Each trial runs :func:`nas.trial.objective.run_objective` with an evaluator that scores against the
run's prepared target, which the driver hands to every trial through Ray's object store
(``tune.with_parameters``): whatever node and device run the trial, S is the target's. Trials on a
node share its device: direct timings (fidelity samples, missing table pieces) hold the device
alone (:mod:`nas.core.devicelock`, named per device here) while other trials on the node train.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from nas.core import devicelock
from nas.core.device import resolve_device
from nas.core.plugins import import_plugins
from nas.steptime.prepared import PreparedTarget
from nas.study.pareto import metric_keys
from nas.study.problems import problem_from_config
from nas.trial.evaluator import get_evaluator
from nas.trial.objective import Outcome, error_text, place, run_objective

_CACHE: dict[str, Any] = {}
PRUNING_METRIC = "objective_so_far"  # what the run's Tune scheduler judges (one key per objective: _0, _1, ...)


def cached_evaluator(problem, target: dict[str, Any] | None):
    """This process's evaluator for ``problem`` against ``target`` (the run's prepared target as plain
    data: ``{"target": ..., "table": ...}``); a reused Tune actor keeps it, with its data loaded."""
    key = json.dumps([problem.config(), None if target is None else target["target"]["identity"]], sort_keys=True)
    if key not in _CACHE:
        prepared = None if target is None else PreparedTarget.from_dict(target["target"], target["table"])
        kind = get_evaluator(problem.settings.evaluator)
        _CACHE[key] = kind(problem.settings, target=prepared, reference=problem.reference_arch())
    return _CACHE[key]


def _device_lock(device: str) -> None:
    """Name this process's device lock (the trials a node runs share its devices)."""
    if devicelock.ENV not in os.environ:
        dev = resolve_device(device)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        name = f"cuda{visible.split(',')[0] or dev.index or 0}" if dev.type == "cuda" else "cpu"
        os.environ[devicelock.ENV] = name


def _final(problem, outcome: Outcome) -> dict[str, Any]:
    row = {**outcome.row, "node_ip": _node_ip()}
    final = {**row, "final": True}
    if outcome.state == "COMPLETE":
        values = problem.values(row)
        if isinstance(values, list):
            final.update({f"objective_{i}": v for i, v in enumerate(values)})
        else:
            final["objective"] = values
    return final


def tune_trial(
    config: dict[str, Any], *, spec: dict[str, Any], target: dict[str, Any] | None = None, plugins: Sequence[str] = ()
) -> None:
    """One trial as a Ray Tune function trainable: ``config`` holds the Optuna trial's ``number`` and
    the ``proposal``; reports ``objective_so_far`` per epoch and the trial's row at the end."""
    from ray import tune  # Ray is optional and heavy: imported when the ray backend runs

    def report(epoch: int, value) -> bool:
        # One number, or one per objective of a multi-objective study (objective_so_far_0, ...), also
        # under the objectives' own names: a trial the scheduler stops keeps them in its row.
        values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
        named = dict(zip(problem.objective_names, values)) if len(values) > 1 else {}
        tune.report({"epoch": epoch, **named, **dict(zip(metric_keys(PRUNING_METRIC, len(values)), values))})
        return False  # Tune's scheduler stops the trial itself

    number = int(config["number"])
    problem = None
    try:
        import_plugins(plugins)
        problem = problem_from_config(spec)[0]
        _device_lock(problem.settings.device)
        outcome = run_objective(problem, cached_evaluator(problem, target), config["proposal"], number, report)
    except Exception as e:  # the setup's failure (a plugin, the data): recorded, not retried
        row = {
            "number": number,
            "arch": config["proposal"].get("arch"),
            **place(),
            "state": "FAIL",
            "error": error_text(e),
        }
        outcome = Outcome("FAIL", row, error_text(e))
    tune.report(_final(problem, outcome) if problem is not None else {**outcome.row, "final": True})


def _node_ip() -> str:
    import ray  # Ray is optional and heavy: imported when the ray backend runs

    return ray.util.get_node_ip_address()
