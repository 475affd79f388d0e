"""One trial, whatever schedules it: the settings that define a search, the evaluator that scores a
candidate, and the one objective every backend runs.

A trial (EfficientNetV2 section 3.3): take a candidate architecture, count its parameters, get its
training step time (:mod:`nas.steptime.methods`: predicted or measured at full size, or measured on the proxy),
normalise both by the reference architecture the same way (S, P), train a proxy of it briefly at
reduced width, depth and image size, measure validation top-1 accuracy (A) and score it with a reward.

* :class:`TrialSettings` (with :class:`ProxyConfig`, which composes a :class:`nas.training.config.TrainConfig`,
  and :class:`nas.steptime.methods.StepTimeConfig`) is frozen, checked on construction and round-trips through
  JSON: the same settings travel to a worker process or a Ray node and are stored with a run.
* :class:`Evaluator` holds what is costly to redo per trial in one process: the data, the step-time
  source and the reference figures.
* :func:`run_objective` is the objective of every backend (in process, worker processes, Ray Tune,
  the compound-scaling grid): evaluate one proposal, feed the pruning hook the same signal, and turn
  any failure into a recorded reason. It returns an :class:`Outcome` instead of raising, so a
  backend only has to schedule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from nas.errors import NasRuntimeError
from nas.trial.settings import TrialSettings, proxy_arch
from search_spaces import Architecture, build, count_macs, count_params, get_space


class TrialFailed(NasRuntimeError):
    """A candidate that could not be scored (NaN, out of memory, ...); the reason is the message."""


class TrialPruned(Exception):
    """The pruning hook stopped the trial; ``metrics`` is what was measured before it stopped."""

    def __init__(self, message: str, metrics: dict[str, Any]):
        super().__init__(message)
        self.metrics = metrics


class Evaluator:
    """Scores candidates for one search in one process. The reference (the space's baseline, or
    ``reference`` for ``nas grid-scale``, which normalises every scaled candidate by its base) is
    timed once per process and device, or taken from the run when another process already timed it
    on the same device and setting (:meth:`use_reference`)."""

    def __init__(self, settings: TrialSettings, *, reference: Architecture | None = None):
        from rewards import get_reward

        self.settings = settings
        self.space = get_space(settings.space)
        self.reward = get_reward(settings.reward, **settings.reward_params)
        self.reference_arch = reference or self.space.reference()
        self._splits = None
        self._timer = None
        self._reference: dict[str, Any] | None = None

    @property
    def splits(self):
        if self._splits is None:
            from nas.data import load_dataset

            self._splits = load_dataset(self.settings.dataset, self.settings.data_dir, seed=self.settings.seed)
        return self._splits

    def check_data(self) -> None:
        """Load the data and probe it (:func:`nas.data.probe`): two classes at least, images that decode."""
        from nas.data import probe

        probe(self.splits)

    @property
    def timer(self):
        if self._timer is None:
            from nas.steptime.methods import make_timer

            self._timer = make_timer(self.settings, self.splits.num_classes)
        return self._timer

    # -- the reference --------------------------------------------------------------------------
    def reference_key(self) -> str:
        """Which stored reference this process may reuse: same method, device and setting."""
        return self.timer.key(self.reference_arch)

    def use_reference(self, ref: dict[str, Any]) -> None:
        self._reference = dict(ref)

    def reference(self) -> dict[str, Any]:
        if self._reference is None:
            t = self.timer.reference(self.reference_arch)
            self._reference = {
                "key": self.reference_key(),
                "arch": self.reference_arch.to_string(),
                **t.as_reference(),
                "params": count_params(self.reference_arch, self.num_classes),
                "num_classes": self.num_classes,
            }
        return self._reference

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def samples_fidelity(self, number: int) -> bool:
        """With a predicted step time, every ``fidelity_every``-th trial is also timed directly, so each
        run carries its own check of the step-time model (fidelity.json)."""
        st = self.settings.step_time
        return st.method == "table" and st.fidelity_every > 0 and number % st.fidelity_every == 0

    # -- one candidate ----------------------------------------------------------------------------
    def known(self, arch: Architecture, *, image_scale: float = 1.0, fidelity: bool = False) -> dict[str, Any]:
        """What is known before training: size, MACs, step time, S and P."""
        ref = self.reference()
        timing = self.timer.time(arch, image_scale=image_scale, with_measurement=fidelity)
        params = count_params(arch, self.num_classes)
        return {
            "arch": arch.to_string(),
            "params": params,
            "num_classes": self.num_classes,
            "macs": count_macs(arch, num_classes=self.num_classes),
            **timing.as_metrics(),
            "S": timing.step_time_ms / ref["step_time_ms"],
            "P": params / ref["params"],
            "reference_step_time_ms": ref["step_time_ms"],
            "reference_params": ref["params"],
        }

    def evaluate(
        self,
        arch: Architecture,
        *,
        seed: int = 0,
        image_scale: float = 1.0,
        fidelity: bool = False,
        on_epoch: Callable[[int, float, dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Score one candidate. ``on_epoch(epoch, accuracy, known)`` runs after every proxy epoch and
        returns True to stop the trial (:class:`TrialPruned` then carries what was measured).
        ``image_scale`` multiplies the proxy's image size and the step-time target's for this
        candidate only (compound scaling's resolution, EfficientNet section 3.3), while the reference
        stays at the settings' size, so S stays comparable. ``fidelity`` also times the full-size step
        directly where the step time is predicted. Raises :class:`TrialFailed` for a candidate that
        trains to NaN or runs out of memory."""
        from nas.training.config import TrainingDiverged
        from nas.training.loop import fit

        t0 = time.perf_counter()
        p = self.settings.proxy
        if image_scale != 1.0:
            p = p.at_image_size(int(round(p.image_size * image_scale)))
        small = proxy_arch(arch, p)
        measured: dict[str, Any] = {}
        try:
            known = self.known(arch, image_scale=image_scale, fidelity=fidelity)
            measured = {**known, "proxy_arch": small.to_string()}
            t_known = time.perf_counter()
            torch.manual_seed(seed)
            model = build(small, self.num_classes)
            cfg = p.train_config(device=self.settings.device, seed=seed, compile=self.settings.compile)

            def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
                loss = metrics.get("train_loss")
                if loss is not None and not math.isfinite(loss):
                    raise TrialFailed(f"training diverged: loss {loss} at epoch {epoch}")
                acc = float(metrics["val_accuracy"])
                measured.update(accuracy=acc, epochs=epoch)
                if on_epoch is not None and on_epoch(epoch, acc, known):
                    raise TrialPruned(f"stopped after epoch {epoch}", dict(measured))

            result = fit(model, self.splits, cfg, on_epoch_end=on_epoch_end, progress=False)
            acc = float(result.val_accuracy)
            if not math.isfinite(acc):
                raise TrialFailed(f"accuracy is {acc}")
            metrics = {
                **known,
                "accuracy": acc,
                "epochs": p.epochs,
                "proxy_arch": small.to_string(),
                "proxy_params": count_params(small, self.num_classes),
                "time_s": t_known - t0,
                "train_s": time.perf_counter() - t_known,
            }
            measured = metrics
            metrics["reward"] = float(self.reward(metrics))
            if not math.isfinite(metrics["reward"]):
                raise TrialFailed(f"reward is {metrics['reward']}")
            return metrics
        except TrialPruned:
            raise
        except Exception as e:
            # The row of a failed trial keeps what was measured before it failed.
            failure = e
            if isinstance(e, TrainingDiverged):
                failure = TrialFailed(str(e))
            elif isinstance(e, torch.OutOfMemoryError) or (
                isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
            ):
                failure = TrialFailed(f"out of memory: {str(e).splitlines()[0]}")
            failure.metrics = {k: v for k, v in measured.items() if k != "reward"}
            if failure is e:
                raise
            raise failure from None


# -- the one objective -----------------------------------------------------------------------------
