"""How faithful a step-time figure is to the measured one: rank and magnitude agreement.

The figures are those nn-Meter reports for latency predictors (share within +-10%) plus the rank
correlations a search cares about (the reward compares candidates): Spearman's rho and Kendall's tau
(:mod:`scipy.stats`) and the mean absolute percentage error
(:func:`sklearn.metrics.mean_absolute_percentage_error`, a fraction: 0.05 is 5%).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from nas.errors import NasError, check_int


def fidelity(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """``{spearman, kendall_tau, mape, within_10pct, n}`` of ``predicted`` against ``measured``
    (paired, in the same unit). ``mape`` and ``within_10pct`` are fractions; a rank correlation of
    fewer than two distinct values is NaN."""
    from scipy import stats
    from sklearn.metrics import mean_absolute_percentage_error

    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.ndim != 1:
        raise NasError(f"fidelity needs two equally long lists, got {p.shape} and {m.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(m)) and np.all(m > 0)):
        raise NasError("fidelity needs finite times and positive measured times")
    n = len(p)
    if n == 0:
        return {"spearman": math.nan, "kendall_tau": math.nan, "mape": math.nan, "within_10pct": math.nan, "n": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN: NaN is the answer
        rho = stats.spearmanr(p, m).statistic if n > 1 else math.nan
        tau = stats.kendalltau(p, m).statistic if n > 1 else math.nan
    rel = np.abs(p - m) / m
    return {"spearman": float(rho), "kendall_tau": float(tau), "mape": float(mean_absolute_percentage_error(m, p)),
            "within_10pct": float(np.mean(rel <= 0.10 + 1e-12)), "n": n}  # exactly 10% (in floating point) is within


def check(model, k: int, *, seed: int = 0, min_run_time: float | None = None,
          progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
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
        row = {"arch": arch.to_string(), "predicted_ms": model.predict(arch), "measured_ms": model.measure(arch, **timing)}
        rows.append(row)
        if progress is not None:
            progress(len(rows), k, row)
    fid = fidelity([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    return {**fid, "rows": rows, "timed": model.timed - timed0}
