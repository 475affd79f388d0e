"""The Ray Tune backend: the same space, trial and reward code, scheduled on a Ray cluster.

``nas search --backend ray`` runs :class:`nas.trial.Evaluator` inside a Ray Tune function trainable
(:func:`search_trial`). Optuna's sampler stays the searcher (``OptunaSearch`` with the space's
define-by-run ``sample(trial)``, as in the embedded driver); per-epoch accuracy goes to
``tune.report``, so ``--scheduler asha`` can stop weak trials early.

* Placement: each trial holds ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` *whole* GPUs
  (``tune.with_resources``), so nothing else runs on its device while its step time is measured.
* Provenance: every trial records the node it ran on (``node_ip``, ``hostname``, ``pid``) and its
  device; S is normalised by the reference measured in the same worker process on that device. The
  :class:`~nas.trial.Evaluator`, which holds the reference and the data, is cached per process and
  device (:func:`cached_evaluator`) and Tune reuses actors, so the reference is measured once per
  worker, not once per trial.
* Fault tolerance: a trial whose worker process or node dies is retried
  (``FailureConfig(max_failures)``); a trial whose candidate fails (NaN, out of memory, an
  exception) is recorded as FAIL with its error and not retried, since it would fail again. Tune's
  experiment lives in ``RUN_DIR/ray``; rerunning the same command after the driver was killed
  restores it (``Tuner.restore``) and keeps the finished trials.
* Results: the run directory gets the same ``trials.csv`` / ``best.json`` / ``pareto.png`` as the
  embedded backend (:mod:`nas.results`), rewritten after every trial.

:func:`run_configs` is the generic part: a list of fixed configurations through Ray Tune, one row
per configuration (``nas grid-scale --backend ray``).

Security: a Ray cluster executes whatever code its clients send. Bind its ports to a trusted
network only; see the README.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from nas.errors import NasError
from nas.workers import import_plugins, parallel_sampler

EXPERIMENT = "ray"  # Ray Tune's experiment directory inside the run directory
SCHEDULERS = ("none", "asha")
# Not trials.csv columns: Tune's bookkeeping in every result (node_ip, hostname and pid stay: they say
# where a trial ran) and the per-epoch counter of a trial stopped early.
_TUNE_KEYS = {"training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp", "date",
              "episodes_total", "timesteps_total", "timesteps_since_restore", "iterations_since_restore", "config",
              "checkpoint_dir_name", "done", "trial_id", "experiment_tag", "should_checkpoint", "epoch"}
_REF_PREFIX = "reference_"


@dataclass(frozen=True)
class RayOptions:
    """Where and how trials run on Ray (none of it changes what a trial computes)."""

    address: str | None = None  # None: start a private local Ray; "auto" or HOST:PORT: join a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: int = 0
    max_concurrent: int | None = None
    scheduler: str = "none"
    max_failures: int = 2  # retries of a trial whose worker died
    plugins: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_args(cls, args) -> "RayOptions":
        """From ``nas search`` / ``nas grid-scale`` flags (grid-scale has no scheduler or plugins)."""
        gpus = args.gpus_per_trial
        return cls(address=args.address, cpus_per_trial=args.cpus_per_trial,
                   gpus_per_trial=int(gpus) if isinstance(gpus, float) and gpus.is_integer() else gpus,
                   max_concurrent=args.max_concurrent, scheduler=getattr(args, "scheduler", "none"),
                   plugins=tuple(getattr(args, "plugin", None) or ())).validate()

    def validate(self) -> "RayOptions":
        c = self.cpus_per_trial
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise NasError(f"--cpus-per-trial must be a positive number, got {c!r}")
        g = self.gpus_per_trial
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            # A fraction of a GPU would let two trials train on it while one is being timed.
            raise NasError(f"--gpus-per-trial must be a whole number of GPUs (0, 1, 2, ...), got {g!r}")
        m = self.max_concurrent
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise NasError(f"--max-concurrent must be a positive integer, got {m!r}")
        if self.scheduler not in SCHEDULERS:
            raise NasError(f"unknown scheduler {self.scheduler!r}; known: {', '.join(SCHEDULERS)}")
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise NasError(f"max failures must be a non-negative integer, got {self.max_failures!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise NasError(f"--address must be auto or HOST:PORT, got {self.address!r}")
        return self

    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


# -- inside a Ray worker --------------------------------------------------------------------------

_EVALUATORS: dict[str, Any] = {}


def cached_evaluator(settings, reference=None):
    """This process's :class:`~nas.trial.Evaluator` for ``settings`` (and ``reference``
    architecture, default the space's) on the device it resolves to here. The evaluator measures
    the reference once; keeping it per process and device means a reused Ray actor measures it
    once, while a process that sees another device (another GPU kind, another
    ``CUDA_VISIBLE_DEVICES``) gets its own reference."""
    from nas.device import device_name, resolve_device
    from nas.trial import Evaluator

    dev = resolve_device(settings.device)
    key = json.dumps([settings.to_dict(), None if reference is None else reference.to_string(), str(dev),
                      device_name(dev), os.environ.get("CUDA_VISIBLE_DEVICES")], sort_keys=True)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = Evaluator(settings, reference=reference)
    return _EVALUATORS[key]


def where() -> dict[str, Any]:
    """Which node and process a trial ran on."""
    return {"node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(), "pid": os.getpid()}


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:500]


def search_trial(config: dict[str, Any], *, settings: dict[str, Any], plugins: Sequence[str] = ()) -> None:
    """One ``nas search`` trial as a Ray Tune function trainable.

    ``config`` holds the Optuna trial's ``number``, the sampled ``arch`` and the raw decisions.
    Reports ``{epoch, accuracy}`` after every proxy epoch, then the metrics of
    :meth:`~nas.trial.Evaluator.evaluate` with where the trial ran and the reference it was
    normalised by, or ``{error}`` when the candidate failed."""
    from nas.trial import TrialSettings
    from search_spaces import Architecture

    place = where()
    ref: dict[str, Any] = {}
    try:
        import_plugins(plugins)
        s = TrialSettings.from_dict(settings)
        evaluator = cached_evaluator(s)
        arch = Architecture.from_string(config["arch"])
        ref = {_REF_PREFIX + k: v for k, v in evaluator.reference().items() if k != "arch"}

        def report(epoch: int, accuracy: float) -> None:
            tune.report({"epoch": epoch, "accuracy": accuracy})

        # The embedded driver's seed rule (settings seed + trial number), so a trial is the same
        # computation under either backend.
        metrics = evaluator.evaluate(arch, seed=s.seed + int(config["number"]), report=report)
    except Exception as e:  # the candidate's failure: recorded, not retried (it would fail again)
        tune.report({**place, **ref, "error": _error_text(e)})
        return
    tune.report({**metrics, **place, **ref})


class SpaceSampler:
    """OptunaSearch's define-by-run space: the nas search space asks the Optuna trial, exactly as in
    the embedded driver. Returns the trial number and the architecture string as constants, so
    the trainable evaluates the very architecture that was sampled."""

    def __init__(self, space: str):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        from search_spaces import get_space

        arch = get_space(self.space).sample(trial)
        return {"number": trial.number, "arch": arch.to_string()}


class NasOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna only final results, and a reported error as a failure.

    Per-epoch results carry accuracy, not the objective, and would only feed Optuna's pruner,
    which OptunaSearch disables (early stopping is the Tune scheduler's job here). A trial that
    reports ``error`` is a FAIL for the sampler, not a PRUNED one."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and "error" in result:
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(space: str, sampler_name: str, seed: int, multi: bool, study_name: str) -> NasOptunaSearch:
    from nas.search import OBJECTIVES

    if multi:
        metric, mode = [k for k, _ in OBJECTIVES], ["max" if d == "maximize" else "min" for _, d in OBJECTIVES]
    else:
        metric, mode = "reward", "max"
    return NasOptunaSearch(space=SpaceSampler(space), metric=metric, mode=mode, study_name=study_name,
                           sampler=parallel_sampler(sampler_name, seed))


# -- the driver -----------------------------------------------------------------------------------

def plugin_runtime_env(modules: Sequence[ModuleType]) -> dict[str, Any]:
    """Ship plugin modules that are not installed packages to every node (``py_modules``); an
    installed plugin must be installed on the nodes too, like nas itself."""
    ship = []
    for m in modules:
        top = sys.modules[m.__name__.split(".")[0]]
        path = getattr(top, "__file__", None) or ""
        if any(part in ("site-packages", "dist-packages") for part in Path(path).parts):
            continue
        if top not in ship:
            ship.append(top)
    return {"py_modules": ship} if ship else {}


@contextlib.contextmanager
def ray_session(opts: RayOptions, modules: Sequence[ModuleType] = ()) -> Iterator[None]:
    """Connect to the cluster at ``opts.address``, or start a private local Ray for this run."""
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                              "runtime_env": plugin_runtime_env(modules) or None}
    if opts.address is None:
        # "local" starts a new Ray even when another one runs on this machine: ray.init() without
        # an address would join the newest cluster here, which may be someone else's.
        kwargs.update(address="local", include_dashboard=False)
    else:
        kwargs.update(address=opts.address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where_ = opts.address or "this machine"
        raise NasError(f"cannot start or reach Ray at {where_}: {str(e).splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _portable(settings) -> dict[str, Any]:
    """Settings for the workers: relative data paths made absolute (a worker's current directory
    is not the driver's; on other nodes the data must be at the same absolute path)."""
    d = settings.to_dict()
    if d.get("data_dir"):
        d["data_dir"] = os.path.abspath(d["data_dir"])
    if isinstance(d.get("dataset"), str) and d["dataset"].startswith("imagefolder:"):
        d["dataset"] = "imagefolder:" + os.path.abspath(d["dataset"].split(":", 1)[1])
    return d


def _tune_status(trial, status: str | None = None) -> tuple[str, str | None]:
    """(state, error) of a Tune trial in the embedded backend's vocabulary."""
    r = trial.last_result or {}
    status = status or trial.status
    if status == "TERMINATED":
        if "error" in r:
            return "FAIL", r["error"]
        if "reward" in r:
            return "COMPLETE", None
        return "PRUNED", None  # stopped by the scheduler after an epoch
    if status == "ERROR":
        return "FAIL", _error_file_text(trial)
    return "RUNNING", None


def _error_file_text(trial) -> str:
    """The last line of Tune's error file: the exception that ended the trial (its worker died, ...)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "the trial's worker failed")[:500]


def _result_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in _TUNE_KEYS}


def trial_row(trial, interrupted: bool = False, status: str | None = None) -> dict[str, Any]:
    """One trials.csv row for a Tune search trial (the embedded backend's columns). ``status``
    overrides the trial's Tune status (callbacks run before Tune updates it)."""
    cfg = trial.config
    r = trial.last_result or {}
    state, error = _tune_status(trial, status)
    if state == "RUNNING" and interrupted:
        state, error = "FAIL", "interrupted (the driver stopped); rerun the command to resume"
    row: dict[str, Any] = {"number": cfg.get("number"), "state": state, "arch": cfg.get("arch"),
                           **_result_fields(r), "error": error, "tune_trial_id": trial.trial_id}
    if "duration_s" not in row and r.get("time_total_s") is not None:
        row["duration_s"] = r["time_total_s"]
    row.update({f"param_{k}": v for k, v in cfg.items() if k not in ("number", "arch")})
    return row


def references(trials) -> dict[str, Any]:
    """The references the trials were normalised by, one per device kind (``device: device_name``)."""
    out: dict[str, Any] = {}
    for t in trials:
        r = t.last_result or {}
        if _REF_PREFIX + "step_time_ms" in r:
            ref = {k[len(_REF_PREFIX):]: v for k, v in r.items() if k.startswith(_REF_PREFIX)}
            out.setdefault(f"{ref.get('device')}: {ref.get('device_name')}", ref)
    return out


class Exporter(tune.Callback):
    """Rewrites the run directory's results after every finished trial, as the embedded backend
    does, and prints one line per trial. (Tune pickles it with the experiment: plain data only.)"""

    def __init__(self, run_dir: str, extra: dict[str, Any]):
        self.run_dir, self.extra = run_dir, extra

    def _done(self, trials, trial, status: str) -> None:
        export_trials(Path(self.run_dir), trials, self.extra, ending={trial.trial_id: status})
        row = trial_row(trial, status=status)
        what = f"reward {row['reward']:.4f}" if row.get("reward") is not None else (row.get("error") or "")
        print(f"trial {row['number']} {row['state']} {what} [{row.get('hostname', '?')} {row.get('node_ip', '?')} "
              f"{row.get('device', '')} {row.get('device_name', '')}]", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._done(trials, trial, "ERROR")


def export_trials(run_dir: Path, trials, extra: dict[str, Any], interrupted: bool = False,
                  ending: dict[str, str] | None = None):
    """Write trials.csv / best.json / pareto.png for Tune's trials. ``ending`` maps the ids of
    trials that are finishing right now to the status they finish with."""
    from nas.results import plot_pareto, write_best, write_trials_csv

    ending = ending or {}
    rows = [trial_row(t, interrupted, ending.get(t.trial_id)) for t in trials if t.config.get("number") is not None]
    df = write_trials_csv(run_dir, rows)
    best = write_best(run_dir, df, {**extra, "reference": references(trials)})
    plot_pareto(run_dir, df, title=f"nas search (ray): {extra.get('space', '')}")
    return df, best


def default_concurrency(ray_opts: RayOptions) -> int:
    """How many trials the cluster holds at once with the per-trial resources. Tune runs one trial
    at a time under a searcher unless told (its pending-trial limit is 1 for searchers)."""
    res = ray.cluster_resources()
    n = int(res.get("CPU", 0) // ray_opts.cpus_per_trial)
    what = f"{ray_opts.cpus_per_trial:g} CPU"
    if ray_opts.gpus_per_trial:
        n = min(n, int(res.get("GPU", 0) // ray_opts.gpus_per_trial))
        what += f" and {ray_opts.gpus_per_trial} GPU"
    if n < 1:
        raise NasError(f"the Ray cluster has {res.get('CPU', 0):g} CPU and {res.get('GPU', 0):g} GPU; a trial needs "
                       f"{what} (an autoscaling cluster: pass --max-concurrent to start anyway)")
    return n


def _tune_environment() -> None:
    """Tune settings read from the driver's environment (a user's own values win)."""
    # Tune snapshots the experiment at most every 10 s by default; a driver killed in between would
    # rerun trials that had finished. A snapshot of a few hundred trials costs milliseconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # A trial reports three kinds of result: per epoch (accuracy), final (reward, ...) and failed
    # (error). Tune's strict check wants every metric in every result; the searcher and ASHA
    # already skip results that lack theirs.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # nas prints one line per trial and the summary; Tune's tables (verbose=0 still prints one
    # with the new output engine) would bury them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def run_ray_search(settings, opts, args) -> dict[str, Any]:
    """``nas search --backend ray``: run (or resume) the search on Ray Tune; returns best.json's data."""
    from nas.results import check_run_config, summary_table
    from rewards import get_reward

    import optuna

    ray_opts = RayOptions.from_args(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if opts.storage is not None:
        raise NasError("--storage is for the embedded backend; the ray backend keeps its state in OUT/ray")
    if getattr(args, "pruner", None) not in (None, "none"):
        raise NasError(f"--pruner {args.pruner} is for the embedded backend; with --backend ray use --scheduler asha")
    settings.validate()
    run_dir = Path(opts.out).resolve()
    # The number of trials is part of a Tune experiment: a restored one cannot grow.
    config = {"kind": "search", "backend": "ray", "settings": settings.to_dict(), "sampler": opts.sampler,
              "scheduler": ray_opts.scheduler, "trials": opts.n_trials, "study_name": opts.study_name}
    check_run_config(run_dir, config)
    modules = import_plugins(ray_opts.plugins)
    extra = {"space": settings.space, "reward": get_reward(settings.reward, **settings.reward_params).config(),
             "sampler": opts.sampler, "dataset": settings.dataset, "backend": "ray"}
    print(f"ray backend: {opts.n_trials} trials, {ray_opts.cpus_per_trial:g} CPU and {ray_opts.gpus_per_trial} GPU "
          f"per trial, on {ray_opts.address or 'a local Ray'}; results in {run_dir}/", flush=True)

    def make_tuner(concurrency: int):
        trainable = tune.with_resources(
            tune.with_parameters(search_trial, settings=_portable(settings), plugins=tuple(ray_opts.plugins)),
            ray_opts.resources)
        exp_dir = run_dir / EXPERIMENT
        if tune.Tuner.can_restore(exp_dir):
            print(f"restoring the Ray Tune experiment in {exp_dir} (finished trials are kept)", flush=True)
            # Restored as it was saved (searcher, scheduler, concurrency): only the trainable is new.
            return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
        scheduler = None
        if ray_opts.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            # One report per epoch plus the final one with the reward.
            scheduler = ASHAScheduler(time_attr="training_iteration", metric="accuracy", mode="max",
                                      max_t=settings.proxy.epochs + 1, grace_period=1, reduction_factor=3)
        searcher = make_searcher(settings.space, opts.sampler, settings.seed, opts.multi_objective, opts.study_name)
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=opts.n_trials,
                                        max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(run_dir), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=ray_opts.max_failures),
                                      callbacks=[Exporter(str(run_dir), extra)]))

    _tune_environment()
    with ray_session(ray_opts, modules):
        concurrency = ray_opts.max_concurrent or default_concurrency(ray_opts)
        tuner = make_tuner(concurrency)
        tuner.fit()
    trials = _load_trials(run_dir / EXPERIMENT)
    df, best = export_trials(run_dir, trials, extra, interrupted=True)
    print(summary_table(df))
    print(f"results in {run_dir}/ (trials.csv, best.json, pareto.png; Ray Tune's experiment in {EXPERIMENT}/)")
    if best:
        print(f"best architecture (reward {best['metrics']['reward']:.4f}): {best['arch']}")
    else:
        print("no trial completed")
    return best or {}


def _load_trials(exp_dir: Path) -> list:
    return list(tune.ExperimentAnalysis(str(exp_dir)).trials)


# -- fixed configurations (nas grid-scale --backend ray) ------------------------------------------

def fixed_trial(config: dict[str, Any], *, fn: Callable[[dict[str, Any]], dict[str, Any]],
                configs: Sequence[dict[str, Any]], plugins: Sequence[str] = ()) -> None:
    """A Ray Tune function trainable that evaluates ``fn(configs[config["index"]])``."""
    place = where()
    try:
        import_plugins(plugins)
        result = fn(configs[config["index"]])
    except Exception as e:
        tune.report({**place, "error": _error_text(e)})
        return
    tune.report({**result, **place})


def run_configs(fn: Callable[[dict[str, Any]], dict[str, Any]], configs: Sequence[dict[str, Any]], *,
                run_dir: Path, ray_opts: RayOptions, name: str = "ray-configs") -> list[dict[str, Any]]:
    """Evaluate ``fn(config)`` for every config on Ray Tune, each trial with ``ray_opts`` resources.

    ``fn`` must be importable on the workers (a module-level function) and return a JSON-like dict.
    Returns one row per config, in the order given: the function's result plus ``state``
    (COMPLETE or FAIL), ``error``, ``node_ip``, ``hostname`` and ``pid``. The experiment is kept in
    ``run_dir/name``; calling again with the same arguments after the driver was killed restores it
    and keeps the finished configs (the caller must check the configs are the same ones)."""
    configs = list(configs)
    if not configs:
        return []
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    modules = import_plugins(ray_opts.plugins)
    _tune_environment()
    with ray_session(ray_opts, modules):
        concurrency = ray_opts.max_concurrent or default_concurrency(ray_opts)
        trainable = tune.with_resources(
            tune.with_parameters(fixed_trial, fn=fn, configs=configs, plugins=tuple(ray_opts.plugins)),
            ray_opts.resources)
        exp_dir = run_dir / name
        if tune.Tuner.can_restore(exp_dir):
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space={"index": tune.grid_search(list(range(len(configs))))},
                tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
                run_config=tune.RunConfig(name=name, storage_path=str(run_dir), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=ray_opts.max_failures)))
        tuner.fit()
    rows: list[dict[str, Any] | None] = [None] * len(configs)
    for t in _load_trials(exp_dir):
        rows[t.config["index"]] = _fixed_row(t)
    return [r if r is not None else {"state": "FAIL", "error": "not run"} for r in rows]


def _fixed_row(trial) -> dict[str, Any]:
    r = trial.last_result or {}
    if trial.status == "TERMINATED" and r and "error" not in r:
        state, error = "COMPLETE", None
    elif trial.status == "TERMINATED" and "error" in r:
        state, error = "FAIL", r["error"]
    elif trial.status == "ERROR":
        state, error = "FAIL", _error_file_text(trial)
    else:
        state, error = "FAIL", "interrupted (the driver stopped); rerun the command to resume"
    return {**_result_fields(r), "state": state, "error": error}


# -- nas grid-scale --backend ray -----------------------------------------------------------------

GRID_EXPERIMENT = "ray-grid"


def grid_candidate(config: dict[str, Any]) -> dict[str, Any]:
    """One grid-scale candidate in a Ray worker (the function :func:`run_configs` runs):
    :func:`nas.grid.evaluate_candidate` with this process's evaluator, normalised by the base."""
    from nas.grid import Candidate, evaluate_candidate
    from nas.trial import TrialSettings
    from search_spaces import Architecture

    settings = TrialSettings.from_dict(config["settings"])
    base = Architecture.from_string(config["base"])
    evaluator = cached_evaluator(settings, reference=base)
    m = evaluate_candidate(settings, base, Candidate(*config["candidate"]), config["phi"], evaluator=evaluator)
    return {**m, **{_REF_PREFIX + k: v for k, v in evaluator.reference().items() if k != "arch"}}


def run_grid_ray(settings, base, opts, ray_opts: RayOptions, *, echo: Callable[[str], None] = print) -> dict:
    """``nas grid-scale --backend ray``: the planned candidates (:func:`nas.grid.plan_grid`) as fixed
    configs on Ray Tune, written with the embedded driver's exporter (grid.csv, coefficients.json,
    best.json, grid.png); returns coefficients.json's data. Rerunning the same command resumes."""
    import optuna

    from nas import grid
    from nas.results import check_run_config
    from rewards import get_reward

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings.validate()
    plan = grid.plan_grid(base, settings, opts)
    run_dir = Path(opts.out).resolve()
    # The candidate list is part of a Tune experiment (one trial each): a restore cannot change it.
    config = {"kind": "grid-scale", "backend": "ray", "base": base.to_string(), "grid": opts.spec.to_dict(),
              "settings": settings.to_dict(), "candidates": [c.key for c in plan.candidates]}
    check_run_config(run_dir, config)
    echo(f"ray backend: {len(plan.candidates)} candidates (the base and {len(plan.selected)} of {plan.n_feasible} "
         f"satisfying the constraint), {ray_opts.cpus_per_trial:g} CPU and {ray_opts.gpus_per_trial} GPU each, on "
         f"{ray_opts.address or 'a local Ray'}")
    configs = [{"settings": _portable(settings), "base": base.to_string(), "candidate": [c.alpha, c.beta, c.gamma],
                "phi": plan.phi} for c in plan.candidates]
    rows = run_configs(grid_candidate, configs, run_dir=run_dir, ray_opts=ray_opts, name=GRID_EXPERIMENT)

    # The rows become trials of an in-memory study, the form nas.grid's exporter reads.
    hi = max(opts.spec.hi, 1.0)
    dist = {k: optuna.distributions.FloatDistribution(1.0, hi) for k in ("alpha", "beta", "gamma")}
    study = optuna.create_study(direction="maximize")
    refs: dict[str, Any] = {}
    for c, row in zip(plan.candidates, rows):
        params = {"alpha": c.alpha, "beta": c.beta, "gamma": c.gamma}
        if row["state"] == "COMPLETE":
            metrics = {k: v for k, v in row.items() if k not in ("state", "error")}
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=row["accuracy"],
                                                      params=params, distributions=dist,
                                                      user_attrs={"candidate_key": c.key, "metrics": metrics}))
            ref = {k[len(_REF_PREFIX):]: v for k, v in row.items() if k.startswith(_REF_PREFIX)}
            refs.setdefault(f"{ref.get('device')}: {ref.get('device_name')}", ref)
        else:
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params=params,
                                                      distributions=dist,
                                                      user_attrs={"candidate_key": c.key, "error": row["error"]}))
    extra = {"reward": get_reward(settings.reward, **settings.reward_params).config(), "dataset": settings.dataset,
             "reference": refs, "backend": "ray"}
    df, data = grid.export(study, run_dir, plan, base, settings, opts, extra)
    echo(grid.summary(df, opts.objective))
    echo(f"results in {run_dir}/ (grid.csv, coefficients.json, grid.png, best.json; Ray Tune's experiment in "
         f"{GRID_EXPERIMENT}/)")
    if data:
        echo(f"chosen alpha={data['alpha']:g} beta={data['beta']:g} gamma={data['gamma']:g} "
             f"(product {data['product']:.3f}, {data['objective']} {data['objective_value']:.4f})")
    else:
        echo("no candidate completed; no coefficients chosen")
    return data or {}
