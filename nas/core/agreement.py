"""How well one list of figures stands for another: the one definition every fidelity figure uses.

A predicted step time against a measured one, a proxy's accuracy against a longer run's: the rank
correlations a search cares about (it compares candidates), Spearman's rho and Kendall's tau, and
the magnitude figures nn-Meter reports for latency predictors: the mean and median absolute
percentage error and the share of pairs within +-10%.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.errors import NasError

MIN_RANKED = 3  # a rank correlation of fewer pairs says nothing (two points always agree or disagree)


def agreement(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """``{n, spearman, kendall_tau, mape, median_ape, within_10pct}`` of ``predicted`` against
    ``measured`` (paired, same unit). Errors are fractions of the measured value (0.05 is 5%); a
    figure that cannot be computed is None: every figure with no pairs, the rank correlations with
    fewer than :data:`MIN_RANKED` pairs or when either side is constant."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.ndim != 1:
        raise NasError(f"agreement needs two equally long lists, got {p.shape} and {m.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(m)) and np.all(m > 0)):
        raise NasError("agreement needs finite values and positive measured ones")
    out: dict[str, Any] = {
        "n": len(p),
        "spearman": None,
        "kendall_tau": None,
        "mape": None,
        "median_ape": None,
        "within_10pct": None,
    }
    if not len(p):
        return out
    rel = np.abs(p - m) / m
    # exactly 10% (in floating point) is within
    out.update(
        mape=float(rel.mean()), median_ape=float(np.median(rel)), within_10pct=float(np.mean(rel <= 0.10 + 1e-12))
    )
    if len(p) >= MIN_RANKED and np.ptp(p) > 0 and np.ptp(m) > 0:
        from scipy import stats  # a third of a second to import: only runs that report correlations need it

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["spearman"] = float(stats.spearmanr(p, m).statistic)
            out["kendall_tau"] = float(stats.kendalltau(p, m).statistic)
    return out


def paired(rows: Sequence[dict[str, Any]], a: str, b: str) -> tuple[list[float], list[float]]:
    """The ``(a, b)`` values of the rows where both are finite numbers and ``b`` is positive."""
    xs, ys = [], []
    for r in rows:
        try:
            x, y = float(r.get(a)), float(r.get(b))
        except (TypeError, ValueError):
            continue
        if np.isfinite(x) and np.isfinite(y) and y > 0:
            xs.append(x)
            ys.append(y)
    return xs, ys


def describe(f: dict[str, Any]) -> str:
    """One line: the rank correlations (when there are), the errors and the share within +-10%."""
    if not f.get("n"):
        return "no pairs"
    rank = "" if f["spearman"] is None else f"Spearman {f['spearman']:.2f}, Kendall tau {f['kendall_tau']:.2f}, "
    return (
        f"{rank}mean error {100 * f['mape']:.1f}% (median {100 * f['median_ape']:.1f}%), "
        f"{100 * f['within_10pct']:.0f}% within +-10% on {f['n']}"
    )
