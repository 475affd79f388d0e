"""What a run's figures were checked against, in ``fidelity.json``: the step-time model against direct
timings of sampled trials (``step_time``), the proxy's accuracy against longer training
(``accuracy``, :mod:`nas.study.validation`).

``fidelity.json`` keeps the sections of earlier runs. One that cannot be read is never dropped in
silence: it is reported and moved aside as ``fidelity.json.corrupt-<time>``, then written anew.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nas.core.files import atomic_write_json, read_json
from nas.errors import NasError

FILE = "fidelity.json"


def fidelity(predicted, measured) -> dict[str, Any] | None:
    """How well predicted step times stand for measured ones: Spearman, Kendall tau, mean absolute
    percentage error and the share within +-10% (nn-Meter's measure)."""
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
        from scipy import stats  # slow to import, and needed only here: not at every command's start

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


def write_fidelity(run_dir: Path, sections: dict[str, Any], *, warn: Callable[[str], None] | None = None) -> None:
    """``fidelity.json``: what the run's figures were checked against (sections kept from earlier runs;
    an unreadable file is reported through ``warn``, by default on stderr, and kept aside)."""
    if not sections:
        return
    path = Path(run_dir) / FILE
    atomic_write_json(path, {**_kept(path, warn or _stderr), **sections})


def _kept(path: Path, warn: Callable[[str], None]) -> dict[str, Any]:
    """The sections an earlier run wrote; a file that holds none is moved aside, with a warning."""
    if not path.exists():
        return {}
    try:
        old = read_json(path, "fidelity file")
        if isinstance(old, dict):
            return old
        problem = f"fidelity file {str(path)!r} holds a JSON {type(old).__name__}, not an object"
    except NasError as e:
        problem = str(e)
    aside = path.with_name(f"{FILE}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    warn(f"{problem}; moved it to {aside.name} and wrote a new one")
    return {}


def _stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


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
        a = data["accuracy"]
        out.append(
            f"proxy accuracy ({a['proxy_epochs']} epochs) vs {a['epochs']} epochs on {a['n']} trials: "
            f"Kendall tau {a['kendall_tau']:.2f}, Spearman {a['spearman']:.2f} (fidelity.json)"
        )
    return out
