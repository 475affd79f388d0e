"""The correction: what the sum of separately timed pieces misses, fitted on calibration networks.

    predicted = a * raw + b * blocks + d * params + e * act + c

``raw`` is the piece sum (:mod:`nas.steptime.model`), ``blocks`` the network's block count,
``params`` its parameter count, ``act`` the megabytes of activations its pieces hold
(:meth:`nas.steptime.costs.Cost.piece_act_mb`: what a training step saves for its backward pass,
what an inference pass produces). Which coefficients are free, if any, is decided by leave-one-out error on the
calibration networks (:func:`fit_correction`); the table stores the chosen form, its coefficients
(the fixed ones 0, ``a`` 1) and its leave-one-out error.

``act`` is there for the CPU's caches: a piece timed alone runs its backward right after its
forward, on activations still in cache, while the whole network's backward reads them after every
later block has evicted them, so the full step costs more than its pieces by a time that grows with
the activations, not with the compute (2 CPU cores, 64 px, batch 16, 18 networks: the gap between
measured and raw correlated 0.67 with the saved megabytes and 0.03 with the raw sum).
"""

from __future__ import annotations

from typing import Any

import numpy as np

TERMS = ("a", "b", "d", "e", "c")  # the coefficients of raw, blocks, params, act and 1
FEATURES = ("raw_ms", "blocks", "params", "act_mb")

# The forms the correction may take, simplest first (none has fewer coefficients than the one
# before): (name, which coefficients are free; ``a`` is 1 when not). The first has none: the raw sum
# itself, which wins when the calibration networks' timings are too noisy for any fit to beat it.
CORRECTION_FORMS = (
    ("raw", ""),
    ("raw + e*act", "e"),
    ("raw + c", "c"),
    ("a*raw", "a"),
    ("a*raw + c", "ac"),
    ("a*raw + e*act + c", "aec"),
    ("a*raw + b*blocks + c", "abc"),
    ("a*raw + d*params + c", "adc"),
    ("a*raw + b*blocks + d*params + c", "abdc"),
)
MIN_EXTRA_ROWS = 2  # a form with k coefficients is tried on k + 2 calibration networks or more
# What each coefficient beyond the best form's so far must take off the leave-one-out error (a
# fraction). Nine forms scored on six networks: the lowest of nine noisy scores is often a lucky one,
# and the more coefficients a form has, the luckier it can get (2 CPU cores, latency: a*raw + b*blocks
# + c scored 1.7% on its calibration networks and erred 7.6% on 12 unseen candidates, where a*raw,
# scored 2.7%, erred 2.2%).
COMPLEXITY_MARGIN = 0.005


RATIO_MARGIN = 0.10  # how far beyond the calibration networks' measured/raw ratios a prediction may go


def _row(raw_ms: float, blocks: float, params: float, act_mb: float) -> np.ndarray:
    return np.array([raw_ms, blocks, params, act_mb, 1.0], dtype=float)


def correct(corr: dict[str, Any], raw_ms: float, blocks: int, params: int, act_mb: float = 0.0) -> float:
    """The prediction: ``a * raw + b * blocks + d * params + e * act + c`` (ms), kept within the
    ratios of measured to raw time that the calibration networks showed (``corr["points"]``), widened
    by :data:`RATIO_MARGIN`. Within the calibration networks' range the bound does not bite; outside
    it (a network far smaller or larger than any calibration network: a tiny base in ``nas
    grid-scale``) a fitted intercept would extrapolate to nonsense, down to negative times, where the
    ratio stays one that was measured."""
    coef = np.array([corr.get(t, 0.0) for t in TERMS], dtype=float)
    value = float(_row(raw_ms, blocks, params, act_mb) @ coef)
    ratios = [p["measured_ms"] / p["raw_ms"] for p in corr.get("points") or () if p.get("raw_ms", 0) > 0]
    if not ratios:
        return value if value > 0 else raw_ms
    lo, hi = min(ratios) * (1 - RATIO_MARGIN), max(ratios) * (1 + RATIO_MARGIN)
    return min(max(value, lo * raw_ms), hi * raw_ms)


def _fit_form(x: np.ndarray, y: np.ndarray, free: str) -> np.ndarray:
    """Coefficients (a, b, d, e, c) of one form, least squares on the relative error (MAPE is what is
    reported), the form's fixed coefficients 0 (``a``: 1 when fixed)."""
    out, w = np.zeros(len(TERMS)), 1.0 / y
    if "a" not in free:
        out[0], y = 1.0, y - x[:, 0]  # fit what the raw sum leaves
    idx = [i for i, t in enumerate(TERMS) if t in free]
    if idx:
        coef, *_ = np.linalg.lstsq(x[:, idx] * w[:, None], y * w, rcond=None)
        out[idx] = coef
    return out


def _loo_errors(x: np.ndarray, y: np.ndarray, free: str) -> np.ndarray:
    """Each network's relative error when the form is fitted on the others."""
    n = len(y)
    return np.array(
        [abs(x[i] @ _fit_form(x[np.arange(n) != i], y[np.arange(n) != i], free) - y[i]) / y[i] for i in range(n)]
    )


def fit_correction(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``(a, b, d, e, c)`` of ``measured ~ a * raw + b * blocks + d * params + e * act + c`` over the
    calibration networks ``rows``, and the form chosen.

    Each form of :data:`CORRECTION_FORMS` is scored by leave-one-out: fitted without each network in
    turn, its relative error on the one left out. A fitted form replaces the raw sum only when it
    beats the raw sum's error on at least half the calibration networks, and then the one with the
    lowest mean error wins, a form with more coefficients only when each extra one takes
    :data:`COMPLEXITY_MARGIN` off that error. A fit that charges a negative time per block,
    parameter or megabyte of activations is an artefact of fitting a few points and never taken (2
    CPU cores: ``-4.4 ms * blocks + 218 ms`` scored best on its six calibration networks, 2.2%, and
    erred 4.7% on 12 unseen candidates, where ``raw + e*act`` erred 3.2%). A correction that stands
    for something systematic (per-piece overheads that the full step does not pay, as on a GPU;
    activations read back from memory, as on a CPU) improves most networks and passes; one that fits
    the noise of a handful of timings on a shared CPU does not, and the raw sum is kept (the margin
    keeps it too). Most, not all: the calibration networks span the space, and where the largest run
    at their piece sums while the rest run 5-15% over (latency on 2 CPU cores: ratios 0.99-1.15), a
    rule asking every network but one to improve kept the raw sum, 8.7% off on unseen candidates,
    where ``raw + c`` erred 3.4%. Rows are ``{raw_ms, blocks, params, act_mb, measured_ms}``
    (``act_mb`` 0 when absent); a form with k coefficients is tried on at least k + 2 rows, and not
    at all when a term it frees has the same value on every row."""
    x = np.array([_row(*(r.get(f, 0.0) for f in FEATURES)) for r in rows])
    y = np.array([r["measured_ms"] for r in rows], dtype=float)
    n = len(rows)
    base = _loo_errors(x, y, CORRECTION_FORMS[0][1])
    name, loo, coef, k = CORRECTION_FORMS[0][0], float(base.mean()), _fit_form(x, y, ""), 0
    for form, free in CORRECTION_FORMS[1:]:
        varying = all(np.ptp(x[:, TERMS.index(t)]) > 0 for t in free if t != "c")
        if n < len(free) + MIN_EXTRA_ROWS or not varying:
            continue
        c = _fit_form(x, y, free)
        if not (np.isfinite(c).all() and c[0] > 0 and (c[1:4] >= 0).all()):
            continue  # a block, a parameter or a megabyte of activations never takes time off a step
        errs = _loo_errors(x, y, free)
        need = COMPLEXITY_MARGIN * max(0, len(free) - k) + 1e-9  # a tie (to rounding) keeps the simpler
        if (errs < base).sum() >= (n + 1) // 2 and errs.mean() < loo - need:
            name, loo, coef, k = form, float(errs.mean()), c, len(free)
    return {**{t: float(v) for t, v in zip(TERMS, coef)}, "form": name, "loo_mape": loo}
