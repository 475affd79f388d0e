"""The one objective every backend runs (in process, worker processes, Ray Tune, the compound-scaling
grid): evaluate one proposal, feed the pruning hook the same signal, and turn any failure into a
recorded reason. It returns an :class:`Outcome` instead of raising, so a backend only has to schedule."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nas.core.device import Runtime
from nas.trial.evaluator import Evaluator, TrialFailed, TrialPruned
from search_spaces import Architecture


@dataclass
class Outcome:
    """How a trial ended: ``state`` COMPLETE, PRUNED or FAIL; ``row`` every figure it produced (what
    was measured stays in the row even when it was pruned or failed); ``error`` the reason of a FAIL."""

    state: str
    row: dict[str, Any]
    error: str | None = None


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:500]


def place(device: str | None = None) -> dict[str, Any]:
    """Where a trial runs: the host and process (a rerun closes trials whose process is gone) and,
    given the trials' device setting, the device it trains on as this process sees it."""
    out: dict[str, Any] = {"hostname": socket.gethostname(), "pid": os.getpid()}
    if device is not None:
        fp = Runtime.resolve(device).fingerprint()
        out.update(device=fp["device"], device_name=fp["device_name"], threads=fp["threads"], torch_version=fp["torch"])
    return out


def run_objective(
    problem,
    evaluator: Evaluator,
    proposal: dict[str, Any],
    number: int,
    report: Callable[[int, Any], bool] | None = None,
) -> Outcome:
    """Evaluate ``proposal`` (from ``problem.propose``) as trial ``number``.

    ``report(epoch, value)`` is the backend's pruning hook (Optuna's pruner, Ray Tune's scheduler);
    ``value`` is ``problem.pruning_value``: the same signal for every backend (for a search, the reward
    so far: the epoch's accuracy with the S and P measured before training; for a multi-objective one,
    the list of its objectives so far). It returns True to stop the trial. The seed is
    ``problem.seed(number)``; a failure of any kind is a FAIL with its reason.
    """
    t_start = time.time()
    arch = Architecture.from_string(proposal["arch"])
    seed, image_scale = problem.seed(number), float(proposal.get("image_scale", 1.0))
    base = {
        "number": number,
        **proposal.get("facts", {}),
        "arch": proposal["arch"],
        **place(evaluator.settings.device),
        "t_start": t_start,
    }
    hook = None
    if report is not None:

        def hook(epoch: int, accuracy: float, known: dict[str, Any]) -> bool:
            value = problem.pruning_value(evaluator.reward, known, accuracy)
            return value is not None and bool(report(epoch, value))

    def finish(state: str, metrics: dict[str, Any], error: str | None = None) -> Outcome:
        t_end = time.time()
        return Outcome(
            state,
            {**base, **metrics, "state": state, "error": error, "t_end": t_end, "duration_s": t_end - t_start},
            error,
        )

    try:
        m = evaluator.evaluate(
            arch,
            seed=seed,
            image_scale=image_scale,
            fidelity=evaluator.samples_fidelity(number),
            on_epoch=hook,
        )
    except TrialPruned as p:
        return finish("PRUNED", p.metrics)
    except Exception as e:  # the candidate's failure: recorded with its reason, the search goes on
        return finish("FAIL", getattr(e, "metrics", None) or {}, error_text(e))
    if evaluator.samples_repeat(number):
        m = {**m, **_repeat(evaluator, arch, seed, image_scale)}
    return finish("COMPLETE", m)


def _repeat(evaluator: Evaluator, arch: Architecture, seed: int, image_scale: float) -> dict[str, Any]:
    """A complete trial trained again with another seed: ``accuracy_repeat`` (its reward stays the
    first training's, as every other trial's). A failure of the second training is recorded, not the trial's."""
    try:
        acc = evaluator.repeat(arch, seed=seed, image_scale=image_scale)
    except TrialFailed as e:
        return {"repeat_error": error_text(e)}
    return {} if acc is None else {"accuracy_repeat": float(acc)}
