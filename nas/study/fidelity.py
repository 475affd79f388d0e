"""``fidelity.json``: what a run's figures were checked against, written at its end.

* ``step_time``: with a predicted cost (``--step-time table``), every ``--fidelity-every``-th trial is
  also timed directly on the target device; the agreement of predictions and timings
  (:func:`nas.core.agreement.agreement`). Where no process could time on the target (the trials ran
  on other devices), the section says so plainly instead.
* ``accuracy_noise``: every ``--accuracy-every``-th trial is trained a second time with another seed;
  the seed noise of one training against the spread of accuracy over the run's trials, and whether
  accuracy separates the candidates at all (:func:`accuracy_noise`). Where it does not, the search
  ranks by S and P whatever the reward says, and the summary says so in one sentence.
* ``accuracy``: with ``--validate-top K``, how well the proxy's accuracy ranks a longer training's
  (:mod:`nas.study.validation`).

Sections of earlier runs of the same directory are kept unless this run recomputed them. A file that
cannot be read is never dropped in silence: it is reported and moved aside as
``fidelity.json.corrupt-<time>``, then written anew.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from nas.core.agreement import agreement, describe, paired
from nas.core.files import atomic_write_json, read_json
from nas.errors import NasError
from nas.steptime.methods import METHODS, get_method
from nas.study.validation import line as accuracy_line

FILE = "fidelity.json"


def _predicted(df: pd.DataFrame) -> pd.DataFrame:
    methods = df["step_time_method"].dropna().unique() if "step_time_method" in df else []
    names = [m for m in methods if m in METHODS and get_method(m).predicted]
    return df[df["step_time_method"].isin(names)] if names else df.iloc[0:0]


def step_time_fidelity(df: pd.DataFrame) -> dict[str, Any]:
    """The run's predicted costs checked against the direct timings of its sampled trials."""
    if not len(df) or "measured_ms" not in df:
        return {}
    rows = _predicted(df).to_dict(orient="records")
    sampled = [r for r in rows if _given(r.get("measured_ms")) or _given(r.get("fidelity_skipped"))]
    if not sampled:
        return {}
    pred, meas = paired(sampled, "cost_ms", "measured_ms")
    timed = [int(r["number"]) for r in sampled if _given(r.get("measured_ms"))]
    out = {**agreement(pred, meas), "trials": timed}
    skipped = sorted({str(r["fidelity_skipped"]) for r in sampled if _given(r.get("fidelity_skipped"))})
    if skipped:
        out["not_checked"] = {
            "trials": [int(r["number"]) for r in sampled if _given(r.get("fidelity_skipped"))],
            "why": skipped,
        }
    return {"step_time": out}


# Accuracy separates a run's candidates when its spread over them is at least this many times the seed noise
# (two trainings' rankings then share about 1 - 1/SEPARATION**2 = 3/4 of their variance), the noise taken at
# the upper end of its CONFIDENCE interval: from k pairs it is known only to a chi-squared with k degrees
# of freedom (2 pairs: the true noise may be 3.1x the estimate, 4 pairs 1.9x, 10 pairs 1.4x at 90%).
SEPARATION = 2.0
CONFIDENCE = 0.90
MIN_PAIRS = 2  # trials trained twice before the seed noise is judged


def accuracy_noise(df: pd.DataFrame) -> dict[str, Any]:
    """A's seed noise against its spread: the trials trained twice (``accuracy_repeat``, every
    ``--accuracy-every``-th trial) give the noise of one training, ``sqrt(mean(d**2) / 2)`` over their
    differences ``d``; the spread is the standard deviation of accuracy over the complete trials."""
    if not len(df) or "accuracy_repeat" not in df:
        return {}
    ok = df[(df["state"] == "COMPLETE") & df["accuracy"].notna()]
    twice = ok[ok["accuracy_repeat"].notna()]
    if not len(twice):
        return {}
    d = twice["accuracy"].astype(float) - twice["accuracy_repeat"].astype(float)
    noise = float(math.sqrt((d**2).mean() / 2.0))
    spread = float(ok["accuracy"].astype(float).std(ddof=1)) if len(ok) > 1 else None
    judged = len(twice) >= MIN_PAIRS and spread is not None
    upper = noise * _noise_bound(len(twice))
    out = {
        "trials": [int(n) for n in twice["number"]],
        "pairs": len(twice),
        "complete": len(ok),
        "seed_noise": noise,
        "seed_noise_upper": upper,
        "confidence": CONFIDENCE,
        "spread": spread,
        "ratio": None if spread is None or noise == 0 else spread / noise,
        "separates": bool(spread >= SEPARATION * upper and spread > 0) if judged else None,
        "threshold": SEPARATION,
    }
    return {"accuracy_noise": out}


def _noise_bound(pairs: int) -> float:
    """How many times its estimate the seed noise may be, at CONFIDENCE, from ``pairs`` differences:
    ``sqrt(k / chi2.ppf(1 - CONFIDENCE, k))`` (each squared difference over 2 sigma**2 is chi-squared, 1 df)."""
    from scipy import stats  # a third of a second to import: only at the end of a run

    return float(math.sqrt(pairs / stats.chi2.ppf(1.0 - CONFIDENCE, pairs)))


def _given(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and v != v) and v != ""


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
    f = data.get("step_time")
    if f:
        if f.get("n"):
            out.append(f"step-time model vs direct timing on the target: {describe(f)} trials (fidelity.json)")
        if f.get("not_checked"):
            nc = f["not_checked"]
            out.append(
                f"no direct check of the step-time model was possible for {len(nc['trials'])} sampled trial(s): "
                f"{'; '.join(nc['why'])} (fidelity.json)"
            )
    if data.get("accuracy_noise"):
        out.append(noise_line(data["accuracy_noise"]))
    if "accuracy" in data:
        out.append(accuracy_line(data["accuracy"]))
    return out


def noise_line(n: dict[str, Any]) -> str:
    """One plain sentence: does accuracy separate the run's candidates, with its two figures."""
    upper = n.get("seed_noise_upper", n["seed_noise"])
    figures = (
        f"spread {_points(n['spread'])} points over {n['complete']} complete trials, seed noise "
        f"{_points(n['seed_noise'])} (up to {_points(upper)} at {100 * n.get('confidence', CONFIDENCE):.0f}% "
        f"confidence) from {n['pairs']} trial(s) trained twice"
    )
    if n["separates"] is None:
        return (
            f"accuracy separates these candidates: not judged yet ({figures}; {MIN_PAIRS} needed, "
            "see --accuracy-every) (fidelity.json)"
        )
    if n["separates"]:
        return f"accuracy separates these candidates: yes ({figures}) (fidelity.json)"
    return (
        f"accuracy separates these candidates: no ({figures}): on this data and proxy the accuracy is mostly "
        "the seed's, so the search ranks by training speed and size; candidates differ more on photographs "
        "than on digits (--dataset imagefolder:PATH or cifar10) and through a less shrunk proxy (--width-mult, "
        "--depth-mult; the README's 'Does the proxy's accuracy rank candidates?') (fidelity.json)"
    )


def _points(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"
