"""The one driver every way of running a search shares (``nas search``, ``nas grid-scale``, any
backend):

1. check everything before anything is written: settings (checked on construction), the backend's
   options, the device, the evaluator and what it reads (the data, loaded and probed), the storage,
   the output path; resolve what the user left open (the cost, the target setting:
   :func:`nas.trial.target.resolve`);
2. own the run directory (:class:`nas.study.rundir.RunDir`: one owner, one experiment, kept in
   ``config.json`` and in the backend's state; a start that fails before its first trial finished
   leaves no trace);
3. prepare the run's target once, before the first trial (a step-time table built or loaded, the
   reference's cost) and keep it in the run directory, or reuse the one a resumed run prepared;
4. open the backend's state, close trials left running by dead processes, refuse to replace stored
   results by fewer; let the backend run the missing trials, each finished trial appended to the
   results as it ends;
5. rewrite the result files from the backend's state, write ``fidelity.json``, print the summary
   and the reason when nothing completed.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from nas.backends import get_backend
from nas.core.device import resolve_device
from nas.core.interrupt import handle_interrupts
from nas.errors import NasError
from nas.steptime.model import StepTimeModel
from nas.steptime.prepared import PreparedTarget
from nas.study.fidelity import accuracy_noise, fidelity_lines, step_time_fidelity, write_fidelity
from nas.study.job import Job, Run, run_extra
from nas.study.results import common_error, finished_row
from nas.study.rundir import RunDir
from nas.study.storage import check_storage_url
from nas.trial.evaluator import get_evaluator
from nas.trial.target import check_classes, resolve
from nas.trial.target import prepare as prepare_target


@dataclasses.dataclass
class Prepared:
    """What step 1 checked and loaded: the backend, the evaluator's kind and its data."""

    backend: Any
    evaluator_kind: Any
    data: Any


def prepare(job: Job) -> Prepared:
    """Step 1 (see the module docstring): nothing is written, and ``job.problem`` gets resolved settings."""
    backend = get_backend(job.backend)(job)
    backend.check()
    resolve_device(job.settings.device)  # a GPU that is not there: refused here, not at the first trial
    RunDir(job.out).check()
    check_storage_url(job.storage)
    kind = get_evaluator(job.settings.evaluator)
    if kind.needs_target:
        settings = resolve(job.settings, backend.target_device(), space_matters=job.problem.space_matters)
        job.problem = job.problem.with_settings(settings)
    data = kind.load_data(job.settings)
    if kind.needs_target:
        check_classes(job.settings, data.num_classes)
        if job.settings.step_time.target is not None and not job.restart:
            _check_same_table(job.settings.step_time.target, PreparedTarget.load(Path(job.out)))
    return Prepared(backend, kind, data)


def _config(job: Job, backend) -> dict[str, Any]:
    """What defines the run (config.json). A target table counts by its identity, not its path: the
    same table moved elsewhere is the same run, another table at the same path is not."""
    config = {**job.problem.config(), "backend": backend.family, **backend.config()}
    path = job.settings.step_time.target
    if path is not None:
        config["settings"]["step_time"]["target"] = None
        config["target"] = StepTimeModel.from_file(path).identity
    return config


def _target(job: Job, prep: Prepared, rundir: RunDir) -> PreparedTarget | None:
    """Step 3: the run's target, prepared now or the one this run directory holds."""
    if not prep.evaluator_kind.needs_target:
        return None
    target = PreparedTarget.load(rundir.path)
    if target is not None:
        return target

    def build(device: str):
        return prepare_target(
            job.settings,
            num_classes=prep.data.num_classes,
            reference=job.problem.reference_arch(),
            device=device,
            progress=job.progress and sys.stderr.isatty(),
            log=job.log,
        )

    return prep.backend.prepare_target(build).save(rundir.path)


def _check_same_table(path: str, target: PreparedTarget | None) -> None:
    """A resume names the table its run was prepared with (or ``--restart`` starts over)."""
    given = StepTimeModel.from_file(path).identity
    if target is not None and given != target.identity:
        raise NasError(
            f"this run was prepared with step-time table {target.identity} ({target.source}) and --target "
            f"{path!r} is table {given}; pass the same table, or --restart to start over with this one"
        )


def _open(job: Job, backend, rundir: RunDir, evaluator) -> tuple[Run, list, int, int]:
    """Step 4's start: the backend's state, dead trials closed, the results rewritten."""
    backend.open(rundir)
    closed = backend.close_dead()
    rows = backend.rows()
    done, remaining = job.problem.pending(rows, job.n_trials)
    _started_once_finished(rundir, job.problem, rows)
    run_ = Run(job, rundir, evaluator, {**run_extra(job, evaluator), **backend.extra()}, shared=backend.parallel)
    run_.writer.rewrite(rows, plot=False)
    if closed:
        job.echo(
            f"closed {len(closed)} trial(s) left running by a stopped process ({', '.join(map(str, closed))}); "
            "they run again"
        )
    if done:
        job.echo(f"resuming {rundir.path}: {done} of {done + remaining} {job.problem.unit} already finished")
    return run_, rows, done, remaining


def _started_once_finished(rundir: RunDir, problem, rows) -> None:
    """Refuse storage that holds fewer finished trials than the results; once one has finished, the
    directory holds results and a failure no longer undoes the start (before, it leaves no trace)."""
    stored = sum(1 for r in rows if finished_row(r))
    rundir.check_not_less(problem.results_file, stored)
    if stored:
        rundir.started()


def _execute(job: Job, backend, run_: Run, remaining: int) -> tuple[bool, Any, list]:
    """Step 4's trials and step 5's files: (interrupted, results frame, rows)."""
    interrupted = False
    try:
        if remaining > 0:
            job.echo(run_.evaluator.describe())
            backend.execute(run_, remaining)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if run_.bar is not None:
            run_.bar.close()
        rows = backend.rows()
        if any(map(finished_row, rows)):
            run_.rundir.started()  # a trial finished: the directory holds results, a failure leaves them
        run_.writer.extra = {**run_.extra, **backend.extra()}
        df = run_.writer.rewrite(rows, plot=True)
    return interrupted, df, rows


def run(job: Job) -> dict[str, Any] | None:
    """Run (or resume) ``job`` until ``job.n_trials`` trials have finished; returns the best row."""
    prep = prepare(job)
    problem = job.problem
    rundir = RunDir(job.out, what=f"nas {problem.kind} run")
    config = _config(job, prep.backend)
    state = prep.backend.config_store()
    with handle_interrupts(), rundir.own(config, restart=job.restart, state=state, results_file=problem.results_file):
        target = _target(job, prep, rundir)
        evaluator = prep.evaluator_kind(job.settings, target=target, reference=problem.reference_arch(), data=prep.data)
        run_, rows, _, remaining = _open(job, prep.backend, rundir, evaluator)
        t0 = time.perf_counter()
        interrupted, df, rows = _execute(job, prep.backend, run_, remaining)
        sections = {**step_time_fidelity(df), **accuracy_noise(df)}
        if not interrupted and problem.pending(rows, job.n_trials)[1] == 0:
            sections.update(problem.finish(rundir.path, df, job.echo, evaluator))
        write_fidelity(rundir.path, sections, warn=run_.warn)
    _report(job, run_, df, sections, interrupted, remaining, time.perf_counter() - t0)
    return run_.writer.best


def _report(job: Job, run_: Run, df, sections: dict, interrupted: bool, remaining: int, seconds: float) -> None:
    """Step 5's summary lines."""
    problem, echo, path = job.problem, job.echo, run_.path
    echo(problem.summary(df))
    for line in fidelity_lines(sections):
        echo(line)
    for w in run_.warnings:
        echo(f"warning: {w}")
    if interrupted:
        echo(f"interrupted; results so far in {path}/ ({problem.files()}); rerun the same command to resume")
        raise KeyboardInterrupt
    if remaining > 0:
        echo(f"{problem.kind} time {seconds:.1f} s; results in {path}/ ({problem.files()})")
    best = run_.writer.best
    if best and (sections.get("accuracy_noise") or {}).get("separates") is False:
        echo("the best below wins on training speed and size: its accuracy is within the seed noise of the others'")
    if best:
        echo(problem.closing_line(best, path))
    else:
        err = common_error(df)
        echo("no trial completed" + (f"; most common error: {err}" if err else ""))
