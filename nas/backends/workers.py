"""Several processes on one machine sharing the run's Optuna storage: ``--workers N`` and
``--trials-per-device N``.

The driver starts ``nas worker RUN_DIR --trials k`` processes and follows the study; each worker runs
the embedded trial loop (:func:`nas.backends.embedded.run_trials`) against the same storage, so the
run stays resumable by a plain ``nas search``. ``nas worker`` can also be started by hand to add a
process to a run. Sharing one study safely needs, beyond Optuna's storage:

* unique trial numbers (the storage assigns them in a transaction);
* no architecture trained twice: parallel samplers can propose the same one, so a trial *claims* its
  architecture under a file lock on the run directory (:class:`Claims`); a later trial with the same
  architecture waits for the owner and records its result with ``duplicate_of`` = the owner's number.
  An owner whose process died loses its claim and a waiter takes over;
* a sampler seed per worker (a slot number), TPE with ``constant_liar``.

Placement (:func:`plan_workers`): on CUDA, ``--trials-per-device N`` runs N workers on every visible
GPU (``--device cuda``) or on the named one (``cuda:K``), each pinned with ``CUDA_VISIBLE_DEVICES``;
``--workers N`` gives each worker its own GPU while there are enough. On a CPU the cores are divided
(``OMP_NUM_THREADS``). Workers that share a device measure step times one at a time
(:func:`nas.core.devicelock.timing` through ``NAS_DEVICE_LOCK``); with the default ``--step-time table`` a
trial's S needs no timing at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.backends.base import register_backend
from nas.backends.optuna import OptunaBackend, run_trials
from nas.backends.placement import AUTO, per_device_arg, probe
from nas.core.device import resolve_device
from nas.core.files import file_lock, read_json
from nas.core.interrupt import check as check_interrupt
from nas.core.interrupt import critical
from nas.errors import NasError, check_int
from nas.steptime.prepared import PreparedTarget
from nas.study.job import Job, run_extra
from nas.study.problems import problem_from_config
from nas.study.results import ResultsWriter
from nas.study.rundir import CONFIG
from nas.study.storage import close_dead_trials, finished, load_study, make_storage, trial_row
from nas.trial.evaluator import get_evaluator

CLAIM_LOCK = ".claims.lock"
WORKER_SLOTS_ATTR = "worker_slots"  # study user attribute: how many workers have started
POLL_S = 1.0


def claim_lock(run_dir: Path):
    return file_lock(Path(run_dir) / CLAIM_LOCK, what=f"the claims of {run_dir}")


class Claims:
    """Each architecture evaluated once across the processes sharing a study (module docstring)."""

    def __init__(self, study: optuna.Study, run_dir: Path):
        self.study, self.run_dir = study, Path(run_dir)

    def _owner(self, key: str, number: int):
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number or t.user_attrs.get("claim") != key or t.user_attrs.get("duplicate_of") is not None:
                continue
            if t.state == optuna.trial.TrialState.RUNNING or finished(t):
                return t
        return None

    def claim(self, trial, key: str) -> int | None:
        with claim_lock(self.run_dir), critical():
            owner = self._owner(key, trial.number)
            trial.set_user_attr("claim", key)
            trial.set_user_attr("duplicate_of", None if owner is None else owner.number)
        return None if owner is None else owner.number

    def evaluate(self, trial, proposal: dict[str, Any]) -> dict[str, Any] | None:
        """None when this trial owns its architecture (evaluate it); else the row it takes from the
        owner once that one finishes."""
        key = f"{proposal['arch']}@{proposal.get('image_scale', 1.0)}"
        owner = self.claim(trial, key)
        while owner is not None:
            row = self._wait(owner, trial.number)
            if row is not None:
                return row
            owner = self.claim(trial, key)  # the owner died: claim again (another waiter may have won)
        return None

    def _wait(self, owner: int, number: int) -> dict[str, Any] | None:
        while True:
            t = next(t for t in self.study.get_trials(deepcopy=False) if t.number == owner)
            if finished(t):
                row = trial_row(t)
                if t.state == optuna.trial.TrialState.FAIL:
                    row["error"] = f"same architecture as trial {owner}, which failed: {row.get('error')}"
                return {**row, "number": number, "duplicate_of": owner}
            if t.state == optuna.trial.TrialState.FAIL:
                return None  # killed before finishing: its claim is void
            with critical():
                close_dead_trials(self.study)
            check_interrupt()
            time.sleep(POLL_S)


# -- placement ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """How many trials each worker runs and the environment it gets (its GPU, its CPU threads)."""

    trials: tuple[int, ...]
    envs: tuple[dict[str, str], ...]
    note: str | None = None


def plan_workers(
    n_workers: int | None,
    remaining: int,
    device: str,
    *,
    per_device: int | None = None,
    cpu_count: int | None = None,
    gpu_count: int | None = None,
) -> WorkerPlan:
    """Place the workers and split ``remaining`` trials over them (never more workers than trials).

    ``per_device``: that many workers on every device in use (each visible GPU for ``cuda``, the named
    one for ``cuda:K``, the CPU as one device); ``n_workers``: that many in all, round-robin over the
    GPUs. On a CPU the cores are divided between the workers."""
    if (n_workers is None) == (per_device is None):
        raise NasError("give one of --workers N or --trials-per-device N")
    if n_workers is not None:
        check_int("--workers", n_workers, 1, 1024)
    if per_device is not None:
        check_int("--trials-per-device", per_device, 1, 64)
    dev = resolve_device(device)
    note = None
    if dev.type == "cuda":
        gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
        ids = [dev.index] if dev.index is not None else list(range(gpus))
        slots = (
            [g for g in ids for _ in range(per_device)] if per_device else [ids[i % len(ids)] for i in range(n_workers)]
        )
        if len(slots) > len(ids):
            note = (
                f"{len(slots)} workers on {len(ids)} GPU(s): workers sharing a GPU train side by side and time "
                "their steps one at a time"
            )
        envs = [{"CUDA_VISIBLE_DEVICES": str(g), "NAS_DEVICE_LOCK": f"cuda{g}"} for g in slots]
    else:
        cores = (os.cpu_count() or 1) if cpu_count is None else cpu_count
        n = min(per_device or n_workers, remaining)
        threads = max(1, cores // n)
        envs = [
            {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "NAS_DEVICE_LOCK": "cpu"}
            for _ in range(n)
        ]
        if n > cores:
            note = f"{n} workers on {cores} CPU cores: step times are measured under contention"
    n = min(len(envs), remaining)
    trials = tuple(remaining // n + (i < remaining % n) for i in range(n))
    return WorkerPlan(trials=trials, envs=tuple(envs[:n]), note=note)


@register_backend
class WorkersBackend(OptunaBackend):
    name = "workers"
    help = "N processes on this machine sharing the run's storage (--workers, --trials-per-device)"
    selectable = False  # the embedded backend's --workers / --trials-per-device select it
    parallel = True

    def check(self) -> None:
        o = self.job.options
        if o.get("workers") is None and o.get("trials_per_device") is None:
            raise NasError("the workers backend needs --workers N or --trials-per-device N")
        per_device = o.get("trials_per_device")
        if per_device is not None:
            per_device = per_device_arg(str(per_device))
        plan_workers(o.get("workers"), 1, self.job.settings.device, per_device=1 if per_device == AUTO else per_device)

    def per_device(self, run) -> int | None:
        """The trials per device: as given, or measured on the run's proxy for ``auto``."""
        per_device = self.job.options.get("trials_per_device")
        if per_device is None or per_device_arg(str(per_device)) != AUTO:
            return per_device
        choice = probe(self.job.settings, num_classes=run.evaluator.num_classes)
        self.job.echo(choice.describe())
        return choice.per_device

    def execute(self, run, remaining: int) -> None:
        job = self.job
        o = job.options
        plan = plan_workers(o.get("workers"), remaining, job.settings.device, per_device=self.per_device(run))
        if plan.note:
            job.echo(f"note: {plan.note}")
        job.echo(f"starting {len(plan.trials)} workers for {remaining} trials ({', '.join(map(str, plan.trials))})")
        bar = run.progress(self.n_finished() + remaining, self.n_finished())
        failed = supervise(run.path, plan, job.plugins, lambda: self.n_finished(), bar)
        if failed:
            run.warn(
                f"{len(failed)} of {len(plan.trials)} workers exited with an error ({'; '.join(failed)}); rerun "
                "the same command to run the missing trials"
            )


def supervise(run_dir: Path, plan: WorkerPlan, plugins: Sequence[str], count, bar) -> list[str]:
    """Start the workers, follow the study's progress, forward an interrupt; the failed workers."""
    procs = []
    for k, env in zip(plan.trials, plan.envs):
        # python -m puts the current directory on sys.path, so the children find plugins where we did.
        cmd = [sys.executable, "-m", "nas.cli", "worker", str(run_dir), "--trials", str(k), "--quiet"]
        for p in plugins:
            cmd += ["--plugin", p]
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
    try:
        while any(p.poll() is None for p in procs):
            bar.n = count()
            bar.refresh()
            check_interrupt()
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the children too; give them time to close their trials.
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        bar.n = count()
        bar.refresh()
    return [f"worker {i}: exit status {p.returncode}" for i, p in enumerate(procs) if p.returncode != 0]


# -- one worker process (nas worker) -------------------------------------------------------------------------


def _joined_job(run_dir: Path, n_trials: int, echo) -> Job:
    """The run in ``run_dir`` as this worker's job (refused unless it is an Optuna-storage run)."""
    check_int("--trials", n_trials, 1, 1_000_000)
    if not run_dir.is_dir():
        raise NasError(f"run directory {str(run_dir)!r} does not exist; start the search with nas search first")
    config = read_json(run_dir / CONFIG, "run configuration")
    if not isinstance(config, dict) or config.get("backend") != OptunaBackend.family:
        what = config.get("backend") if isinstance(config, dict) else None
        raise NasError(
            f"{str(run_dir)!r} holds a {what!r} backend run; workers join Optuna-storage (embedded) runs "
            "only; rerun its nas search command to resume it"
        )
    problem, sampler, pruner, storage = problem_from_config(config)
    return Job(
        problem=problem,
        n_trials=n_trials,
        out=str(run_dir),
        backend="workers",
        sampler=sampler,
        pruner=pruner,
        storage=storage,
        echo=echo,
    )


def _open_study(backend: WorkersBackend, run_dir: Path) -> int:
    """Open the run's study for ``backend``; this worker's slot."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    job = backend.job
    backend.storage = make_storage(job.storage, run_dir)
    backend.study = load_study(backend.storage, job.problem.study_name)
    if backend.study is None:
        raise NasError(f"{str(run_dir)!r} has no study {job.problem.study_name!r} yet; start it with nas search")
    with claim_lock(run_dir), critical():
        slot = int(backend.study.user_attrs.get(WORKER_SLOTS_ATTR, 0))
        backend.study.set_user_attr(WORKER_SLOTS_ATTR, slot + 1)
    return slot


def _evaluator(job: Job, run_dir: Path):
    """This worker's evaluator, scoring against the target the run prepared."""
    kind = get_evaluator(job.settings.evaluator)
    target = PreparedTarget.load(run_dir) if kind.needs_target else None
    if kind.needs_target and target is None:
        raise NasError(f"{str(run_dir)!r} has no prepared target yet; start the search with nas search first")
    return kind(job.settings, target=target, reference=job.problem.reference_arch())


def run_worker(run_dir: Path, n_trials: int, *, echo=print) -> int:
    """Run ``n_trials`` trials of the run in ``run_dir`` in this process (``nas worker``); returns how
    many completed."""
    run_dir = Path(run_dir)
    job = _joined_job(run_dir, n_trials, echo)
    backend = WorkersBackend(job)
    slot = _open_study(backend, run_dir)
    study = backend.worker_study(slot)
    evaluator = _evaluator(job, run_dir)
    echo(f"worker {slot} (pid {os.getpid()}): {evaluator.describe()}")
    writer = ResultsWriter(run_dir, job.problem, {**run_extra(job, evaluator), **backend.extra()}, shared=True)

    def on_row(row: dict[str, Any]) -> None:
        dup = row.get("duplicate_of")
        what = f"reward {row['reward']:.4f}" if row.get("reward") is not None else (row.get("error") or "")
        echo(
            f"worker {slot}: trial {row['number']} {row['state']} {what}"
            + (f" (same architecture as trial {dup}, not retrained)" if dup is not None else "")
        )

    return run_trials(
        study,
        job.problem,
        evaluator,
        writer,
        n_trials,
        tags={"worker": slot},
        claims=Claims(backend.study, run_dir),
        on_row=on_row,
    )
