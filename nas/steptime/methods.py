"""Where a candidate's cost comes from: one registry entry per method (``--step-time``).

* ``table`` (default): the *full-size* candidate's cost at the target setting, predicted by the
  run's step-time table (:mod:`nas.steptime.model`) in any process on any machine. Every
  ``fidelity_every``-th trial is also timed directly, where the process matches the target device.
* ``measure``: the full-size candidate timed directly at the target setting, on the target device.
* ``proxy``: the shrunk proxy timed at the proxy's batch and image size on the target device: the
  old method, kept for comparison only (on an H100 its ranking of full-size training cost is poor:
  Spearman 0.30).

A method's :meth:`Method.source` turns a run's prepared target (:mod:`nas.steptime.prepared`) into
this process's :class:`Source`, which gives a cost (ms) for an architecture at an image size, and
a direct timing when this process can make one (:mod:`nas.steptime.ontarget`).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import NasError, check_choice, check_int, check_positive
from nas.steptime import table as tables
from nas.steptime.costs import COSTS, get_cost
from nas.steptime.measure import measure_step_time
from nas.steptime.model import StepTimeModel
from nas.steptime.ontarget import OffTarget, mismatch, on_target
from nas.steptime.prepared import PreparedTarget
from search_spaces import Architecture

STEADY_SPREAD = 0.10  # IQR / median of a steady reference timing
STEADY_TRIES = 4  # timings of the reference before it is declared noisy
DRIFT_TOLERANCE = 0.25  # a re-timed reference this far from the one in use means the load changed


@dataclass(frozen=True)
class StepTimeConfig:
    """How costs are obtained (the module docstring). ``None`` values are resolved before a run
    stores its settings (:func:`nas.trial.target.resolve`): the cost from the reward, the target
    setting from the target file or the device."""

    method: str = "table"
    target_image_size: int | None = None
    target_batch_size: int | None = None
    min_run_time: float = 0.4  # seconds of timed steps per measurement
    fidelity_every: int = 5  # table: time every k-th trial directly too (0: never)
    cost: str | None = None  # step or latency; None: the reward's own (MnasNet's is latency)
    target: str | None = None  # a step-time table file to use as the target (--target FILE)

    def __post_init__(self) -> None:
        check_choice("--step-time", self.method, tuple(METHODS))
        if self.target_image_size is not None:
            check_int("--target-image-size", self.target_image_size, 8, 2048)
        if self.target_batch_size is not None:
            check_int("--target-batch-size", self.target_batch_size, 1, 65536)
        check_positive("--measure-time", self.min_run_time)
        check_int("--fidelity-every", self.fidelity_every, 0, 1_000_000)
        if self.cost is not None:
            check_choice("--cost", self.cost, tuple(COSTS))
        if self.target is not None and (not isinstance(self.target, str) or not self.target.strip()):
            raise NasError(f"--target takes a step-time table file, got {self.target!r}")
        get_method(self.method).check_config(self)

    @property
    def method_kind(self) -> Method:
        return get_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepTimeConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise NasError(f"unknown step-time setting(s) {', '.join(unknown)}")
        return cls(**d)


class Source(abc.ABC):
    """This process's costs for one run's target."""

    def __init__(self, target: PreparedTarget):
        self.target = target

    @abc.abstractmethod
    def cost(self, arch: Architecture, image_size: int, batch_size: int) -> dict[str, Any]:
        """``{"ms": ..., "iqr_ms": ..., "measured_ms": ...}`` of ``arch`` at this image size and batch."""

    def direct(self, arch: Architecture, image_size: int, batch_size: int) -> tuple[float | None, str | None]:
        """A direct timing on the target (ms, None) when this process matches it, else (None, why not)."""
        return None, "this method times nothing directly"


class TableSource(Source):
    def __init__(self, target: PreparedTarget, space=None):
        super().__init__(target)
        self.model = StepTimeModel(
            tables.Table.from_dict(target.table, Path(target.table_path or "steptime.json")), space
        )

    def cost(self, arch, image_size, batch_size):
        return {"ms": self.model.predict(arch, image_size), "iqr_ms": None, "measured_ms": None}

    def direct(self, arch, image_size, batch_size):
        try:
            return self.model.measure(arch, image_size), None
        except OffTarget:
            return None, f"not on the target device ({mismatch(self.target.fingerprint)})"


class DirectSource(Source):
    """Timed directly on the target device, every candidate (``measure``, ``proxy``)."""

    def time(self, arch: Architecture, image_size: int, batch_size: int):
        st = self.target.setting
        with on_target(
            self.target.fingerprint,
            needed_for=f"--step-time {self.target.method}",
            cover="run the trials on the target device, or use --step-time table",
        ) as runtime:
            return measure_step_time(
                arch,
                runtime=runtime,
                batch_size=batch_size,
                image_size=image_size,
                num_classes=st["num_classes"],
                optimizer=st.get("optimizer") or "rmsprop",
                cost=self.target.cost,
                min_run_time=st["min_run_time"],
                compile=bool(st.get("compiled")),
                seed=st.get("seed", 0),
            )

    def cost(self, arch, image_size, batch_size):
        r = self.time(arch, image_size, batch_size)
        return {"ms": r.step_time_ms, "iqr_ms": r.iqr_ms, "measured_ms": r.step_time_ms}

    def direct(self, arch, image_size, batch_size):
        try:
            return self.time(arch, image_size, batch_size).step_time_ms, None
        except OffTarget:
            return None, f"not on the target device ({mismatch(self.target.fingerprint)})"


class Method(abc.ABC):
    name: str = ""
    help: str = ""
    full_size: bool = True  # times the candidate as sampled (else its shrunk proxy)
    predicted: bool = False  # a prediction, checked every fidelity_every-th trial

    def check_config(self, cfg: StepTimeConfig) -> None:  # noqa: B027 (an optional hook: table takes every setting)
        """Refuse settings that do not apply to this method."""

    @abc.abstractmethod
    def source(self, target: PreparedTarget, space=None) -> Source: ...


class TableMethod(Method):
    name = "table"
    help = (
        "the full-size candidate's cost at the target setting, predicted by the run's step-time table "
        "(nas calibrate; built on first use)"
    )
    predicted = True

    def source(self, target, space=None):
        return TableSource(target, space)


class MeasureMethod(Method):
    name = "measure"
    help = "the same cost, timed directly for every candidate on the target device"

    def check_config(self, cfg):
        if cfg.target is not None:
            raise NasError("--target names a step-time table, which --step-time measure does not use; drop one")

    def source(self, target, space=None):
        return DirectSource(target)


class ProxyMethod(MeasureMethod):
    name = "proxy"
    help = "the shrunk proxy's own training step, timed (the old method, for comparison)"
    full_size = False

    def check_config(self, cfg):
        super().check_config(cfg)
        if cfg.target_image_size is not None or cfg.target_batch_size is not None:
            raise NasError(
                "--target-image-size and --target-batch-size set the full-size step; with --step-time "
                "proxy the proxy's own step is timed (use --step-time measure or table)"
            )
        if cfg.cost not in (None, "step"):
            raise NasError(
                f"--step-time proxy times the proxy's training step; --cost {cfg.cost} needs --step-time "
                "table or measure"
            )


METHODS: dict[str, Method] = {m.name: m for m in (TableMethod(), MeasureMethod(), ProxyMethod())}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise NasError(f"unknown step-time method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def spread(iqr_ms: float | None, ms: float) -> float:
    return (iqr_ms or 0.0) / ms if ms > 0 else float("inf")


def steady_reference(source: DirectSource, arch: Architecture, image_size: int, batch_size: int) -> dict[str, Any]:
    """The reference timed directly until its spread settles (at most :data:`STEADY_TRIES` times; the
    first timing in a fresh process runs slow and is a warm-up only); ``noisy`` when it never did."""
    source.time(arch, image_size, batch_size)
    best = None
    for _ in range(STEADY_TRIES):
        r = source.time(arch, image_size, batch_size)
        if best is None or spread(r.iqr_ms, r.step_time_ms) < spread(best.iqr_ms, best.step_time_ms):
            best = r
        if spread(r.iqr_ms, r.step_time_ms) <= STEADY_SPREAD:
            break
    return {
        "ms": best.step_time_ms,
        "iqr_ms": best.iqr_ms,
        "noisy": spread(best.iqr_ms, best.step_time_ms) > STEADY_SPREAD,
    }


def cost_describe(cost: str) -> str:
    return get_cost(cost).what
