"""A run directory's result files, shared by every backend (Optuna in-process, Ray Tune) and command.

* ``trials.csv``: one row per trial (pandas-readable); the columns in :data:`TRIAL_COLUMNS` first.
* ``best.json``: the best architecture string, its metrics and the measurement provenance.
* ``pareto.png``: accuracy against step time, the non-dominated trials marked.

Files are written atomically (temporary file + rename), so a kill never leaves a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import pandas as pd

from nas.errors import NasError

TRIAL_COLUMNS = ["number", "state", "arch", "params", "macs", "step_time_ms", "S", "P", "accuracy", "reward",
                 "duration_s", "error"]
RUN_FORMAT = "nas.run/1"


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """Write through ``write(file)`` into a temporary file in the same folder, then ``os.replace``:
    a kill or crash mid-write leaves the previous file intact, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NasError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NasError(f"{what} {str(path)!r} is unreadable or corrupt: {e}") from None


def check_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Store the command's settings in a new run directory, or check that a resumed run has the
    same ones: rerunning a *different* command in the same directory would mix two experiments."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"format": RUN_FORMAT, **config})
        return
    stored = read_json(path, "run configuration")
    stored.pop("format", None)
    fresh = json.loads(json.dumps(config, default=_json_default))
    diffs = [k for k in sorted(set(stored) | set(fresh)) if stored.get(k) != fresh.get(k)]
    if diffs:
        k = diffs[0]
        raise NasError(f"{str(run_dir)!r} holds a run with different settings ({k}: {stored.get(k)!r} there, "
                       f"{fresh.get(k)!r} now); pass another --out to start a new run")


def pareto_mask(acc: Iterable[float], cost: Iterable[float]) -> list[bool]:
    """True where no other point has accuracy >= and cost <= with one of them strict."""
    pts = list(zip(acc, cost))
    out = []
    for i, (a, c) in enumerate(pts):
        dominated = any((a2 >= a and c2 <= c) and (a2 > a or c2 < c) for j, (a2, c2) in enumerate(pts) if j != i)
        out.append(not dominated)
    return out


def write_trials_csv(run_dir: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in TRIAL_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype="object")
    df = df[TRIAL_COLUMNS + [c for c in df.columns if c not in TRIAL_COLUMNS]]
    if len(df):
        df = df.sort_values("number", kind="stable")
    atomic_write_text(Path(run_dir) / "trials.csv", df.to_csv(index=False))
    return df


def complete(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["state"] == "COMPLETE") & df["reward"].notna()] if len(df) else df
    return ok


def write_best(run_dir: Path, df: pd.DataFrame, extra: dict[str, Any], objective: str = "reward") -> dict | None:
    ok = complete(df)
    if not len(ok):
        return None
    best = ok.loc[ok[objective].astype(float).idxmax()]
    metrics = {k: _plain(best[k]) for k in best.index if k not in ("arch",) and _plain(best[k]) is not None}
    data = {"arch": best["arch"], "objective": objective, "metrics": metrics, **extra}
    front = ok[pareto_mask(ok["accuracy"].astype(float), ok["step_time_ms"].astype(float))]
    data["pareto_front"] = [int(n) for n in front["number"]]
    atomic_write_json(Path(run_dir) / "best.json", data)
    return data


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def plot_pareto(run_dir: Path, df: pd.DataFrame, title: str = "") -> Path | None:
    """Accuracy against step time for every complete trial, colour = reward, front marked."""
    ok = complete(df)
    if not len(ok):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = ok["accuracy"].astype(float)
    st = ok["step_time_ms"].astype(float)
    front = pareto_mask(acc, st)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    sc = ax.scatter(st, acc, c=ok["reward"].astype(float), cmap="viridis", s=28, label="trials")
    fig.colorbar(sc, ax=ax, label="reward")
    f = ok[front].sort_values("step_time_ms")
    ax.plot(f["step_time_ms"].astype(float), f["accuracy"].astype(float), "r-o", mfc="none", ms=10,
            label="Pareto front")
    best = ok.loc[ok["reward"].astype(float).idxmax()]
    ax.scatter([best["step_time_ms"]], [best["accuracy"]], marker="*", s=220, c="red", label="best reward",
               zorder=5)
    ax.set_xlabel("training step time (ms, proxy)")
    ax.set_ylabel("validation accuracy (proxy)")
    ax.set_title(title or "nas search")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(run_dir) / "pareto.png"
    tmp = path.with_name(".pareto.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def summary_table(df: pd.DataFrame, top: int = 10, sort_by: str = "reward") -> str:
    counts = df["state"].value_counts().to_dict() if len(df) else {}
    head = "trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) if counts else "no trials"
    ok = complete(df)
    if not len(ok):
        return head
    cols = [c for c in ["number", "reward", "accuracy", "step_time_ms", "S", "P", "params", "macs",
                        "duration_s"] if c in ok.columns]
    t = ok.sort_values(sort_by, ascending=False).head(top)[cols].copy()
    for c, fmt in (("reward", "{:.4f}"), ("accuracy", "{:.4f}"), ("step_time_ms", "{:.2f}"), ("S", "{:.3f}"),
                   ("P", "{:.3f}"), ("duration_s", "{:.1f}")):
        if c in t:
            t[c] = t[c].astype(float).map(fmt.format)
    for c in ("params", "macs"):
        if c in t:
            t[c] = t[c].map(lambda v: f"{int(v):,}")
    return f"{head}\ntop {len(t)} by {sort_by}:\n{t.to_string(index=False)}"


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict | None]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NasError(f"run directory {str(run_dir)!r} does not exist")
    csv = run_dir / "trials.csv"
    if not csv.is_file():
        raise NasError(f"{str(run_dir)!r} has no trials.csv (not a nas run directory, or no trial finished yet)")
    try:
        df = pd.read_csv(csv)
    except Exception as e:  # pandas raises many types for a damaged file
        raise NasError(f"{str(csv)!r} is unreadable: {e}") from None
    missing = [c for c in TRIAL_COLUMNS if c not in df.columns]
    if missing:
        raise NasError(f"{str(csv)!r} lacks column(s) {', '.join(missing)}")
    best_path = run_dir / "best.json"
    best = read_json(best_path, "best architecture file") if best_path.exists() else None
    return df, best
