"""TODO docstring."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nas.errors import NasError


def fidelity(predicted, measured) -> dict[str, Any] | None:
    """How well predicted step times stand for measured ones: Spearman, Kendall tau, mean absolute
    percentage error and the share within +-10% (nn-Meter's measure)."""
    import numpy as np

    pairs = [
        (float(p), float(m))
        for p, m in zip(predicted, measured)
        if p is not None and m is not None and math.isfinite(float(p)) and math.isfinite(float(m)) and float(m) > 0
    ]
    if not pairs:
        return None
    p, m = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    err = np.abs(p - m) / m
    out: dict[str, Any] = {
        "n": len(pairs),
        "mape": float(err.mean()),
        "within_10pct": float((err <= 0.10).mean()),
        "spearman": None,
        "kendall_tau": None,
    }
    if len(pairs) >= 3 and np.ptp(p) > 0 and np.ptp(m) > 0:
        from scipy import stats

        out["spearman"] = float(stats.spearmanr(p, m).statistic)
        out["kendall_tau"] = float(stats.kendalltau(p, m).statistic)
    return out


def step_time_fidelity(df) -> dict[str, Any]:
    """The step-time model checked against the direct timings of the run's sampled trials."""
    if "step_time_method" not in df or not len(df):
        return {}
    table = df[(df["step_time_method"] == "table") & df["measured_step_time_ms"].notna()]
    f = fidelity(table["step_time_ms"], table["measured_step_time_ms"]) if len(table) else None
    return {"step_time": {**f, "trials": [int(n) for n in table["number"]]}} if f else {}


def write_fidelity(run_dir: Path, sections: dict[str, Any]) -> None:
    """``fidelity.json``: what the run's figures were checked against (sections kept from earlier runs)."""
    from nas.core.files import atomic_write_json, read_json

    if not sections:
        return
    path = Path(run_dir) / "fidelity.json"
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = read_json(path, "fidelity file")
        except NasError:
            old = {}
    atomic_write_json(path, {**(old if isinstance(old, dict) else {}), **sections})


def fidelity_lines(data: dict[str, Any]) -> list[str]:
    out = []
    if "step_time" in data:
        f = data["step_time"]
        rank = "" if f["spearman"] is None else f"Spearman {f['spearman']:.2f}, Kendall tau {f['kendall_tau']:.2f}, "
        out.append(
            f"step-time model vs direct timing on {f['n']} trials: {rank}mean error {100 * f['mape']:.1f}%, "
            f"{100 * f['within_10pct']:.0f}% within +-10% (fidelity.json)"
        )
    if "accuracy" in data:
        from nas.study.validation import line

        out.append(line(data["accuracy"]))
    return out
