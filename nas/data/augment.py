"""What happens to a batch on the training device: resize, RandAugment, normalisation, MixUp.

Everything here takes and returns tensors on whichever device they are on (torchvision transforms
v2 work on CPU and CUDA tensors alike), so the CPU path the tests run is the path a GPU runs.

RandAugment (Cubuk et al. 2020; EfficientNetV2 section 4.2 grows its magnitude with the image size)
is drawn per image, as ``v2.RandAugment`` applied to each image separately would draw it: torchvision's
transform draws its ops once per call, so calling it on a batch would give every image the same ops.
:class:`BatchRandAugment` draws every image's ops exactly as that per-image loop would (same
generator, same order: equal seeds give equal images), then applies each op once to the group of
images that drew it, which is a few dozen batched calls instead of two calls per image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from nas.errors import NasError, check_number

# ImageNet statistics: the presets' conventions, and harmless for the small sets.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

MAX_RANDAUGMENT = 30  # torchvision's RandAugment has 31 magnitude bins: 0..30


def check_randaugment(magnitude) -> int:
    """RandAugment magnitude as torchvision takes it: an integer bin 0..30 (0 = off); floats from a
    progressive schedule are rounded."""
    return int(round(check_number("RandAugment magnitude", magnitude, 0, MAX_RANDAUGMENT)))


def check_mixup(alpha) -> float:
    return check_number("mixup alpha", alpha, 0)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize of a uint8 batch (or one image); antialiased when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    return v2.functional.resize(images, [size, size], antialias=True)


@functools.cache
def _scale_shift(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(MEAN, dtype=torch.float32), torch.tensor(STD, dtype=torch.float32)
    return (1.0 / (255.0 * std)).view(3, 1, 1).to(device), (-mean / std).view(3, 1, 1).to(device)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 ``(x / 255 - MEAN) / STD``, computed as one fused
    ``x * scale + shift``: a single kernel per batch instead of four (on 2 busy CPU cores with two
    threads every parallel op costs milliseconds: 16 against 32 ms for a batch of 64 digits)."""
    scale, shift = _scale_shift(images.device)
    return torch.addcmul(shift, images, scale)


class BatchRandAugment(v2.RandAugment):
    """``v2.RandAugment`` on a uint8 batch ``[B, 3, H, W]`` with every image drawing its own ops.

    The draws (op, then its sign for signed ops, ``num_ops`` times per image, image after image)
    come from torch's global generator in the order that applying ``v2.RandAugment`` to each image
    in turn would use, so the result equals that loop's; the ops themselves run once per group of
    images that drew the same op and sign, on the batch's device. The draws and grouping happen on
    the host, so a CUDA batch never waits for the device."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.dtype != torch.uint8:
            raise NasError("BatchRandAugment takes a uint8 tensor [B, C, H, W]")
        n, (height, width) = images.shape[0], images.shape[-2:]
        names = list(self._AUGMENTATION_SPACE)
        magnitudes = []  # per op: its magnitude at this bin (None for ops without one), and signed
        for name in names:
            fn, signed = self._AUGMENTATION_SPACE[name]
            m = fn(self.num_magnitude_bins, height, width)
            magnitudes.append((None if m is None else float(m[self.magnitude]), signed))
        # ops[r][i]: (op index, magnitude) of image i in round r; drawn exactly as per-image calls do.
        ops: list[list[tuple[int, float]]] = [[] for _ in range(self.num_ops)]
        for _ in range(n):
            for r in range(self.num_ops):
                k = int(torch.randint(len(names), ()))
                mag, signed = magnitudes[k]
                if mag is None:
                    mag = 0.0
                elif signed and torch.rand(()) <= 0.5:
                    mag = -mag
                ops[r].append((k, mag))
        out = images
        for r in range(self.num_ops):
            groups: dict[tuple[int, float], list[int]] = {}
            for i, key in enumerate(ops[r]):
                groups.setdefault(key, []).append(i)
            for (k, mag), members in groups.items():
                if names[k] == "Identity":
                    continue
                if len(members) == n:
                    out = self._op(out, names[k], mag)
                    continue
                if out is images:
                    out = images.clone()  # never write into the caller's (or a cached) tensor
                idx = torch.tensor(members, dtype=torch.int64).to(out.device, non_blocking=True)
                out.index_copy_(0, idx, self._op(out.index_select(0, idx), names[k], mag))
        return out

    def _op(self, images: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
        return self._apply_image_or_video_transform(
            images, name, magnitude, interpolation=self.interpolation, fill=self._fill
        )


def make_randaugment(magnitude) -> BatchRandAugment | None:
    """Per-image RandAugment at ``magnitude`` (2 ops, torchvision's defaults); None when 0 (off)."""
    magnitude = check_randaugment(magnitude)
    return BatchRandAugment(magnitude=magnitude) if magnitude > 0 else None


def make_mixup(
    alpha: float, num_classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """``v2.MixUp(alpha=alpha, num_classes=num_classes)`` as a batch function
    ``(images, int64 labels) -> (mixed images, soft labels [B, num_classes])`` on the batch's device;
    None when ``alpha == 0`` (off: EfficientNetV2 Table 6 starts every schedule there)."""
    alpha = check_mixup(alpha)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise NasError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if alpha == 0:
        return None
    mix = v2.MixUp(alpha=alpha, num_classes=num_classes)

    def apply(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mix(images, labels)

    return apply
