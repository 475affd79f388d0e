"""Data sets: loading by name, deterministic splits, and the in-memory image tensors.

Every data set is turned into the same form: items ``(uint8 tensor [3, H, W], int label)``, split
into a training and a validation part. :mod:`nas.data.batches` turns a split into batches on the
training device.

Data sets (``load_dataset(name)``):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits, 1797 images, 10 classes;
  offline. Grey levels 0..16 are scaled to 0..255 and repeated to three channels.
* ``fake``: a synthetic, learnable set (10 classes: a smooth per-class pattern plus a random shift
  and noise), deterministic from ``seed``; 640 images of 32 px (510 / 130 at the default split).
* ``cifar10`` / ``cifar100``: torchvision's, in ``data_dir`` (default ``~/.cache/nas/data``).
* ``imagefolder:PATH``: a torchvision ``ImageFolder``; ``PATH/train`` and ``PATH/val`` when both
  exist, else ``PATH`` itself split in two. Small images of one size (CIFAR-sized, at most
  ``IN_MEMORY_MAX_SIDE`` px and ``IN_MEMORY_MAX_BYTES`` in all) are decoded once into memory.

Validation data: where a data set comes with its own held-out folder (``imagefolder`` with
``PATH/val``) that is used; otherwise (digits, fake, CIFAR) ``val_fraction`` of the *training* data
is held out, stratified by class and seeded. CIFAR's official test set is deliberately not used as
the validation set: the search selects architectures on it, and NAS papers hold validation data out
of the training set for this reason (MnasNet section 5, EfficientNetV2 section 4.1).

In-memory sets (everything but an ``imagefolder`` of large or mixed-size images) are
:class:`TensorImages`: one uint8 tensor, copied to a training device once (:meth:`TensorImages.on`)
and resized there, whole, once per image size while the resized copy stays small
(:meth:`TensorImages.resized`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from nas.data.augment import resize
from nas.errors import NasError

DATASETS = ("digits", "fake", "cifar10", "cifar100", "imagefolder:PATH")
DEFAULT_DATA_DIR = "~/.cache/nas/data"

# Resized copies of an in-memory set are kept (per device and size) while together they stay below
# this many bytes; beyond it every batch is resized on its own (still on the device).
_CACHE_BYTES = 256 * 2**20


@dataclass
class Splits:
    """A data set split for training: items are ``(uint8 tensor [3, H, W], int label)``."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    native_size: int  # the images' own side length in pixels (shorter side for imagefolder)


class TensorImages(Dataset):
    """An in-memory image set: ``images`` uint8 ``[N, 3, H, W]``, ``labels`` int64 ``[N]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise NasError(f"images must be a uint8 tensor [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise NasError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (images, labels)
        self._resized: dict[tuple[torch.device, int], torch.Tensor] = {}  # (device, size) -> uint8 images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` on ``device``, copied there once and kept (a search trains many
        candidates on the same set: each finds it already in place)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.images, self.labels
        if device not in self._on:
            self._on[device] = (self.images.to(device), self.labels.to(device))
        return self._on[device]

    def resized(self, size: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """All images resized to ``size`` (uint8, on ``device``), kept while the resized copies stay
        under 256 MiB; None when this size would not fit (then resize batch by batch)."""
        device = torch.device(device)
        key = (device, int(size))
        if key in self._resized:
            return self._resized[key]
        n_bytes = self.images.shape[0] * self.images.shape[1] * size * size
        if n_bytes > _CACHE_BYTES:
            return None
        if n_bytes + sum(t.numel() for t in self._resized.values()) > _CACHE_BYTES:
            self._resized.clear()  # a progressive run moves on to larger sizes: drop the old ones
        self._resized[key] = resize(self.on(device)[0], size)
        return self._resized[key]


# --------------------------------------------------------------------------------------------
# Loading


def check_dataset_name(name) -> str:
    """A data set name :func:`load_dataset` knows, checked without loading anything."""
    known = [d for d in DATASETS if ":" not in d]
    if not isinstance(name, str) or (
        name.strip().lower() not in known and not name.strip().lower().startswith("imagefolder:")
    ):
        raise NasError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return name


def load_dataset(
    name: str, data_dir: str | None = None, *, seed: int = 0, val_fraction: float = 0.2, download: bool = True
) -> Splits:
    """Load a data set by name (see the module docstring) and split it deterministically."""
    if not isinstance(name, str) or not name.strip():
        raise NasError(f"dataset name must be a non-empty string, got {name!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise NasError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise NasError(f"seed must be an integer, got {seed!r}")
    key = name.strip()
    root = Path(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))
    if key.lower() == "digits":
        return _digits(seed, val_fraction)
    if key.lower() == "fake":
        return _fake(seed, val_fraction)
    if key.lower() in ("cifar10", "cifar100"):
        return _cifar(key.lower(), root, seed, val_fraction, download)
    if key.lower().startswith("imagefolder:"):
        return _imagefolder(key.split(":", 1)[1], seed, val_fraction)
    raise NasError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def split_indices(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded split: ``round(val_fraction * n_c)`` images of every class ``c`` (at
    least one where the class has two or more) go to validation. Returns sorted index tensors."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(round(val_fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _split_tensors(
    name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int, val_fraction: float
) -> Splits:
    tr, va = split_indices(labels, val_fraction, seed)
    return Splits(
        name,
        TensorImages(images[tr], labels[tr]),
        TensorImages(images[va], labels[va]),
        num_classes,
        int(images.shape[-1]),
    )


def _digits(seed: int, val_fraction: float) -> Splits:
    from sklearn.datasets import load_digits  # heavy (scikit-learn takes over a second): digits only

    d = load_digits()
    grey = torch.as_tensor(d.images, dtype=torch.float32)  # [1797, 8, 8], values 0..16
    images = (grey * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    images = images.unsqueeze(1).repeat(1, 3, 1, 1)
    labels = torch.as_tensor(d.target, dtype=torch.int64)
    return _split_tensors("digits", images, labels, 10, seed, val_fraction)


def _fake(seed: int, val_fraction: float, n: int = 640, size: int = 32, classes: int = 10) -> Splits:
    """Each class is a smooth random colour pattern; an image is its class pattern, shifted by up
    to 3 px, plus Gaussian noise. A small network separates them within a few epochs."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes, 3, 4, 4, generator=gen)
    protos = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=gen)]
    imgs = protos[labels].clone()
    shifts = torch.randint(-3, 4, (n, 2), generator=gen)
    for i in range(n):
        imgs[i] = torch.roll(imgs[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    imgs = imgs + 0.25 * torch.randn(imgs.shape, generator=gen)
    images = (imgs.clamp(0, 1) * 255).round().to(torch.uint8)
    return _split_tensors("fake", images, labels, classes, seed, val_fraction)


def _cifar(name: str, root: Path, seed: int, val_fraction: float, download: bool) -> Splits:
    cls, archive, folder, classes = {
        "cifar10": (datasets.CIFAR10, "cifar-10-python.tar.gz", "cifar-10-batches-py", 10),
        "cifar100": (datasets.CIFAR100, "cifar-100-python.tar.gz", "cifar-100-python", 100),
    }[name]
    try:
        ds = cls(str(root), train=True, download=download)
    except (RuntimeError, OSError) as e:  # no network (URLError is an OSError) or missing files
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NasError(
            f"{name} is not in {str(root)!r} and could not be "
            f"{'downloaded' if download else 'loaded (download off)'} ({why}); put {archive} or "
            f"the extracted {folder}/ folder there (https://www.cs.toronto.edu/~kriz/cifar.html), "
            "or pass --data-dir"
        ) from None
    images = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()  # [N, 32, 32, 3] -> NCHW
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return _split_tensors(name, images, labels, classes, seed, val_fraction)


def _imagefolder(path: str, seed: int, val_fraction: float) -> Splits:
    if not path:
        raise NasError("imagefolder needs a path: imagefolder:PATH")
    root = Path(os.path.expanduser(path))
    if not root.is_dir():
        raise NasError(f"imagefolder path {str(root)!r} is not a directory")
    to_tensor = v2.PILToTensor()  # ImageFolder's loader already converts to RGB

    def folder(p: Path) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(p), transform=to_tensor)
        except (FileNotFoundError, OSError) as e:
            raise NasError(f"cannot read image folder {str(p)!r}: {e}") from None

    name = f"imagefolder:{path}"
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = folder(root / "train"), folder(root / "val")
        if train.classes != val.classes:
            raise NasError(f"{str(root / 'val')!r} has classes {val.classes}, but train has {train.classes}")
        first = _first_image(train, root)
        if _fits_in_memory(first, len(train) + len(val)):
            mem_train, mem_val = _decode_all(train, root, first), _decode_all(val, root, first)
            if mem_train is not None and mem_val is not None:
                return Splits(name, mem_train, mem_val, len(train.classes), int(min(first.shape[-2:])))
        return Splits(name, train, val, len(train.classes), int(min(first.shape[-2:])))
    full = folder(root)
    first = _first_image(full, root)
    mem = _decode_all(full, root, first) if _fits_in_memory(first, len(full)) else None
    if mem is not None:
        return _split_tensors(name, mem.images, mem.labels, len(full.classes), seed, val_fraction)
    tr, va = split_indices(torch.as_tensor(full.targets), val_fraction, seed)
    return Splits(
        name, Subset(full, tr.tolist()), Subset(full, va.tolist()), len(full.classes), int(min(first.shape[-2:]))
    )


# An image folder of small images (CIFAR-sized) is decoded once, whole, into memory, like the in-memory
# sets: a proxy trial then spends no time decoding JPEG files every epoch (CIFAR-10, 5,000 images at
# 32 px, the default proxy: 20.0 s an epoch through the loader, 14.7 s in memory, a bare loop 14.1 s).
IN_MEMORY_MAX_BYTES = 1 << 30
IN_MEMORY_MAX_SIDE = 96


def _first_image(data: datasets.ImageFolder, root: Path) -> torch.Tensor:
    if not len(data):
        raise NasError(f"image folder {str(root)!r} holds no images")
    return _decode(data, 0, root)


def _decode(data: datasets.ImageFolder, i: int, root: Path) -> torch.Tensor:
    try:
        return data[i][0]
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ... for a bad file
        raise NasError(f"cannot decode {data.samples[i][0]!r} in image folder {str(root)!r}: {_why(e)}") from None


def _why(e: Exception) -> str:
    """A decoder's error in one line: its type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _fits_in_memory(first: torch.Tensor, count: int) -> bool:
    return max(first.shape[-2:]) <= IN_MEMORY_MAX_SIDE and count * first.numel() <= IN_MEMORY_MAX_BYTES


def _decode_all(data: datasets.ImageFolder, root: Path, first: torch.Tensor) -> TensorImages | None:
    """Every image of ``data`` decoded into one uint8 tensor; None when the images differ in size
    (they are then resized one by one as batches are made). Files that do not decode are named."""
    images = torch.empty((len(data), *first.shape), dtype=torch.uint8)
    bad = []
    for i in range(len(data)):
        try:
            img = data[i][0]
        except Exception as e:  # any decoder error names the file
            bad.append((data.samples[i][0], _why(e)))
            continue
        if img.shape != first.shape:
            return None
        images[i] = img
    if bad:
        raise NasError(
            f"{len(bad)} of {len(data)} images of {str(root)!r} cannot be decoded, e.g. {bad[0][0]!r} "
            f"({bad[0][1]}); remove or replace them"
        )
    return TensorImages(images, torch.as_tensor(data.targets, dtype=torch.int64))


PROBE_ALL_UP_TO = 20_000  # image files checked one by one before a run; above, an even sample of 2,000


def probe(splits: Splits) -> Splits:
    """What a run needs from its data, checked before anything is written: at least two classes, both
    splits non-empty, and image files that decode (every file of a folder up to PROBE_ALL_UP_TO
    images, else an evenly spread sample): a bad file is named here, not found by every trial."""
    if splits.num_classes < 2:
        raise NasError(
            f"data set {splits.name!r} has {splits.num_classes} class(es); classification needs at "
            "least two (one sub-folder per class)"
        )
    for part, data in (("training", splits.train), ("validation", splits.val)):
        if len(data) == 0:
            raise NasError(f"data set {splits.name!r} has an empty {part} split")
    paths = [p for data in (splits.train, splits.val) for p in _image_paths(data)]
    if not paths:
        return splits
    step = max(1, len(paths) // 2000) if len(paths) > PROBE_ALL_UP_TO else 1
    bad = []
    for path in paths[::step]:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # any decoder error names the file
            bad.append((path, _why(e)))
    if bad:
        checked = len(paths[::step])
        raise NasError(
            f"{len(bad)} of {checked} checked images of {splits.name!r} cannot be decoded, e.g. "
            f"{bad[0][0]!r} ({bad[0][1]}); remove or replace them"
        )
    return splits


def _image_paths(data) -> list[str]:
    if isinstance(data, Subset):
        return [data.dataset.samples[i][0] for i in data.indices]
    return [p for p, _ in getattr(data, "samples", [])]
