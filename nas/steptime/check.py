"""A step-time table's own check: its predictions against direct timings of candidates it has not seen.

``nas calibrate --check K`` (and the fidelity benchmark) draw ``K`` random full-size candidates of
the table's space with a seed of their own, skipping the calibration networks the correction was
fitted on, time each directly on the target device (:meth:`StepTimeModel.measure`) and report
their agreement (:func:`nas.core.agreement.agreement`). With ``repeat`` each candidate is timed a
second time, and the agreement of the two timings is reported too: the measurement's own error,
the floor any prediction is judged against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nas.core.agreement import agreement
from nas.errors import check_int
from nas.steptime.build import calibration_archs


def unseen_candidates(model, k: int, seed: int = 0) -> list:
    """``k`` random candidates of the model's space (drawn with ``seed``), none a calibration network."""
    seen = set(calibration_archs(model))
    rng = np.random.default_rng(seed)
    out, tries = [], 0
    while len(out) < k:
        arch = model.space.sample(rng)
        tries += 1
        if arch in seen and tries < 100 * (k + 1):  # a space smaller than that repeats: then take it
            continue
        seen.add(arch)
        out.append(arch)
    return out


def check(
    model,
    k: int,
    *,
    seed: int = 0,
    min_run_time: float | None = None,
    repeat: bool = False,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`agreement` of ``model``'s predictions with direct timings of ``k`` unseen candidates,
    plus ``rows`` (arch, predicted_ms, measured_ms[, measured_again_ms]), ``timed`` (pieces the
    predictions had to time first) and, with ``repeat``, ``repeat`` (the timings' own agreement)."""
    check_int("--check", k, 0, 10_000)
    timing = {} if min_run_time is None else {"min_run_time": min_run_time}
    rows, timed0 = [], model.timed
    for arch in unseen_candidates(model, k, seed):
        row = {
            "arch": arch.to_string(),
            "predicted_ms": model.predict(arch),
            "measured_ms": model.measure(arch, **timing),
        }
        if repeat:
            row["measured_again_ms"] = model.measure(arch, **timing)
        rows.append(row)
        if progress is not None:
            progress(len(rows), k, row)
    out = {
        **agreement([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
        "rows": rows,
        "timed": model.timed - timed0,
    }
    if repeat:
        out["repeat"] = agreement([r["measured_again_ms"] for r in rows], [r["measured_ms"] for r in rows])
    return out
