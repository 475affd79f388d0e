"""Compound scaling (EfficientNet V1 section 3.3) and EfficientNetV2's scaling rules (V2 section 4.3).

Every function here is pure: it returns a new :class:`Architecture` and leaves its argument alone.
"""

from __future__ import annotations

import dataclasses
import math

from nas.errors import NasError, check_int, check_positive
from search_spaces.arch import MAX_RESOLUTION, MIN_RESOLUTION, Architecture, Stage
from search_spaces.blocks import make_divisible

ROUNDINGS = ("v1", "v2")


def round_filters(channels: int, width: float, rounding: str = "v1", divisor: int = 8) -> int:
    """V1: nearest multiple of 8 (at least 8), plus 8 when that falls below 90% of ``c*width``.
    V2 (automl): the same without the 90% rule."""
    if rounding not in ROUNDINGS:
        raise NasError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")
    if width == 1.0:
        return channels
    value = channels * width
    if rounding == "v1":
        return make_divisible(value, divisor)
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


DEPTH_ROUNDINGS = ("ceil", "round")


def round_repeats(repeats: int, depth: float, rounding: str = "ceil") -> int:
    """``ceil(repeats * depth)``, the papers' and torchvision's rule (the B1..B7 presets use it).

    ``"round"`` (nearest, at least 1) keeps a compound-scaled family on its FLOPs target: ceil turns
    B0's one-layer stages into two at depth 1.2, so the MACs of phi = 1 land 34% above
    ``alpha * beta**2 * gamma**2`` instead of 7% with nearest rounding."""
    if rounding == "ceil":
        return int(math.ceil(repeats * depth))
    if rounding == "round":
        return max(1, int(math.floor(repeats * depth + 0.5)))
    raise NasError(f"depth rounding must be one of {', '.join(DEPTH_ROUNDINGS)}; got {rounding!r}")


def scale(
    arch: Architecture,
    *,
    width: float = 1.0,
    depth: float = 1.0,
    resolution: int | None = None,
    resolution_mult: float = 1.0,
    rounding: str = "v1",
    dropout: float | None = None,
    depth_rounding: str = "ceil",
    fix_head_stem: bool = False,
) -> Architecture:
    """Scale width (channels), depth (repeats) and resolution; returns a new architecture.

    ``resolution`` sets the new native resolution directly (EfficientNet-B2 is B0 at 260 px);
    otherwise it is ``round(arch.resolution * resolution_mult)``. A stage's nominal input channels
    (``fc``) are rounded like every channel count, as the TF builders round ``input_filters``.
    ``fix_head_stem`` is the EfficientNet-Lite rule (TF ``efficientnet_lite_builder``,
    ``fix_head_stem``): stem and head channels and the first and last stages' layers stay as they are.
    """
    width, depth = check_positive("width multiplier", width), check_positive("depth multiplier", depth)
    resolution_mult = check_positive("resolution multiplier", resolution_mult)
    last = len(arch.stages) - 1

    def repeats(k: int, s: Stage) -> int:
        return s.repeats if fix_head_stem and k in (0, last) else round_repeats(s.repeats, depth, depth_rounding)

    stages = tuple(
        dataclasses.replace(
            s,
            out=round_filters(s.out, width, rounding),
            repeats=repeats(k, s),
            nominal_in=None if s.nominal_in is None else round_filters(s.nominal_in, width, rounding),
        )
        for k, s in enumerate(arch.stages)
    )
    res = resolution if resolution is not None else int(round(arch.resolution * resolution_mult))
    return arch.replace(
        stem=arch.stem if fix_head_stem else round_filters(arch.stem, width, rounding),
        stages=stages,
        head=arch.head if fix_head_stem else round_filters(arch.head, width, rounding),
        resolution=res,
        dropout=arch.dropout if dropout is None else dropout,
    )


def compound(
    arch: Architecture,
    phi: float,
    alpha: float,
    beta: float,
    gamma: float,
    rounding: str = "v1",
    depth_rounding: str = "ceil",
) -> Architecture:
    """EfficientNet's compound scaling: depth alpha**phi, width beta**phi, resolution gamma**phi."""
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or phi < 0:
        raise NasError(f"phi must be a non-negative number, got {phi!r}")
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1.0:
            raise NasError(f"{name} must be a number >= 1, got {v!r}")
    return scale(
        arch,
        width=beta**phi,
        depth=alpha**phi,
        resolution_mult=gamma**phi,
        rounding=rounding,
        depth_rounding=depth_rounding,
    )


def scale_v2(
    arch: Architecture,
    *,
    width: float = 1.0,
    depth: float = 1.0,
    resolution: int | None = None,
    resolution_mult: float = 1.0,
    max_resolution: int = 480,
    depth_rounding: str = "ceil",
    late_stages: int = 0,
    dropout: float | None = None,
) -> Architecture:
    """EfficientNetV2's scaling (V2 section 4.3, and the authors' ``effnetv2_model.py``):

    * channels are rounded the V2 way (nearest multiple of 8, no 90% rule), layers per stage
      ``ceil(repeats * depth)`` (``depth_rounding``): this gives EfficientNetV2-B1..B3 from B0;
    * the inference image size is capped at ``max_resolution`` (480);
    * ``late_stages = N > 0`` is the paper's heuristic for scaling V2-S to M and L ("gradually add
      more layers to later stages"): the layers that the rounding would add over the whole network
      all go to the last N stages (V2's stages 5 and 6 for N = 2), in proportion to their current
      repeats (largest remainder); earlier stages keep theirs.
    """
    width, depth = check_positive("width multiplier", width), check_positive("depth multiplier", depth)
    late_stages = check_int("late stages", late_stages, 0, len(arch.stages))
    max_resolution = check_int("maximum resolution", max_resolution, MIN_RESOLUTION, MAX_RESOLUTION)
    per_stage = depth if not late_stages else 1.0
    scaled = scale(
        arch,
        width=width,
        depth=per_stage,
        resolution=resolution,
        resolution_mult=resolution_mult,
        rounding="v2",
        dropout=dropout,
        depth_rounding=depth_rounding,
    )
    scaled = scaled.replace(resolution=min(scaled.resolution, max_resolution))
    if not late_stages:
        return scaled
    repeats = [s.repeats for s in arch.stages]
    extra = sum(round_repeats(r, depth, depth_rounding) for r in repeats) - sum(repeats)
    late = list(range(len(repeats) - late_stages, len(repeats)))
    if extra > 0:
        weights = [repeats[i] for i in late]
        shares = [extra * w / sum(weights) for w in weights]
        alloc = [int(math.floor(x)) for x in shares]
        order = sorted(range(len(late)), key=lambda j: (shares[j] - alloc[j], late[j]), reverse=True)
        for j in order[: extra - sum(alloc)]:
            alloc[j] += 1
        for j, i in enumerate(late):
            repeats[i] += alloc[j]
    stages = tuple(dataclasses.replace(s, repeats=r) for s, r in zip(scaled.stages, repeats))
    return scaled.replace(stages=stages)
