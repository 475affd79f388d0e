"""``nas search``: architectures sampled from a search space, scored by a reward (EfficientNetV2
section 3.3, MnasNet section 3). The problem half of a search; any backend runs it
(:mod:`nas.backends`), through the one driver (:mod:`nas.search.driver`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nas.core.files import atomic_write_json
from nas.errors import NasError, check_int
from nas.steptime.costs import get_cost
from nas.steptime.methods import get_method
from nas.study.problem import Problem
from nas.study.results import (
    common_error,
    complete,
    figure,
    format_table,
    pareto_mask,
    save_figure,
    state_counts,
)
from nas.study.rundir import CONFIG
from nas.study.strategies import check_pair, default_pruner, get_pruner, get_sampler
from nas.study.validation import validate_top
from nas.trial.settings import TrialSettings
from search_spaces import get_space

STUDY_NAME = "nas-search"
# Multi-objective samplers: accuracy up, cost (step time or latency) down, parameters down.
OBJECTIVES = (("accuracy", "maximize"), ("cost_ms", "minimize"), ("params", "minimize"))


@dataclass(frozen=True)
class SearchOptions:
    """How many trials, drawn how, stored where (none of it changes what a trial computes)."""

    n_trials: int = 20
    sampler: str = "tpe"
    pruner: str | None = None  # None: the sampler's default (nas.study.strategies.default_pruner)
    storage: str | None = None
    study_name: str = STUDY_NAME
    out: str = "runs/search-trainaware"
    validate_top: int = 0  # retrain the top K and K random trials (nas.study.validation); 0: off
    validate_epochs: int | None = None  # None: 4x the proxy's epochs

    def __post_init__(self) -> None:
        check_int("--trials", self.n_trials, 1, 1_000_000)
        check_int("--validate-top", self.validate_top, 0, 10_000)
        if self.validate_epochs is not None:
            check_int("--validate-epochs", self.validate_epochs, 1, 100_000)
        get_sampler(self.sampler)
        if self.pruner is None:
            object.__setattr__(self, "pruner", _resumed_pruner(self.out, self.sampler) or default_pruner(self.sampler))
        get_pruner(self.pruner)
        check_pair(self.sampler, self.pruner)

    @property
    def multi_objective(self) -> bool:
        return get_sampler(self.sampler).multi_objective


def _resumed_pruner(out: str, sampler: str) -> str | None:
    """The pruner of the search run in ``out`` with this sampler, if there is one: rerunning a command
    that names no pruner resumes the run with its own, even if the sampler's default changed since
    (nsga2's was ``none`` before ``pareto``)."""
    try:
        stored = json.loads((Path(out) / CONFIG).read_text())
    except (OSError, ValueError):
        return None  # no run there yet, or a damaged file the run directory's own check names
    if not isinstance(stored, dict) or stored.get("kind") != SearchProblem.kind or stored.get("sampler") != sampler:
        return None
    pruner = stored.get("pruner")
    try:
        check_pair(sampler, pruner)
    except (NasError, TypeError):
        return None
    return pruner


class SearchProblem(Problem):
    kind = "search"
    results_file = "trials.csv"

    def __init__(self, settings, opts: SearchOptions):
        super().__init__(settings)
        self.opts = opts
        self.study_name = opts.study_name
        self.space = get_space(settings.space)
        self.multi = opts.multi_objective
        self.directions = tuple(d for _, d in OBJECTIVES) if self.multi else ("maximize",)
        self.objective_names = tuple(k for k, _ in OBJECTIVES) if self.multi else ()

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "settings": self.settings.to_dict(),
            "sampler": self.opts.sampler,
            "pruner": self.opts.pruner,
            "storage": self.opts.storage,
            "study_name": self.opts.study_name,
            "options": {"validate_top": self.opts.validate_top, "validate_epochs": self.opts.validate_epochs},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        opts = SearchOptions(
            sampler=config["sampler"],
            pruner=config["pruner"],
            storage=config["storage"],
            study_name=config["study_name"],
            **config.get("options", {}),
        )
        return cls(TrialSettings.from_dict(config["settings"]), opts), opts.sampler, opts.pruner, opts.storage

    def propose(self, trial) -> dict[str, Any]:
        return {"arch": self.space.sample(trial).to_string()}  # define-by-run: the space asks the trial

    def seed(self, number: int) -> int:
        return self.settings.seed + number

    def pruning_value(self, reward, known, accuracy):
        # The pruner sees the reward so far (the epoch's accuracy with the S and P measured before
        # training), so a fast but slightly less accurate candidate is judged by what the search maximises.
        # A multi-objective search is judged by its objectives so far: the epoch's accuracy, and the
        # cost and parameters, fixed per candidate (only a pruner that compares vectors takes them).
        if self.multi:
            so_far = {**known, "accuracy": accuracy}
            names = self.objective_names
            return [float(so_far[k]) for k in names] if all(so_far.get(k) is not None for k in names) else None
        return float(reward({**{k: known[k] for k in reward.needs if k in known}, "accuracy": accuracy}))

    def values(self, row):
        return [float(row[k]) for k, _ in OBJECTIVES] if self.multi else float(row["reward"])

    def param_columns(self) -> list[str]:
        return [f"param_{name}" for name, _ in self.space.decisions()]

    def best_key(self, row):
        v = row.get("reward") if row else None
        return float(v) if v is not None and math.isfinite(float(v)) else None

    def write_best(self, run_dir: Path, df: pd.DataFrame, extra: dict[str, Any]):
        ok = complete(df)
        if not len(ok):
            return None
        best = ok.loc[ok["reward"].astype(float).idxmax()]
        metrics = {k: _plain(best[k]) for k in best.index if k != "arch" and _plain(best[k]) is not None}
        front = ok[pareto_mask(ok["accuracy"].astype(float), ok["cost_ms"].astype(float))]
        data = {
            "arch": best["arch"],
            "objective": "reward",
            "num_classes": metrics.get("num_classes"),
            "metrics": metrics,
            **extra,
            "pareto_front": [int(n) for n in front["number"]],
        }
        atomic_write_json(Path(run_dir) / "best.json", data, durable=False)
        return {"arch": best["arch"], **metrics}

    def plot(self, run_dir: Path, df: pd.DataFrame, extra: dict[str, Any]):
        """Accuracy against cost for every complete trial, colour = reward, front marked."""
        ok = complete(df)
        if not len(ok):
            return None
        acc, cost = ok["accuracy"].astype(float), ok["cost_ms"].astype(float)
        fig, ax = figure((7, 4.5))
        sc = ax.scatter(cost, acc, c=ok["reward"].astype(float), cmap="viridis", s=28, label="trials")
        fig.colorbar(sc, ax=ax, label="reward")
        f = ok[pareto_mask(acc, cost)].sort_values("cost_ms")
        ax.plot(f["cost_ms"].astype(float), f["accuracy"].astype(float), "r-o", mfc="none", ms=10, label="Pareto front")
        best = ok.loc[ok["reward"].astype(float).idxmax()]
        ax.scatter([best["cost_ms"]], [best["accuracy"]], marker="*", s=220, c="red", label="best reward", zorder=5)
        return save_figure(
            fig,
            ax,
            Path(run_dir) / "pareto.png",
            xlabel=_cost_label(extra),
            ylabel="validation accuracy (proxy)",
            title=f"nas search: {extra.get('space', '')}",
        )

    def summary(self, df: pd.DataFrame, top: int = 10) -> str:
        return summary_table(df, top)

    def finish(self, run_dir: Path, df: pd.DataFrame, echo, evaluator) -> dict[str, Any]:
        """After every trial finished: the accuracy side of fidelity (``--validate-top``)."""
        if not self.opts.validate_top:
            return {}
        epochs = self.opts.validate_epochs or 4 * self.settings.proxy.epochs
        data = validate_top(run_dir, df, evaluator, self.opts.validate_top, epochs, echo=echo)
        return {"accuracy": data} if data else {}

    def files(self) -> str:
        return "trials.csv, best.json, pareto.png"


def summary_table(df: pd.DataFrame, top: int = 10) -> str:
    head = f"trials: {state_counts(df)}"
    ok = complete(df)
    if not len(ok):
        err = common_error(df)
        return head + (f"\nmost common error: {err}" if err else "")
    cost = next((c for c in ("step_time_ms", "latency_ms", "cost_ms") if c in ok and ok[c].notna().any()), "cost_ms")
    cols = [c for c in ["number", "reward", "accuracy", cost, "S", "P", "params", "macs", "duration_s"] if c in ok]
    t = ok.sort_values("reward", ascending=False).head(top)[cols]
    n_classes = ok["num_classes"].dropna() if "num_classes" in ok else []
    note = f" (params and MACs at {int(n_classes.iloc[0])} classes)" if len(n_classes) else ""
    table = format_table(
        t,
        {
            "reward": "{:.4f}",
            "accuracy": "{:.4f}",
            cost: "{:.2f}",
            "S": "{:.3f}",
            "P": "{:.3f}",
            "duration_s": "{:.1f}",
            "params": "int",
            "macs": "int",
        },
    )
    return f"{head}\ntop {len(t)} by reward{note}:\n{table}"


def _cost_label(extra: dict[str, Any]) -> str:
    t = extra.get("target") or {}
    if "method" not in t:
        return "cost (ms)"
    what = get_cost(t["cost"]).what
    if not get_method(t["method"]).full_size:
        return f"proxy {what} (ms)"
    return f"{what} (ms, full size, {t.get('image_size')} px, batch {t.get('batch_size')}, {t.get('device')})"


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
