"""The target setting: the image size and batch at which S stands for a full-size training step.

S is the step time of the candidate *as sampled* (width and depth multipliers 1) doing the step
``nas train`` runs (forward, loss, backward, RMSprop step, with the precision and memory format of
:mod:`nas.core.device`) at one image size and batch. That pair is the :class:`Target`.

Defaults (:func:`default_target`), printed at the start of every run that uses them:

* CPU: 64 px, batch 16. At 64 px an EfficientNetV2-S-sized candidate steps in a few hundred
  milliseconds on 2 cores, so timing a dozen full-size candidates, or building the step-time table
  (:mod:`nas.steptime.model`), takes a minute or two, and the README's default search still finishes
  in minutes. The ranking of candidates at 64 px is not the ranking at 384 px (the late, small-
  spatial stages weigh more at 64 px); a CPU user who wants the latter passes ``--target-image-size``.
* CUDA: the resolution the space's reference architecture is meant for (its ``res`` token: 384 px
  for ``trainaware``, 224 px for ``mnasnet``), which is the resolution a searched candidate is
  trained and evaluated at, and a realistic per-GPU batch: 128 images at 224 px (a usual per-
  accelerator batch of ImageNet recipes), kept at the same number of pixels per batch at other
  resolutions (40 at 384 px) so that activation memory, and the chance of running out of it on the
  largest candidates, stays about that of the 224 px recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas.errors import NasError, check_int

CPU_DEFAULT = (64, 16)
CUDA_PIXELS_BATCH = (224, 128)  # images of this size per batch, kept at constant pixels per batch
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048
MAX_BATCH_SIZE = 1 << 16


@dataclass(frozen=True)
class Target:
    """Image size (px, square) and batch size of the full-size training step that S stands for."""

    image_size: int
    batch_size: int

    def __post_init__(self) -> None:
        check_int("target image size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        check_int("target batch size", self.batch_size, 1, MAX_BATCH_SIZE)

    def to_dict(self) -> dict[str, int]:
        return {"image_size": self.image_size, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: Any) -> Target:
        if not isinstance(data, dict) or set(data) != {"image_size", "batch_size"}:
            raise NasError(f"a target setting must be {{'image_size': N, 'batch_size': N}}, got {data!r}")
        return cls(data["image_size"], data["batch_size"])

    def __str__(self) -> str:
        return f"{self.image_size} px, batch {self.batch_size}"


def default_target(runtime, space=None, *, image_size: int | None = None, batch_size: int | None = None) -> Target:
    """The default setting on ``runtime``'s device for ``space`` (a SearchSpace or a space name; only
    used on CUDA, for its reference resolution), with ``image_size`` / ``batch_size`` overriding
    either value (None: the default). See the module docstring for why these values."""
    if runtime.device.type != "cuda":
        image, batch = CPU_DEFAULT
        image = image if image_size is None else image_size
    else:
        if image_size is not None:
            image = image_size
        elif space is not None:
            if isinstance(space, str):
                from search_spaces import get_space

                space = get_space(space)
            image = space.reference().resolution
        else:
            image = CUDA_PIXELS_BATCH[0]
        # The batch follows the image size actually used, so a smaller --target-image-size gets
        # the larger batch that fills the same memory.
        check_int("target image size", image, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        size, per_batch = CUDA_PIXELS_BATCH
        batch = max(8, int(round(per_batch * (size / image) ** 2 / 8)) * 8)
    return Target(image, batch if batch_size is None else batch_size)
