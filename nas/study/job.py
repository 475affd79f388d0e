"""One command's run as the driver and the backends see it: the :class:`Job` (what to search, how
many trials, scheduled how) and the :class:`Run` a backend gets while it runs (the run directory,
the results writer, this process's evaluator, the progress bar)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from nas.study.results import ResultsWriter


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Job:
    """One command's run: what to search (``problem``), how many trials, scheduled how."""

    problem: Any
    n_trials: int
    out: str
    backend: str = "embedded"
    sampler: str = "tpe"
    pruner: str = "none"
    storage: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the backend's own (workers, ray)
    plugins: tuple[str, ...] = ()
    restart: bool = False
    progress: bool = True
    echo: Callable[[str], None] = print  # results and summaries (stdout)
    log: Callable[[str], None] = to_stderr  # what happens on the way (builds, waits, warnings)

    @property
    def settings(self):
        return self.problem.settings


class Run:
    """What a backend gets while it runs: the run directory, the writer, the driver's evaluator."""

    def __init__(self, job: Job, rundir, evaluator, extra: dict[str, Any], *, shared: bool = False):
        self.job, self.rundir, self.evaluator, self.extra = job, rundir, evaluator, extra
        self.path = rundir.path
        self.writer = ResultsWriter(rundir.path, job.problem, extra, shared=shared)
        self.bar = None
        self.warnings: list[str] = []

    def progress(self, total: int, initial: int):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc="trials",
            unit="trial",
            disable=not self.job.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        return self.bar

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.job.echo(f"warning: {text}")


def run_extra(job: Job, evaluator) -> dict[str, Any]:
    """What best.json records about the run besides the best trial: its space, reward, sampler, data
    and the target S stands for."""
    s = job.settings
    target = evaluator.target.summary() if evaluator.target is not None else {"evaluator": s.evaluator}
    return {
        "space": s.space,
        "reward": evaluator.reward.config(),
        "sampler": job.sampler,
        "dataset": s.dataset,
        "num_classes": evaluator.num_classes,
        "target": target,
    }
