"""The embedded backend: every trial in the driver's process, one after the other, on the run's
Optuna storage (:mod:`nas.backends.optuna`). Its flags ``--workers N`` and ``--trials-per-device N``
hand the run to the workers backend (:mod:`nas.backends.workers`), which shares the same storage.
"""

from __future__ import annotations

from typing import Any

from nas.backends.base import Flag, register_backend
from nas.backends.optuna import OptunaBackend, run_trials
from nas.backends.placement import per_device_flag


@register_backend
class EmbeddedBackend(OptunaBackend):
    """All trials in this process, one after the other."""

    name = "embedded"
    help = "Optuna in this process, on the run's storage (default)"
    group = "parallel trials on this machine (embedded backend)"
    flags = (
        Flag("--workers", int, None, "run the trials in N processes sharing the run's storage (see nas worker)", "N"),
        Flag(
            "--trials-per-device",
            per_device_flag,
            None,
            "N worker processes per device (per GPU with --device cuda), so small proxies fill a GPU; auto: "
            "measured on the run's proxy (GPU busy share and memory; 1 on a CPU)",
            "N|auto",
        ),
    )

    @classmethod
    def options(cls, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        name, opts = super().options(args)
        if opts["workers"] is not None or opts["trials_per_device"] is not None:
            return "workers", opts
        return name, {}

    def execute(self, run, remaining: int) -> None:
        job = self.job
        study = self.worker_study()
        if (run.evaluator.target or None) is not None and run.evaluator.target.reference.get("noisy"):
            run.warn("the reference's timing never settled (machine busy?): S values may be distorted")
        bar = run.progress(self.n_finished() + remaining, self.n_finished())
        checker = DriftCheck(run)

        def on_row(row: dict[str, Any]) -> None:
            bar.update(1)
            if run.writer.best:
                bar.set_postfix_str(f"best {run.writer.best.get('reward', run.writer.best.get('accuracy', 0)):.4f}")
            checker.after_trial()

        run_trials(study, job.problem, run.evaluator, run.writer, remaining, on_row=on_row)


class DriftCheck:
    """Re-checks a measured reference every ``every`` trials and warns once when it moved: the
    machine's load changed during the run, so S values from different times are less comparable."""

    def __init__(self, run, every: int = 10):
        self.run, self.every, self.count, self.warned = run, every, 0, False

    def after_trial(self) -> None:
        self.count += 1
        if self.warned or self.count % self.every:
            return
        d = self.run.evaluator.drift()
        if d is not None:
            self.warned = True
            self.run.warn(
                f"the reference now takes {d['retimed_ms']:.2f} ms against {d['reference_ms']:.2f} ms at the "
                f"start ({100 * d['change']:+.0f}%): the machine's load changed during the run, so S values "
                "from different times are less comparable"
            )
