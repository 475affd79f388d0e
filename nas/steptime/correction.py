"""The correction: what the sum of separately timed pieces misses, fitted on calibration networks.

    predicted = a * raw + b * blocks + d * params + c

``raw`` is the piece sum (:mod:`nas.steptime.model`), ``blocks`` the network's block count,
``params`` its parameter count. Which coefficients are free, if any, is decided by leave-one-out
error on the calibration networks (:func:`fit_correction`); the table stores the chosen form, its
coefficients (the fixed ones 0, ``a`` 1) and its leave-one-out error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# The forms the correction may take, simplest first: (name, which of a, b, d, c are free). The first
# has none: the raw sum itself (a = 1), which wins when the calibration networks' timings are too
# noisy for any fit to beat it.
CORRECTION_FORMS = (
    ("raw", (False, False, False, False)),
    ("a*raw", (True, False, False, False)),
    ("a*raw + c", (True, False, False, True)),
    ("a*raw + b*blocks + c", (True, True, False, True)),
    ("a*raw + d*params + c", (True, False, True, True)),
    ("a*raw + b*blocks + d*params + c", (True, True, True, True)),
)
MIN_EXTRA_ROWS = 2  # a form with k coefficients is tried on k + 2 calibration networks or more


RATIO_MARGIN = 0.10  # how far beyond the calibration networks' measured/raw ratios a prediction may go


def correct(corr: dict[str, Any], raw_ms: float, blocks: int, params: int) -> float:
    """The prediction: ``a * raw + b * blocks + d * params + c`` (ms), kept within the ratios of
    measured to raw time that the calibration networks showed (``corr["points"]``), widened by
    :data:`RATIO_MARGIN`. Within the calibration networks' range the bound does not bite; outside it
    (a network far smaller or larger than any calibration network: a tiny base in ``nas grid-scale``)
    a fitted intercept would extrapolate to nonsense, down to negative times, where the ratio stays
    one that was measured."""
    value = corr["a"] * raw_ms + corr["b"] * blocks + corr["d"] * params + corr["c"]
    ratios = [p["measured_ms"] / p["raw_ms"] for p in corr.get("points") or () if p.get("raw_ms", 0) > 0]
    if not ratios:
        return value if value > 0 else raw_ms
    lo, hi = min(ratios) * (1 - RATIO_MARGIN), max(ratios) * (1 + RATIO_MARGIN)
    return min(max(value, lo * raw_ms), hi * raw_ms)


def _fit_form(x: np.ndarray, y: np.ndarray, free) -> np.ndarray:
    """Coefficients (a, b, d, c) of one form, least squares on the relative error (MAPE is what is
    reported), the form's fixed coefficients 0 (a: 1 when fixed)."""
    if not any(free):
        return np.array([1.0, 0.0, 0.0, 0.0])
    w = 1.0 / y
    cols = x[:, list(free)]
    coef, *_ = np.linalg.lstsq(cols * w[:, None], y * w, rcond=None)
    out = np.zeros(4)
    out[list(free)] = coef
    return out


def _loo_errors(x: np.ndarray, y: np.ndarray, free) -> np.ndarray:
    """Each network's relative error when the form is fitted on the others."""
    n = len(y)
    return np.array(
        [abs(x[i] @ _fit_form(x[np.arange(n) != i], y[np.arange(n) != i], free) - y[i]) / y[i] for i in range(n)]
    )


def fit_correction(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``(a, b, d, c)`` of ``measured ~ a * raw + b * blocks + d * params + c`` over the calibration
    networks ``rows``, and the form chosen.

    Each form of :data:`CORRECTION_FORMS` is scored by leave-one-out: fitted without each network in
    turn, its relative error on the one left out. A fitted form replaces the raw sum only when it
    beats the raw sum's error on all calibration networks but at most one, and then the one with the
    lowest mean error wins. A correction that stands for something systematic (per-piece overheads
    that the full step does not pay, as on a GPU) improves every network and passes; one that fits
    the noise of a handful of timings on a shared CPU does not, and the raw sum, which measured no
    worse than a repeated measurement there, is kept. Rows are ``{raw_ms, blocks, params,
    measured_ms}``; a form with k coefficients is tried on at least k + 2 rows."""
    x = np.array([[r["raw_ms"], r["blocks"], r["params"], 1.0] for r in rows], dtype=float)
    y = np.array([r["measured_ms"] for r in rows], dtype=float)
    n = len(rows)
    base = _loo_errors(x, y, CORRECTION_FORMS[0][1])
    name, loo, coef = CORRECTION_FORMS[0][0], float(base.mean()), np.array([1.0, 0.0, 0.0, 0.0])
    for form, free in CORRECTION_FORMS[1:]:
        if n < sum(free) + MIN_EXTRA_ROWS or any(f and np.ptp(x[:, j]) == 0 for j, f in enumerate(free[:3])):
            continue
        c = _fit_form(x, y, free)
        if not (math.isfinite(c[0]) and c[0] > 0):
            continue
        errs = _loo_errors(x, y, free)
        if (errs < base).sum() >= n - 1 and errs.mean() < loo - 1e-9:  # a tie (to rounding) keeps the simpler
            name, loo, coef = form, float(errs.mean()), c
    a, b, d, c0 = (float(v) for v in coef)
    return {"a": a, "b": b, "d": d, "c": c0, "form": name, "loo_mape": loo}
