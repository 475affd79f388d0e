"""How good are the architectures each sampler finds? Every registered sampler searches the
``accel-nasbench`` space through the real driver (:func:`nas.search.search`, embedded backend, its
default pruner) with the ``surrogate`` evaluator, for several seeds; a trial costs milliseconds, so
what is left is the driver's and the sampler's own time.

For each sampler and budget: the median and IQR over seeds of the regret, ``1 - best reward found /
R*``, where R* is the best reward of a uniform random sample of the space scored by the same
evaluator; the median number of trials needed to come within 1% of R* (censored: ">N" when fewer
than half the seeds got there within the largest budget); and the hypervolume of the trials'
(accuracy up, S down, P down) points, relative to the random sample's (the multi-objective figure,
NSGA-II's own aim, reported for every sampler alike).

A budget's figures are read from the first ``budget`` trials of one run of the largest budget: no
sampler here knows the total number of trials, so a shorter run proposes exactly those trials.

Then the driver's own overhead: one run of ``--overhead-trials`` trials (random sampler), its wall
time per trial less the evaluator's own time per trial (timed on the same architectures).

    python benchmarks/bench_search_quality.py                  # 10 seeds, budgets 20 50 100 300
    python benchmarks/bench_search_quality.py --tiny           # seconds: 2 seeds, budgets 5 10
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from common import parse_with_tiny, samples
from optuna._hypervolume import compute_hypervolume

from nas.search import SearchOptions, search
from nas.study.strategies import SAMPLERS
from nas.trial.factory import evaluator_for
from nas.trial.settings import TrialSettings
from search_spaces import Architecture, RngChooser, get_space

SPACE = "accel-nasbench"
GOAL = 0.01  # regret within 1% of R*
RESULTS = Path(__file__).parent / "results"
TINY_ARGS = dict(seeds=2, budgets=[5, 10], reference_sample=300, overhead_trials=20, out=None)


def reference_sample(ev, n: int, seed: int = 12345) -> pd.DataFrame:
    """``n`` architectures drawn uniformly from the space, scored by the evaluator the searches use."""
    space, rng = get_space(SPACE), np.random.default_rng(seed)
    rows = [ev.evaluate(space.sample(RngChooser(rng))) for _ in range(n)]
    return pd.DataFrame(rows)[["reward", "accuracy", "S", "P"]]


def points(df: pd.DataFrame) -> np.ndarray:
    """(accuracy, S, P) as losses to minimise."""
    return np.column_stack([-df["accuracy"].to_numpy(float), df["S"].to_numpy(float), df["P"].to_numpy(float)])


def hypervolume(df: pd.DataFrame, ref_point: np.ndarray) -> float:
    pts = points(df)
    pts = pts[(pts < ref_point).all(axis=1)]
    return float(compute_hypervolume(pts, ref_point)) if len(pts) else 0.0


def one_run(sampler: str, seed: int, n: int, evaluator: str, out: Path) -> pd.DataFrame:
    settings = TrialSettings(space=SPACE, evaluator=evaluator, seed=seed)
    search(settings, SearchOptions(n_trials=n, sampler=sampler, out=str(out)), progress=False, echo=lambda s: None)
    df = pd.read_csv(out / "trials.csv").sort_values("number")
    return df[df["state"] == "COMPLETE"]


def score_run(df: pd.DataFrame, budgets: list[int], best: float, ref_point, hv_ref: float) -> dict:
    regret = 1.0 - df["reward"].cummax().to_numpy() / best
    reached = np.flatnonzero(regret <= GOAL)
    return {
        "regret": {b: float(regret[min(b, len(regret)) - 1]) for b in budgets},
        "hv": {b: hypervolume(df.head(b), ref_point) / hv_ref for b in budgets},
        "to_goal": int(reached[0]) + 1 if len(reached) else None,
    }


def summarise(runs: list[dict], budgets: list[int]) -> dict:
    out = {}
    for b in budgets:
        r = np.array([x["regret"][b] for x in runs])
        hv = np.array([x["hv"][b] for x in runs])
        q1, med, q3 = np.percentile(r, [25, 50, 75])
        out[b] = {"regret_median": med, "regret_q1": q1, "regret_q3": q3, "hv_median": float(np.median(hv))}
    hits = sorted(x["to_goal"] if x["to_goal"] is not None else np.inf for x in runs)
    median_hit = float(np.median(hits))
    return {"budgets": out, "to_goal_median": None if np.isinf(median_hit) else median_hit, "to_goal": hits}


def overhead(evaluator: str, n: int, work: Path) -> dict:
    """The driver's own time per trial: a run's wall time per trial less the evaluation's."""
    one_run("random", 0, 2, evaluator, work / "warm")  # imports and the surrogates' loading not counted
    t0 = time.perf_counter()
    df = one_run("random", 0, n, evaluator, work / "overhead")
    wall = time.perf_counter() - t0
    ev = evaluator_for(TrialSettings(space=SPACE, evaluator=evaluator))
    space, archs = get_space(SPACE), df["arch"].tolist()
    t0 = time.perf_counter()
    for a in archs:
        ev.evaluate(space.make(space.choice_of(Architecture.from_string(a))))
    evaluate = (time.perf_counter() - t0) / len(archs)
    return {
        "trials": n,
        "wall_s": wall,
        "per_trial_ms": wall / n * 1e3,
        "evaluate_ms": evaluate * 1e3,
        "driver_ms": (wall / n - evaluate) * 1e3,
    }


def fmt_goal(x: float | None, largest: int) -> str:
    return f">{largest}" if x is None else f"{x:.0f}"


def table(result: dict) -> list[str]:
    budgets, largest = result["budgets"], max(result["budgets"])
    head = "| sampler | " + " | ".join(f"regret @{b} median [IQR]" for b in budgets)
    head += " | trials to 1% regret (median) | " + " | ".join(f"HV @{b}" for b in budgets) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(budgets))]
    for name, s in result["samplers"].items():
        cells = [
            f"{100 * v['regret_median']:.2f}% [{100 * v['regret_q1']:.2f}, {100 * v['regret_q3']:.2f}]"
            for v in (s["budgets"][b] for b in budgets)
        ]
        hv = [f"{s['budgets'][b]['hv_median']:.3f}" for b in budgets]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {fmt_goal(s['to_goal_median'], largest)} | "
            + " | ".join(hv)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help="default: every registered sampler")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budgets", type=int, nargs="+", default=[20, 50, 100, 300])
    p.add_argument("--evaluator", default="surrogate")
    p.add_argument("--reference-sample", type=int, default=20_000, help="random architectures R* is the best of")
    p.add_argument("--overhead-trials", type=int, default=1000)
    p.add_argument("--out", default=str(RESULTS), help="where search_quality.{json,md} go (--tiny: nowhere)")
    a = parse_with_tiny(p, TINY_ARGS, argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budgets = sorted(set(a.budgets))
    ev = evaluator_for(TrialSettings(space=SPACE, evaluator=a.evaluator))
    t0 = time.perf_counter()
    ref = reference_sample(ev, a.reference_sample)
    best = float(ref["reward"].max())
    ref_point = points(ref).max(axis=0) + 1e-9
    hv_ref = hypervolume(ref, ref_point)
    print(f"setting: {platform.machine()}, optuna {optuna.__version__}, space {SPACE}, evaluator {a.evaluator}")
    print(
        f"R* = {best:.4f}: the best reward of {a.reference_sample:,} random architectures "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    result = {
        "space": SPACE,
        "evaluator": a.evaluator,
        "reference_sample": a.reference_sample,
        "r_star": best,
        "seeds": a.seeds,
        "budgets": budgets,
        "goal_regret": GOAL,
        "samplers": {},
    }
    with tempfile.TemporaryDirectory() as d:
        for name in a.samplers:
            t0, runs = time.perf_counter(), []
            for seed in range(a.seeds):
                df = one_run(name, seed, max(budgets), a.evaluator, Path(d) / f"{name}-{seed}")
                runs.append(score_run(df, budgets, best, ref_point, hv_ref))
            result["samplers"][name] = {**summarise(runs, budgets), "seconds": time.perf_counter() - t0}
            print(f"{name}: {a.seeds} seeds x {max(budgets)} trials in {time.perf_counter() - t0:.0f} s", flush=True)
        result["overhead"] = overhead(a.evaluator, a.overhead_trials, Path(d))
    o = result["overhead"]
    lines = table(result)
    print("\n".join(lines))
    print(
        f"regret and trials over {a.seeds} seeds{samples(a.seeds, 'seeds')}; HV: hypervolume of (accuracy, S, P) "
        "relative to the random sample's"
    )
    print(
        f"driver overhead: {o['trials']} trials in {o['wall_s']:.1f} s: {o['per_trial_ms']:.1f} ms per trial, of which "
        f"the evaluation {o['evaluate_ms']:.2f} ms and the driver {o['driver_ms']:.1f} ms"
    )
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "search_quality.json").write_text(json.dumps(result, indent=1, default=_plain) + "\n")
        (out / "search_quality.md").write_text(markdown(result, lines))
        print(f"wrote {out / 'search_quality.json'} and {out / 'search_quality.md'}")
    return 0


def _plain(v):
    return None if isinstance(v, float) and np.isinf(v) else float(v)


def markdown(result: dict, lines: list[str]) -> str:
    o = result["overhead"]
    return (
        f"# Search quality on `{result['space']}` (evaluator `{result['evaluator']}`)\n\n"
        f"Regret = 1 - best reward found / R*, R* = {result['r_star']:.4f} (best of "
        f"{result['reference_sample']:,} random architectures); {result['seeds']} seeds per sampler; "
        "HV = hypervolume of (accuracy, S, P) relative to the random sample's.\n\n" + "\n".join(lines) + "\n\n"
        f"Driver overhead: {o['trials']} trials (random sampler) in {o['wall_s']:.1f} s, "
        f"{o['per_trial_ms']:.1f} ms per trial, of which the evaluation {o['evaluate_ms']:.2f} ms and the driver "
        f"{o['driver_ms']:.1f} ms.\n\n"
        "Made by `python benchmarks/bench_search_quality.py`.\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
