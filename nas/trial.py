"""One trial, whatever schedules it: the settings that define a search, the evaluator that scores a
candidate, and the one objective every backend runs.

A trial (EfficientNetV2 section 3.3): take a candidate architecture, count its parameters, get its
training step time (:mod:`nas.timing`: predicted or measured at full size, or measured on the proxy),
normalise both by the reference architecture the same way (S, P), train a proxy of it briefly at
reduced width, depth and image size, measure validation top-1 accuracy (A) and score it with a reward.

* :class:`TrialSettings` (with :class:`ProxyConfig`, which composes a :class:`nas.train.TrainConfig`,
  and :class:`nas.timing.StepTimeConfig`) is frozen, checked on construction and round-trips through
  JSON: the same settings travel to a worker process or a Ray node and are stored with a run.
* :class:`Evaluator` holds what is costly to redo per trial in one process: the data, the step-time
  source and the reference figures.
* :func:`run_objective` is the objective of every backend (in process, worker processes, Ray Tune,
  the compound-scaling grid): evaluate one proposal, feed the pruning hook the same signal, and turn
  any failure into a recorded reason. It returns an :class:`Outcome` instead of raising, so a
  backend only has to schedule.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from nas.errors import NasError, NasRuntimeError, check_choice, check_int, check_positive
from nas.timing import StepTimeConfig
from nas.train import TrainConfig
from search_spaces import Architecture, build, count_macs, count_params, get_space, scale

# The proxy's training recipe: AdamW at a fixed learning rate, no warm-up, BatchNorm re-estimated on 8
# batches before each evaluation (in a 4-epoch run the running averages lag far behind the weights, so
# early epochs would score chance and the pruner would act on noise).
PROXY_TRAINING = TrainConfig(epochs=4, batch_size=64, optimizer="adamw", lr=0.005, image_size=32, eval_image_size=32,
                             warmup_epochs=0.0, bn_recalibration=8)


@dataclass(frozen=True)
class ProxyConfig:
    """How a candidate is shrunk (width, depth) and trained (``train``: image size, epochs, ...)."""

    width: float = 0.25
    depth: float = 0.25
    train: TrainConfig = PROXY_TRAINING

    def __post_init__(self) -> None:
        check_positive("proxy width multiplier", self.width)
        check_positive("proxy depth multiplier", self.depth)
        if not isinstance(self.train, TrainConfig):
            raise NasError(f"proxy training must be a TrainConfig, got {type(self.train).__name__}")
        if self.train.image_size is None:
            raise NasError("proxy training needs an image size")

    @classmethod
    def of(cls, *, width: float = 0.25, depth: float = 0.25, image_size: int = 32, progressive: str = "off",
           **train: Any) -> "ProxyConfig":
        """From the ``nas search`` flags: the image size sets training and evaluation size, and a
        progressive schedule (``s``, ``m``, ``l``) is scaled to end at it (EfficientNetV2 section 4.2)."""
        check_int("proxy image size", image_size, 8, 1024)
        cfg = dataclasses.replace(PROXY_TRAINING, image_size=image_size, eval_image_size=image_size, **train)
        return cls(width=width, depth=depth, train=cfg).with_progressive(progressive)

    def with_progressive(self, name: str) -> "ProxyConfig":
        from nas.progressive import get_schedule

        sched = get_schedule(name)
        if sched is not None:
            size = self.image_size
            sched = sched.with_sizes(max(8, size // 2), size)
        return dataclasses.replace(self, train=dataclasses.replace(self.train, progressive=sched))

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def epochs(self) -> int:
        return self.train.epochs

    def at_image_size(self, size: int) -> "ProxyConfig":
        """The same proxy trained and evaluated at ``size`` px (compound scaling's resolution)."""
        check_int("proxy image size", size, 8, 1024)
        sched = self.train.progressive
        if sched is not None:
            sched = sched.with_sizes(max(8, size // 2), size)
        return dataclasses.replace(self, train=dataclasses.replace(self.train, image_size=size, eval_image_size=size,
                                                                   progressive=sched))

    def train_config(self, *, device: str, seed: int, compile: str | None = None) -> TrainConfig:
        changes: dict[str, Any] = {"device": device, "seed": seed}
        if compile is not None and "compile" in {f.name for f in dataclasses.fields(TrainConfig)}:
            changes["compile"] = compile
        return dataclasses.replace(self.train, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "depth": self.depth, "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProxyConfig":
        return cls(width=d["width"], depth=d["depth"], train=TrainConfig.from_dict(d["train"]))


def proxy_arch(arch: Architecture, proxy: ProxyConfig) -> Architecture:
    """The candidate at proxy scale (V2 rounding, so tiny widths stay multiples of 8)."""
    return scale(arch, width=proxy.width, depth=proxy.depth, resolution=proxy.image_size, rounding="v2")


@dataclass(frozen=True)
class TrialSettings:
    """What defines a search: two runs with equal settings are the same experiment. Checked on
    construction (the space and reward must be registered: import plugins first)."""

    space: str = "trainaware"
    dataset: str = "digits"
    data_dir: str | None = None
    reward: str = "trainaware"
    reward_params: dict = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    step_time: StepTimeConfig = field(default_factory=StepTimeConfig)
    compile: str = "auto"  # torch.compile of the training steps trained and timed: auto, on, off (nas.step)

    def __post_init__(self) -> None:
        from nas.data import check_dataset_name
        from nas.device import check_device
        from rewards import get_reward

        get_space(self.space)
        get_reward(self.reward, **self.reward_params)
        check_dataset_name(self.dataset)
        check_device(self.device)
        check_choice("compile", self.compile, ("auto", "on", "off"))
        check_int("seed", self.seed, 0, 2**31 - 1_000_001)  # trial seeds add the trial number
        for name, typ in (("proxy", ProxyConfig), ("step_time", StepTimeConfig)):
            if not isinstance(getattr(self, name), typ):
                raise NasError(f"{name} must be a {typ.__name__}, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "dataset": self.dataset, "data_dir": self.data_dir, "reward": self.reward,
                "reward_params": dict(self.reward_params), "device": self.device, "seed": self.seed,
                "proxy": self.proxy.to_dict(), "step_time": self.step_time.to_dict(), "compile": self.compile}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialSettings":
        d = dict(d)
        d["proxy"] = ProxyConfig.from_dict(d["proxy"])
        d["step_time"] = StepTimeConfig.from_dict(d["step_time"])
        return cls(**d)


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
            from nas.timing import make_timer

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
            self._reference = {"key": self.reference_key(), "arch": self.reference_arch.to_string(),
                               **t.as_reference(), "params": count_params(self.reference_arch, self.num_classes),
                               "num_classes": self.num_classes}
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
        return {"arch": arch.to_string(), "params": params, "num_classes": self.num_classes,
                "macs": count_macs(arch, num_classes=self.num_classes),
                **timing.as_metrics(), "S": timing.step_time_ms / ref["step_time_ms"], "P": params / ref["params"],
                "reference_step_time_ms": ref["step_time_ms"], "reference_params": ref["params"]}

    def evaluate(self, arch: Architecture, *, seed: int = 0, image_scale: float = 1.0, fidelity: bool = False,
                 on_epoch: Callable[[int, float, dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Score one candidate. ``on_epoch(epoch, accuracy, known)`` runs after every proxy epoch and
        returns True to stop the trial (:class:`TrialPruned` then carries what was measured).
        ``image_scale`` multiplies the proxy's image size and the step-time target's for this
        candidate only (compound scaling's resolution, EfficientNet section 3.3), while the reference
        stays at the settings' size, so S stays comparable. ``fidelity`` also times the full-size step
        directly where the step time is predicted. Raises :class:`TrialFailed` for a candidate that
        trains to NaN or runs out of memory."""
        from nas.train import TrainingDiverged, fit

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
            metrics = {**known, "accuracy": acc, "epochs": p.epochs, "proxy_arch": small.to_string(),
                       "proxy_params": count_params(small, self.num_classes),
                       "time_s": t_known - t0, "train_s": time.perf_counter() - t_known}
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
            elif isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError)
                                                            and "out of memory" in str(e).lower()):
                failure = TrialFailed(f"out of memory: {str(e).splitlines()[0]}")
            failure.metrics = {k: v for k, v in measured.items() if k != "reward"}
            if failure is e:
                raise
            raise failure from None


# -- the one objective -----------------------------------------------------------------------------

@dataclass
class Outcome:
    """How a trial ended: ``state`` COMPLETE, PRUNED or FAIL; ``row`` every figure it produced (what
    was measured stays in the row even when it was pruned or failed); ``error`` the reason of a FAIL."""

    state: str
    row: dict[str, Any]
    error: str | None = None


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:500]


def place() -> dict[str, Any]:
    """Where a trial runs: the host and process (a rerun closes trials whose process is gone)."""
    return {"hostname": socket.gethostname(), "pid": os.getpid()}


def run_objective(problem, evaluator: Evaluator, proposal: dict[str, Any], number: int,
                  report: Callable[[int, float], bool] | None = None) -> Outcome:
    """Evaluate ``proposal`` (from ``problem.propose``) as trial ``number``.

    ``report(epoch, value)`` is the backend's pruning hook (Optuna's pruner, Ray Tune's scheduler);
    ``value`` is ``problem.pruning_value``: the same signal for every backend (for a search, the reward
    so far: the epoch's accuracy with the S and P measured before training). It returns True to stop
    the trial. The seed is ``problem.seed(number)``; a failure of any kind is a FAIL with its reason.
    """
    t_start = time.time()
    arch = Architecture.from_string(proposal["arch"])
    base = {"number": number, **proposal.get("facts", {}), "arch": proposal["arch"], **place(), "t_start": t_start}
    hook = None
    if report is not None:
        def hook(epoch: int, accuracy: float, known: dict[str, Any]) -> bool:
            value = problem.pruning_value(evaluator.reward, known, accuracy)
            return value is not None and bool(report(epoch, value))

    def finish(state: str, metrics: dict[str, Any], error: str | None = None) -> Outcome:
        t_end = time.time()
        return Outcome(state, {**base, **metrics, "state": state, "error": error, "t_end": t_end,
                               "duration_s": t_end - t_start}, error)

    try:
        m = evaluator.evaluate(arch, seed=problem.seed(number), image_scale=float(proposal.get("image_scale", 1.0)),
                               fidelity=evaluator.samples_fidelity(number), on_epoch=hook)
    except TrialPruned as p:
        return finish("PRUNED", p.metrics)
    except Exception as e:  # the candidate's failure: recorded with its reason, the search goes on
        return finish("FAIL", getattr(e, "metrics", None) or {}, error_text(e))
    return finish("COMPLETE", m)
