"""The one driver skeleton every way of running a search shares (``nas search``, ``nas grid-scale``,
``nas worker``'s parent, any backend):

1. check everything before anything is written: settings (checked on construction), the backend's
   options, the device, the data (loaded and probed), the storage, the output path;
2. own the run directory (:class:`nas.study.rundir.RunDir`: one owner, one experiment, kept in
   ``config.json`` and in the backend's state; a start that fails before its first trial finished
   leaves no trace);
3. open the backend's state, close trials left running by dead processes, refuse to replace stored
   results by fewer;
4. let the backend run the missing trials, each finished trial appended to the results as it ends;
5. rewrite the result files from the backend's state, write ``fidelity.json``, print the summary
   and the reason when nothing completed.
"""

from __future__ import annotations

import time
from typing import Any

from nas.backends import get_backend
from nas.core.device import resolve_device
from nas.core.interrupt import handle_interrupts
from nas.study.fidelity import fidelity_lines, step_time_fidelity, write_fidelity
from nas.study.job import Job, Run, _device_name, _family, config_store, run_extra
from nas.study.results import common_error, finished_row
from nas.study.rundir import RunDir
from nas.study.storage import check_storage_url
from nas.trial.evaluator import Evaluator


def prepare(job: Job):
    """Step 1: the backend's options, the device, the data, the storage URL and the output path, checked
    before anything is written. Returns the backend and the driver's evaluator (it holds the loaded data)."""
    backend = get_backend(job.backend, job)
    backend.check()
    resolve_device(job.settings.device)  # a GPU that is not there: refused here, not at the first trial
    RunDir(job.out).check()
    check_storage_url(job.storage)
    evaluator = job.evaluator or Evaluator(job.settings, reference=job.problem.reference_arch())
    evaluator.check_data()
    return backend, evaluator


def run(job: Job) -> dict[str, Any] | None:
    """Run (or resume) ``job`` until ``job.n_trials`` trials have finished; returns the best row."""
    backend, evaluator = prepare(job)
    problem, echo = job.problem, job.echo
    rundir = RunDir(job.out, what=f"nas {problem.kind} run")
    config = {**problem.config(), "backend": _family(job.backend), **backend.config()}
    state = config_store(job)
    with handle_interrupts(), rundir.own(config, restart=job.restart, state=state, results_file=problem.results_file):
        backend.open(rundir)
        closed = backend.close_dead()
        rows = backend.rows()
        done, remaining = problem.pending(rows, job.n_trials)
        _started_once_finished(rundir, problem, rows)
        extra = {**run_extra(job, evaluator), **backend.extra()}
        run_ = Run(job, rundir, evaluator, extra)
        run_.writer.rewrite(rows, plot=False)
        _announce(echo, closed, done, remaining, rundir, problem)
        t0 = time.perf_counter()
        interrupted = False
        try:
            if remaining > 0:
                _describe(job, evaluator, echo)
                backend.execute(run_, remaining)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if run_.bar is not None:
                run_.bar.close()
            rows = backend.rows()
            if any(map(finished_row, rows)):
                rundir.started()  # a trial finished: the directory holds results, a failure leaves them
            run_.writer.extra = {**extra, **backend.extra()}
            df = run_.writer.rewrite(rows, plot=True)
        best = run_.writer.best
        sections = step_time_fidelity(df)
        if not interrupted and problem.pending(rows, job.n_trials)[1] == 0:
            sections.update(problem.finish(rundir.path, df, echo))
        write_fidelity(rundir.path, sections, warn=run_.warn)
    echo(problem.summary(df))
    for line in fidelity_lines(sections):
        echo(line)
    for w in run_.warnings:
        echo(f"warning: {w}")
    if interrupted:
        echo(f"interrupted; results so far in {rundir.path}/ ({problem.files()}); rerun the same command to resume")
        raise KeyboardInterrupt
    if remaining > 0:
        echo(f"{problem.kind} time {time.perf_counter() - t0:.1f} s; results in {rundir.path}/ ({problem.files()})")
    if best:
        echo(
            problem.closing_line(best, rundir.path)
            if hasattr(problem, "closing_line")
            else f"best architecture (reward {best['reward']:.4f}): {best['arch']}"
        )
    else:
        err = common_error(df)
        echo("no trial completed" + (f"; most common error: {err}" if err else ""))
    return best


def _started_once_finished(rundir: RunDir, problem, rows) -> None:
    """Refuse storage that holds fewer finished trials than the results; once one has finished, the
    directory holds results and a failure no longer undoes the start (before, it leaves no trace)."""
    stored = sum(1 for r in rows if finished_row(r))
    rundir.check_not_less(problem.results_file, stored)
    if stored:
        rundir.started()


def _announce(echo, closed: list[int], done: int, remaining: int, rundir: RunDir, problem) -> None:
    if closed:
        echo(
            f"closed {len(closed)} trial(s) left running by a stopped process ({', '.join(map(str, closed))}); "
            "they run again"
        )
    if done:
        echo(f"resuming {rundir.path}: {done} of {done + remaining} {problem.unit} already finished")


def _describe(job: Job, evaluator, echo) -> None:
    st = job.settings.step_time
    if st.method == "proxy":
        what = (
            f"the proxy's step (width {job.settings.proxy.width:g}, depth {job.settings.proxy.depth:g}, "
            f"{job.settings.proxy.image_size} px, batch {job.settings.proxy.train.batch_size})"
        )
    else:
        what = f"the full-size training step at {st.target_image_size} px, batch {st.target_batch_size}"
    how = {"table": "predicted by the step-time table", "measure": "measured", "proxy": "measured"}[st.method]
    echo(f"S = step time of {what}, {how} on {_device_name(evaluator)}, relative to the reference")


# -- fidelity ---------------------------------------------------------------------------------------------
