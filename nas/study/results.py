"""A run directory's results, written from rows by one writer that every backend and the grid use.

A row is one trial as a flat dict (its number, state, error, every figure it produced, where it
ran). The writer keeps ``trials.csv`` (``grid.csv`` for the grid) in the run directory:

* incrementally: each finished trial is *appended* as one line (:func:`nas.core.files.append_line`, one
  ``write`` call, so a SIGKILL never leaves half a row and parallel workers never interleave);
* whole, sorted by trial number, at the start and the end of a run (atomically: :mod:`nas.core.files`).

The problem the run solves (:class:`nas.study.problem.Problem`: the search, or the compound-scaling grid)
names the columns and writes what depends on all rows: ``best.json`` whenever the best changes,
plots at the end of a run and at most every :data:`PLOT_EVERY_S` seconds, never on a trial's path.

Columns are fixed per problem, so every line of a file has the same fields: the first ones are
:data:`TRIAL_COLUMNS`, then :data:`EXTRA_COLUMNS`, then the problem's own (sampled decisions as
``param_*``). A metric outside them is kept in the study, not in the file.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from nas.core.files import append_line, atomic_write, atomic_write_text, file_lock
from nas.errors import NasError

TRIAL_COLUMNS = [
    "number",
    "state",
    "arch",
    "params",
    "macs",
    "num_classes",
    "cost",
    "cost_ms",
    "step_time_ms",
    "latency_ms",
    "step_time_method",
    "S",
    "P",
    "accuracy",
    "reward",
    "duration_s",
    "error",
]
# What every trial row may carry besides: how S was obtained and what it stands for (the run's target:
# its identity, device and the reference's cost), the direct check of a predicted cost, where the
# trial ran, the proxy and timing.
EXTRA_COLUMNS = [
    "accuracy_repeat",
    "repeat_error",
    "measured_ms",
    "fidelity_skipped",
    "step_iqr_ms",
    "step_image_size",
    "step_batch_size",
    "target_image_size",
    "target_batch_size",
    "target_id",
    "target_device",
    "reference_ms",
    "reference_params",
    "device",
    "device_name",
    "torch_version",
    "threads",
    "proxy_arch",
    "proxy_params",
    "epochs",
    "time_s",
    "train_s",
    "t_start",
    "t_end",
    "worker",
    "hostname",
    "pid",
    "node_ip",
    "duplicate_of",
]
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
PLOT_EVERY_S = 30.0
LOCK_NAME = ".results.lock"


def results_lock(run_dir: Path):
    """An exclusive lock for the processes writing one run directory's results (released if one dies)."""
    return file_lock(Path(run_dir) / LOCK_NAME, what=f"the results of {run_dir}")


def frame(rows: Iterable[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a frame with exactly ``columns`` (missing ones empty), sorted by trial number."""
    df = pd.DataFrame(list(rows))
    for col in columns:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype="object")
    df = df[columns]
    if len(df) and "number" in df and df["number"].notna().all():
        df = df.sort_values("number", kind="stable")
    return df.reset_index(drop=True)


def _csv_line(row: dict[str, Any], columns: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if _missing(row.get(c)) else row.get(c) for c in columns])
    return buf.getvalue()


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class ResultsWriter:
    """Keeps one run directory's result files from rows (see the module docstring)."""

    def __init__(self, run_dir: Path, problem, extra: dict[str, Any], *, shared: bool = False):
        self.run_dir = Path(run_dir)
        self.problem = problem
        self.extra = extra
        self.columns = problem.columns()
        self.path = self.run_dir / problem.results_file
        self.shared = shared  # other processes append too: read the file back before deciding the best
        self._rows: dict[int, dict[str, Any]] = {}
        self._best_key: Any = None
        self.best: dict[str, Any] | None = None
        self._last_plot = time.monotonic()  # the first plot comes PLOT_EVERY_S into the run, or at its end
        self._plot_cost = 0.0

    # -- whole files ------------------------------------------------------------------------------
    def rewrite(self, rows: Iterable[dict[str, Any]], *, plot: bool = True) -> pd.DataFrame:
        """Write the results file, the best and (``plot``) the plots from every row of the run."""
        self._rows = {int(r["number"]): dict(r) for r in rows if r.get("number") is not None}
        with results_lock(self.run_dir):
            df = self.frame()
            atomic_write_text(self.path, df.to_csv(index=False), durable=False)
            self.best = self.problem.write_best(self.run_dir, df, self.extra)
        self._best_key = self.problem.best_key(self.best) if self.best else None
        if plot:
            self.plot(force=True)
        return df

    def frame(self) -> pd.DataFrame:
        return self.problem.table(list(self._rows.values()))

    # -- one finished trial -------------------------------------------------------------------------
    def append(self, row: dict[str, Any]) -> bool:
        """Add a finished trial's row; rewrite the best when it is the new best (returns True then)."""
        with results_lock(self.run_dir):
            if self.shared:
                self._rows = {int(r["number"]): r for r in read_rows(self.path) if r.get("number") is not None}
            self._rows[int(row["number"])] = dict(row)
            if not self.problem.incremental or not self.path.exists():
                atomic_write_text(self.path, self.frame().to_csv(index=False), durable=False)
            else:
                append_line(self.path, _csv_line(row, self.columns))
            key = self.problem.best_key(row) if row.get("state") == "COMPLETE" else None
            changed = key is not None and (self._best_key is None or key > self._best_key)
            if changed:
                self.best = self.problem.write_best(self.run_dir, self.frame(), self.extra) or self.best
                self._best_key = self.problem.best_key(self.best) if self.best else self._best_key
        self.plot()
        return changed

    def plot(self, *, force: bool = False) -> None:
        """Redraw the plots at the end of a run (``force``), else at most every PLOT_EVERY_S seconds and
        never more often than keeps their cost under 2% of the run's time."""
        now = time.monotonic()
        if not force and now - self._last_plot < max(PLOT_EVERY_S, 50 * self._plot_cost):
            return
        t0 = time.perf_counter()
        self.problem.plot(self.run_dir, self.frame(), self.extra)
        self._plot_cost = time.perf_counter() - t0
        self._last_plot = time.monotonic()


def finished_row(row: dict[str, Any]) -> bool:
    """A trial that counts toward the requested total: complete, pruned, or failed with its own reason
    (one closed as interrupted does not: it is run again)."""
    return row.get("state") in ("COMPLETE", "PRUNED") or (
        row.get("state") == "FAIL" and bool(row.get("error")) and not str(row.get("error")).startswith("interrupted")
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file (missing values as None)."""
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        return []
    except Exception as e:  # pandas raises many types for a damaged file
        raise NasError(f"{str(path)!r} is unreadable: {e}") from None
    df = df.astype(object).where(df.notna(), None)
    return df.to_dict(orient="records")


# -- what every problem's summary uses -------------------------------------------------------------------


def pareto_mask(acc: Iterable[float], cost: Iterable[float]) -> list[bool]:
    """True where no other point has accuracy >= and cost <= with one of them strict."""
    pts = list(zip(acc, cost))
    out = []
    for i, (a, c) in enumerate(pts):
        dominated = any((a2 >= a and c2 <= c) and (a2 > a or c2 < c) for j, (a2, c2) in enumerate(pts) if j != i)
        out.append(not dominated)
    return out


def complete(df: pd.DataFrame, objective: str = "reward") -> pd.DataFrame:
    return df[(df["state"] == "COMPLETE") & df[objective].notna()] if len(df) else df


def state_counts(df: pd.DataFrame) -> str:
    counts = df["state"].value_counts().to_dict() if len(df) else {}
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) if counts else "none"


def common_error(df: pd.DataFrame) -> str | None:
    """The most frequent reason among failed trials (what to tell a user when nothing completed)."""
    if not len(df) or "error" not in df:
        return None
    errs = df.loc[df["state"] == "FAIL", "error"].dropna()
    if not len(errs):
        return None
    top = errs.value_counts()
    return f"{top.index[0]} ({top.iloc[0]} of {len(df)} trials)"


def format_table(t: pd.DataFrame, formats: dict[str, str]) -> str:
    t = t.copy()
    for c, fmt in formats.items():
        if c in t:
            t[c] = t[c].map(
                lambda v, f=fmt: "-" if _missing(v) else (f"{int(v):,}" if f == "int" else f.format(float(v)))
            )
    return t.to_string(index=False)


def figure(size: tuple[float, float]):
    """A matplotlib figure and axes on the file-only Agg backend (imported here, on first plot only)."""
    import matplotlib  # a second to import: only a run that plots pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    return plt.subplots(figsize=size, dpi=110)


def save_figure(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, lay out and write a figure as PNG through the one atomic write path, then free it."""
    import matplotlib.pyplot as plt  # a second to import: only a run that plots pays for it

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True, durable=False)
    plt.close(fig)
    return path
