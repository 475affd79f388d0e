"""Where a trial's training step time comes from: S's numerator and denominator.

S is the candidate's training step time over the reference architecture's, obtained the same way
(EfficientNetV2 section 3.3). ``--step-time`` picks the way:

* ``table`` (default): the *full-size* candidate's step time at the target setting, predicted by the
  per-device step-time model (:mod:`nas.steptime`, ``nas calibrate``). Every ``fidelity_every``-th
  trial is also timed directly, so each run carries its own check of the model.
* ``measure``: the full-size candidate timed directly at the target setting (right on GPUs, where a
  step takes milliseconds).
* ``proxy``: the shrunk proxy timed at the proxy's batch and image size: the old method, kept for
  comparison only (on an H100 its ranking of full-size training cost is poor: Spearman 0.30).

The target setting (``--target-image-size``, ``--target-batch-size``) is the training step the user
will run: resolved once per run from the device (:func:`default_target`) and stored with the run.

Measured references defend themselves against a noisy machine: the reference is timed after a
warm-up and again until its inter-quartile range is within :data:`STEADY_SPREAD` of its median (at
most :data:`STEADY_TRIES` times); when it never settles the run is told (``noisy``), and a driver can
re-time it later (:meth:`StepTimer.drift`) to warn when the machine's load changed during a run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from nas.errors import NasError, check_choice, check_int, check_positive

STEP_TIME_METHODS = ("table", "measure", "proxy")
STEADY_SPREAD = 0.10  # IQR / median of a steady reference timing
STEADY_TRIES = 4  # timings of the reference before it is declared noisy
DRIFT_TOLERANCE = 0.25  # a re-timed reference this far from the one in use means the load changed


@dataclass(frozen=True)
class StepTimeConfig:
    """How step times are obtained (see the module docstring). ``None`` targets are resolved from
    the device by :meth:`resolved` before a run stores its settings."""

    method: str = "table"
    target_image_size: int | None = None
    target_batch_size: int | None = None
    min_run_time: float = 0.4  # seconds of timed steps per measurement
    fidelity_every: int = 5  # table: time every k-th trial directly too (0: never)

    def __post_init__(self) -> None:
        check_choice("--step-time", self.method, STEP_TIME_METHODS)
        if self.target_image_size is not None:
            check_int("--target-image-size", self.target_image_size, 8, 2048)
        if self.target_batch_size is not None:
            check_int("--target-batch-size", self.target_batch_size, 1, 65536)
        check_positive("--measure-time", self.min_run_time)
        check_int("--fidelity-every", self.fidelity_every, 0, 1_000_000)

    def resolved(self, device: str, space: str) -> StepTimeConfig:
        """Concrete target values for ``device`` and ``space`` (:func:`nas.steptime.default_target`:
        on a CPU 64 px, batch 16; on CUDA the space's resolution and the batch that fills the memory
        such a step takes at 224 px, batch 128)."""
        if self.target_image_size is not None and self.target_batch_size is not None:
            return self
        from nas.core.device import Runtime
        from nas.steptime import default_target

        t = default_target(
            Runtime.resolve(device), space, image_size=self.target_image_size, batch_size=self.target_batch_size
        )
        return dataclasses.replace(self, target_image_size=t.image_size, target_batch_size=t.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepTimeConfig:
        return cls(**d)


@dataclass
class Timing:
    """One step time with what it depends on."""

    step_time_ms: float
    method: str
    image_size: int
    batch_size: int
    provenance: dict[str, Any]  # device, device_name, torch_version, threads, dtype, memory_format
    iqr_ms: float | None = None  # measured timings only
    measured_step_time_ms: float | None = None  # table: the direct timing of a fidelity sample
    noisy: bool = False

    def as_metrics(self) -> dict[str, Any]:
        return {
            "step_time_ms": self.step_time_ms,
            "step_iqr_ms": self.iqr_ms,
            "step_time_method": self.method,
            "measured_step_time_ms": self.measured_step_time_ms,
            "step_image_size": self.image_size,
            "step_batch_size": self.batch_size,
            **self.provenance,
        }

    def as_reference(self) -> dict[str, Any]:
        return {
            "step_time_ms": self.step_time_ms,
            "iqr_ms": self.iqr_ms,
            "method": self.method,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "noisy": self.noisy,
            **self.provenance,
        }


class StepTimer:
    """The step-time source of one process (one device): proxy, measure or table."""

    def __init__(self, settings, num_classes: int):
        from nas.core.device import Runtime

        self.settings = settings
        self.config: StepTimeConfig = settings.step_time
        self.num_classes = num_classes
        self.runtime = Runtime.resolve(settings.device)
        self.method = self.config.method
        self._model = None
        self._fingerprint = self.runtime.fingerprint()
        self.compile = self._compiles()
        if self.method != "proxy" and (self.config.target_image_size is None or self.config.target_batch_size is None):
            raise NasError("the step-time target is not resolved (StepTimeConfig.resolved)")

    def _compiles(self) -> bool:
        """Whether timed steps are compiled: as the training they stand for would be (nas.training.step's
        rule). The proxy's step compiles when the proxy's short training does; the full-size step
        stands for a long training run. The table is built from eager steps."""
        from nas.training.step import resolve_compile

        if self.method == "table":
            return False
        train = self.settings.proxy.train
        steps = train.epochs * 20 if self.method == "proxy" else 10**9
        return resolve_compile(self.settings.compile, self.runtime, steps)

    # -- the setting --------------------------------------------------------------------------------
    def setting(self, arch, image_scale: float = 1.0) -> tuple[Any, int, int]:
        """(architecture, image size, batch) whose step is timed for ``arch``."""
        if self.method == "proxy":
            from nas.trial.settings import proxy_arch

            p = self.settings.proxy
            if image_scale != 1.0:
                p = p.at_image_size(int(round(p.image_size * image_scale)))
            return proxy_arch(arch, p), p.image_size, p.train.batch_size
        return arch, _scaled(self.config.target_image_size, image_scale), self.config.target_batch_size

    def key(self, arch) -> str:
        """Identifies a reference timing: same method, device fingerprint and setting."""
        _, size, batch = self.setting(arch)
        fp = self._fingerprint
        return (
            f"{self.method}|{fp['device_name']}|{fp['dtype']}|{fp['memory_format']}|threads={fp['threads']}|"
            f"torch={fp['torch']}|compiled={self.compile}|{size}px|batch{batch}|{arch.to_string()}"
        )

    def target(self) -> dict[str, Any]:
        """What S stands for, as stored in every row: the full-size step at the target setting."""
        if self.method == "proxy":
            return {"target_image_size": None, "target_batch_size": None, "target_device": self._fingerprint["device"]}
        return {
            "target_image_size": self.config.target_image_size,
            "target_batch_size": self.config.target_batch_size,
            "target_device": self._fingerprint["device"],
        }

    # -- timing ----------------------------------------------------------------------------------------
    def measure(self, arch, image_scale: float = 1.0):
        """A direct timing of the step ``setting`` names (:func:`nas.steptime.measure.measure_step_time`), alone
        on the device when trials share it (:mod:`nas.core.devicelock`)."""
        from nas.core import devicelock
        from nas.steptime.measure import measure_step_time

        timed, size, batch = self.setting(arch, image_scale)
        with devicelock.timing():
            return measure_step_time(
                timed,
                device=self.settings.device,
                batch_size=batch,
                image_size=size,
                num_classes=self.num_classes,
                optimizer=self.settings.proxy.train.optimizer if self.method == "proxy" else "rmsprop",
                min_run_time=self.config.min_run_time,
                seed=self.settings.seed,
                compile=self.compile,
            )

    def model(self):
        """This process's step-time model (:mod:`nas.steptime`): the table on disk for this device
        and setting, built on first use (with a progress bar on a terminal) and reused by every later
        run; workers on the same machine load the table the driver built."""
        if self._model is None:
            import sys

            from nas.steptime import StepTimeModel, Target

            target = Target(self.config.target_image_size, self.config.target_batch_size)
            self._model = StepTimeModel.load_or_build(
                self.settings.space,
                self.runtime,
                target,
                num_classes=self.num_classes,
                progress=sys.stderr.isatty(),
                log=lambda line: print(line, file=sys.stderr, flush=True),
            )
        return self._model

    def predict(self, arch, image_scale: float = 1.0) -> float:
        timed, size, _batch = self.setting(arch, image_scale)
        return self.model().predict(timed, image_size=size)

    def time(self, arch, *, image_scale: float = 1.0, with_measurement: bool = False) -> Timing:
        _, size, batch = self.setting(arch, image_scale)
        prov = self._provenance()
        if self.method == "table":
            t = Timing(self.predict(arch, image_scale), "table", size, batch, prov)
            if with_measurement:  # timed the way the table's own check times (nas.steptime)
                from nas.core import devicelock

                timed, size, _ = self.setting(arch, image_scale)
                with devicelock.timing():
                    t.measured_step_time_ms = self.model().measure(timed, image_size=size)
            return t
        m = self.measure(arch, image_scale)
        return Timing(
            m.step_time_ms, self.method, size, batch, prov, iqr_ms=m.iqr_ms, measured_step_time_ms=m.step_time_ms
        )

    def reference(self, arch) -> Timing:
        """The reference's step time; measured ones are steadied (see the module docstring)."""
        if self.method == "table":
            return self.time(arch)
        # The first timing in a fresh process runs slow (allocator, oneDNN / cuDNN kernel caches
        # are cold), which would make every S of the run too small: it is a warm-up only.
        self.measure(arch)
        best = None
        for _ in range(STEADY_TRIES):
            t = self.time(arch)
            if best is None or _spread(t) < _spread(best):
                best = t
            if _spread(t) <= STEADY_SPREAD:
                break
        best.noisy = _spread(best) > STEADY_SPREAD
        return best

    def drift(self, arch, reference_ms: float) -> dict[str, Any] | None:
        """Re-time the reference; a dict describing the change when it moved more than
        :data:`DRIFT_TOLERANCE` from ``reference_ms`` (the machine's load changed), else None."""
        if self.method == "table":
            return None
        now = self.time(arch).step_time_ms
        change = now / reference_ms - 1.0
        if abs(change) <= DRIFT_TOLERANCE:
            return None
        return {"reference_step_time_ms": reference_ms, "retimed_step_time_ms": now, "change": change}

    def _provenance(self) -> dict[str, Any]:
        fp = self._fingerprint
        return {
            "device": fp["device"],
            "device_name": fp["device_name"],
            "torch_version": fp["torch"],
            "threads": fp["threads"],
            "dtype": fp["dtype"],
            "memory_format": fp["memory_format"],
            "compiled": self.compile,
            **self.target(),
        }


def _spread(t: Timing) -> float:
    return (t.iqr_ms or 0.0) / t.step_time_ms if t.step_time_ms > 0 else math.inf


def _scaled(size: int, scale: float) -> int:
    return max(8, int(round(size * scale)))


def make_timer(settings, num_classes: int) -> StepTimer:
    return StepTimer(settings, num_classes)
