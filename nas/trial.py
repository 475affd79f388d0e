"""One search trial, independent of the driver that schedules it (Optuna in-process, Ray Tune).

A trial (EfficientNetV2 section 3.3): take a candidate architecture, build it at a proxy scale,
count its parameters, measure its real training step time on the target device, normalise both by
the space's reference architecture measured the same way in the same process (S, P), train it
briefly at reduced image size, measure validation top-1 accuracy (A) and score it with a reward.

Everything a trial needs is in :class:`TrialSettings`, a JSON-serialisable frozen dataclass, so the
same settings travel to a Ray worker and are stored with a run to detect a changed command.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from nas.errors import NasError
from search_spaces import Architecture, build, count_macs, count_params, get_space, scale

OPTIMIZERS = ("adamw", "sgd", "rmsprop")


@dataclass(frozen=True)
class ProxyConfig:
    """How a candidate is shrunk and trained so a CPU trial takes seconds (all settable)."""

    width: float = 0.25
    depth: float = 0.25
    image_size: int = 32
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.005
    optimizer: str = "adamw"
    progressive: str = "off"  # s | m | l | off: EfficientNetV2 progressive learning, scaled to image_size
    measure_min_run_time: float = 0.4  # seconds of timed steps per candidate
    bn_recalibration: int = 8  # training batches to re-estimate BatchNorm statistics before each evaluation

    def validate(self) -> "ProxyConfig":
        for name in ("width", "depth", "lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise NasError(f"proxy {name} must be a positive number, got {v!r}")
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 1024:
            raise NasError(f"proxy image size must be an integer in [8, 1024], got {self.image_size!r}")
        if not isinstance(self.epochs, int) or not 1 <= self.epochs <= 1000:
            raise NasError(f"proxy epochs must be an integer in [1, 1000], got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 65536:
            raise NasError(f"proxy batch size must be a positive integer, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise NasError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.measure_min_run_time <= 0:
            raise NasError(f"measure time must be positive, got {self.measure_min_run_time}")
        if self.progressive != "off":
            from nas.progressive import get_schedule

            get_schedule(self.progressive)
        self.train_config(device="cpu", seed=0)  # the training loop's own checks (lr range, ...)
        return self

    def train_config(self, *, device: str, seed: int):
        """The training-loop configuration of one proxy run (EfficientNetV2's schedule, image sizes
        scaled into the proxy's range, when ``progressive`` is set)."""
        from nas.train import TrainConfig

        progressive = None
        if self.progressive != "off":
            from nas.progressive import get_schedule

            progressive = get_schedule(self.progressive).with_sizes(max(8, self.image_size // 2), self.image_size)
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           image_size=self.image_size, eval_image_size=self.image_size, progressive=progressive,
                           device=device, seed=seed, warmup_epochs=0, bn_recalibration=self.bn_recalibration)


@dataclass(frozen=True)
class TrialSettings:
    """What defines a search: two runs with equal settings are the same experiment."""

    space: str = "trainaware"
    dataset: str = "digits"
    data_dir: str | None = None
    reward: str = "trainaware"
    reward_params: dict = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    proxy: ProxyConfig = field(default_factory=ProxyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialSettings":
        d = dict(d)
        d["proxy"] = ProxyConfig(**d.get("proxy", {}))
        return cls(**d)

    def validate(self) -> "TrialSettings":
        from rewards import get_reward

        from nas.data import DATASETS

        get_space(self.space)
        get_reward(self.reward, **self.reward_params)
        known = [d for d in DATASETS if ":" not in d]
        if self.dataset not in known and not self.dataset.startswith("imagefolder:"):
            raise NasError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**31 - 1000000:
            raise NasError(f"seed must be a non-negative integer below 2**31 - 10**6, got {self.seed!r}")
        self.proxy.validate()
        from nas.device import resolve_device

        resolve_device(self.device)
        return self


class TrialFailed(Exception):
    """A candidate that could not be scored (NaN, out of memory, ...); the reason is the message."""


def proxy_arch(arch: Architecture, proxy: ProxyConfig) -> Architecture:
    """The candidate at proxy scale (V2 rounding, so tiny widths stay multiples of 8)."""
    return scale(arch, width=proxy.width, depth=proxy.depth, resolution=proxy.image_size, rounding="v2")


class Evaluator:
    """Evaluates candidates for one search. Holds what is costly to redo per trial: the data set and
    the reference measurement, which is taken once per process on this process's device, so S on a
    mixed cluster compares each candidate with the reference on its own kind of device."""

    def __init__(self, settings: TrialSettings, reference: Architecture | None = None):
        """``reference`` replaces the space's baseline as the S / P normaliser (``nas grid-scale``
        normalises every scaled candidate by its unscaled base)."""
        from rewards import get_reward

        self.settings = settings.validate()
        self._reference_arch = reference
        self.space = get_space(settings.space)
        self.reward = get_reward(settings.reward, **settings.reward_params)
        self._splits = None
        self._reference: dict[str, Any] | None = None

    @property
    def splits(self):
        if self._splits is None:
            from nas.data import load_dataset

            self._splits = load_dataset(self.settings.dataset, self.settings.data_dir, seed=self.settings.seed)
        return self._splits

    def _measure(self, arch: Architecture, seed: int, proxy: ProxyConfig | None = None):
        from nas.measure import measure_step_time

        p = proxy or self.settings.proxy
        torch.manual_seed(seed)
        model = build(proxy_arch(arch, p), self.splits.num_classes)
        return measure_step_time(model, device=self.settings.device, batch_size=p.batch_size,
                                 image_size=p.image_size, num_classes=self.splits.num_classes,
                                 min_run_time=p.measure_min_run_time)

    def reference(self) -> dict[str, Any]:
        """Step time and size of the space's reference architecture, measured once per process."""
        if self._reference is None:
            ref = self._reference_arch or self.space.reference()
            # The first timing in a fresh process runs slow (allocator and oneDNN/cuDNN kernel
            # caches are cold), which would make every S of the run too small: time it twice and
            # keep the second, which is measured under the same conditions as the candidates'.
            self._measure(ref, self.settings.seed)
            t = self._measure(ref, self.settings.seed)
            self._reference = {"arch": ref.to_string(), "step_time_ms": t.step_time_ms, "iqr_ms": t.iqr_ms,
                               "params": count_params(ref, self.splits.num_classes),
                               "device": t.device, "device_name": t.device_name}
        return self._reference

    def evaluate(self, arch: Architecture, *, seed: int = 0,
                 report: Callable[[int, float], None] | None = None,
                 image_size: int | None = None, report_metric: str = "accuracy") -> dict[str, Any]:
        """Score one candidate. ``report(epoch, accuracy)`` is called after every proxy epoch (the
        driver's pruning hook; it may raise to stop the trial); with ``report_metric="reward"`` it
        gets the reward so far instead of the accuracy (S and P are measured before training). ``image_size`` overrides the proxy
        image size for this candidate only (compound scaling's resolution, EfficientNet section 3.3),
        while the reference stays measured at the settings' size, so S stays comparable. Raises
        :class:`TrialFailed` for a candidate that trains to NaN or runs out of memory."""
        from nas.train import fit

        t0 = time.perf_counter()
        ref = self.reference()
        p = self.settings.proxy
        if image_size is not None:
            p = dataclasses.replace(p, image_size=image_size).validate()
        splits = self.splits
        small = proxy_arch(arch, p)
        try:
            timing = self._measure(arch, seed, p)
            t_measure = time.perf_counter()
            torch.manual_seed(seed)
            model = build(small, splits.num_classes)
            cfg = p.train_config(device=self.settings.device, seed=seed)

            params = count_params(arch, splits.num_classes)
            # S and P are known before training, so a pruner can be fed the reward itself.
            known = {"S": timing.step_time_ms / ref["step_time_ms"], "P": params / ref["params"],
                     "step_time_ms": timing.step_time_ms, "params": params, "arch": arch.to_string()}

            def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
                loss = metrics.get("train_loss")
                if loss is not None and not math.isfinite(loss):
                    raise TrialFailed(f"training diverged: loss {loss} at epoch {epoch}")
                if report is not None:
                    acc = float(metrics["val_accuracy"])
                    report(epoch, acc if report_metric == "accuracy" else float(self.reward({**known, "accuracy": acc})))

            result = fit(model, splits, cfg, on_epoch_end=on_epoch_end, progress=False)
        except torch.OutOfMemoryError as e:
            raise TrialFailed(f"out of memory: {str(e).splitlines()[0]}") from None
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                raise TrialFailed(f"out of memory: {str(e).splitlines()[0]}") from None
            raise
        t_train = time.perf_counter()
        acc = float(result.val_accuracy)
        if not math.isfinite(acc):
            raise TrialFailed(f"accuracy is {acc}")
        metrics: dict[str, Any] = {
            "arch": arch.to_string(),
            "proxy_arch": small.to_string(),
            "params": params,
            "proxy_params": count_params(small, splits.num_classes),
            "macs": count_macs(arch, num_classes=splits.num_classes),
            "step_time_ms": timing.step_time_ms,
            "step_iqr_ms": timing.iqr_ms,
            "S": timing.step_time_ms / ref["step_time_ms"],
            "P": params / ref["params"],
            "accuracy": acc,
            # Measurement provenance: what a step time means depends on all of these.
            "device": timing.device,
            "device_name": timing.device_name,
            "torch_version": timing.torch_version,
            "threads": timing.threads,
            "dtype": timing.dtype,
            "memory_format": timing.memory_format,
            "measure_batch_size": timing.batch_size,
            "measure_image_size": timing.image_size,
            "measure_s": t_measure - t0,
            "train_s": t_train - t_measure,
        }
        metrics["reward"] = float(self.reward(metrics))
        if not math.isfinite(metrics["reward"]):
            raise TrialFailed(f"reward is {metrics['reward']}")
        metrics["duration_s"] = time.perf_counter() - t0
        return metrics
