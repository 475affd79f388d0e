"""How well the proxy's accuracy ranks candidates: ``nas search --validate-top K``.

A search ranks candidates by a proxy: a few epochs of a shrunk network at a small image size. Whether
that ranking stands for the real one is the question every NAS result depends on, and Google's Vertex
AI NAS is the only system that reports it. After the search, the top ``K`` candidates by reward and
``K`` others drawn at random (seeded) from the rest of the complete trials are trained again for
``--validate-epochs`` (same proxy width, depth and image size, longer), and the Kendall tau and
Spearman correlation between their proxy accuracy and the longer run's accuracy go to
``fidelity.json`` (``"accuracy"``) and the summary. Each validated trial is appended to
``validation.csv`` as it finishes, so a killed validation resumes where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from nas.core.agreement import agreement
from nas.core.files import append_line, atomic_write_text
from nas.errors import check_int
from nas.study.results import read_rows
from search_spaces import Architecture

FILE = "validation.csv"
COLUMNS = ["number", "epochs", "proxy_accuracy", "validated_accuracy"]


def pick(df: pd.DataFrame, k: int, seed: int) -> list[int]:
    """The top ``k`` complete trials by reward, then ``k`` others drawn at random."""
    ok = df[(df["state"] == "COMPLETE") & df["reward"].notna() & df["accuracy"].notna()]
    ranked = ok.sort_values(["reward", "number"], ascending=[False, True])["number"].astype(int).tolist()
    top, rest = ranked[:k], ranked[k:]
    return top + sorted(random.Random(seed).sample(rest, min(k, len(rest))))


def _longer(evaluator, epochs: int):
    """An evaluator like ``evaluator`` whose proxy trains ``epochs`` epochs (same target and data)."""
    settings = evaluator.settings
    train = dataclasses.replace(settings.proxy.train, epochs=epochs)
    longer = dataclasses.replace(settings, proxy=dataclasses.replace(settings.proxy, train=train))
    return type(evaluator)(longer, target=evaluator.target, reference=evaluator.reference_arch, data=evaluator.data)


def _retrain(path: Path, df: pd.DataFrame, todo: list[int], evaluator, epochs: int, done: dict) -> None:
    """Retrain the trials ``todo``, each appended to ``validation.csv`` as it finishes."""
    ev = _longer(evaluator, epochs)
    by_number = df.set_index("number")
    if not path.exists():
        atomic_write_text(path, _csv_line(COLUMNS))
    for n in todo:
        m = ev.evaluate(Architecture.from_string(by_number.loc[n, "arch"]), seed=evaluator.settings.seed + n)
        row = {
            "number": n,
            "epochs": epochs,
            "proxy_accuracy": float(by_number.loc[n, "accuracy"]),
            "validated_accuracy": float(m["accuracy"]),
        }
        append_line(path, _csv_line([row[c] for c in COLUMNS]))
        done[(n, epochs)] = row


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([repr(v) if isinstance(v, float) else v for v in values])
    return buf.getvalue()


def validate_top(
    run_dir: Path, df: pd.DataFrame, evaluator, k: int, epochs: int, *, echo: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """Retrain the picked trials for ``epochs`` and return the accuracy-side fidelity (or None when
    fewer than three trials could be compared)."""
    check_int("--validate-top", k, 1, 10_000)
    check_int("--validate-epochs", epochs, 1, 100_000)
    numbers = pick(df, k, evaluator.settings.seed)
    path = Path(run_dir) / FILE
    done = {(int(r["number"]), int(r["epochs"])): r for r in read_rows(path)} if path.exists() else {}
    todo = [n for n in numbers if (n, epochs) not in done]
    if todo:
        echo(
            f"validating the proxy: retraining {len(todo)} of {len(numbers)} trials (top {k} by reward and {k} at "
            f"random) for {epochs} epochs ..."
        )
        _retrain(path, df, todo, evaluator, epochs, done)
    rows = [done[(n, epochs)] for n in numbers if (n, epochs) in done]
    f = agreement([r["proxy_accuracy"] for r in rows], [r["validated_accuracy"] for r in rows])
    if f["kendall_tau"] is None:
        return None
    return {
        "n": f["n"],
        "kendall_tau": f["kendall_tau"],
        "spearman": f["spearman"],
        "top": k,
        "epochs": epochs,
        "proxy_epochs": evaluator.settings.proxy.epochs,
        "trials": [r["number"] for r in rows],
    }


def line(data: dict[str, Any]) -> str:
    return (
        f"proxy accuracy ({data['proxy_epochs']} epochs) vs {data['epochs']} epochs on {data['n']} trials: "
        f"Kendall tau {data['kendall_tau']:.2f}, Spearman {data['spearman']:.2f} (fidelity.json)"
    )
