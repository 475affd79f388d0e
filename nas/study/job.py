"""A run as the driver sees it: the :class:`Job` (what a command asked for), the :class:`Run` a backend
gets while it runs, and where the run's configuration is kept beside ``config.json``
(:func:`config_store`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nas.study.results import ResultsWriter
from nas.study.rundir import ConfigStore, FileConfigStore
from nas.study.storage import StudyConfigStore

STATE_CONFIG = "nas-config.json"  # the run's configuration inside a backend's own state directory


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
    echo: Callable[[str], None] = print
    evaluator: Any = None  # this process's evaluator (default: a nas.trial.evaluator.Evaluator for the settings)

    @property
    def settings(self):
        return self.problem.settings


class Run:
    """What a backend gets while it runs: the run directory, the writer, the driver's evaluator."""

    def __init__(self, job: Job, rundir, evaluator, extra: dict[str, Any]):
        self.job, self.rundir, self.evaluator, self.extra = job, rundir, evaluator, extra
        self.path = rundir.path
        self.writer = ResultsWriter(rundir.path, job.problem, extra, shared=job.backend == "workers")
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


def _family(backend: str) -> str:
    # Workers and the embedded driver share one Optuna storage: a run is resumable by either.
    return "embedded" if backend in ("embedded", "workers") else backend


def config_store(job: Job) -> ConfigStore:
    """Where the run's state keeps its configuration: the Optuna study of the embedded and workers
    backends (their shared storage), else a file in the backend's own state directory (Ray Tune's
    experiment is ``OUT/ray``: ``OUT/ray/nas-config.json``), which goes wherever that state goes."""
    if _family(job.backend) == "embedded":
        return StudyConfigStore(job.storage, Path(job.out), job.problem.study_name, job.problem.directions)
    return FileConfigStore(Path(job.out) / job.backend / STATE_CONFIG)


def run_extra(job: Job, evaluator) -> dict[str, Any]:
    s = job.settings
    st = s.step_time
    return {
        "space": s.space,
        "reward": evaluator.reward.config(),
        "sampler": job.sampler,
        "dataset": s.dataset,
        "num_classes": evaluator.num_classes,
        "target": {
            "method": st.method,
            "image_size": st.target_image_size,
            "batch_size": st.target_batch_size,
            "device": _device_name(evaluator),
        },
    }


def _device_name(evaluator) -> str:
    timer = getattr(evaluator, "timer", None)
    if timer is None or not hasattr(timer, "runtime"):  # a stand-in evaluator (tests, plugins)
        return str(evaluator.settings.device) if hasattr(evaluator, "settings") else "unknown"
    fp = timer.runtime.fingerprint()
    return f"{fp['device']} ({fp['device_name']})"
