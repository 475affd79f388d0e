"""``nas grid-scale`` as a problem: the base and the planned candidates (EfficientNet V1 section 3.3,
step 1), evaluated like ``nas search`` trials by any backend, the winner chosen by ``--objective``.

Each candidate is the base scaled with EfficientNet's channel rounding, depth ``round(repeats *
alpha**phi)`` and resolution ``round(res * gamma**phi)``; it is shrunk by the proxy width and depth
like every search trial but trained at the proxy image size times ``gamma**phi`` (so resolution
counts), and its step time is taken at the target image size times ``gamma**phi``. S and P are
relative to the unscaled base. Every candidate trains with the same seed, so differences between
candidates are the architecture's, not the draw's.

Results: ``grid.csv`` (one row per planned candidate: its latest finished trial, or WAITING),
``coefficients.json`` (the chosen alpha, beta, gamma, the objective value, the runner-up, the base's
figures, all settings), ``best.json`` (the chosen scaled network, so the run directory works wherever
an architecture is expected) and ``grid.png``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from nas.core.files import atomic_write_json
from nas.scaling.grid import (
    Candidate,
    GridOptions,
    GridSpec,
    plan_grid,
    proxy_image_size,
    scale_candidate,
)
from nas.study.problem import Problem
from nas.study.results import (
    EXTRA_COLUMNS,
    common_error,
    figure,
    finished_row,
    format_table,
    frame,
    save_figure,
    state_counts,
)
from nas.trial.settings import TrialSettings
from search_spaces import Architecture, count_macs, count_params

GRID_COLUMNS = [
    "candidate",
    "alpha",
    "beta",
    "gamma",
    "product",
    "phi",
    "depth_mult",
    "width_mult",
    "resolution_mult",
    "resolution",
    "proxy_image_size",
    "params",
    "macs",
    "macs_ratio",
    "target_macs_ratio",
    "cost",
    "cost_ms",
    "step_time_ms",
    "latency_ms",
    "S",
    "P",
    "accuracy",
    "reward",
    "state",
    "error",
    "duration_s",
    "arch",
    "number",
    "num_classes",
    "step_time_method",
    "params_ratio",
]


class GridProblem(Problem):
    kind = "grid-scale"
    results_file = "grid.csv"
    incremental = False  # one row per candidate: the file is rewritten (a few rows)
    unit = "candidates"
    # The candidates are fixed and enqueued: nothing to sample, and every one is trained to the end.
    sampler, pruner = "random", "none"
    space_matters = False  # the candidates are the base scaled, whatever space a target table was built on

    def __init__(self, settings, base: Architecture, opts: GridOptions):
        super().__init__(settings)
        self.base, self.opts, self.spec = base, opts, opts.spec
        self.study_name = opts.study_name
        self.plan = plan_grid(base, settings, opts)

    # -- identity ---------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        # The objective and --max-candidates are options, not identity: changing them re-ranks or
        # extends the same evaluations (the selection of n is a prefix of the selection of n + k).
        return {
            "kind": self.kind,
            "base": self.base.to_string(),
            "grid": self.spec.to_dict(),
            "settings": self.settings.to_dict(),
            "storage": self.opts.storage,
            "study_name": self.opts.study_name,
            "options": {"max_candidates": self.opts.max_candidates, "objective": self.opts.objective},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        g = config["grid"]
        spec = GridSpec(phi=g["phi"], step=g["step"], lo=g["lo"], hi=g["hi"], tolerance=g["tolerance"])
        opts = GridOptions(
            spec=spec, storage=config["storage"], study_name=config["study_name"], **config.get("options", {})
        )
        problem = cls(TrialSettings.from_dict(config["settings"]), Architecture.from_string(config["base"]), opts)
        return problem, cls.sampler, cls.pruner, opts.storage

    def reference_arch(self):
        return self.base

    def pending(self, rows, n_trials):
        done = {
            (float(r["alpha"]), float(r["beta"]), float(r["gamma"]))
            for r in rows
            if finished_row(r) and r.get("alpha") is not None
        }
        n_done = sum((c.alpha, c.beta, c.gamma) in done for c in self.plan.candidates)
        return n_done, len(self.plan.candidates) - n_done

    # -- proposals ---------------------------------------------------------------------------------------
    def fixed_points(self) -> list[dict[str, Any]]:
        return [{"alpha": c.alpha, "beta": c.beta, "gamma": c.gamma} for c in self.plan.candidates]

    def propose(self, trial) -> dict[str, Any]:
        hi = max(self.spec.hi, 1.0)
        # The enqueued values come back as they are; suggesting records them as the trial's params.
        cand = Candidate(*(float(trial.suggest_float(k, 1.0, hi)) for k in ("alpha", "beta", "gamma")))
        return {
            "arch": scale_candidate(self.base, cand, self.spec.phi).to_string(),
            "image_scale": cand.gamma**self.spec.phi,
            "facts": self.facts(cand),
        }

    def facts(self, cand: Candidate) -> dict[str, Any]:
        """What a candidate is before it is trained: its coefficients, multipliers and sizes."""
        phi = self.spec.phi
        return {
            "candidate": cand.label(),
            "alpha": cand.alpha,
            "beta": cand.beta,
            "gamma": cand.gamma,
            "product": cand.product,
            "phi": phi,
            "depth_mult": cand.alpha**phi,
            "width_mult": cand.beta**phi,
            "resolution_mult": cand.gamma**phi,
            "resolution": scale_candidate(self.base, cand, phi).resolution,
            "proxy_image_size": proxy_image_size(self.settings, cand, phi),
            "target_macs_ratio": cand.product**phi,
        }

    def seed(self, number: int) -> int:
        return self.settings.seed  # the same draw for every candidate

    def values(self, row):
        return float(row["accuracy"])  # stored always: --objective only ranks

    # -- results -------------------------------------------------------------------------------------------
    def columns(self) -> list[str]:
        return GRID_COLUMNS + [c for c in EXTRA_COLUMNS if c not in GRID_COLUMNS]

    def table(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per planned candidate: its latest finished trial (a complete one preferred), or
        WAITING when it has not been evaluated yet."""
        latest: dict[tuple, dict[str, Any]] = {}
        for r in rows:
            if r.get("alpha") is None or r.get("state") not in ("COMPLETE", "PRUNED", "FAIL"):
                continue
            key = (float(r["alpha"]), float(r["beta"]), float(r["gamma"]))
            prev = latest.get(key)
            if prev is None or r["state"] == "COMPLETE" or prev["state"] != "COMPLETE":
                latest[key] = r
        out = []
        for c in self.plan.candidates:
            row = {**self.facts(c), "state": "WAITING"}
            found = latest.get((c.alpha, c.beta, c.gamma))
            if found is not None:
                row.update({k: v for k, v in found.items() if v is not None})
                if found.get("macs") is not None and found.get("num_classes"):
                    base_macs, base_params = _base_size(self.base.to_string(), int(found["num_classes"]))
                    row["macs_ratio"] = float(found["macs"]) / base_macs
                    row["params_ratio"] = float(found["params"]) / base_params
            out.append(row)
        df = frame(out, self.columns())
        return df

    def best_key(self, row):
        if not row or row.get("candidate") in (None, "base") or row.get(self.opts.objective) is None:
            return None
        v = float(row[self.opts.objective])
        return v if math.isfinite(v) else None

    def choose(self, df: pd.DataFrame):
        """The chosen candidate and the runner-up by the objective among the constraint-satisfying
        ones (the base is the reference point, never a choice); ties go to the smaller MACs."""
        ok = _complete(df)
        ok = ok[ok["candidate"] != "base"]
        if not len(ok):
            return None, None
        obj = self.opts.objective
        ranked = ok.assign(_obj=ok[obj].astype(float), _macs=ok["macs"].astype(float)).sort_values(
            ["_obj", "_macs"], ascending=[False, True], kind="stable"
        )
        rows = [_row_dict(r) for _, r in ranked.drop(columns=["_obj", "_macs"]).iterrows()]
        return rows[0], (rows[1] if len(rows) > 1 else None)

    def write_best(self, run_dir: Path, df: pd.DataFrame, extra: dict[str, Any]):
        chosen, runner_up = self.choose(df)
        if chosen is None:
            return None
        base_rows = df[df["candidate"] == "base"]
        base_row = _row_dict(base_rows.iloc[0]) if len(base_rows) else {}
        obj = self.opts.objective
        data = {
            "format": "nas.coefficients/1",
            "alpha": chosen["alpha"],
            "beta": chosen["beta"],
            "gamma": chosen["gamma"],
            "product": chosen["product"],
            "phi": self.spec.phi,
            "objective": obj,
            "objective_value": chosen[obj],
            "chosen": chosen,
            "runner_up": runner_up,
            "base": {**base_row, "arch": self.base.to_string()},
            "grid": self.spec.to_dict(),
            "n_grid_points": self.spec.grid_points,
            "n_feasible": self.plan.n_feasible,
            "max_candidates": self.opts.max_candidates,
            "n_evaluated": int(len(_complete(df))),
            "selection": "greedy farthest-point in (alpha, beta, gamma), starting nearest the centroid",
            "settings": self.settings.to_dict(),
            **extra,
        }
        atomic_write_json(Path(run_dir) / "coefficients.json", data, durable=False)
        atomic_write_json(
            Path(run_dir) / "best.json",
            durable=False,
            data={
                "arch": chosen["arch"],
                "objective": obj,
                "num_classes": chosen.get("num_classes"),
                "metrics": {k: v for k, v in chosen.items() if k != "arch"},
                "coefficients": [chosen["alpha"], chosen["beta"], chosen["gamma"]],
                "phi": self.spec.phi,
                "base": self.base.to_string(),
            },
        )
        return {**chosen, "_coefficients": data}

    def plot(self, run_dir: Path, df: pd.DataFrame, extra: dict[str, Any]):
        """Proxy accuracy against full-size MACs, every evaluated candidate labelled alpha,beta,gamma."""
        ok = _complete(df)
        if not len(ok):
            return None
        chosen, _ = self.choose(df)
        fig, ax = figure((7.5, 4.8))
        cand, base = ok[ok["candidate"] != "base"], ok[ok["candidate"] == "base"]
        if len(cand):
            sc = ax.scatter(
                cand["macs"].astype(float) / 1e6,
                cand["accuracy"].astype(float),
                c=cand["gamma"].astype(float),
                cmap="viridis",
                s=36,
                label="candidates",
            )
            fig.colorbar(sc, ax=ax, label="gamma (resolution coefficient)")
        if len(base):
            ax.scatter(
                base["macs"].astype(float) / 1e6,
                base["accuracy"].astype(float),
                marker="s",
                s=60,
                c="black",
                label="base (1, 1, 1)",
            )
        for _, r in ok.iterrows():
            ax.annotate(
                r["candidate"],
                (float(r["macs"]) / 1e6, float(r["accuracy"])),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        if chosen is not None:
            ax.scatter(
                [chosen["macs"] / 1e6],
                [chosen["accuracy"]],
                marker="*",
                s=240,
                c="red",
                zorder=5,
                label=f"chosen (best {self.opts.objective})",
            )
        return save_figure(
            fig,
            ax,
            Path(run_dir) / "grid.png",
            xlabel="MACs (millions, full-size scaled network)",
            ylabel="validation accuracy (proxy)",
            title="nas grid-scale: compound coefficients (EfficientNet sec. 3.3)",
        )

    def summary(self, df: pd.DataFrame) -> str:
        head = f"candidates: {state_counts(df)}"
        cols = [
            "candidate",
            "product",
            "resolution",
            "proxy_image_size",
            "macs_ratio",
            "cost_ms",
            "S",
            "accuracy",
            "reward",
            "state",
        ]
        obj = self.opts.objective
        t = df[cols].assign(_o=pd.to_numeric(df[obj], errors="coerce"))
        t = t.sort_values("_o", ascending=False, na_position="last", kind="stable").drop(columns="_o")
        table = format_table(
            t,
            {
                "product": "{:.3f}",
                "macs_ratio": "{:.3f}",
                "cost_ms": "{:.2f}",
                "S": "{:.3f}",
                "accuracy": "{:.4f}",
                "reward": "{:.4f}",
            },
        )
        err = common_error(df) if not len(_complete(df)) else None
        return f"{head}\nby {obj}:\n{table}" + (f"\nmost common error: {err}" if err else "")

    def files(self) -> str:
        return "grid.csv, coefficients.json, grid.png, best.json"

    def closing_line(self, best: dict[str, Any], run_dir: Path) -> str:
        data = best["_coefficients"]
        return (
            f"chosen alpha={data['alpha']:g} beta={data['beta']:g} gamma={data['gamma']:g} "
            f"(product {data['product']:.3f}, {data['objective']} {data['objective_value']:.4f}); "
            f"next: nas scale --coefficients {run_dir}/coefficients.json --phi N"
        )


@lru_cache(maxsize=16)
def _base_size(base: str, num_classes: int) -> tuple[int, int]:
    arch = Architecture.from_string(base)
    return count_macs(arch, num_classes=num_classes), count_params(arch, num_classes)


def _complete(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["state"] == "COMPLETE") & df["accuracy"].notna()]


def _row_dict(row) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if hasattr(v, "item"):
            v = v.item()
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        out[k] = v
    return out
