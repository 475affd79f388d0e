"""Compound scaling: the coefficient grid search and the scaled family (EfficientNet V1 section 3.3).

EfficientNet scales depth by ``alpha**phi``, width by ``beta**phi`` and resolution by ``gamma**phi``
under ``alpha * beta**2 * gamma**2 ~= 2`` (all >= 1), so that FLOPs grow by about ``2**phi``.
Step 1 of the paper fixes ``phi = 1`` and grid-searches alpha, beta, gamma on the base network;
step 2 fixes them and varies phi. This module is both steps:

* :class:`GridSpec`, :func:`enumerate_candidates`, :func:`select_spread`: the grid, the constraint
  and the evenly spread subset that is affordable to train;
* :func:`evaluate_candidate`: one candidate, scaled and scored by the same trial machinery as
  ``nas search`` (:class:`nas.trial.Evaluator`). Its arguments are small frozen dataclasses that
  round-trip through JSON (``TrialSettings.to_dict``, ``Architecture.to_string``, the three
  coefficients), and it builds its own Evaluator per process, so a Ray trainable can call it as it is;
* :func:`run_grid`: the embedded Optuna driver, persistent and resumable (``RUN_DIR/study.db``);
* :func:`parse_coefficients`, :func:`scale_family`: step 2, used by ``nas scale``.

With ``phi != 1`` the grid still constrains the per-unit product ``alpha * beta**2 * gamma**2`` to 2
(the paper's definition) and every candidate is scaled by ``alpha**phi``, ``beta**phi``,
``gamma**phi``, so its FLOPs target is ``2**phi``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nas.errors import NasError, check_number
from search_spaces import Architecture, compound, count_macs, count_params, preset_names, scale_v2

TARGET = 2.0  # the paper's FLOPs factor per unit of phi
OBJECTIVES = ("accuracy", "reward")
STUDY_NAME = "nas-grid"
MAX_AXIS_VALUES = 201  # per coefficient (step 0.005 on [1, 2]); the grid is this cubed, kept in memory
# Floating-point slack for the tolerance test, so that a grid point exactly on the boundary
# (e.g. product 1.9 with tolerance 0.1) counts whatever the rounding of lo + i*step.
_EPS = 1e-9


def check_phi(value: Any, *, integer: bool = False, flag: str = "--phi") -> float:
    """phi must be positive: phi = 0 is the base itself, a negative phi would shrink it."""
    v = check_number(flag, value)
    if v <= 0 or (integer and v != int(v)):
        kind = "a positive integer" if integer else "a positive number"
        raise NasError(f"{flag} must be {kind}, got {v:g}")
    return int(v) if integer else v


# -- step 1: the grid -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridSpec:
    """The coefficient grid: each of alpha, beta, gamma takes ``lo, lo+step, ... <= hi``; a point is a
    candidate when ``|alpha * beta**2 * gamma**2 - 2| <= tolerance``."""

    phi: float = 1.0
    step: float = 0.05
    lo: float = 1.0
    hi: float = 2.0
    tolerance: float = 0.1

    def validate(self) -> "GridSpec":
        check_phi(self.phi)
        step, lo, hi = check_number("--step", self.step), check_number("--min", self.lo), check_number("--max", self.hi)
        tol = check_number("--tolerance", self.tolerance)
        if step <= 0:
            raise NasError(f"--step must be positive, got {self.step!r}")
        if lo < 1:
            # Coefficients below 1 would shrink a dimension (EfficientNet section 3.3: all >= 1).
            raise NasError(f"--min must be >= 1 (alpha, beta, gamma shrink nothing), got {self.lo!r}")
        if hi < lo:
            raise NasError(f"--max ({self.hi!r}) must be >= --min ({self.lo!r})")
        if tol < 0:
            raise NasError(f"--tolerance must be >= 0, got {self.tolerance!r}")
        n = self.axis_count()
        if n > MAX_AXIS_VALUES:
            raise NasError(f"the grid has {n} values per coefficient (--min {lo:g} --max {hi:g} --step {step:g}); "
                           f"at most {MAX_AXIS_VALUES} are allowed, use a larger --step")
        return self

    def axis_count(self) -> int:
        return int(math.floor((self.hi - self.lo) / self.step + _EPS)) + 1

    def values(self) -> list[float]:
        # Rounded so that 1 + 3*0.05 is 1.15, not 1.1500000000000001: values are keys and labels.
        return [round(self.lo + i * self.step, 10) for i in range(self.axis_count())]

    @property
    def grid_points(self) -> int:
        return self.axis_count() ** 3

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target": TARGET}


@dataclass(frozen=True, order=True)
class Candidate:
    """One (alpha, beta, gamma): depth, width and resolution coefficients per unit of phi."""

    alpha: float
    beta: float
    gamma: float

    @property
    def product(self) -> float:
        """FLOPs factor per unit of phi: depth counts once, width and resolution twice (section 3.3)."""
        return self.alpha * self.beta ** 2 * self.gamma ** 2

    @property
    def key(self) -> str:
        return f"a{self.alpha!r}_b{self.beta!r}_g{self.gamma!r}"

    @property
    def is_base(self) -> bool:
        return self.alpha == self.beta == self.gamma == 1.0

    def label(self) -> str:
        return "base" if self.is_base else f"{self.alpha:g},{self.beta:g},{self.gamma:g}"


BASE = Candidate(1.0, 1.0, 1.0)


def enumerate_candidates(spec: GridSpec) -> list[Candidate]:
    """Every grid point within tolerance of the constraint, in lexicographic (alpha, beta, gamma) order."""
    spec.validate()
    v = np.asarray(spec.values())
    b, g = np.meshgrid(v, v, indexing="ij")
    bg = b ** 2 * g ** 2
    out: list[Candidate] = []
    for a in v:  # one alpha at a time: memory axis**2, not axis**3
        ok = np.abs(a * bg - TARGET) <= spec.tolerance + _EPS
        for i, j in zip(*np.nonzero(ok)):
            out.append(Candidate(float(a), float(v[i]), float(v[j])))
    return out


def select_spread(candidates: Sequence[Candidate], n: int) -> list[Candidate]:
    """An evenly spread, deterministic subset of ``n`` candidates (greedy farthest-point sampling).

    The first pick is the candidate nearest the centroid of all of them (a balanced split of the
    FLOPs budget); each next pick is the one farthest (Euclidean, in (alpha, beta, gamma)) from those
    already picked, ties to the earlier one in lexicographic order. So the subset covers the
    depth-heavy, width-heavy and resolution-heavy corners first, and a larger ``n`` extends a smaller
    one (its first picks are the same), which lets a run grow with ``--max-candidates``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise NasError(f"--max-candidates must be a positive integer, got {n!r}")
    cands = sorted(candidates)
    if len(cands) <= n:
        return cands
    pts = np.array([(c.alpha, c.beta, c.gamma) for c in cands])
    # Distances rounded so that ties (the grid is symmetric) break by order, not by the last bit.
    first = int(np.argmin(np.round(np.linalg.norm(pts - pts.mean(axis=0), axis=1), 9)))
    picked = [first]
    dist = np.linalg.norm(pts - pts[first], axis=1)
    while len(picked) < n:
        nxt = int(np.argmax(np.round(dist, 9)))
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
    return [cands[i] for i in picked]


# Layers per stage are rounded to the nearest count, not ceil'ed as for the published B1..B7: the
# constraint alpha * beta**2 * gamma**2 ~= 2 exists to give every candidate the same FLOPs budget,
# and ceil inflates depth-heavy candidates most (B0 at alpha 1.2 gets 43% more layers: MACs 34% over
# target at phi 1, against 7% with nearest rounding), which would bias the comparison.
DEPTH_ROUNDING = "round"


def scale_candidate(base: Architecture, cand: Candidate, phi: float,
                    depth_rounding: str = DEPTH_ROUNDING) -> Architecture:
    """The base scaled by one candidate (``search_spaces.compound``): depth
    ``round(repeats * alpha**phi)`` (see :data:`DEPTH_ROUNDING`), width ``round_filters(c, beta**phi)``
    with V1's rule, resolution ``round(base.resolution * gamma**phi)``."""
    return compound(base, phi, cand.alpha, cand.beta, cand.gamma, depth_rounding=depth_rounding)


def proxy_image_size(settings, cand: Candidate, phi: float) -> int:
    """The proxy trains at the settings' image size; a candidate's resolution coefficient must be
    visible to its evaluation, so its proxy image grows with ``gamma**phi`` like the real one."""
    return int(round(settings.proxy.image_size * cand.gamma ** phi))


# -- one candidate (the function a Ray trainable calls) ---------------------------------------------

_EVALUATORS: dict[str, Any] = {}


def _evaluator_for(settings, base: Architecture):
    """One Evaluator per (settings, base) per process: it caches the data set and the base's step
    time, which normalises S (so S of the base is about 1)."""
    from nas.trial import Evaluator

    key = json.dumps([settings.to_dict(), base.to_string()], sort_keys=True)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = Evaluator(settings, reference=base)
    return _EVALUATORS[key]


def candidate_facts(base: Architecture, cand: Candidate, phi: float, settings) -> dict[str, Any]:
    """What a candidate is before it is trained: its coefficients, multipliers and sizes."""
    scaled = scale_candidate(base, cand, phi)
    return {
        "candidate": cand.label(),
        "alpha": cand.alpha, "beta": cand.beta, "gamma": cand.gamma,
        "product": cand.product,
        "phi": phi,
        "depth_mult": cand.alpha ** phi,
        "width_mult": cand.beta ** phi,
        "resolution_mult": cand.gamma ** phi,
        "resolution": scaled.resolution,
        "proxy_image_size": proxy_image_size(settings, cand, phi),
        "target_macs_ratio": cand.product ** phi,
    }


def evaluate_candidate(settings, base: Architecture, candidate: Candidate, phi: float, *,
                       evaluator=None, report: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Scale ``base`` by ``candidate`` and score it with :meth:`nas.trial.Evaluator.evaluate`.

    The candidate is shrunk by the proxy width / depth like every ``nas search`` trial, but trained
    and timed at ``proxy_image_size`` (the proxy size times ``gamma**phi``). S and P are relative to
    the unscaled base; ``macs_ratio`` is the measured full-size MACs over the base's, to compare
    with ``target_macs_ratio = (alpha * beta**2 * gamma**2)**phi``. Every candidate trains with the
    same seed, so differences between candidates are the architecture's, not the draw's.
    """
    evaluator = evaluator or _evaluator_for(settings, base)
    facts = candidate_facts(base, candidate, phi, settings)
    scaled = scale_candidate(base, candidate, phi)
    m = evaluator.evaluate(scaled, seed=settings.seed, report=report, image_size=facts["proxy_image_size"])
    num_classes = evaluator.splits.num_classes
    base_macs = count_macs(base, num_classes=num_classes)
    return {**facts, **m, "base_macs": base_macs, "macs_ratio": m["macs"] / base_macs,
            "params_ratio": m["params"] / count_params(base, num_classes)}


# -- the embedded driver ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GridOptions:
    spec: GridSpec = GridSpec()
    max_candidates: int = 8
    objective: str = "accuracy"
    storage: str | None = None
    study_name: str = STUDY_NAME
    out: str = "runs/grid"

    def validate(self) -> "GridOptions":
        self.spec.validate()
        if isinstance(self.max_candidates, bool) or not isinstance(self.max_candidates, int) \
                or self.max_candidates < 1:
            raise NasError(f"--max-candidates must be a positive integer, got {self.max_candidates!r}")
        if self.objective not in OBJECTIVES:
            raise NasError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        return self


@dataclass(frozen=True)
class GridPlan:
    """What a grid-scale command will evaluate, settled before anything is stored or trained."""

    phi: float
    n_feasible: int
    candidates: tuple[Candidate, ...]  # the base first, then the selected ones in selection order

    @property
    def selected(self) -> tuple[Candidate, ...]:
        return self.candidates[1:]


def plan_grid(base: Architecture, settings, opts: GridOptions) -> GridPlan:
    """Enumerate, select and check every candidate (scaled architecture and proxy image size), so
    that bad input fails here, before any evaluation and before the run directory is touched."""
    opts.validate()
    spec = opts.spec
    feasible = enumerate_candidates(spec)
    if not feasible:
        v = spec.values()
        lo_p, hi_p = Candidate(v[0], v[0], v[0]).product, Candidate(v[-1], v[-1], v[-1]).product
        raise NasError(f"no (alpha, beta, gamma) on the grid [{spec.lo:g}, {spec.hi:g}] step {spec.step:g} "
                       f"satisfies |alpha*beta**2*gamma**2 - 2| <= {spec.tolerance:g} (products range "
                       f"{lo_p:.3f}..{hi_p:.3f}); widen --min/--max or --tolerance")
    chosen = select_spread(feasible, opts.max_candidates)
    cands = (BASE, *chosen)
    for c in cands:
        try:
            scale_candidate(base, c, spec.phi)
            replace(settings.proxy, image_size=proxy_image_size(settings, c, spec.phi)).validate()
        except NasError as e:
            raise NasError(f"candidate {c.label()} at phi {spec.phi:g}: {e}") from None
    return GridPlan(phi=spec.phi, n_feasible=len(feasible), candidates=cands)


def proxy_duplicates(base: Architecture, settings, plan: GridPlan) -> list[list[Candidate]]:
    """Groups of candidates that the proxy's width / depth shrinking makes identical: rounding to
    multiples of 8 at a small width multiplier can erase a beta of 1.1, and ceil at a small depth
    multiplier an alpha of 1.2, so such candidates differ only by measurement noise."""
    from nas.trial import proxy_arch

    groups: dict[tuple[str, int], list[Candidate]] = {}
    for c in plan.candidates:
        size = proxy_image_size(settings, c, plan.phi)
        small = proxy_arch(scale_candidate(base, c, plan.phi), replace(settings.proxy, image_size=size))
        groups.setdefault((small.to_string(), size), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


GRID_COLUMNS = ["candidate", "alpha", "beta", "gamma", "product", "phi", "depth_mult", "width_mult",
                "resolution_mult", "resolution", "proxy_image_size", "params", "macs", "macs_ratio",
                "target_macs_ratio", "step_time_ms", "S", "P", "accuracy", "reward", "state", "error",
                "duration_s", "arch"]


def grid_rows(study, plan: GridPlan, base: Architecture, settings) -> list[dict[str, Any]]:
    """One row per planned candidate: its latest finished trial (a complete one preferred), or
    WAITING when it has not been evaluated yet."""
    import optuna

    from nas.search import finished

    best_trial: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("candidate_key")
        if key is None or not finished(t):
            continue
        prev = best_trial.get(key)
        complete = t.state == optuna.trial.TrialState.COMPLETE
        if prev is None or complete or prev.state != optuna.trial.TrialState.COMPLETE:
            best_trial[key] = t
    rows = []
    for c in plan.candidates:
        row = candidate_facts(base, c, plan.phi, settings)
        t = best_trial.get(c.key)
        if t is None:
            row["state"] = "WAITING"
        else:
            row.update(t.user_attrs.get("metrics", {}))
            if "error" in t.user_attrs:
                row["error"] = t.user_attrs["error"]
            row["state"] = t.state.name
            row["number"] = t.number
        rows.append(row)
    return rows


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(rows)
    for col in GRID_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype="object")
    return df[GRID_COLUMNS + [c for c in df.columns if c not in GRID_COLUMNS]]


def _complete(df):
    return df[(df["state"] == "COMPLETE") & df["accuracy"].notna()]


def choose(df, objective: str):
    """The chosen candidate and the runner-up by ``objective`` among the constraint-satisfying ones
    (the base is the reference point, never a choice); ties go to the smaller MACs."""
    ok = _complete(df)
    ok = ok[ok["candidate"] != "base"]
    if not len(ok):
        return None, None
    ranked = ok.assign(_obj=ok[objective].astype(float), _macs=ok["macs"].astype(float)) \
        .sort_values(["_obj", "_macs"], ascending=[False, True], kind="stable")
    rows = [_row_dict(r) for _, r in ranked.drop(columns=["_obj", "_macs"]).iterrows()]
    return rows[0], (rows[1] if len(rows) > 1 else None)


def _row_dict(row) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            continue
        if v is None:
            continue
        out[k] = v
    return out


def export(study, run_dir: Path, plan: GridPlan, base: Architecture, settings, opts: GridOptions,
           extra: dict[str, Any], plot: bool = True) -> tuple[Any, dict | None]:
    """Write grid.csv, coefficients.json, best.json and (``plot``) grid.png, each atomically. The
    driver skips the plot after each trial (a second of matplotlib per candidate) and draws it at
    the end of every run, a resumed one included."""
    from nas.results import atomic_write_json, atomic_write_text

    df = _frame(grid_rows(study, plan, base, settings))
    atomic_write_text(run_dir / "grid.csv", df.to_csv(index=False))
    chosen, runner_up = choose(df, opts.objective)
    base_rows = df[df["candidate"] == "base"]
    base_row = _row_dict(base_rows.iloc[0]) if len(base_rows) else {}
    if plot:
        plot_grid(run_dir, df, chosen, opts.objective)
    if chosen is None:
        return df, None
    data = {
        "format": "nas.coefficients/1",
        "alpha": chosen["alpha"], "beta": chosen["beta"], "gamma": chosen["gamma"],
        "product": chosen["product"],
        "phi": opts.spec.phi,
        "objective": opts.objective,
        "objective_value": chosen[opts.objective],
        "chosen": chosen,
        "runner_up": runner_up,
        "base": {**base_row, "arch": base.to_string()},
        "grid": opts.spec.to_dict(),
        "n_grid_points": opts.spec.grid_points,
        "n_feasible": plan.n_feasible,
        "max_candidates": opts.max_candidates,
        "n_evaluated": int(len(_complete(df))),
        "selection": "greedy farthest-point in (alpha, beta, gamma), starting nearest the centroid",
        "settings": settings.to_dict(),
        **extra,
    }
    atomic_write_json(run_dir / "coefficients.json", data)
    # best.json makes the run directory usable wherever an architecture is expected (resolve_arch):
    # it is the chosen candidate's scaled network.
    atomic_write_json(run_dir / "best.json", {"arch": chosen["arch"], "objective": opts.objective,
                                              "metrics": {k: v for k, v in chosen.items() if k != "arch"},
                                              "coefficients": [chosen["alpha"], chosen["beta"], chosen["gamma"]],
                                              "phi": opts.spec.phi, "base": base.to_string()})
    return df, data


def plot_grid(run_dir: Path, df, chosen: dict | None, objective: str) -> Path | None:
    """Proxy accuracy against full-size MACs, every evaluated candidate labelled alpha,beta,gamma."""
    ok = _complete(df)
    if not len(ok):
        return None
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    cand = ok[ok["candidate"] != "base"]
    base = ok[ok["candidate"] == "base"]
    if len(cand):
        sc = ax.scatter(cand["macs"].astype(float) / 1e6, cand["accuracy"].astype(float),
                        c=cand["gamma"].astype(float), cmap="viridis", s=36, label="candidates")
        fig.colorbar(sc, ax=ax, label="gamma (resolution coefficient)")
    if len(base):
        ax.scatter(base["macs"].astype(float) / 1e6, base["accuracy"].astype(float), marker="s", s=60,
                   c="black", label="base (1, 1, 1)")
    for _, r in ok.iterrows():
        ax.annotate(r["candidate"], (float(r["macs"]) / 1e6, float(r["accuracy"])), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    if chosen is not None:
        ax.scatter([chosen["macs"] / 1e6], [chosen["accuracy"]], marker="*", s=240, c="red", zorder=5,
                   label=f"chosen (best {objective})")
    ax.set_xlabel("MACs (millions, full-size scaled network)")
    ax.set_ylabel("validation accuracy (proxy)")
    ax.set_title("nas grid-scale: compound coefficients (EfficientNet sec. 3.3)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(run_dir) / "grid.png"
    tmp = path.with_name(".grid.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def summary(df, objective: str) -> str:
    counts = df["state"].value_counts().to_dict()
    head = "candidates: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    cols = ["candidate", "product", "resolution", "proxy_image_size", "macs_ratio", "step_time_ms", "S",
            "accuracy", "reward", "state"]
    t = df[cols].copy()
    t["_o"] = t[objective].astype(float)
    t = t.sort_values("_o", ascending=False, na_position="last", kind="stable").drop(columns="_o")
    for c, fmt in (("product", "{:.3f}"), ("macs_ratio", "{:.3f}"), ("step_time_ms", "{:.2f}"), ("S", "{:.3f}"),
                   ("accuracy", "{:.4f}"), ("reward", "{:.4f}")):
        t[c] = t[c].map(lambda v, f=fmt: "-" if v is None or (isinstance(v, float) and math.isnan(v))
                        else f.format(float(v)))
    return f"{head}\nby {objective}:\n{t.to_string(index=False)}"


def default_out(spec: str, base: Architecture, phi: float) -> str:
    """runs/grid-<preset, run dir or file name; else a hash of the architecture>-phi<phi>."""
    return f"runs/grid-{base_slug(spec, base)}-phi{phi:g}"


def base_slug(spec: str, base: Architecture) -> str:
    s = str(spec).strip()
    if s.lower() in preset_names():
        return s.lower()
    p = Path(s)
    if p.is_dir():
        return p.resolve().name
    if p.is_file():
        return p.stem
    return "arch-" + hashlib.sha1(base.to_string().encode()).hexdigest()[:8]


def run_grid(settings, base: Architecture, opts: GridOptions, *, progress: bool = True,
             echo: Callable[[str], None] = print, evaluator=None,
             evaluate: Callable[..., dict[str, Any]] = evaluate_candidate) -> dict[str, Any]:
    """Evaluate the base and the selected candidates, resuming ``opts.out`` if it holds the same
    command; returns coefficients.json's data (empty when no candidate completed).

    ``evaluator`` (default: one normalised by ``base``) and ``evaluate`` (default
    :func:`evaluate_candidate`, called as ``evaluate(settings, base, candidate, phi, evaluator=...)``)
    are the collaborators a test or another backend may replace.

    Persistence: every candidate is one Optuna trial in ``RUN_DIR/study.db``, enqueued with fixed
    parameters and its key as a user attribute; a finished trial (complete, or failed with a
    recorded error) is never rerun. A trial killed mid-way stays RUNNING (then heartbeat-failed)
    with no error, so the next run enqueues its candidate again.
    """
    import optuna

    from nas.results import check_run_config
    from nas.search import finished, make_storage

    settings.validate()
    plan = plan_grid(base, settings, opts)
    spec = opts.spec
    echo(f"{plan.n_feasible} of {spec.grid_points} grid points (alpha, beta, gamma in [{spec.lo:g}, {spec.hi:g}] "
         f"step {spec.step:g}) satisfy |alpha*beta**2*gamma**2 - 2| <= {spec.tolerance:g}; evaluating "
         f"{len(plan.selected)} of them (evenly spread, --max-candidates {opts.max_candidates}) and the base")
    same = proxy_duplicates(base, settings, plan)
    if same:
        echo(f"note: at proxy scale (--width-mult {settings.proxy.width:g}, --depth-mult {settings.proxy.depth:g}) "
             f"{'; '.join(' = '.join(c.label() for c in g) for g in same)} train the same network at the same "
             "image size; raise --width-mult/--depth-mult to tell them apart")
    run_dir = Path(opts.out)
    # The objective and --max-candidates are left out: changing them re-ranks or extends the same
    # evaluations (the selection of n is a prefix of the selection of n + k), it does not change them.
    config = {"kind": "grid-scale", "backend": "embedded", "base": base.to_string(), "grid": spec.to_dict(),
              "settings": settings.to_dict(), "storage": opts.storage, "study_name": opts.study_name}
    check_run_config(run_dir, config)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(opts.storage, run_dir)
    study = optuna.create_study(storage=storage, study_name=opts.study_name, direction="maximize",
                                load_if_exists=True)
    trials = study.get_trials(deepcopy=False)
    # Waiting trials left by a killed run would be popped before this run's own, in their order;
    # fail them (no error recorded, so they do not count) and enqueue afresh in this run's order.
    for t in trials:
        if t.state == optuna.trial.TrialState.WAITING:
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    done = {t.user_attrs.get("candidate_key") for t in trials if finished(t)}
    pending = [c for c in plan.candidates if c.key not in done]
    n_done = len(plan.candidates) - len(pending)
    evaluator = evaluator or _evaluator_for(settings, base)
    extra = {"reward": evaluator.reward.config(), "dataset": settings.dataset}
    if n_done:
        echo(f"resuming {run_dir}: {n_done} of {len(plan.candidates)} candidates already evaluated")
    if not pending:
        df, data = export(study, run_dir, plan, base, settings, opts, _with_reference(extra, study))
        echo(summary(df, opts.objective))
        _echo_choice(echo, data, run_dir)
        return data or {}

    echo(f"measuring the base's step time on {settings.device} (S is relative to it) ...")
    ref = evaluator.reference()
    study.set_user_attr(f"reference_{ref['device']}", ref)
    extra = _with_reference(extra, study)
    echo(f"base step time {ref['step_time_ms']:.2f} ms on {ref['device_name']} ({ref['device']})")
    by_key = {c.key: c for c in plan.candidates}
    hi = max(spec.hi, 1.0)
    for c in pending:
        study.enqueue_trial({"alpha": c.alpha, "beta": c.beta, "gamma": c.gamma},
                            user_attrs={"candidate_key": c.key})

    def objective(trial: optuna.Trial) -> float:
        cand = by_key[trial.user_attrs["candidate_key"]]
        # The enqueued values are returned as they are; suggesting records them as the trial's params.
        for name in ("alpha", "beta", "gamma"):
            trial.suggest_float(name, 1.0, hi)
        try:
            m = evaluate(settings, base, cand, spec.phi, evaluator=evaluator)
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}".splitlines()[0][:500])
            raise
        # One attribute, not one per metric: each is a separate SQLite commit (~30 per candidate).
        trial.set_user_attr("metrics", m)
        # The stored value is always accuracy (the paper's objective); --objective only ranks.
        return m["accuracy"]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan.candidates), initial=n_done, desc="candidates", unit="cand", disable=not progress,
               dynamic_ncols=True)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        export(study, run_dir, plan, base, settings, opts, extra, plot=False)
        bar.update(1)
        key = trial.user_attrs.get("candidate_key")
        bar.set_postfix_str(by_key[key].label() if key in by_key else "")

    t0 = time.perf_counter()
    # No gc after each trial: a candidate's models are freed with its call (no reference cycles),
    # and a full collection costs about a second in a process holding torch, pandas and matplotlib.
    try:
        study.optimize(objective, n_trials=len(pending), catch=(Exception,), callbacks=[after_trial],
                       gc_after_trial=False)
    finally:
        bar.close()
    df, data = export(study, run_dir, plan, base, settings, opts, extra)
    echo(summary(df, opts.objective))
    echo(f"grid time {time.perf_counter() - t0:.1f} s; results in {run_dir}/ "
         "(grid.csv, coefficients.json, grid.png, best.json)")
    _echo_choice(echo, data, run_dir)
    return data or {}


def _echo_choice(echo, data: dict | None, run_dir: Path) -> None:
    if not data:
        echo("no candidate completed; no coefficients chosen")
        return
    echo(f"chosen alpha={data['alpha']:g} beta={data['beta']:g} gamma={data['gamma']:g} "
         f"(product {data['product']:.3f}, {data['objective']} {data['objective_value']:.4f}); "
         f"next: nas scale --coefficients {run_dir}/coefficients.json --phi N")


def _with_reference(extra: dict[str, Any], study) -> dict[str, Any]:
    refs = {k.split("_", 1)[1]: v for k, v in study.user_attrs.items() if k.startswith("reference_")}
    return {**extra, "reference": refs}


# -- step 2: the family ------------------------------------------------------------------------------

def parse_coefficients(spec: str) -> tuple[Candidate, str | None]:
    """``A,B,G``, a ``coefficients.json`` (from ``nas grid-scale``, or ``{"alpha":..,"beta":..,"gamma":..}``
    or ``[a, b, g]``), or a grid-scale run directory. Returns the coefficients and, when the file
    names one, the base architecture string it was searched on."""
    from nas.results import read_json

    if not isinstance(spec, str) or not spec.strip():
        raise NasError("no coefficients given (--coefficients A,B,G or a coefficients.json)")
    text = spec.strip()
    path = Path(text)
    base = None
    if path.is_dir():
        path = path / "coefficients.json"
        if not path.is_file():
            raise NasError(f"{text!r} is a directory without coefficients.json (not a finished grid-scale run)")
    if path.is_file() or text.lower().endswith(".json"):
        data = read_json(path, "coefficients file")
        if isinstance(data, dict):
            base = data.get("base", {}).get("arch") if isinstance(data.get("base"), dict) else None
            missing = [k for k in ("alpha", "beta", "gamma") if k not in data]
            if missing:
                raise NasError(f"coefficients file {str(path)!r} lacks {', '.join(missing)}")
            values = [data["alpha"], data["beta"], data["gamma"]]
        elif isinstance(data, list):
            values = data
        else:
            raise NasError(f"coefficients file {str(path)!r} holds {type(data).__name__}, "
                           "expected an object with alpha, beta, gamma")
        where = f"in {str(path)!r}"
    else:
        parts = [p.strip() for p in text.split(",")]
        values = []
        for p in parts:
            try:
                values.append(float(p))
            except ValueError:
                raise NasError(f"--coefficients {text!r}: {p!r} is not a number (expected A,B,G, e.g. "
                               "1.2,1.1,1.15, a coefficients.json or a published table: efficientnet, "
                               "efficientnetv2)") from None
        where = f"in --coefficients {text!r}"
    if len(values) != 3:
        raise NasError(f"expected three coefficients alpha,beta,gamma {where}, got {len(values)}")
    out = []
    for name, v in zip(("alpha", "beta", "gamma"), values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise NasError(f"{name} {where} must be a finite number, got {v!r}")
        if v < 1:
            raise NasError(f"{name} {where} must be >= 1 (compound scaling never shrinks), got {v!r}")
        out.append(float(v))
    return Candidate(*out), base


def scale_family(base: Architecture, coeffs: "Candidate | str", n: int | None = None, *,
                 v2_rules: bool | None = None, num_classes: int = 1000, depth_rounding: str | None = None,
                 late_stages: int = 0) -> list[dict[str, Any]]:
    """The base (phi = 0) and its scaled models: phi = 1..n with compound coefficients
    (V1 section 3.3, step 2), or the members of a published table (``coeffs`` a name of
    :data:`search_spaces.presets.FAMILIES`: "efficientnet" gives B1..B8 and L2, "efficientnetv2"
    V2-B1..B3; all of them, or the first ``n``).

    ``v2_rules`` applies EfficientNetV2's rules instead of V1's (:func:`search_spaces.scale_v2`: V2
    channel rounding, inference size capped at 480), ``late_stages`` its heuristic of giving the
    added layers to the last stages. ``depth_rounding`` defaults to ``round`` for V1 compound
    scaling (see :data:`DEPTH_ROUNDING`) and to ``ceil``, the authors' rule, for the V2 rules and
    the published tables. A table brings its own rules: V1 rules with the V2 table's coefficients or
    the reverse are refused, as is ``late_stages`` without the V2 rules.
    """
    from nas.errors import check_int
    from search_spaces import scale
    from search_spaces.presets import FAMILIES

    num_classes = check_int("--num-classes", num_classes, 1, 1_000_000)
    if isinstance(coeffs, str):
        if coeffs not in FAMILIES:
            raise NasError(f"unknown published coefficients {coeffs!r}; known: {', '.join(FAMILIES)}")
        fam = FAMILIES[coeffs]
        if v2_rules is not None and v2_rules != fam.v2_rules:
            rules = "EfficientNetV2's" if fam.v2_rules else "EfficientNet V1's"
            raise NasError(f"the published {coeffs} coefficients were made with {rules} rules: "
                           f"{'add' if fam.v2_rules else 'drop'} --v2-rules")
        v2_rules = fam.v2_rules
        if n is not None and not 1 <= check_phi(n, integer=True) <= len(fam.members):
            raise NasError(f"--phi {n}: the published {coeffs} coefficients have {len(fam.members)} members "
                           f"({', '.join(fam.members)})")
        members = list(fam.members.items())[: n or len(fam.members)]
        steps = [(k, w, d, r / fam.base_resolution, p) for k, (w, d, r, p) in members]
    else:
        if n is None:
            raise NasError("--phi is needed with compound coefficients alpha,beta,gamma")
        n = check_phi(n, integer=True)
        steps = [(f"phi{phi}", coeffs.beta ** phi, coeffs.alpha ** phi, coeffs.gamma ** phi, None)
                 for phi in range(1, n + 1)]
    v2_rules = bool(v2_rules)
    late_stages = check_int("--late-stages", late_stages, 0, len(base.stages))
    if late_stages and not v2_rules:
        raise NasError("--late-stages is EfficientNetV2's heuristic (section 4.3): add --v2-rules")
    if depth_rounding is None:
        depth_rounding = "ceil" if v2_rules or isinstance(coeffs, str) else DEPTH_ROUNDING
    base_macs = count_macs(base, num_classes=num_classes)
    rows = []
    for phi, (member, width, depth, res_mult, dropout) in enumerate([("base", 1.0, 1.0, 1.0, None), *steps]):
        if v2_rules:
            arch = scale_v2(base, width=width, depth=depth, resolution_mult=res_mult, dropout=dropout,
                            depth_rounding=depth_rounding, late_stages=late_stages) if phi else base
        else:
            arch = scale(base, width=width, depth=depth, resolution_mult=res_mult, dropout=dropout,
                         depth_rounding=depth_rounding) if phi else base
        macs = count_macs(arch, num_classes=num_classes)
        rows.append({
            "phi": phi,
            "member": member,
            "depth_mult": depth,
            "width_mult": width,
            "resolution": arch.resolution,
            "layers": arch.num_blocks,
            "params": count_params(arch, num_classes),
            "num_classes": num_classes,
            "macs": macs,
            "macs_ratio": macs / base_macs,
            # The FLOPs law of V1 section 3.3: depth counts once, width and resolution twice.
            "target_macs_ratio": depth * width ** 2 * res_mult ** 2,
            "rules": "v2" if v2_rules else "v1",
            "depth_rounding": depth_rounding,
            "arch": arch.to_string(),
            "architecture": arch,
        })
    return rows

