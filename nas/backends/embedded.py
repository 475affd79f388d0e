"""The embedded backend: Optuna in this process, on the run's persistent storage.

:class:`OptunaBackend` is what the embedded and the workers backend share: the study in the run's
storage (created or resumed, fixed proposals enqueued), closing trials of dead processes, rows from
the study, and the reference stored in the study per device and setting, so it is timed once for
every process and every resumed run on the same device. :func:`run_trials` is the trial loop of one
process (Optuna's ask and tell around :func:`nas.trial.objective.run_objective`): the embedded backend runs it
here, each worker process runs it on the shared storage.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna

from nas.backends import Backend
from nas.core.interrupt import check as check_interrupt
from nas.core.interrupt import critical
from nas.study.storage import (
    HEARTBEAT_S,
    close_dead_trials,
    finished,
    make_pruner,
    make_sampler,
    make_storage,
    study_rows,
)
from nas.trial.objective import place, run_objective

REFERENCE_PREFIX = "reference:"  # study user attribute: a reference timed on one device and setting


class OptunaBackend(Backend):
    """A backend whose state is an Optuna study in the run's storage."""

    parallel = False  # other processes draw from the same study (TPE's constant liar)

    def open(self, run) -> None:
        job = self.job
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.storage = make_storage(job.storage, run.path)
        with critical():
            self.study = optuna.create_study(
                storage=self.storage,
                study_name=job.problem.study_name,
                directions=list(job.problem.directions),
                load_if_exists=True,
            )
            self._enqueue()

    def _enqueue(self) -> None:
        """Fixed proposals (the grid's candidates) not yet finished, enqueued in this run's order;
        waiting trials a killed run left are dropped first, or they would run before this run's own."""
        points = self.job.problem.fixed_points()
        if points is None:
            return
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.state == optuna.trial.TrialState.WAITING:
                self.storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        done = {_key(t.params) for t in trials if finished(t)}
        for p in points:
            if _key(p) not in done:
                self.study.enqueue_trial(p)

    def close_dead(self) -> list[int]:
        with critical():
            return close_dead_trials(self.study)

    def rows(self) -> list[dict[str, Any]]:
        return study_rows(self.study)

    def n_finished(self) -> int:
        return sum(finished(t) for t in self.study.get_trials(deepcopy=False))

    def extra(self) -> dict[str, Any]:
        refs = (
            {k[len(REFERENCE_PREFIX) :]: v for k, v in self.study.user_attrs.items() if k.startswith(REFERENCE_PREFIX)}
            if hasattr(self, "study")
            else {}
        )
        return {"backend": self.name, "reference": refs}

    def worker_study(self, slot: int = 0) -> optuna.Study:
        """This process's handle on the study, with the pruner and its own sampler, seeded from the
        run's seed, the trials already finished (a resumed run does not replay the first run's draws)
        and the worker's slot (parallel workers do not draw the same start-up trials)."""
        job = self.job
        seed = job.settings.seed + self.n_finished() + 1009 * slot
        return optuna.load_study(
            study_name=job.problem.study_name,
            storage=self.storage,
            sampler=make_sampler(job.sampler, seed, parallel=self.parallel),
            pruner=make_pruner(job.pruner, job.settings.proxy.epochs),
        )


def stored_reference(study: optuna.Study, evaluator, echo: Callable[[str], None]) -> dict[str, Any]:
    """The evaluator's reference: reused from the study when this device and setting timed it
    before (a resumed run, another worker), else timed here and stored."""
    key = evaluator.reference_key()
    for k, v in study.user_attrs.items():
        if k.startswith(REFERENCE_PREFIX) and isinstance(v, dict) and v.get("key") == key:
            evaluator.use_reference(v)
            return v
    echo(
        "timing the reference ..."
        if evaluator.settings.step_time.method != "table"
        else "predicting the reference's step time ..."
    )
    ref = evaluator.reference()
    name = f"{ref.get('device')}: {ref.get('device_name')}"
    with critical():
        study.set_user_attr(REFERENCE_PREFIX + name, ref)
    return ref


def describe_reference(ref: dict[str, Any]) -> str:
    spread = f", IQR {ref['iqr_ms']:.2f} ms" if ref.get("iqr_ms") is not None else ""
    return (
        f"reference step time {ref['step_time_ms']:.2f} ms ({ref['method']}, {ref['image_size']} px, batch "
        f"{ref['batch_size']}{spread}) on {ref.get('device_name')} ({ref.get('device')})"
    )


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial) -> Iterator[None]:
    """Renew the trial's ``heartbeat`` attribute while it runs, so a rerun on another machine can tell
    a live trial from a dead one (this machine's are checked by process id)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a busy database: the next beat tries again
                trial.set_user_attr("heartbeat", time.time())

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def optuna_report(trial: optuna.Trial, epochs: int) -> Callable[[int, float], bool]:
    def report(epoch: int, value: float) -> bool:
        with critical():
            trial.report(value, epoch)
        # After the last epoch the work is done: pruning then would only discard a result.
        return epoch < epochs and trial.should_prune()

    return report


def tell(study: optuna.Study, trial: optuna.Trial, row: dict[str, Any], problem) -> None:
    """Record the row and tell the study how the trial ended (one commit for the row)."""
    state = row["state"]
    with critical():
        trial.set_user_attr("row", row)
        if state == "COMPLETE":
            study.tell(trial, problem.values(row))
        else:
            if state == "FAIL":
                trial.set_user_attr("error", row.get("error") or "failed")
            study.tell(
                trial, state=optuna.trial.TrialState.PRUNED if state == "PRUNED" else optuna.trial.TrialState.FAIL
            )


def run_trials(
    study: optuna.Study,
    problem,
    evaluator,
    writer,
    n: int,
    *,
    tags: dict[str, Any] | None = None,
    claims=None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run ``n`` trials of ``problem`` in this process; returns how many completed.

    Each trial: ask the study, record where it runs (so a rerun can close it if this process dies),
    draw the proposal, let ``claims`` (several processes) decide whether another trial already
    evaluates the same architecture, run the objective with Optuna's pruner as its hook, store the row,
    tell the study, append the row to the results. An interrupt closes the trial without a reason, so
    the next run reruns it."""
    tags = {**place(), **(tags or {})}
    completed = 0
    epochs = problem.settings.proxy.epochs
    for _ in range(n):
        check_interrupt()
        with critical():
            trial = study.ask()
            for k, v in tags.items():
                trial.set_user_attr(k, v)
        try:
            with heartbeat(trial):
                proposal = problem.propose(trial)
                row = claims.evaluate(trial, proposal) if claims is not None else None
                if row is None:
                    outcome = run_objective(problem, evaluator, proposal, trial.number, optuna_report(trial, epochs))
                    row = outcome.row
        except KeyboardInterrupt:
            with warnings.catch_warnings(), critical():
                warnings.simplefilter("ignore")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception as e:  # a space or plugin that fails to propose: recorded like a failed trial
            from nas.trial.objective import error_text

            row = {"number": trial.number, "state": "FAIL", "error": error_text(e)}
        row = {**row, **tags}
        tell(study, trial, row, problem)
        writer.append(row)
        completed += row["state"] == "COMPLETE"
        if on_row is not None:
            on_row(row)
    return completed


class EmbeddedBackend(OptunaBackend):
    """All trials in this process, one after the other."""

    name = "embedded"

    def execute(self, run, remaining: int) -> None:
        job = self.job
        study = self.worker_study()
        ref = stored_reference(self.study, run.evaluator, job.echo)
        job.echo(describe_reference(ref))
        if ref.get("noisy"):
            run.warn("the reference's timing never settled (machine busy?): S values may be distorted")
        bar = run.progress(self.n_finished() + remaining, self.n_finished())
        checker = DriftCheck(run, ref)

        def on_row(row: dict[str, Any]) -> None:
            bar.update(1)
            if run.writer.best:
                bar.set_postfix_str(f"best {run.writer.best.get('reward', run.writer.best.get('accuracy', 0)):.4f}")
            checker.after_trial()

        run_trials(study, job.problem, run.evaluator, run.writer, remaining, on_row=on_row)


class DriftCheck:
    """Re-times a measured reference every ``every`` trials and warns once when it moved: the
    machine's load changed during the run, so S values from different times are less comparable."""

    def __init__(self, run, ref: dict[str, Any], every: int = 10):
        self.run, self.ref, self.every, self.count, self.warned = run, ref, every, 0, False

    def after_trial(self) -> None:
        self.count += 1
        if self.warned or self.count % self.every:
            return
        ev = self.run.evaluator
        d = ev.timer.drift(ev.reference_arch, self.ref["step_time_ms"])
        if d is not None:
            self.warned = True
            self.run.warn(
                f"the reference now takes {d['retimed_step_time_ms']:.2f} ms against "
                f"{d['reference_step_time_ms']:.2f} ms at the start ({100 * d['change']:+.0f}%): the machine's "
                "load changed during the run, so S values from different times are less comparable"
            )


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in params.items()))
