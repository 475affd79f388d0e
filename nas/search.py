"""The embedded search driver: Optuna in this process, with a persistent, resumable study.

The study lives in ``RUN_DIR/study.db`` (SQLite) unless ``storage`` names another Optuna storage
URL (PostgreSQL, MySQL). Rerunning the same command resumes it: trials that finished (complete,
pruned, or failed with a recorded reason) are kept and only the missing ones run. A trial that was
running when the process was killed is failed by Optuna's heartbeat and replaced.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from nas.errors import NasError
from nas.results import check_run_config, plot_pareto, summary_table, write_best, write_trials_csv
from nas.trial import Evaluator, TrialSettings

SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")
STUDY_NAME = "nas-search"
# A running trial writes a heartbeat every HEARTBEAT_S; one silent for GRACE_S is taken as killed.
HEARTBEAT_S, GRACE_S = 10, 60
DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# Multi-objective (nsga2): accuracy up, step time down, parameters down.
OBJECTIVES = (("accuracy", "maximize"), ("step_time_ms", "minimize"), ("params", "minimize"))


@dataclass(frozen=True)
class SearchOptions:
    n_trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None
    study_name: str = STUDY_NAME
    out: str = "runs/search-trainaware"

    def validate(self) -> "SearchOptions":
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise NasError(f"--trials must be a positive integer, got {self.n_trials!r}")
        if self.sampler not in SAMPLERS:
            raise NasError(f"unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise NasError(f"unknown pruner {self.pruner!r}; known: {', '.join(PRUNERS)}")
        if self.sampler == "nsga2" and self.pruner != "none":
            raise NasError(f"pruner {self.pruner!r} cannot be used with the multi-objective nsga2 sampler "
                           "(Optuna prunes single-objective studies only); use --pruner none")
        return self

    @property
    def multi_objective(self) -> bool:
        return self.sampler == "nsga2"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # One check, halfway through the proxy training: a proxy's per-epoch figures are noisy, and a
        # trial checked at every epoch has to beat the median every time (all but 5 of 20 pruned).
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 2),
                                           interval_steps=max(1, epochs))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    url = url or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    try:
        # The heartbeat lets a resumed (or parallel) run fail trials whose process was killed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # SQLite's default 5 s lock timeout is short for a loaded machine with the heartbeat
            # thread and parallel workers writing to one file.
            engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S)
    except Exception as e:  # SQLAlchemy raises a zoo of types for a bad URL or unreachable server
        raise NasError(f"cannot open storage {url!r}: {str(e).splitlines()[0]}") from None


def finished(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that counts toward the requested total (a killed one does not: it is rerun)."""
    return trial.state in DONE_STATES or (trial.state == optuna.trial.TrialState.FAIL and "error" in trial.user_attrs)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update({k: v for k, v in t.user_attrs.items()})
        if t.state == optuna.trial.TrialState.FAIL and "error" not in row:
            row["error"] = "interrupted (the process running it stopped)"
        if t.duration is not None and "duration_s" not in row:
            row["duration_s"] = t.duration.total_seconds()
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def export(study: optuna.Study, run_dir: Path, extra: dict[str, Any]) -> Any:
    df = write_trials_csv(run_dir, trial_rows(study))
    best = write_best(run_dir, df, extra)
    plot_pareto(run_dir, df, title=f"nas search: {extra.get('space', '')}")
    return df, best


def make_objective(evaluator: Evaluator, multi: bool, seed: int) -> Callable[[optuna.Trial], Any]:
    def objective(trial: optuna.Trial):
        arch = evaluator.space.sample(trial)  # define-by-run: the space asks the trial
        trial.set_user_attr("arch", arch.to_string())

        def report(epoch: int, value: float) -> None:
            # The pruner sees the reward so far (accuracy with the measured S and P), so a fast but
            # slightly less accurate candidate is judged by what the search maximises.
            trial.set_user_attr("reward_so_far", value)
            if not multi:
                trial.report(value, epoch)
                # After the last epoch the work is done: pruning then would only discard a result.
                if epoch < evaluator.settings.proxy.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"reward {value:.4f} after epoch {epoch}")

        try:
            m = evaluator.evaluate(arch, seed=seed + trial.number, report=report,
                                   report_metric="accuracy" if multi else "reward")
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}".splitlines()[0][:500])
            raise
        for k, v in m.items():
            trial.set_user_attr(k, v)
        if multi:
            return tuple(m[k] for k, _ in OBJECTIVES)
        return m["reward"]

    return objective


def run_search(settings: TrialSettings, opts: SearchOptions, *, progress: bool = True,
               echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a search until ``opts.n_trials`` trials have finished; returns best.json's data."""
    settings.validate()
    opts.validate()
    run_dir = Path(opts.out)
    config = {"kind": "search", "backend": "embedded", "settings": settings.to_dict(), "sampler": opts.sampler,
              "pruner": opts.pruner, "storage": opts.storage, "study_name": opts.study_name}
    check_run_config(run_dir, config)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(opts.storage, run_dir)
    done = [t for t in _load_trials(storage, opts.study_name) if finished(t)]
    # Seed the sampler with the count already done, so a resumed run does not replay the
    # first run's random draws.
    sampler = make_sampler(opts.sampler, settings.seed + len(done))
    pruner = make_pruner(opts.pruner, settings.proxy.epochs)
    directions = [d for _, d in OBJECTIVES] if opts.multi_objective else ["maximize"]
    study = optuna.create_study(storage=storage, study_name=opts.study_name, sampler=sampler, pruner=pruner,
                                directions=directions, load_if_exists=True)
    evaluator = Evaluator(settings)
    extra = {"space": settings.space, "reward": evaluator.reward.config(), "sampler": opts.sampler,
             "dataset": settings.dataset}
    remaining = opts.n_trials - len(done)
    if done:
        echo(f"resuming {run_dir}: {len(done)} of {opts.n_trials} trials already finished")
    if remaining <= 0:
        df, best = export(study, run_dir, _with_reference(extra, study))
        echo(summary_table(df))
        return best or {}
    echo(f"measuring the reference ({settings.space} space baseline) on {settings.device} ...")
    ref = evaluator.reference()
    study.set_user_attr(f"reference_{ref['device']}", ref)
    extra = _with_reference(extra, study)
    echo(f"reference step time {ref['step_time_ms']:.2f} ms on {ref['device_name']} ({ref['device']})")

    from tqdm.auto import tqdm

    bar = tqdm(total=opts.n_trials, initial=len(done), desc="trials", unit="trial", disable=not progress,
               dynamic_ncols=True)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        export(study, run_dir, extra)
        bar.update(1)
        best = _best_reward(study)
        if best is not None:
            bar.set_postfix_str(f"best reward {best:.4f}")

    t0 = time.perf_counter()
    try:
        study.optimize(make_objective(evaluator, opts.multi_objective, settings.seed), n_trials=remaining,
                       catch=(Exception,), callbacks=[after_trial], gc_after_trial=True)
    finally:
        bar.close()
    df, best = export(study, run_dir, extra)
    echo(summary_table(df))
    echo(f"search time {time.perf_counter() - t0:.1f} s; results in {run_dir}/ (trials.csv, best.json, pareto.png)")
    if best:
        echo(f"best architecture (reward {best['metrics']['reward']:.4f}): {best['arch']}")
    else:
        echo("no trial completed")
    return best or {}


def _load_trials(storage: optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def _best_reward(study: optuna.Study) -> float | None:
    vals = [t.user_attrs.get("reward") for t in study.get_trials(deepcopy=False, states=DONE_STATES)]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return max(vals) if vals else None


def _with_reference(extra: dict[str, Any], study: optuna.Study) -> dict[str, Any]:
    refs = {k.split("_", 1)[1]: v for k, v in study.user_attrs.items() if k.startswith("reference_")}
    return {**extra, "reference": refs}
