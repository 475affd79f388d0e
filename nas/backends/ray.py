"""The Ray Tune backend: the same problem and objective, scheduled on a Ray cluster.

* Proposals: Optuna's sampler stays the searcher (``OptunaSearch`` with the problem's define-by-run
  ``propose``; the grid's fixed candidates enqueued as ``points_to_evaluate``). Each Tune trial runs
  :func:`nas.trial.objective.run_objective` in :func:`tune_trial`; its pruning hook reports the problem's
  pruning signal (the reward so far, as the embedded pruner sees it) as ``objective_so_far``, so
  ``--scheduler asha`` stops trials on the same signal.
* Placement: each trial holds ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` GPUs. A fraction
  (``0.25``: four trials per GPU) lets small proxies share a large GPU; trials sharing a GPU time
  their steps one at a time (:func:`nas.core.devicelock.timing`), and the default ``--step-time table``
  needs no timing per trial at all.
* Provenance: every row records the node and process it ran on and the reference it was normalised
  by, timed once per worker process and device (:func:`cached_evaluator`; Tune reuses actors).
* Fault tolerance: a trial whose worker process or node dies is retried (``FailureConfig``); a
  candidate's own failure is recorded as FAIL with its reason and not retried. Tune's experiment lives
  in ``RUN_DIR/ray``; rerunning the same command after the driver was killed restores it.

Security: a Ray cluster executes whatever code its clients send. Bind its ports to a trusted network
only; see the README.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nas.backends import Backend
from nas.errors import NasError, check_int

EXPERIMENT = "ray"  # Ray Tune's experiment directory inside the run directory
SCHEDULERS = ("none", "asha")
CONNECT_TIMEOUT_S = 30.0
# Tune's bookkeeping in every result: not row fields.
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


@dataclass(frozen=True)
class RayOptions:
    """Where and how trials run on Ray (none of it changes what a trial computes)."""

    address: str | None = None  # None: start a private local Ray; "auto" or HOST:PORT: join a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    scheduler: str = "none"
    max_failures: int = 2  # retries of a trial whose worker died
    plugins: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        c = self.cpus_per_trial
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise NasError(f"--cpus-per-trial must be a positive number, got {c!r}")
        g = self.gpus_per_trial
        if (
            isinstance(g, bool)
            or not isinstance(g, (int, float))
            or not math.isfinite(g)
            or g < 0
            or (g > 1 and g != int(g))
        ):
            # Ray places a fraction of one GPU, or whole GPUs: 1.5 GPUs is neither.
            raise NasError(
                f"--gpus-per-trial must be a fraction of one GPU (e.g. 0.25: four trials per GPU) or "
                f"a whole number of GPUs, got {g!r}"
            )
        if self.max_concurrent is not None:
            check_int("--max-concurrent", self.max_concurrent, 1, 100_000)
        if self.scheduler not in SCHEDULERS:
            raise NasError(f"unknown scheduler {self.scheduler!r}; known: {', '.join(SCHEDULERS)}")
        check_int("max failures", self.max_failures, 0, 1000)
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise NasError(f"--address must be auto or HOST:PORT, got {self.address!r}")

    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


# -- inside a Ray worker ----------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def cached_evaluator(problem):
    """This process's evaluator for ``problem`` on the device it resolves to here: the reference is
    timed once per worker process and device (another GPU kind, another CUDA_VISIBLE_DEVICES gets
    its own), and a reused Tune actor keeps it."""
    from nas.core.device import device_name, resolve_device
    from nas.trial.evaluator import Evaluator

    dev = resolve_device(problem.settings.device)
    ref = problem.reference_arch()
    key = json.dumps(
        [
            problem.settings.to_dict(),
            None if ref is None else ref.to_string(),
            str(dev),
            device_name(dev),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        ],
        sort_keys=True,
    )
    if key not in _CACHE:
        _CACHE[key] = Evaluator(problem.settings, reference=ref)
    return _CACHE[key]


def tune_trial(config: dict[str, Any], *, spec: dict[str, Any], plugins: Sequence[str] = ()) -> None:
    """One trial as a Ray Tune function trainable: ``config`` holds the Optuna trial's ``number`` and
    the ``proposal``; reports ``objective_so_far`` per epoch and the trial's row at the end."""
    from ray import tune

    from nas.core.plugins import import_plugins
    from nas.study.problems import problem_from_config
    from nas.trial.objective import Outcome, error_text, place, run_objective

    def report(epoch: int, value: float) -> bool:
        tune.report({"epoch": epoch, "objective_so_far": value})
        return False  # Tune's scheduler stops the trial itself

    number = int(config["number"])
    try:
        import_plugins(plugins)
        problem = problem_from_config(spec)[0]
        evaluator = cached_evaluator(problem)
        evaluator.reference()
        outcome = run_objective(problem, evaluator, config["proposal"], number, report)
    except Exception as e:  # the setup's failure (a plugin, the data): recorded, not retried
        outcome = Outcome(
            "FAIL",
            {
                "number": number,
                "arch": config["proposal"].get("arch"),
                **place(),
                "state": "FAIL",
                "error": error_text(e),
            },
            error_text(e),
        )
    row = {**outcome.row, "node_ip": _node_ip()}
    final = {**row, "final": True}
    if outcome.state == "COMPLETE":
        values = problem.values(row)
        if isinstance(values, list):
            final.update({f"objective_{i}": v for i, v in enumerate(values)})
        else:
            final["objective"] = values
    tune.report(final)


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class Proposer:
    """OptunaSearch's define-by-run space: the problem proposes from the Optuna trial, exactly as in
    the embedded driver. Holds only the run configuration (plain data), so Tune can pickle it."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self._problem = None

    def __call__(self, trial) -> dict[str, Any]:
        if self._problem is None:
            from nas.study.problems import problem_from_config

            self._problem = problem_from_config(self.spec)[0]
        return {"number": trial.number, "proposal": self._problem.propose(trial)}

    def __getstate__(self):
        return {"spec": self.spec, "_problem": None}


def _searcher(problem, spec: dict[str, Any], sampler: str, seed: int):
    from ray.tune.search.optuna import OptunaSearch

    from nas.study.storage import make_sampler

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
        sampler=make_sampler(sampler if points is None else "random", seed, parallel=True),
        points_to_evaluate=points,
    )


# -- rows from Tune's trials --------------------------------------------------------------------------------


def trial_row(trial, status: str | None = None, interrupted: bool = False) -> dict[str, Any]:
    """The result row of a Tune trial. ``status`` overrides the trial's (callbacks run before Tune
    updates it)."""
    r = trial.last_result or {}
    status = status or trial.status
    row = {k: v for k, v in r.items() if k not in _TUNE_KEYS}
    row.setdefault("number", trial.config.get("number"))
    row.setdefault("arch", (trial.config.get("proposal") or {}).get("arch"))
    row["tune_trial_id"] = trial.trial_id
    if status == "TERMINATED" and r.get("final"):
        pass  # the trial's own row: COMPLETE, PRUNED or FAIL
    elif status == "TERMINATED":
        row.update(state="PRUNED", error=None)  # stopped by the scheduler after an epoch
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


def _exporter(run_dir: str, problem_spec: dict[str, Any], extra: dict[str, Any], echo_lines: bool):
    from ray import tune

    exp_dir = Path(run_dir).resolve() / EXPERIMENT

    class Exporter(tune.Callback):
        """Appends each finished trial's row to the run's results (plain data only: Tune pickles it),
        once Tune's stored experiment records the trial as finished. Tune snapshots the experiment
        every second; a row appended before the snapshot would let ``trials.csv`` record a trial that a
        driver killed in between restores as unfinished, and the rerun would be refused as having
        fewer trials than its results (nas.study.rundir.RunDir.check_not_less)."""

        def __init__(self):
            self._writer = None
            self._pending: list[tuple[str, dict]] = []
            self._stored: tuple[float, set[str]] = (-1.0, set())

        def _stored_finished(self) -> set[str]:
            """Ids of the trials the newest stored experiment snapshot records as finished."""
            try:
                path = max(exp_dir.glob("experiment_state-*.json"), key=lambda q: q.stat().st_mtime)
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
            from nas.study.problems import problem_from_config
            from nas.study.results import ResultsWriter

            if self._writer is None:
                self._writer = ResultsWriter(Path(run_dir), problem_from_config(problem_spec)[0], extra)
            self._writer.append(row)
            if echo_lines:
                what = f"reward {row['reward']:.4f}" if row.get("reward") is not None else (row.get("error") or "")
                print(
                    f"trial {row['number']} {row['state']} {what} [{row.get('hostname', '?')} "
                    f"{row.get('node_ip', '?')} {row.get('device', '')} {row.get('device_name', '')}]",
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
            # Rows still waiting for a snapshot are written by the driver's final rewrite, from
            # the experiment Tune stores at its end.
            self._flush()

    return Exporter()


# -- the session ---------------------------------------------------------------------------------------------


def plugin_runtime_env(modules: Sequence[ModuleType]) -> dict[str, Any]:
    """Ship plugin modules that are not installed packages to every node (``py_modules``)."""
    ship = []
    for m in modules:
        top = sys.modules[m.__name__.split(".")[0]]
        path = getattr(top, "__file__", None) or ""
        if any(part in ("site-packages", "dist-packages") for part in Path(path).parts):
            continue
        if top not in ship:
            ship.append(top)
    return {"py_modules": ship} if ship else {}


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S, refused_for: float = 5.0) -> None:
    """A HOST:PORT that answers within ``timeout`` seconds (Ray itself would retry for minutes). A
    refused connection (nothing listening) is retried for ``refused_for`` seconds only, in case the
    head is still starting."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise NasError(f"--address must be auto or HOST:PORT, got {address!r}")
    t0 = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout)):
                return
        except OSError as e:
            waited = time.monotonic() - t0
            if waited >= timeout or (isinstance(e, ConnectionRefusedError) and waited >= refused_for):
                raise NasError(
                    f"cannot reach Ray at {address} (nothing answered within {waited:.0f} s: {e}); is the "
                    "head node running, and is the address right?"
                ) from None
            time.sleep(1.0)


@contextlib.contextmanager
def ray_session(opts: RayOptions, modules: Sequence[ModuleType] = ()) -> Iterator[None]:
    """Connect to the cluster at ``opts.address``, or start a private local Ray for this run."""
    import ray

    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "runtime_env": plugin_runtime_env(modules) or None,
    }
    if opts.address is None:
        # "local" starts a new Ray even when another one runs on this machine: ray.init() without
        # an address would join the newest cluster here, which may be someone else's.
        kwargs.update(address="local", include_dashboard=False)
    else:
        kwargs.update(address=opts.address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise NasError(
            f"cannot start or reach Ray at {opts.address or 'this machine'}: {str(e).splitlines()[0]}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _tune_environment() -> None:
    """Tune settings read from the driver's environment (a user's own values win)."""
    # Tune snapshots the experiment at most every 10 s by default; a driver killed in between would
    # rerun trials that had finished. A snapshot of a few hundred trials costs milliseconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Per-epoch results carry objective_so_far, final ones the objective: the searcher and ASHA skip
    # results that lack theirs.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def default_concurrency(opts: RayOptions) -> int:
    """How many trials the cluster holds at once with the per-trial resources."""
    import ray

    res = ray.cluster_resources()
    n = int(res.get("CPU", 0) // opts.cpus_per_trial)
    what = f"{opts.cpus_per_trial:g} CPU"
    if opts.gpus_per_trial:
        n = min(n, int(res.get("GPU", 0) / opts.gpus_per_trial + 1e-9))
        what += f" and {opts.gpus_per_trial:g} GPU"
    if n < 1:
        raise NasError(
            f"the Ray cluster has {res.get('CPU', 0):g} CPU and {res.get('GPU', 0):g} GPU; a trial needs "
            f"{what} (an autoscaling cluster: pass --max-concurrent to start anyway)"
        )
    return n


def portable(settings_dict: dict[str, Any]) -> dict[str, Any]:
    """Settings for the workers: relative data paths made absolute (a worker's current directory is
    not the driver's; on other nodes the data must be at the same absolute path)."""
    d = json.loads(json.dumps(settings_dict))
    if d.get("data_dir"):
        d["data_dir"] = os.path.abspath(d["data_dir"])
    if isinstance(d.get("dataset"), str) and d["dataset"].startswith("imagefolder:"):
        d["dataset"] = "imagefolder:" + os.path.abspath(d["dataset"].split(":", 1)[1])
    return d


class RayBackend(Backend):
    name = "ray"

    def check(self) -> None:
        if self.job.storage is not None:
            raise NasError("--storage is for the embedded backend; the ray backend keeps its state in OUT/ray")
        self.opts: RayOptions = self.job.options["ray"]
        if self.opts.address not in (None, "auto"):
            check_reachable(self.opts.address)

    def config(self) -> dict[str, Any]:
        # The number of trials and the scheduler are part of a Tune experiment: a restored one keeps them.
        return {"trials": self.job.n_trials, "scheduler": self.opts.scheduler}

    def open(self, run) -> None:
        self.exp_dir = Path(run.path).resolve() / EXPERIMENT
        self._trials = self._load()

    def _load(self) -> list:
        from ray import tune

        if not tune.Tuner.can_restore(self.exp_dir):
            return []
        return list(tune.ExperimentAnalysis(str(self.exp_dir)).trials)

    def rows(self) -> list[dict[str, Any]]:
        return [trial_row(t, interrupted=True) for t in self._load() if t.config.get("number") is not None]

    def extra(self) -> dict[str, Any]:
        # Each worker process times its own reference; per device, the one recorded is that of the
        # best trial there (the one best.json describes), then of the next best, and so on.
        refs: dict[str, Any] = {}
        problem = self.job.problem

        def rank(r: dict[str, Any]) -> float:  # the problem's own best first (as ResultsWriter ranks)
            key = problem.best_key(r) if r.get("state") == "COMPLETE" else None
            return -key if key is not None else math.inf

        for r in sorted(self.rows(), key=rank):
            if r.get("reference_step_time_ms") is not None:
                refs.setdefault(
                    f"{r.get('device')}: {r.get('device_name')}",
                    {
                        "step_time_ms": r["reference_step_time_ms"],
                        "params": r.get("reference_params"),
                        "device": r.get("device"),
                        "device_name": r.get("device_name"),
                    },
                )
        return {"backend": self.name, "reference": refs}

    def execute(self, run, remaining: int) -> None:
        from ray import tune

        from nas.core.plugins import import_plugins

        job, opts = self.job, self.opts
        problem = job.problem
        spec = {**problem.config(), "sampler": job.sampler, "pruner": "none", "storage": None}
        spec["settings"] = portable(spec["settings"])
        modules = import_plugins(opts.plugins)
        job.echo(
            f"ray backend: {job.n_trials} trials, {opts.cpus_per_trial:g} CPU and {opts.gpus_per_trial:g} GPU "
            f"per trial, on {opts.address or 'a local Ray'}; Ray Tune's experiment in {self.exp_dir}"
        )
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, spec=spec, plugins=tuple(opts.plugins)), opts.resources
        )
        _tune_environment()
        with ray_session(opts, modules):
            if tune.Tuner.can_restore(self.exp_dir):
                job.echo(f"restoring the Ray Tune experiment in {self.exp_dir} (finished trials are kept)")
                # Restored as it was saved (searcher, scheduler, concurrency, callbacks): only the trainable is new.
                tuner = tune.Tuner.restore(str(self.exp_dir), trainable=trainable, resume_errored=True)
            else:
                scheduler = None
                if opts.scheduler == "asha":
                    from ray.tune.schedulers import ASHAScheduler

                    scheduler = ASHAScheduler(
                        time_attr="training_iteration",
                        metric="objective_so_far",
                        mode="max",
                        max_t=problem.settings.proxy.epochs + 1,
                        grace_period=1,
                        reduction_factor=3,
                    )
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=_searcher(problem, spec, job.sampler, problem.settings.seed),
                        scheduler=scheduler,
                        num_samples=job.n_trials,
                        max_concurrent_trials=opts.max_concurrent or default_concurrency(opts),
                        reuse_actors=True,
                    ),
                    run_config=tune.RunConfig(
                        name=EXPERIMENT,
                        storage_path=str(self.exp_dir.parent),
                        verbose=0,
                        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                        callbacks=[_exporter(str(run.path), spec, run.extra, True)],
                    ),
                )
            tuner.fit()
