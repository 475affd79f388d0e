"""How faithful a step-time figure is to the measured one: rank and magnitude agreement.

The figures are those nn-Meter reports for latency predictors (share within +-10%) plus the rank
correlations a search cares about (the reward compares candidates): Spearman's rho and Kendall's tau
(:mod:`scipy.stats`) and the mean absolute percentage error
(:func:`sklearn.metrics.mean_absolute_percentage_error`, a fraction: 0.05 is 5%).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nas.core.agreement import fidelity
from nas.errors import check_int


def check(
    model,
    k: int,
    *,
    seed: int = 0,
    min_run_time: float | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Validate ``model`` on ``k`` random full-size candidates of its space (drawn with ``seed``; the
    calibration networks are skipped), timed directly at its target (:meth:`StepTimeModel.measure`,
    ``min_run_time`` seconds a repeat, default its own): :func:`fidelity` of the
    predictions, plus ``rows`` (arch, predicted_ms, measured_ms) and ``timed`` (pieces the
    predictions had to time first)."""
    from nas.steptime.model import calibration_archs

    check_int("--check", k, 0, 10_000)
    seen = set(calibration_archs(model))
    rng = np.random.default_rng(seed)
    rows = []
    timed0 = model.timed
    tries = 0
    while len(rows) < k:
        arch = model.space.sample(rng)
        tries += 1
        if arch in seen and tries < 100 * (k + 1):
            continue
        seen.add(arch)
        timing = {} if min_run_time is None else {"min_run_time": min_run_time}
        row = {
            "arch": arch.to_string(),
            "predicted_ms": model.predict(arch),
            "measured_ms": model.measure(arch, **timing),
        }
        rows.append(row)
        if progress is not None:
            progress(len(rows), k, row)
    fid = fidelity([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    return {**fid, "rows": rows, "timed": model.timed - timed0}
