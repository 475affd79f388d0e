"""Search benchmarks (printed figures, not timed tests).

1. Framework overhead: a real embedded search; per trial, the time spent outside measuring and
   training the candidate (sampling, building, storage writes, result export, plotting) as a share
   of the trial's wall time.
2. TPE against random search at the same trial budget, on a cached objective: a sub-space of the
   training-aware space small enough to evaluate every architecture once for real (proxy training on
   digits); the table is cached in ``benchmarks/.cache`` and both samplers then run many seeded
   searches against it in seconds. Reported: mean best reward found and mean regret to the table's
   optimum, per budget.

    python benchmarks/bench_search.py --trials 8                # both parts
    python benchmarks/bench_search.py --part samplers --budget 10 --seeds 30
    python benchmarks/bench_search.py --tiny     # seconds: fake data, a tiny proxy, 6 architectures
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from itertools import product
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from common import parse_with_tiny, samples

from nas.search.api import search
from nas.steptime.methods import StepTimeConfig
from nas.study.space import SearchOptions
from nas.trial.factory import evaluator_for
from nas.trial.settings import ProxyConfig, TrialSettings
from search_spaces import Stage, get_space

CACHE = Path(__file__).resolve().parent / ".cache"
# A proxy of seconds (fake data, width and depth 0.1, 16 px, the proxy's own step timed) and a
# sub-space of 6 architectures: the same two measurements, small.
TINY = dict(
    trials=2,
    budget=6,
    seeds=10,
    decisions=2,
    dataset="fake",
    epochs=1,
    width_mult=0.1,
    depth_mult=0.1,
    image_size=16,
    batch_size=32,
    step_time="proxy",
    measure_time=0.05,
)


def trial_settings(a: argparse.Namespace) -> TrialSettings:
    proxy = ProxyConfig.of(
        width=a.width_mult, depth=a.depth_mult, image_size=a.image_size, epochs=a.epochs, batch_size=a.batch_size
    )
    step = StepTimeConfig(method=a.step_time, min_run_time=a.measure_time)
    return TrialSettings(dataset=a.dataset, proxy=proxy, step_time=step)


def overhead(n_trials: int, settings: TrialSettings) -> None:
    dataset, epochs = settings.dataset, settings.proxy.epochs
    with tempfile.TemporaryDirectory() as d:
        opts = SearchOptions(n_trials=n_trials, out=d, pruner="none")
        t0 = time.perf_counter()
        search(settings, opts, progress=False, echo=lambda s: None)
        wall = time.perf_counter() - t0
        df = pd.read_csv(Path(d) / "trials.csv")
    ok = df[df["state"] == "COMPLETE"]
    work = (ok["time_s"] + ok["train_s"]).sum()
    trial_wall = ok["duration_s"].sum()
    print(f"\n== framework overhead: {len(ok)} trials on {dataset}, {epochs} proxy epochs ==")
    print(f"whole run                {wall:8.1f} s (includes one reference measurement and start-up)")
    print(f"inside trials            {trial_wall:8.1f} s")
    print(f"  measuring + training   {work:8.1f} s")
    print(
        f"  other (build, sample)  {trial_wall - work:8.1f} s  = {(trial_wall - work) / trial_wall:.1%} of trial time"
    )
    between = wall - trial_wall
    print(
        f"outside trials           {between:8.1f} s  = {between / wall:.1%} of the run "
        "(storage, one trials.csv line per trial, best.json when it changes, the reference, imports)"
    )
    print(
        f"framework overhead share {(wall - work) / wall:.1%} of wall time; per trial {(wall - work) / len(ok):.2f} s"
        + samples(len(ok), "trials")
    )


# A sub-space of trainaware: op x expansion of stages 2 and 3 (36 architectures); the rest is V2-S.
SUB = [
    ("s2_op", ["mbconv", "fused"]),
    ("s2_expansion", [1, 4, 6]),
    ("s3_op", ["mbconv", "fused"]),
    ("s3_expansion", [1, 4, 6]),
]


def sub_arch(choice: dict) -> object:
    ref = get_space("trainaware").reference()
    stages = list(ref.stages)
    for i in (2, 3):
        s = stages[i - 1]
        op = choice.get(f"s{i}_op", s.block)
        expansion = choice.get(f"s{i}_expansion", s.expansion)
        stages[i - 1] = Stage(op, s.kernel, s.stride, expansion, s.out, s.repeats, 0.25 if op == "mbconv" else 0.0)
    return ref.replace(stages=tuple(stages))


def build_table(settings: TrialSettings, sub: list, cache: Path) -> dict[str, float]:
    """Every architecture of the sub-space evaluated once for real, cached per setting."""
    cache.mkdir(parents=True, exist_ok=True)
    p = settings.proxy
    name = f"{settings.dataset}-e{p.epochs}-w{p.width:g}-d{p.depth:g}-{p.image_size}px-{settings.step_time.method}"
    path = cache / f"table-{name}-{len(sub)}.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    ev = evaluator_for(settings)
    keys = [dict(zip([n for n, _ in sub], vals)) for vals in product(*[o for _, o in sub])]
    todo = [k for k in keys if json.dumps(k, sort_keys=True) not in table]
    if todo:
        print(f"filling the cache: {len(todo)} of {len(keys)} architectures to evaluate for real ...")
    for k in todo:
        table[json.dumps(k, sort_keys=True)] = ev.evaluate(sub_arch(k), seed=0)["reward"]
        path.write_text(json.dumps(table))
    return table


def samplers(budget: int, seeds: int, settings: TrialSettings, sub: list, cache: Path) -> None:
    dataset, epochs = settings.dataset, settings.proxy.epochs
    table = build_table(settings, sub, cache)
    optimum = max(table.values())
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def run(sampler) -> list[float]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(
            lambda t: table[json.dumps({n: t.suggest_categorical(n, o) for n, o in sub}, sort_keys=True)],
            n_trials=budget,
        )
        return list(np.maximum.accumulate([t.value for t in study.trials]))

    rows = []
    for name, make in (
        ("random", lambda s: optuna.samplers.RandomSampler(seed=s)),
        ("tpe", lambda s: optuna.samplers.TPESampler(seed=s, multivariate=True, n_startup_trials=5)),
    ):
        curves = np.array([run(make(s)) for s in range(seeds)])
        for b in sorted({max(1, budget // 2), budget}):
            rows.append(
                {
                    "sampler": name,
                    "budget": b,
                    "mean best reward": curves[:, b - 1].mean(),
                    "mean regret": (optimum - curves[:, b - 1]).mean(),
                    "found optimum": f"{(curves[:, b - 1] >= optimum).mean():.0%}",
                }
            )
    df = pd.DataFrame(rows)
    print(
        f"\n== TPE vs random: {len(table)}-architecture cached objective ({dataset}, {epochs} epochs), {seeds} seeds =="
    )
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    r = df[(df.budget == budget)].set_index("sampler")["mean regret"]
    print(
        f"regret ratio tpe/random at budget {budget}: {r['tpe'] / r['random']:.2f}"
        if r["random"] > 0
        else "random search found the optimum every time"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "overhead", "samplers"], default="all")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--decisions", type=int, default=len(SUB), help=f"of the sub-space's {len(SUB)} (default all)")
    ap.add_argument("--cache-dir", type=Path, default=CACHE, help="where the cached objective lives")
    g = ap.add_argument_group("the trial (nas search's flags of the same names)")
    g.add_argument("--dataset", default="digits")
    g.add_argument("--epochs", type=int, default=2)
    g.add_argument("--width-mult", type=float, default=0.25)
    g.add_argument("--depth-mult", type=float, default=0.25)
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--step-time", default="table", help="table (default), measure or proxy")
    g.add_argument("--measure-time", type=float, default=0.4)
    a = parse_with_tiny(ap, TINY, argv)
    settings = trial_settings(a)
    if a.part in ("all", "overhead"):
        overhead(a.trials, settings)
    if a.part in ("all", "samplers"):
        samplers(a.budget, a.seeds, settings, SUB[: a.decisions], a.cache_dir)


if __name__ == "__main__":
    main()
