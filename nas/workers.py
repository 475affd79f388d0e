"""Parallel search on one machine: several ``nas worker`` processes share one run's Optuna storage.

``nas search --workers N`` prepares the run directory, starts N ``nas worker RUN_DIR --trials k``
processes and collects their results; ``nas worker`` can also be started by hand, to add processes
to a search that already has a run directory. All of them run the embedded driver's objective
(:func:`nas.search.make_objective`) against the same storage (``RUN_DIR/study.db`` or ``--storage``),
so the run directory stays resumable by a plain ``nas search``.

Sharing a study safely needs three things beyond what Optuna's storage gives:

* Trial numbers are unique because the storage assigns them (row-locked in a transaction).
* No architecture is trained twice. Parallel samplers can propose the same architecture (TPE's
  random start-up trials, a small space), so each trial *claims* its architecture under a file lock
  on the run directory (:func:`run_lock`): the first trial to claim it evaluates it; a later one
  waits for that owner and records its result with ``duplicate_of`` = the owner's number. An owner
  whose process was killed loses its claim (Optuna's heartbeat fails it) and a waiter takes over.
* Each worker's sampler gets its own seed, so N workers do not draw the same start-up trials, and
  TPE runs with ``constant_liar`` so it steers away from trials still running elsewhere.

The lock is an ``flock`` on ``RUN_DIR/.workers.lock``: workers must share that directory (one
machine, or a shared file system that supports ``flock``). For many machines use ``--backend ray``.

Plugins: ``--plugin MODULE`` imports a user module in every process that evaluates trials, so a
search space or reward it registers (``search_spaces.base.register``, ``rewards.register``) can be
named by ``--space`` / ``--reward`` like a built-in one.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

from nas.errors import NasError

LOCK_NAME = ".workers.lock"
WORKER_SLOTS_ATTR = "worker_slots"  # study user attribute: how many workers have started
POLL_S = 1.0  # how often a duplicate looks at its owner, and the parent at the study
# Attributes that describe where a trial ran, not the architecture's result; a duplicate keeps its own.
_PLACE_KEYS = ("worker", "hostname", "pid", "duplicate_of", "error")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# -- plugins --------------------------------------------------------------------------------------

def import_plugins(names: Sequence[str]) -> list[ModuleType]:
    """Import user modules (``--plugin MODULE``) that register search spaces or rewards.

    The current directory is searched as ``python -m`` does, so ``--plugin myspace`` finds
    ``./myspace.py``. Errors become one-line :class:`NasError`\\ s naming the module."""
    mods = []
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise NasError(f"--plugin takes a Python module name such as mypkg.spaces, got {name!r}")
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                raise NasError(f"plugin module {name!r} not found (looked in the current directory and "
                               f"on PYTHONPATH)") from None
            raise NasError(f"plugin {name!r} failed to import: {e}") from None
        except Exception as e:  # the user's module: any error at import time
            raise NasError(f"plugin {name!r} failed to import: {type(e).__name__}: {e}") from None
    return mods


# -- the run directory ----------------------------------------------------------------------------

@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock shared by every process working on ``run_dir`` (released if one dies)."""
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def search_config(settings, opts) -> dict[str, Any]:
    """The run configuration ``nas search`` (embedded) stores in ``config.json``; workers write and
    check the very same one, so a run is resumable by either. tests/test_workers.py checks that an
    embedded run and ``--workers`` agree on it."""
    return {"kind": "search", "backend": "embedded", "settings": settings.to_dict(), "sampler": opts.sampler,
            "pruner": opts.pruner, "storage": opts.storage, "study_name": opts.study_name}


def load_run(run_dir: Path):
    """Settings and options of the search in ``run_dir``, from its ``config.json``."""
    from nas.results import read_json
    from nas.search import SearchOptions
    from nas.trial import TrialSettings

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NasError(f"run directory {str(run_dir)!r} does not exist; start the search with nas search first")
    config = read_json(run_dir / "config.json", "run configuration")
    if not isinstance(config, dict) or config.get("kind") != "search":
        raise NasError(f"{str(run_dir)!r} does not hold a nas search run")
    if config.get("backend") != "embedded":
        raise NasError(f"{str(run_dir)!r} holds a {config.get('backend')!r} backend run; workers join embedded "
                       f"(Optuna storage) runs only; rerun its nas search command to resume it")
    try:
        settings = TrialSettings.from_dict(config["settings"]).validate()
        opts = SearchOptions(n_trials=1, sampler=config["sampler"], pruner=config["pruner"],
                             storage=config["storage"], study_name=config["study_name"], out=str(run_dir))
    except (KeyError, TypeError) as e:
        raise NasError(f"{str(run_dir / 'config.json')!r} is not a search configuration: {e}") from None
    return settings, opts.validate()


def _extra(settings, evaluator_reward_config: dict, opts, study) -> dict[str, Any]:
    refs = {k.split("_", 1)[1]: v for k, v in study.user_attrs.items() if k.startswith("reference_")}
    return {"space": settings.space, "reward": evaluator_reward_config, "sampler": opts.sampler,
            "dataset": settings.dataset, "reference": refs}


def export_locked(study, run_dir: Path, extra: dict[str, Any]):
    """Write trials.csv / best.json / pareto.png from the storage. Under the run lock, so the export
    that starts last reads the newest state and is also the one that lands last."""
    from nas.search import export

    with run_lock(run_dir):
        return export(study, run_dir, extra)


# -- claiming architectures -----------------------------------------------------------------------

class ClaimingEvaluator:
    """An :class:`~nas.trial.Evaluator` for one of several processes sharing a study: it evaluates
    each architecture once across all of them.

    :func:`nas.search.make_objective` calls ``space.sample(trial)`` and then ``evaluate(arch)``;
    ``sample`` claims the architecture for the trial under the run lock, ``evaluate`` of an
    architecture claimed by another trial waits for that trial and returns its metrics."""

    def __init__(self, evaluator, study, run_dir: Path, worker: int):
        self._ev = evaluator
        self.reward = evaluator.reward
        self.settings = evaluator.settings
        self.study, self.run_dir, self.worker = study, Path(run_dir), worker
        self.space = _ClaimingSpace(self)
        # The last claim (trials run one at a time in a worker): its trial, architecture and owner
        # (the number of the trial that evaluates the architecture, when that is another trial).
        self._trial = None
        self._arch: str | None = None
        self._owner: int | None = None

    def reference(self) -> dict[str, Any]:
        return self._ev.reference()

    def claim(self, trial, arch) -> None:
        s = arch.to_string()
        with run_lock(self.run_dir):
            owner = self._find_owner(s, trial.number)
            trial.set_user_attr("arch", s)
            trial.set_user_attr("duplicate_of", None if owner is None else owner.number)
        self._trial, self._arch, self._owner = trial, s, (None if owner is None else owner.number)

    def _find_owner(self, arch: str, number: int):
        """The trial that evaluates (or evaluated) ``arch``: running or finished, not itself a duplicate."""
        import optuna

        from nas.search import finished

        for t in self.study.get_trials(deepcopy=False):
            if t.number == number or t.user_attrs.get("arch") != arch or t.user_attrs.get("duplicate_of") is not None:
                continue
            if t.state == optuna.trial.TrialState.RUNNING or finished(t):
                return t
        return None

    def evaluate(self, arch, *, seed: int = 0, report: Callable[[int, float], None] | None = None,
                 report_metric: str = "accuracy") -> dict[str, Any]:
        trial = self._trial
        if trial is None or self._arch != arch.to_string():
            raise RuntimeError("ClaimingEvaluator.evaluate called without a claim for this architecture")
        while self._owner is not None:
            result = self._wait_for_owner()
            if result is not None:
                return result
            # The owner was killed before finishing: claim again (another waiter may have won).
            self.claim(trial, arch)
        return self._ev.evaluate(arch, seed=seed, report=report, report_metric=report_metric)

    def _wait_for_owner(self) -> dict[str, Any] | None:
        """The owner's metrics once it completes; raises as it failed or was pruned; None if it was
        killed (its claim is void)."""
        import optuna

        from nas.search import finished
        from nas.trial import TrialFailed

        while True:
            owner = next(t for t in self.study.get_trials(deepcopy=False) if t.number == self._owner)
            if owner.state == optuna.trial.TrialState.COMPLETE:
                return {**{k: v for k, v in owner.user_attrs.items() if k not in _PLACE_KEYS},
                        "duplicate_of": owner.number}
            if owner.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(f"same architecture as trial {owner.number}, which was pruned")
            if owner.state == optuna.trial.TrialState.FAIL:
                if finished(owner):
                    raise TrialFailed(f"same architecture as trial {owner.number}, which failed: "
                                      f"{owner.user_attrs.get('error')}")
                return None
            # Fails trials whose heartbeat stopped (their process died), ours to take over.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            time.sleep(POLL_S)


class _ClaimingSpace:
    def __init__(self, owner: ClaimingEvaluator):
        self._owner = owner
        self._space = owner._ev.space

    def __getattr__(self, name: str) -> Any:
        return getattr(self._space, name)

    def sample(self, trial):
        arch = self._space.sample(trial)
        self._owner.claim(trial, arch)
        return arch


# -- one worker -----------------------------------------------------------------------------------

def parallel_sampler(name: str, seed: int):
    import optuna

    from nas.search import make_sampler

    if name == "tpe":
        # As nas.search.make_sampler, plus constant_liar: running trials (other workers') count as
        # bad results, so parallel workers spread out instead of piling on one region.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5, constant_liar=True)
    return make_sampler(name, seed)


def run_worker(run_dir: Path, n_trials: int, *, echo: Callable[[str], None] = print) -> int:
    """Run ``n_trials`` trials of the search in ``run_dir`` in this process; returns how many of
    them completed (the others failed or were pruned, with the reason recorded)."""
    import optuna

    from nas.search import make_objective, make_pruner, make_storage
    from nas.trial import Evaluator

    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise NasError(f"--trials must be a positive integer, got {n_trials!r}")
    run_dir = Path(run_dir)
    settings, opts = load_run(run_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(opts.storage, run_dir)
    with run_lock(run_dir):
        try:
            study = optuna.load_study(study_name=opts.study_name, storage=storage)
        except KeyError:
            raise NasError(f"{str(run_dir)!r} has no study {opts.study_name!r} yet; start it with nas search") from None
        # A slot number per worker, so each gets its own sampler seed.
        slot = int(study.user_attrs.get(WORKER_SLOTS_ATTR, 0))
        study.set_user_attr(WORKER_SLOTS_ATTR, slot + 1)
        n_before = len(study.get_trials(deepcopy=False))
    seed = settings.seed + n_before + 1009 * (slot + 1)
    study = optuna.load_study(study_name=opts.study_name, storage=storage, sampler=parallel_sampler(opts.sampler, seed),
                              pruner=make_pruner(opts.pruner, settings.proxy.epochs))
    evaluator = Evaluator(settings)
    name = f"worker {slot}"
    echo(f"{name} (pid {os.getpid()}): measuring the reference on {settings.device} ...")
    ref = evaluator.reference()
    study.set_user_attr(f"reference_{ref['device']}", ref)
    echo(f"{name}: reference step time {ref['step_time_ms']:.2f} ms on {ref['device_name']} ({ref['device']})")
    claiming = ClaimingEvaluator(evaluator, study, run_dir, slot)
    objective = make_objective(claiming, opts.multi_objective, settings.seed)
    host = socket.gethostname()

    def tagged(trial):
        trial.set_user_attr("worker", slot)
        trial.set_user_attr("hostname", host)
        trial.set_user_attr("pid", os.getpid())
        return objective(trial)

    completed = 0

    def after_trial(study, trial) -> None:
        nonlocal completed
        completed += trial.state == optuna.trial.TrialState.COMPLETE
        dup = trial.user_attrs.get("duplicate_of")
        what = f"reward {trial.user_attrs['reward']:.4f}" if "reward" in trial.user_attrs else \
            trial.user_attrs.get("error", "")
        echo(f"{name}: trial {trial.number} {trial.state.name} {what}"
             + (f" (same architecture as trial {dup}, not retrained)" if dup is not None else ""))
        export_locked(study, run_dir, _extra(settings, evaluator.reward.config(), opts, study))

    study.optimize(tagged, n_trials=n_trials, catch=(Exception,), callbacks=[after_trial], gc_after_trial=True,
                   show_progress_bar=False)
    return completed


# -- N workers from nas search --------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerPlan:
    """How many trials each worker runs and the environment it gets (its GPU, its CPU threads)."""

    trials: tuple[int, ...]
    envs: tuple[dict[str, str], ...]
    note: str | None = None


def plan_workers(n_workers: int, remaining: int, device: str, *, cpu_count: int | None = None,
                 gpu_count: int | None = None) -> WorkerPlan:
    """Split ``remaining`` trials over at most ``n_workers`` processes.

    Step times are the signal, so workers must not slow each other down: on CUDA each worker gets
    its own GPU when there are enough (``CUDA_VISIBLE_DEVICES``); on CPU the cores are divided
    (``OMP_NUM_THREADS``) instead of every worker starting one thread per core."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise NasError(f"--workers must be a positive integer, got {n_workers!r}")
    n = min(n_workers, remaining)
    trials = tuple(remaining // n + (i < remaining % n) for i in range(n))
    from nas.device import resolve_device

    dev = resolve_device(device)
    note = None
    if dev.type == "cuda":
        import torch

        gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
        if device in ("auto", "cuda") and gpus >= n:
            envs = tuple({"CUDA_VISIBLE_DEVICES": str(i)} for i in range(n))
        else:
            envs = tuple({} for _ in range(n))
            note = (f"{n} workers share {'one GPU' if device not in ('auto', 'cuda') else f'{gpus} GPU(s)'}: "
                    "their step times are measured while the others train, so they are inflated and noisy")
    else:
        cores = (os.cpu_count() or 1) if cpu_count is None else cpu_count
        threads = max(1, cores // n)
        envs = tuple({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} for _ in range(n))
        if n > cores:
            note = f"{n} workers on {cores} CPU cores: step times are measured under contention"
    return WorkerPlan(trials=trials, envs=envs, note=note)


def run_workers(settings, opts, n_workers: int, *, plugins: Sequence[str] = (), progress: bool = True,
                echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``nas search --workers N``: run the search's missing trials in N worker processes; returns
    best.json's data. Like ``nas search``, rerunning the same command resumes it."""
    import optuna

    from nas.results import check_run_config, summary_table
    from nas.search import DONE_STATES, finished, make_storage
    from rewards import get_reward

    settings.validate()
    opts.validate()
    run_dir = Path(opts.out)
    check_run_config(run_dir, search_config(settings, opts))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(opts.storage, run_dir)
    directions = ["maximize", "minimize", "minimize"] if opts.multi_objective else ["maximize"]
    with run_lock(run_dir):
        study = optuna.create_study(storage=storage, study_name=opts.study_name, directions=directions,
                                    load_if_exists=True)
    reward = get_reward(settings.reward, **settings.reward_params).config()
    done = sum(finished(t) for t in study.get_trials(deepcopy=False))
    remaining = opts.n_trials - done
    if done:
        echo(f"resuming {run_dir}: {done} of {opts.n_trials} trials already finished")
    if remaining > 0:
        plan = plan_workers(n_workers, remaining, settings.device)
        if plan.note:
            echo(f"note: {plan.note}")
        echo(f"starting {len(plan.trials)} workers for {remaining} trials ({', '.join(map(str, plan.trials))})")
        failed = _run_children(run_dir, plan, plugins, study, opts.n_trials, progress, echo)
    else:
        failed = []
    df, best = export_locked(study, run_dir, _extra(settings, reward, opts, study))
    echo(summary_table(df))
    n_done = sum(finished(t) for t in study.get_trials(deepcopy=False))
    if failed:
        raise NasError(f"{len(failed)} of {len(plan.trials)} workers exited with an error ({'; '.join(failed)}); "
                       f"{n_done} of {opts.n_trials} trials finished; rerun the same command to run the rest")
    if best:
        echo(f"best architecture (reward {best['metrics']['reward']:.4f}): {best['arch']}")
    else:
        n_ok = len(study.get_trials(deepcopy=False, states=DONE_STATES))
        echo("no trial completed" if not n_ok else "no trial completed with a reward")
    return best or {}


def _run_children(run_dir: Path, plan: WorkerPlan, plugins: Sequence[str], study, total: int, progress: bool,
                  echo: Callable[[str], None]) -> list[str]:
    from tqdm.auto import tqdm

    from nas.search import finished

    procs = []
    for k, env in zip(plan.trials, plan.envs):
        # python -m puts the current directory on sys.path, so the children find plugins where we did.
        cmd = [sys.executable, "-m", "nas.cli", "worker", str(run_dir), "--trials", str(k)]
        for p in plugins:
            cmd += ["--plugin", p]
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
    bar = tqdm(total=total, desc="trials", unit="trial", disable=not progress, dynamic_ncols=True)
    try:
        while any(p.poll() is None for p in procs):
            bar.n = sum(finished(t) for t in study.get_trials(deepcopy=False))
            bar.refresh()
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the children too; give them time to record their trials.
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        bar.n = sum(finished(t) for t in study.get_trials(deepcopy=False))
        bar.close()
    return [f"worker {i}: exit status {p.returncode}" for i, p in enumerate(procs) if p.returncode != 0]

