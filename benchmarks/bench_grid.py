"""Costs of ``nas grid-scale`` apart from training: the grid, the spread subset, the driver.

1. Enumerating the constrained grid and picking the farthest-point subset, for several steps.
2. The driver's own overhead per candidate (an Optuna trial in SQLite, grid.csv and
   coefficients.json after every candidate), with a stand-in evaluation that returns at once, so
   the figure is what the driver adds to each real evaluation.

    python benchmarks/bench_grid.py --steps 0.05 0.01 0.005 --candidates 8
    python benchmarks/bench_grid.py --tiny       # seconds: one grid step, 2 candidates
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import types
from pathlib import Path

import torch
from common import parse_with_tiny, samples

from nas.scaling.grid import GridOptions, GridSpec, enumerate_candidates, select_spread
from nas.search.driver import run
from nas.study.grid import GridProblem
from nas.study.job import Job
from nas.trial.evaluator import Evaluator, register_evaluator
from nas.trial.settings import ProxyConfig, TrialSettings
from search_spaces import Architecture

TINY_ARGS = dict(steps=[0.05], candidates=2)
TINY = Architecture.from_string("stem8,r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e4_i8_o16,head32,res32")


@register_evaluator("instant")
class InstantEvaluator(Evaluator):
    """Returns at once: what is left of a grid run is the driver's own cost."""

    help = "no training, no timing (the grid benchmark's baseline)"
    needs_target = False
    needs_data = False

    @classmethod
    def load_data(cls, settings):
        return types.SimpleNamespace(num_classes=10)

    def known(self, arch, *, image_scale=1.0, fidelity=False):
        return {**self.size(arch), "cost": "step", "cost_ms": 1.0, "step_time_ms": 1.0, "S": 1.0}

    def evaluate(self, arch, **kw):
        return self.score({**self.known(arch), "accuracy": kw.get("image_scale", 1.0) / 2})


def grid_run(settings, opts: GridOptions) -> None:
    problem = GridProblem(settings, TINY, opts)
    run(
        Job(
            problem=problem,
            n_trials=len(problem.plan.candidates),
            out=opts.out,
            sampler="random",
            pruner="none",
            progress=False,
            echo=lambda s: None,
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=float, nargs="+", default=[0.05, 0.01, 0.005])
    p.add_argument("--candidates", type=int, default=8, help="--max-candidates for the driver run (default 8)")
    a = parse_with_tiny(p, TINY_ARGS, argv)
    print(f"setting: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("step    grid points  feasible  enumerate_s  select_s (n=8)")
    for step in a.steps:
        spec = GridSpec(step=step)
        t0 = time.perf_counter()
        cands = enumerate_candidates(spec)
        t1 = time.perf_counter()
        select_spread(cands, 8)
        t2 = time.perf_counter()
        print(f"{step:<7g} {spec.grid_points:>11,} {len(cands):>9,} {t1 - t0:>12.3f} {t2 - t1:>9.3f}")
    with tempfile.TemporaryDirectory() as d:
        settings = TrialSettings(dataset="fake", proxy=ProxyConfig.of(image_size=16), evaluator="instant")
        # A throwaway run first, so that importing SQLAlchemy, Optuna and matplotlib is not counted.
        grid_run(settings, GridOptions(max_candidates=1, out=str(Path(d) / "warm")))
        opts = GridOptions(max_candidates=a.candidates, out=str(Path(d) / "run"))
        t0 = time.perf_counter()
        grid_run(settings, opts)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        grid_run(settings, opts)
        resume = time.perf_counter() - t0
    n = a.candidates + 1  # the planned candidates and the grid's own reference
    print(
        f"driver: {n} candidates with an instant evaluation in {first:.2f} s ({first / n:.3f} s per candidate, "
        f"storage, exports and the final plot included); a rerun with all done (the baseline: start-up, "
        f"storage, exports, no candidate): {resume:.2f} s"
    )
    print(f"driver cost per candidate beyond that baseline: {(first - resume) / n:.3f} s{samples(n, 'candidates')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
