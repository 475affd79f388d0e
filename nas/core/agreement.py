"""TODO docstring."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.errors import NasError


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
    return {
        "spearman": float(rho),
        "kendall_tau": float(tau),
        "mape": float(mean_absolute_percentage_error(m, p)),
        "within_10pct": float(np.mean(rel <= 0.10 + 1e-12)),
        "n": n,
    }  # exactly 10% (in floating point) is within
