"""What the embedded and the workers backend share: an Optuna study in the run's storage.

:class:`OptunaBackend` keeps the study (created or resumed, fixed proposals enqueued), closes trials
of dead processes and gives the rows; :func:`run_trials` is the trial loop of one process (Optuna's
ask and tell around :func:`nas.trial.objective.run_objective`): the embedded backend runs it in the
driver's process, each worker process runs it on the shared storage. Samplers and pruners come from
their registries (:mod:`nas.study.strategies`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

from nas.backends.base import Backend
from nas.core.interrupt import check as check_interrupt
from nas.core.interrupt import critical
from nas.study.pareto import intermediate_key, prune_now
from nas.study.storage import (
    HEARTBEAT_S,
    StudyConfigStore,
    close_dead_trials,
    finished,
    make_storage,
    study_rows,
    wait_for_unplaced_trials,
)
from nas.study.strategies import get_pruner, get_sampler
from nas.trial.objective import error_text, place, run_objective


class OptunaBackend(Backend):
    """A backend whose state is an Optuna study in the run's storage."""

    family = "optuna"  # the embedded and workers backends resume each other's runs

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

    def config_store(self) -> StudyConfigStore:
        """The run's configuration in the Optuna study, which the embedded and workers backends share."""
        job = self.job
        return StudyConfigStore(job.storage, Path(job.out), job.problem.study_name, job.problem.directions)

    def close_dead(self) -> list[int]:
        wait_for_unplaced_trials(self.study, echo=self.job.echo)
        with critical():
            return close_dead_trials(self.study)

    def rows(self) -> list[dict[str, Any]]:
        return study_rows(self.study)

    def n_finished(self) -> int:
        return sum(finished(t) for t in self.study.get_trials(deepcopy=False))

    def worker_study(self, slot: int = 0) -> optuna.Study:
        """This process's handle on the study, with the pruner and its own sampler, seeded from the
        run's seed, the trials already finished (a resumed run does not replay the first run's draws)
        and the worker's slot (parallel workers do not draw the same start-up trials)."""
        job = self.job
        seed = job.settings.seed + self.n_finished() + 1009 * slot
        return optuna.load_study(
            study_name=job.problem.study_name,
            storage=self.storage,
            sampler=get_sampler(job.sampler).make(seed, self.parallel),
            pruner=get_pruner(job.pruner).optuna(job.settings.proxy.epochs),
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


def optuna_report(trial: optuna.Trial, epochs: int) -> Callable[[int, Any], bool]:
    """The pruning hook on Optuna: one number is reported to the trial and judged by
    ``should_prune``; a list (the objectives of a multi-objective study, which Optuna's ``report``
    refuses) is stored as a user attribute and judged by the study's pruner directly
    (:mod:`nas.study.pareto`)."""

    def report(epoch: int, value: Any) -> bool:
        multi = isinstance(value, (list, tuple))
        with critical():
            if multi:
                trial.set_user_attr(intermediate_key(epoch), [float(v) for v in value])
            else:
                trial.report(value, epoch)
        # After the last epoch the work is done: pruning then would only discard a result.
        return epoch < epochs and (prune_now(trial) if multi else trial.should_prune())

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
    tags = {**place(), **(tags or {})}  # the device is in each trial's row (run_objective)
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
            row = {"number": trial.number, "state": "FAIL", "error": error_text(e)}
        row = {**row, **tags}
        tell(study, trial, row, problem)
        writer.append(row)
        completed += row["state"] == "COMPLETE"
        if on_row is not None:
            on_row(row)
    return completed


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in params.items()))
