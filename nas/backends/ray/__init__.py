"""The Ray Tune backend: the same problem and objective, scheduled on a Ray cluster.

* Proposals: Optuna's sampler stays the searcher (``OptunaSearch`` with the problem's define-by-run
  ``propose``; the grid's fixed candidates enqueued as ``points_to_evaluate``). Each Tune trial runs
  :func:`nas.trial.objective.run_objective` (:mod:`nas.backends.ray.worker`); its pruning hook
  reports the problem's pruning signal (the reward so far, as the embedded pruner sees it) as
  ``objective_so_far`` (a multi-objective study's objectives so far as ``objective_so_far_0``, ...),
  and ``--pruner`` picks the Tune scheduler that judges it
  (:mod:`nas.study.strategies`), so pruning means the same on every backend.
* One target: the run's target is prepared once before the first trial, by the driver when this
  machine has the trials' device type, else by one Ray task on a node that has it
  (:meth:`RayBackend.prepare_target`), and reaches every trial through Ray's object store.
* Placement: each trial holds ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` GPUs. A fraction
  (``0.25``: four trials per GPU) lets small proxies share a large GPU; direct timings hold the
  device alone (:mod:`nas.core.devicelock`).
* Fault tolerance: a trial whose worker process or node dies is retried (``FailureConfig``); a
  candidate's own failure is recorded as FAIL with its reason and not retried. Tune's experiment lives
  in ``RUN_DIR/ray``; rerunning the same command after the driver was killed restores it.

Security: a Ray cluster executes whatever code its clients send. Bind its ports to a trusted network
only; see the README.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nas.backends.base import Backend, Flag, register_backend
from nas.backends.ray.cluster import (
    RayOptions,
    check_reachable,
    default_concurrency,
    plugin_runtime_env,
    portable,
    ray_session,
    tune_environment,
)
from nas.backends.ray.tuning import EXPERIMENT, exporter, searcher, trial_row
from nas.backends.ray.worker import PRUNING_METRIC, tune_trial
from nas.core.plugins import import_plugins
from nas.errors import NasError
from nas.study.strategies import get_pruner


@register_backend
class RayBackend(Backend):
    name = "ray"
    help = "Ray Tune on a cluster (or a private local Ray)"
    family = "ray"
    group = "ray backend (--backend ray)"
    flags = (
        Flag("--address", None, None, "Ray cluster address: auto or HOST:PORT (default: start a local Ray)"),
        Flag("--cpus-per-trial", float, 1.0, "CPUs a trial reserves, and its torch thread count (default 1)"),
        Flag(
            "--gpus-per-trial",
            float,
            0.0,
            "GPUs per trial: a fraction shares a GPU (0.25: four trials per GPU), or whole GPUs",
        ),
        Flag("--max-concurrent", int, None, "trials at once (default: what the cluster holds)"),
    )

    def check(self) -> None:
        if self.job.storage is not None:
            raise NasError("--storage is for the embedded backend; the ray backend keeps its state in OUT/ray")
        o = self.job.options
        self.opts = RayOptions(
            address=o.get("address"),
            cpus_per_trial=o.get("cpus_per_trial", 1.0),
            gpus_per_trial=o.get("gpus_per_trial", 0.0),
            max_concurrent=o.get("max_concurrent"),
            plugins=tuple(self.job.plugins),
        )
        if self.opts.address not in (None, "auto"):
            check_reachable(self.opts.address)

    def config(self) -> dict[str, Any]:
        # The number of trials and the pruner are part of a Tune experiment: a restored one keeps them.
        return {"trials": self.job.n_trials}

    def target_device(self) -> str:
        device = self.job.settings.device
        if self.opts.gpus_per_trial > 0:
            return device if device.startswith("cuda") else "cuda"
        return "cpu" if device == "auto" else device  # a trial without a GPU resolves auto to its CPU

    def prepare_target(self, prepare):
        device = self.target_device()
        if not device.startswith("cuda") or torch.cuda.is_available():
            return prepare(device)
        # This machine has no GPU: one task on a node that has one prepares the target there.
        with ray_session(self.opts, import_plugins(self.opts.plugins)):
            import ray  # Ray is optional and heavy: imported when the ray backend runs

            task = ray.remote(num_cpus=self.opts.cpus_per_trial, num_gpus=max(1.0, self.opts.gpus_per_trial))(prepare)
            self.job.echo("preparing the run's target on a GPU node of the cluster (a Ray task) ...")
            return ray.get(task.remote(device))

    def open(self, run) -> None:
        self.exp_dir = Path(run.path).resolve() / EXPERIMENT

    def _load(self) -> list:
        from ray import tune  # Ray is optional and heavy: imported when the ray backend runs

        if not tune.Tuner.can_restore(self.exp_dir):
            return []
        return list(tune.ExperimentAnalysis(str(self.exp_dir)).trials)

    def rows(self) -> list[dict[str, Any]]:
        return [trial_row(t, interrupted=True) for t in self._load() if t.config.get("number") is not None]

    def _tuner(self, run, trainable, spec: dict[str, Any]):
        from ray import tune  # Ray is optional and heavy: imported when the ray backend runs

        job, problem = self.job, self.job.problem
        scheduler = get_pruner(job.pruner).tune(problem.settings.proxy.epochs, PRUNING_METRIC, problem.directions)
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher(problem, spec, job.sampler, problem.settings.seed),
                scheduler=scheduler,
                num_samples=job.n_trials,
                max_concurrent_trials=self.opts.max_concurrent or default_concurrency(self.opts),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(self.exp_dir.parent),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.opts.max_failures),
                callbacks=[exporter(str(run.path), spec, run.extra, True)],
            ),
        )

    def execute(self, run, remaining: int) -> None:
        from ray import tune  # Ray is optional and heavy: imported when the ray backend runs

        job, opts = self.job, self.opts
        spec = {**job.problem.config(), "sampler": job.sampler, "pruner": job.pruner, "storage": None}
        spec["settings"] = portable(spec["settings"])
        target = run.evaluator.target
        shipped = None if target is None else {"target": target.to_dict(), "table": target.table}
        job.echo(
            f"ray backend: {job.n_trials} trials, {opts.cpus_per_trial:g} CPU and {opts.gpus_per_trial:g} GPU "
            f"per trial, on {opts.address or 'a local Ray'}; Ray Tune's experiment in {self.exp_dir}"
        )
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, spec=spec, target=shipped, plugins=tuple(opts.plugins)), opts.resources
        )
        tune_environment()
        with ray_session(opts, import_plugins(opts.plugins)):
            if tune.Tuner.can_restore(self.exp_dir):
                job.echo(f"restoring the Ray Tune experiment in {self.exp_dir} (finished trials are kept)")
                # Restored as it was saved (searcher, scheduler, concurrency, callbacks): only the trainable is new.
                tuner = tune.Tuner.restore(str(self.exp_dir), trainable=trainable, resume_errored=True)
            else:
                tuner = self._tuner(run, trainable, spec)
            tuner.fit()


__all__ = ["RayBackend", "RayOptions", "plugin_runtime_env"]
