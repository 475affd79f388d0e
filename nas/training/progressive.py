"""Progressive learning with adaptive regularisation (EfficientNetV2 section 4.2, Algorithm 1, Table 6).

Training is split into ``M`` stages. In stage ``i`` (``0 <= i < M``) the image size and every
regularisation magnitude are linearly interpolated between a start and an end value::

    value_i = start + (end - start) * i / (M - 1)

so stage 0 trains small images with weak regularisation and stage ``M-1`` the full size with the
strongest. Small images need little regularisation, large ones more; growing both together keeps
the accuracy of large-image training at a fraction of its cost.

Rounding, so that what a stage reports is exactly what training applies:

* image size: rounded to the nearest integer pixel (no multiple-of-8 rule: the network's global
  pooling takes any size, and Table 6's own end values 300 and 380 are no such multiples);
* RandAugment magnitude: rounded to the nearest integer (torchvision takes an integer bin, 0..30);
* mixup alpha and dropout: exact (rounded to 6 decimals only to hide float noise).

With ``M == 1`` the single stage uses the end values (training at the target size). The paper
follows its Table 6 schedule, the values of which are :data:`PRESETS`; note the authors' released
code never applies the dropout schedule; this module follows the paper and does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nas.data.augment import MAX_RANDAUGMENT
from nas.errors import NasError, check_int, check_number

MIN_SIZE, MAX_SIZE = 8, 2048
MAX_STAGES = 1000


@dataclass(frozen=True)
class StageSettings:
    """What one stage trains with: image size (px), RandAugment magnitude, mixup alpha, dropout."""

    image_size: int
    randaugment: int
    mixup: float
    dropout: float


@dataclass(frozen=True)
class ProgressiveSchedule:
    """Start and end values of EfficientNetV2's progressive learning (section 4.2, Algorithm 1)."""

    size_start: int
    size_end: int
    randaugment_start: float
    randaugment_end: float
    mixup_start: float
    mixup_end: float
    dropout_start: float
    dropout_end: float
    stages: int = 4
    name: str = "custom"

    def __post_init__(self) -> None:
        check_int("image size start", self.size_start, MIN_SIZE, MAX_SIZE)
        check_int("image size end", self.size_end, MIN_SIZE, MAX_SIZE)
        check_number("RandAugment magnitude start", self.randaugment_start, 0, MAX_RANDAUGMENT)
        check_number("RandAugment magnitude end", self.randaugment_end, 0, MAX_RANDAUGMENT)
        check_number("mixup alpha start", self.mixup_start, 0, 100)
        check_number("mixup alpha end", self.mixup_end, 0, 100)
        check_number("dropout start", self.dropout_start, 0, 1, hi_open=True)
        check_number("dropout end", self.dropout_end, 0, 1, hi_open=True)
        check_int("number of stages", self.stages, 1, MAX_STAGES)
        if not isinstance(self.name, str):
            raise NasError(f"schedule name must be a string, got {self.name!r}")

    # -- Algorithm 1 -----------------------------------------------------------------------
    def ratio(self, i: int) -> float:
        """Interpolation weight of stage ``i``: ``i / (M - 1)`` (1.0 when ``M == 1``)."""
        check_int("stage", i, 0, self.stages - 1)
        return 1.0 if self.stages == 1 else i / (self.stages - 1)

    def stage(self, i: int) -> StageSettings:
        """Settings of stage ``i`` (0-based), linearly interpolated between start and end."""
        r = self.ratio(i)

        def lerp(a: float, b: float) -> float:
            return a + (b - a) * r

        return StageSettings(
            image_size=int(round(lerp(self.size_start, self.size_end))),
            randaugment=int(round(lerp(self.randaugment_start, self.randaugment_end))),
            mixup=round(lerp(self.mixup_start, self.mixup_end), 6),
            dropout=round(lerp(self.dropout_start, self.dropout_end), 6),
        )

    def stage_index(self, epoch: int, epochs: int) -> int:
        """The stage an epoch (0-based) belongs to.

        With ``epochs >= M`` the epochs are cut into ``M`` contiguous chunks whose lengths differ
        by at most one (``epoch * M // epochs``). With fewer epochs than stages, the epochs are
        spread over the stages so that the first epoch is stage 0 and the last is stage ``M-1``.
        """
        check_int("epochs", epochs, 1, 10**7)
        check_int("epoch", epoch, 0, epochs - 1)
        if epochs >= self.stages:
            return epoch * self.stages // epochs
        if epochs == 1:
            return self.stages - 1
        return int(round(epoch * (self.stages - 1) / (epochs - 1)))

    def stage_for_epoch(self, epoch: int, epochs: int) -> StageSettings:
        return self.stage(self.stage_index(epoch, epochs))

    def epoch_ranges(self, epochs: int) -> list[tuple[int, int] | None]:
        """Per stage, the 0-based (first, last) epoch it covers, or None when it gets no epoch."""
        ranges: list[list[int] | None] = [None] * self.stages
        for e in range(epochs):
            s = self.stage_index(e, epochs)
            ranges[s] = [e, e] if ranges[s] is None else [ranges[s][0], e]
        return [tuple(r) if r else None for r in ranges]

    # -- derived schedules -------------------------------------------------------------------
    def replace(self, **changes: Any) -> ProgressiveSchedule:
        return dataclasses.replace(self, **changes)

    def with_sizes(self, start: int, end: int) -> ProgressiveSchedule:
        """The same regularisation schedule over other image sizes (search proxies train at
        16..32 px on digits, not 128..380)."""
        return self.replace(size_start=start, size_end=end)

    def scaled_to(self, end: int) -> ProgressiveSchedule:
        """Image sizes scaled so the last stage trains at ``end`` px, keeping the start/end ratio
        of the schedule (S: 128/300 of ``end``); the start is at least 8 px."""
        check_int("image size end", end, MIN_SIZE, MAX_SIZE)
        start = max(MIN_SIZE, int(round(end * self.size_start / self.size_end)))
        return self.with_sizes(start, end)

    # -- plain data ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ProgressiveSchedule:
        if not isinstance(data, dict):
            raise NasError(f"a progressive schedule must be an object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise NasError(f"unknown schedule field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
        try:
            return cls(**data)
        except TypeError as e:
            raise NasError(f"incomplete progressive schedule: {e}") from None

    def table(self, epochs: int | None = None) -> str:
        """The schedule as a text table, one row per stage (with its epochs when given)."""
        ranges = self.epoch_ranges(epochs) if epochs else [None] * self.stages
        head = ["stage", "epochs", "image size", "RandAugment", "mixup", "dropout"]
        rows = []
        for i in range(self.stages):
            s, r = self.stage(i), ranges[i]
            ep = "-" if r is None else (f"{r[0] + 1}" if r[0] == r[1] else f"{r[0] + 1}-{r[1] + 1}")
            rows.append(
                [
                    str(i),
                    ep if epochs else "",
                    str(s.image_size),
                    str(s.randaugment),
                    f"{s.mixup:.3g}",
                    f"{s.dropout:.3g}",
                ]
            )
        if not epochs:
            head.pop(1)
            rows = [r[:1] + r[2:] for r in rows]
        widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        title = f"progressive learning '{self.name}' (EfficientNetV2 Algorithm 1), {self.stages} stages"
        return "\n".join([title, fmt.format(*head), *(fmt.format(*r) for r in rows)])


# EfficientNetV2 paper, Table 6: progressive training settings for V2-S, V2-M and V2-L.
PRESETS: dict[str, ProgressiveSchedule] = {
    "s": ProgressiveSchedule(128, 300, 5, 15, 0.0, 0.0, 0.1, 0.3, name="s"),
    "m": ProgressiveSchedule(128, 380, 5, 20, 0.0, 0.2, 0.1, 0.4, name="m"),
    "l": ProgressiveSchedule(128, 380, 5, 25, 0.0, 0.4, 0.1, 0.5, name="l"),
}
OFF = "off"


def schedule_names() -> list[str]:
    return [*PRESETS, OFF]


def get_schedule(
    name: str,
    *,
    stages: int | None = None,
    size_start: int | None = None,
    size_end: int | None = None,
    randaugment_start: float | None = None,
    randaugment_end: float | None = None,
    mixup_start: float | None = None,
    mixup_end: float | None = None,
    dropout_start: float | None = None,
    dropout_end: float | None = None,
) -> ProgressiveSchedule | None:
    """A Table 6 preset (``s``, ``m``, ``l``) with any value overridden, or None for ``off``.

    Overriding only ``size_end`` scales the start size with it (keeping the preset's ratio, see
    :meth:`ProgressiveSchedule.scaled_to`); give ``size_start`` too to set both.
    """
    if not isinstance(name, str) or name.strip().lower() not in schedule_names():
        raise NasError(f"unknown progressive schedule {name!r}; known: {', '.join(schedule_names())}")
    key = name.strip().lower()
    changes = {
        k: v
        for k, v in dict(
            stages=stages,
            size_start=size_start,
            size_end=size_end,
            randaugment_start=randaugment_start,
            randaugment_end=randaugment_end,
            mixup_start=mixup_start,
            mixup_end=mixup_end,
            dropout_start=dropout_start,
            dropout_end=dropout_end,
        ).items()
        if v is not None
    }
    if key == OFF:
        if changes:
            raise NasError(f"progressive schedule 'off' takes no overrides, got {', '.join(changes)}")
        return None
    sched = PRESETS[key]
    if "size_end" in changes and "size_start" not in changes:
        sched = sched.scaled_to(changes.pop("size_end"))
    return sched.replace(**changes) if changes else sched
