"""NSGA-II with and without the pareto pruner, at the same trial budget.

Each seed runs a real ``nas search --sampler nsga2`` (embedded backend, proxy training on digits)
once per pruner; reported per run and as means over the seeds, with ratios against the first pruner
(``none``): proxy epochs trained (a pruned trial's epochs up to its stop), time inside trials
(their ``duration_s``) and the run's wall time, trials pruned, and the hypervolume of the complete
trials' front in (accuracy up, S down, P down) up to a fixed reference point (accuracy 0, S and P
given by ``--reference``; S and P are relative to the space's reference architecture, so the point
means the same on any machine). Writes every figure to ``--json``.

    python benchmarks/bench_pareto_pruning.py                  # 3 seeds x 24 trials x 3 epochs, digits
    python benchmarks/bench_pareto_pruning.py --pruners none pareto pareto:dominators=1
    python benchmarks/bench_pareto_pruning.py --tiny --json /tmp/p.json   # seconds: fake data, tiny proxy
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import torch
from common import parse_with_tiny, samples

from nas.search.api import search
from nas.steptime.methods import StepTimeConfig
from nas.study.pareto import dominates, hypervolume
from nas.study.space import OBJECTIVES, SearchOptions
from nas.trial.settings import ProxyConfig, TrialSettings

RESULTS = Path(__file__).resolve().parent / "results" / "pareto_pruning.json"
DIRECTIONS = tuple(d for _, d in OBJECTIVES)  # accuracy up, cost down, parameters down: as nsga2 is told
TINY = dict(
    trials=6,
    seeds=1,
    dataset="fake",
    epochs=2,
    width_mult=0.1,
    depth_mult=0.1,
    image_size=16,
    batch_size=32,
    step_time="proxy",
    measure_time=0.05,
    json=None,
)


def settings_for(a: argparse.Namespace, seed: int) -> TrialSettings:
    proxy = ProxyConfig.of(
        width=a.width_mult, depth=a.depth_mult, image_size=a.image_size, epochs=a.epochs, batch_size=a.batch_size
    )
    # No direct timing of every k-th trial: it would cost both arms the same seconds and hide the rest.
    step = StepTimeConfig(method=a.step_time, min_run_time=a.measure_time, fidelity_every=0)
    return TrialSettings(dataset=a.dataset, proxy=proxy, step_time=step, seed=seed)


def one_run(a: argparse.Namespace, seed: int, pruner: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        opts = SearchOptions(n_trials=a.trials, sampler="nsga2", pruner=pruner, out=d)
        t0 = time.perf_counter()
        search(settings_for(a, seed), opts, progress=False, echo=lambda s: None)
        wall = time.perf_counter() - t0
        df = pd.read_csv(Path(d) / "trials.csv")
    ok = df[df["state"] == "COMPLETE"]
    pruned = df[df["state"] == "PRUNED"]
    points = ok[["accuracy", "S", "P"]].astype(float).values.tolist()
    return {
        "seed": seed,
        "pruner": pruner,
        "trials": len(df),
        "complete": len(ok),
        "pruned": len(pruned),
        "epochs_trained": int(df["epochs"].fillna(0).sum()),
        "trial_time_s": float(df["duration_s"].sum()),
        "wall_s": wall,
        "hypervolume": hypervolume(points, [0.0, *a.reference], DIRECTIONS),
        "front_size": _front_size(points),
        "best_accuracy": float(ok["accuracy"].max()) if len(ok) else None,
    }


def _front_size(points: list[list[float]]) -> int:
    return sum(not any(dominates(q, p, DIRECTIONS) for q in points) for p in points)


def summarise(runs: list[dict], pruners: list[str]) -> list[dict]:
    df = pd.DataFrame(runs)
    base = df[df.pruner == pruners[0]].set_index("seed")
    rows = []
    for p in pruners:
        mine = df[df.pruner == p].set_index("seed")
        row = {"pruner": p, "runs": len(mine)}
        for k in ("epochs_trained", "trial_time_s", "wall_s", "pruned", "complete", "hypervolume"):
            row[k] = float(mine[k].mean())
        for k in ("epochs_trained", "trial_time_s", "hypervolume"):
            # Ratio of sums over the same seeds: each seed's run against its own baseline run.
            row[f"{k}_ratio"] = float(mine[k].sum() / base[k].sum()) if base[k].sum() else None
        rows.append(row)
    return rows


def _ratio(r: float | None, digits: int = 2) -> str:
    return "ratio n/a" if r is None else f"x{r:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pruners", nargs="+", default=["none", "pareto"], help="the first is the baseline")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--reference", type=float, nargs=2, default=[4.0, 6.0], metavar=("S", "P"), help="hypervolume's S and P bound"
    )
    ap.add_argument("--json", default=str(RESULTS), help=f"write every figure here (default {RESULTS}; --tiny: none)")
    g = ap.add_argument_group("the trial (nas search's flags of the same names)")
    g.add_argument("--dataset", default="digits")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--width-mult", type=float, default=0.1)
    g.add_argument("--depth-mult", type=float, default=0.1)
    g.add_argument("--image-size", type=int, default=16)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--step-time", default="table", help="table (default), measure or proxy")
    g.add_argument("--measure-time", type=float, default=0.4)
    a = parse_with_tiny(ap, TINY, argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    setting = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    print(
        f"torch {setting['torch']}, {setting['threads']} torch threads, {setting['cpus']} CPUs; "
        f"nsga2, {a.trials} trials per run, {a.seeds} seeds, {a.epochs} proxy epochs on {a.dataset} "
        f"(width {a.width_mult:g}, depth {a.depth_mult:g}, {a.image_size} px), S by {a.step_time}; "
        f"hypervolume of (accuracy, S, P) up to (0, {a.reference[0]:g}, {a.reference[1]:g})"
    )
    runs = []
    for seed in range(a.seeds):
        for p in a.pruners:  # alternating, so a change in the machine's load touches every pruner alike
            r = one_run(a, seed, p)
            runs.append(r)
            print(
                f"seed {seed} {p:24s} epochs {r['epochs_trained']:4d}  trial time {r['trial_time_s']:7.1f} s  "
                f"wall {r['wall_s']:7.1f} s  pruned {r['pruned']:3d}/{r['trials']}  "
                f"hypervolume {r['hypervolume']:.4f}  front {r['front_size']}",
                flush=True,
            )
    summary = summarise(runs, a.pruners)
    print(f"\n== means over {a.seeds} seeds{samples(a.seeds, 'seeds')}; ratios against {a.pruners[0]} ==")
    for s in summary:
        print(
            f"{s['pruner']:24s} epochs {s['epochs_trained']:7.1f} ({_ratio(s['epochs_trained_ratio'])})  "
            f"trial time {s['trial_time_s']:7.1f} s ({_ratio(s['trial_time_s_ratio'])})  "
            f"hypervolume {s['hypervolume']:.4f} ({_ratio(s['hypervolume_ratio'], 3)})  pruned {s['pruned']:.1f}"
        )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        args = {k: v for k, v in vars(a).items() if k != "json"}
        data = {"args": args, "setting": setting, "runs": runs, "summary": summary}
        Path(a.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
