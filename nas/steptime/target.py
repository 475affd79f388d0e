"""The target setting: what S stands for, at which image size and batch.

S is the cost of the candidate *as sampled* (width and depth multipliers 1) on the target device,
relative to the reference architecture's. The cost (:mod:`nas.steptime.costs`) is either the
training step ``nas train`` runs (forward, loss, backward, RMSprop step, with the precision and
memory format of :mod:`nas.core.device`: EfficientNetV2's S) or the inference forward pass in
evaluation mode (MnasNet's latency). The cost with its image size and batch is the :class:`Target`.

Defaults (:func:`default_target`), printed at the start of every run that uses them:

* Training step on a CPU: 64 px, batch 16. At 64 px an EfficientNetV2-S-sized candidate steps in a
  few hundred milliseconds on 2 cores, so timing a dozen full-size candidates, or building the
  step-time table, takes about two minutes (117-145 s measured on 2 cores), and the README's
  default search still finishes in minutes. The ranking of candidates at 64 px is not the ranking
  at 384 px (the late, small-spatial stages weigh more at 64 px); a CPU user who wants the latter
  passes ``--target-image-size``.
* Training step on CUDA: the resolution the space's reference architecture is meant for (its
  ``res`` token: 384 px for ``trainaware``, 224 px for ``mnasnet``) and a realistic per-GPU batch:
  128 images at 224 px (a usual per-accelerator batch of ImageNet recipes), kept at the same number
  of pixels per batch at other resolutions (40 at 384 px) so that activation memory, and the chance
  of running out of it on the largest candidates, stays about that of the 224 px recipe.
* Latency: the space's resolution and batch 1 on every device, as MnasNet measured it (one image at
  224 px on one core of a Pixel 1); ``--latency-batch-size`` sets another batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas.errors import NasError, check_choice, check_int
from nas.steptime.costs import COSTS, get_cost
from search_spaces import get_space

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048
MAX_BATCH_SIZE = 1 << 16


@dataclass(frozen=True)
class Target:
    """Cost kind, image size (px, square) and batch size of what S stands for."""

    image_size: int
    batch_size: int
    cost: str = "step"

    def __post_init__(self) -> None:
        check_int("target image size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        check_int("target batch size", self.batch_size, 1, MAX_BATCH_SIZE)
        check_choice("--cost", self.cost, tuple(COSTS))

    def to_dict(self) -> dict[str, Any]:
        return {"cost": self.cost, "image_size": self.image_size, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: Any) -> Target:
        keys = {"image_size", "batch_size"}
        if not isinstance(data, dict) or not keys <= set(data) or not set(data) <= keys | {"cost"}:
            raise NasError(f"a target setting must be {{'cost': ..., 'image_size': N, 'batch_size': N}}, got {data!r}")
        return cls(data["image_size"], data["batch_size"], data.get("cost", "step"))

    def __str__(self) -> str:
        return f"{get_cost(self.cost).label}{self.image_size} px, batch {self.batch_size}"


def _space_resolution(space) -> int | None:
    if space is None:
        return None
    return (get_space(space) if isinstance(space, str) else space).reference().resolution


def default_target(
    runtime, space=None, *, image_size: int | None = None, batch_size: int | None = None, cost: str = "step"
) -> Target:
    """The default setting on ``runtime``'s device for ``space`` (a SearchSpace or a space name; its
    reference resolution is used on CUDA and for latency), with ``image_size`` / ``batch_size``
    overriding either value (None: the default). See the module docstring for why these values."""
    check_choice("--cost", cost, tuple(COSTS))
    if image_size is not None:
        check_int("target image size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    image, batch = get_cost(cost).default_setting(runtime.device.type, image_size or _space_resolution(space))
    if image_size is not None and image_size != image:  # the batch that fills the same memory at this size
        image, batch = image_size, get_cost(cost).default_setting(runtime.device.type, image_size)[1]
    return Target(image, batch if batch_size is None else batch_size, cost)
