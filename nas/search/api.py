"""TODO docstring."""

from __future__ import annotations

from typing import Any

from nas.study.space import SearchOptions, SearchProblem


def search(
    settings,
    opts: SearchOptions,
    *,
    backend: str = "embedded",
    options: dict[str, Any] | None = None,
    plugins: tuple[str, ...] = (),
    restart: bool = False,
    progress: bool = True,
    echo=print,
):
    """Run (or resume) a search from Python, as ``nas search`` does; returns the best row (or None)."""
    from nas.search.driver import run
    from nas.study.job import Job

    job = Job(
        problem=SearchProblem(settings, opts),
        n_trials=opts.n_trials,
        out=opts.out,
        backend=backend,
        sampler=opts.sampler,
        pruner=opts.pruner,
        storage=opts.storage,
        options=options or {},
        plugins=plugins,
        restart=restart,
        progress=progress,
        echo=echo,
    )
    return run(job)
