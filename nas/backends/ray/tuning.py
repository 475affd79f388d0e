"""Ray Tune's side of a run: Optuna's sampler as Tune's searcher (:func:`searcher`), result rows from
Tune's trials (:func:`trial_row`) and the callback that appends each finished trial's row to the
run's results once Tune's stored experiment records it (:func:`exporter`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.study.problems import problem_from_config
from nas.study.results import ResultsWriter
from nas.study.strategies import get_sampler

# Tune's bookkeeping in every result: not row fields.
EXPERIMENT = "ray"  # Ray Tune's experiment directory inside the run directory
_TUNE_KEYS = {
    "training_iteration",
    "time_total_s",
    "time_this_iter_s",
    "time_since_restore",
    "timestamp",
    "date",
    "episodes_total",
    "timesteps_total",
    "timesteps_since_restore",
    "iterations_since_restore",
    "config",
    "checkpoint_dir_name",
    "done",
    "trial_id",
    "experiment_tag",
    "should_checkpoint",
    "epoch",
    "objective_so_far",
    "objective",
    "final",
}


class Proposer:
    """OptunaSearch's define-by-run space: the problem proposes from the Optuna trial, exactly as in
    the embedded driver. Holds only the run configuration (plain data), so Tune can pickle it."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self._problem = None

    def __call__(self, trial) -> dict[str, Any]:
        if self._problem is None:
            self._problem = problem_from_config(self.spec)[0]
        return {"number": trial.number, "proposal": self._problem.propose(trial)}

    def __getstate__(self):
        return {"spec": self.spec, "_problem": None}


def searcher(problem, spec: dict[str, Any], sampler: str, seed: int):
    from ray.tune.search.optuna import OptunaSearch  # Ray is optional and heavy: imported when the ray backend runs

    class NasOptunaSearch(OptunaSearch):
        """Tells Optuna only final results (per-epoch ones feed Tune's scheduler), a failed trial as a
        failure, a stopped one as pruned."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            return None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if result and result.get("state") == "FAIL":
                result, error = None, True
            elif result and not result.get("final"):
                result = None  # stopped by the scheduler after an epoch: pruned
            super().on_trial_complete(trial_id, result=result, error=error)

    multi = len(problem.directions) > 1
    metric = [f"objective_{i}" for i in range(len(problem.directions))] if multi else "objective"
    mode = ["max" if d == "maximize" else "min" for d in problem.directions] if multi else "max"
    points = problem.fixed_points()
    return NasOptunaSearch(
        space=Proposer(spec),
        metric=metric,
        mode=mode,
        study_name=problem.study_name,
        sampler=get_sampler(sampler).make(seed, True),
        points_to_evaluate=points,
    )


def trial_row(trial, status: str | None = None, interrupted: bool = False) -> dict[str, Any]:
    """The result row of a Tune trial. ``status`` overrides the trial's (callbacks run before Tune
    updates it)."""
    r = trial.last_result or {}
    status = status or trial.status
    row = {k: v for k, v in r.items() if k not in _TUNE_KEYS and not k.startswith("objective_so_far_")}
    row.setdefault("number", trial.config.get("number"))
    row.setdefault("arch", (trial.config.get("proposal") or {}).get("arch"))
    row["tune_trial_id"] = trial.trial_id
    if status == "TERMINATED" and r.get("final"):
        pass  # the trial's own row: COMPLETE, PRUNED or FAIL
    elif status == "TERMINATED":
        row.update(state="PRUNED", error=None, epochs=r.get("epoch"))  # stopped by the scheduler after an epoch
        if r.get("objective_so_far") is not None:
            row["reward_so_far"] = r["objective_so_far"]
    elif status == "ERROR":
        row.update(state="FAIL", error=_error_file_text(trial))
    else:
        row.update(
            state="FAIL" if interrupted else "RUNNING",
            error="interrupted (the driver stopped); rerun the command to resume" if interrupted else None,
        )
    if row.get("duration_s") is None and r.get("time_total_s") is not None:
        row["duration_s"] = r["time_total_s"]
    return row


def _error_file_text(trial) -> str:
    """The last line of Tune's error file: the exception that ended the trial (its worker died, ...)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "the trial's worker failed")[:500]


class _RowExport:
    """Appends each finished trial's row to the run's results (plain data only: Tune pickles it),
    once Tune's stored experiment records the trial as finished. Tune snapshots the experiment
    every second; a row appended before the snapshot would let ``trials.csv`` record a trial that a
    driver killed in between restores as unfinished, and the rerun would be refused as having
    fewer trials than its results (nas.study.rundir.RunDir.check_not_less)."""

    def __init__(self, run_dir: str, problem_spec: dict[str, Any], extra: dict[str, Any], echo_lines: bool):
        self.run_dir, self.problem_spec, self.extra, self.echo_lines = run_dir, problem_spec, extra, echo_lines
        self.exp_dir = Path(run_dir).resolve() / EXPERIMENT
        self._writer = None
        self._pending: list[tuple[str, dict]] = []
        self._stored: tuple[float, set[str]] = (-1.0, set())

    def _stored_finished(self) -> set[str]:
        """Ids of the trials the newest stored experiment snapshot records as finished."""
        try:
            path = max(self.exp_dir.glob("experiment_state-*.json"), key=lambda q: q.stat().st_mtime)
            mtime = path.stat().st_mtime
            if mtime == self._stored[0]:
                return self._stored[1]
            state = json.loads(path.read_text())
            done = set()
            for entry in state.get("trial_data", []):
                t = json.loads(entry[0])
                if t.get("status") in ("TERMINATED", "ERROR"):
                    done.add(t.get("trial_id"))
            self._stored = (mtime, done)
        except (ValueError, OSError, KeyError, IndexError, TypeError):
            pass  # no snapshot yet, or one being written: the next step looks again
        return self._stored[1]

    def _flush(self) -> None:
        if not self._pending:
            return
        stored = self._stored_finished()
        ready = [row for tid, row in self._pending if tid in stored]
        self._pending = [(tid, row) for tid, row in self._pending if tid not in stored]
        for row in ready:
            self._write(row)

    def _write(self, row: dict) -> None:
        if self._writer is None:
            self._writer = ResultsWriter(Path(self.run_dir), problem_from_config(self.problem_spec)[0], self.extra)
        self._writer.append(row)
        if self.echo_lines:
            what = f"reward {row['reward']:.4f}" if row.get("reward") is not None else (row.get("error") or "")
            print(
                f"trial {row['number']} {row['state']} {what} [{row.get('hostname', '?')} {row.get('node_ip', '?')} "
                f"{row.get('device', '')} {row.get('device_name', '')}]",
                flush=True,
            )

    def _done(self, trial, status: str) -> None:
        self._pending.append((trial.trial_id, trial_row(trial, status)))
        self._flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._done(trial, "ERROR")

    def on_step_end(self, iteration, trials, **info):
        self._flush()

    def on_experiment_end(self, trials, **info):
        # Rows still waiting for a snapshot are written by the driver's final rewrite, from the
        # experiment Tune stores at its end.
        self._flush()


def exporter(run_dir: str, problem_spec: dict[str, Any], extra: dict[str, Any], echo_lines: bool):
    """The Tune callback that appends finished trials' rows (:class:`_RowExport`)."""
    from ray import tune  # Ray is optional and heavy: imported when the ray backend runs

    class Exporter(_RowExport, tune.Callback):
        pass

    return Exporter(run_dir, problem_spec, extra, echo_lines)
