"""The library's entry points: what ``nas search`` and ``nas grid-scale`` run, callable from Python.

Both take settings as the user gave them (:class:`nas.trial.settings.TrialSettings`, with open
values such as the cost or the target setting left None) and run them through the one driver
(:func:`nas.search.driver.run`), which resolves them in one place before anything is written; the
command line is a thin shell that builds the same arguments from its flags::

    from nas.search import search, SearchOptions
    from nas.trial.settings import TrialSettings
    best = search(TrialSettings(space="trainaware"), SearchOptions(n_trials=20, out="runs/mine"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nas.scaling.grid import GridOptions, proxy_duplicates
from nas.search.driver import run
from nas.study.grid import GridProblem
from nas.study.job import Job
from nas.study.space import SearchOptions, SearchProblem
from nas.trial.settings import TrialSettings
from search_spaces import Architecture


def search(
    settings: TrialSettings,
    opts: SearchOptions,
    *,
    backend: str = "embedded",
    options: dict[str, Any] | None = None,
    plugins: tuple[str, ...] = (),
    restart: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Run (or resume) a search; returns the best row (or None when no trial completed). ``backend``
    and ``options`` as :func:`nas.backends.backend_from_flags` gives them (``"embedded"``, ``{}``)."""
    problem = SearchProblem(settings, opts)
    how = {"backend": backend, "options": options or {}, "plugins": plugins, "restart": restart, "progress": progress}
    return run(
        Job(
            problem,
            opts.n_trials,
            opts.out,
            sampler=opts.sampler,
            pruner=opts.pruner,
            storage=opts.storage,
            echo=echo,
            **how,
        )
    )


def describe_plan(problem: GridProblem) -> list[str]:
    """What the grid evaluates, and which candidates its proxy cannot tell apart."""
    plan, spec, settings = problem.plan, problem.spec, problem.settings
    lines = [
        f"{plan.n_feasible} of {spec.grid_points} grid points (alpha, beta, gamma in [{spec.lo:g}, {spec.hi:g}] "
        f"step {spec.step:g}) satisfy |alpha*beta**2*gamma**2 - 2| <= {spec.tolerance:g}; evaluating "
        f"{len(plan.selected)} of them (evenly spread, --max-candidates {problem.opts.max_candidates}) and the base"
    ]
    same = proxy_duplicates(problem.base, settings, plan)
    if same:
        lines.append(
            f"note: at proxy scale (--width-mult {settings.proxy.width:g}, --depth-mult "
            f"{settings.proxy.depth:g}) {'; '.join(' = '.join(c.label() for c in g) for g in same)} train the "
            "same network at the same image size; raise --width-mult/--depth-mult to tell them apart"
        )
    return lines


def grid_scale(
    settings: TrialSettings,
    base: Architecture,
    opts: GridOptions,
    *,
    backend: str = "embedded",
    options: dict[str, Any] | None = None,
    plugins: tuple[str, ...] = (),
    restart: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Run (or resume) the compound-scaling grid search for ``base`` (EfficientNet section 3.3, step
    1); returns the chosen candidate's row (or None)."""
    problem = GridProblem(settings, base, opts)
    for line in describe_plan(problem):
        echo(line)
    how = {"backend": backend, "options": options or {}, "plugins": plugins, "restart": restart, "progress": progress}
    return run(
        Job(
            problem,
            len(problem.plan.candidates),
            opts.out,
            sampler=problem.sampler,
            pruner=problem.pruner,
            storage=opts.storage,
            echo=echo,
            **how,
        )
    )
