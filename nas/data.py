"""Data sets and loaders for training and for the search's proxy training.

Every data set is turned into the same form: items ``(uint8 tensor [3, H, W], int label)``, split
into a training and a validation part. :func:`make_loader` then resizes to the image size a
progressive-learning stage asks for (EfficientNetV2 section 4.2), applies RandAugment on the
training split, and yields normalised ``float32`` batches.

Data sets (``load_dataset(name)``):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits, 1797 images, 10 classes;
  offline. Grey levels 0..16 are scaled to 0..255 and repeated to three channels.
* ``fake``: a synthetic, learnable set (10 classes: a smooth per-class pattern plus a random shift
  and noise), deterministic from ``seed``; 640 images of 32 px (510 / 130 at the default split).
* ``cifar10`` / ``cifar100``: torchvision's, in ``data_dir`` (default ``~/.cache/nas/data``).
* ``imagefolder:PATH``: a torchvision ``ImageFolder``; ``PATH/train`` and ``PATH/val`` when both
  exist, else ``PATH`` itself split in two.

Validation data: where a data set comes with its own held-out folder (``imagefolder`` with
``PATH/val``) that is used; otherwise (digits, fake, CIFAR) ``val_fraction`` of the *training* data
is held out, stratified by class and seeded. CIFAR's official test set is deliberately not used as
the validation set: the search selects architectures on it, and NAS papers hold validation data out
of the training set for this reason (MnasNet section 5, EfficientNetV2 section 4.1).

In-memory data sets (everything but ``imagefolder``) are resized as whole tensors: once per image
size when no augmentation is used (cached), or one batch at a time otherwise. That keeps a search
trial on ``digits`` at a few seconds instead of being dominated by per-image Python work.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from nas.errors import NasError, check_int, check_number
from nas.progressive import MAX_RANDAUGMENT

DATASETS = ("digits", "fake", "cifar10", "cifar100", "imagefolder:PATH")
DEFAULT_DATA_DIR = "~/.cache/nas/data"

# ImageNet statistics: the presets' conventions, and harmless for the small sets.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048
# The whole resized, normalised set is cached per image size while it stays below this size.
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
        self._cache: dict[int, torch.Tensor] = {}  # image size -> normalised float32 images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def resized(self, size: int) -> torch.Tensor:
        """All images resized to ``size`` and normalised (float32), cached when small enough."""
        if size in self._cache:
            return self._cache[size]
        out = _normalise(_resize(self.images, size))
        if out.numel() * out.element_size() <= _CACHE_BYTES:
            self._cache[size] = out
        return out


# --------------------------------------------------------------------------------------------
# Loading


def check_dataset_name(name) -> str:
    """A data set name :func:`load_dataset` knows, checked without loading anything."""
    known = [d for d in DATASETS if ":" not in d]
    if not isinstance(name, str) or (name.strip().lower() not in known
                                     and not name.strip().lower().startswith("imagefolder:")):
        raise NasError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return name


def load_dataset(name: str, data_dir: str | None = None, *, seed: int = 0, val_fraction: float = 0.2,
                 download: bool = True) -> Splits:
    """Load a data set by name (see the module docstring) and split it deterministically."""
    if not isinstance(name, str) or not name.strip():
        raise NasError(f"dataset name must be a non-empty string, got {name!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < val_fraction < 1.0:
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


def _split_tensors(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   seed: int, val_fraction: float) -> Splits:
    tr, va = split_indices(labels, val_fraction, seed)
    return Splits(name, TensorImages(images[tr], labels[tr]), TensorImages(images[va], labels[va]),
                  num_classes, int(images.shape[-1]))


def _digits(seed: int, val_fraction: float) -> Splits:
    from sklearn.datasets import load_digits

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
    from torchvision import datasets

    cls, archive, folder, classes = {
        "cifar10": (datasets.CIFAR10, "cifar-10-python.tar.gz", "cifar-10-batches-py", 10),
        "cifar100": (datasets.CIFAR100, "cifar-100-python.tar.gz", "cifar-100-python", 100),
    }[name]
    try:
        ds = cls(str(root), train=True, download=download)
    except (RuntimeError, OSError) as e:  # no network (URLError is an OSError) or missing files
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NasError(f"{name} is not in {str(root)!r} and could not be "
                       f"{'downloaded' if download else 'loaded (download off)'} ({why}); put {archive} or "
                       f"the extracted {folder}/ folder there (https://www.cs.toronto.edu/~kriz/cifar.html), "
                       "or pass --data-dir") from None
    images = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()  # [N, 32, 32, 3] -> NCHW
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return _split_tensors(name, images, labels, classes, seed, val_fraction)


def _imagefolder(path: str, seed: int, val_fraction: float) -> Splits:
    from torchvision import datasets

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

    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = folder(root / "train"), folder(root / "val")
        if train.classes != val.classes:
            raise NasError(f"{str(root / 'val')!r} has classes {val.classes}, but train has {train.classes}")
        classes, sample = train.classes, train
    else:
        full = folder(root)
        tr, va = split_indices(torch.as_tensor(full.targets), val_fraction, seed)
        train, val = Subset(full, tr.tolist()), Subset(full, va.tolist())
        classes, sample = full.classes, full
    if not len(sample):
        raise NasError(f"image folder {str(root)!r} holds no images")
    try:
        first, _ = sample[0]
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ... for a bad file
        raise NasError(f"cannot decode {sample.samples[0][0]!r} in image folder {str(root)!r}: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return Splits(f"imagefolder:{path}", train, val, len(classes), int(min(first.shape[-2:])))


PROBE_ALL_UP_TO = 20_000  # image files checked one by one before a run; above, an even sample of 2,000


def probe(splits: Splits) -> Splits:
    """What a run needs from its data, checked before anything is written: at least two classes, both
    splits non-empty, and image files that decode (every file of a folder up to PROBE_ALL_UP_TO
    images, else an evenly spread sample): a bad file is named here, not found by every trial."""
    if splits.num_classes < 2:
        raise NasError(f"data set {splits.name!r} has {splits.num_classes} class(es); classification needs at "
                       "least two (one sub-folder per class)")
    for part, data in (("training", splits.train), ("validation", splits.val)):
        if len(data) == 0:
            raise NasError(f"data set {splits.name!r} has an empty {part} split")
    paths = [p for data in (splits.train, splits.val) for p in _image_paths(data)]
    if not paths:
        return splits
    step = max(1, len(paths) // 2000) if len(paths) > PROBE_ALL_UP_TO else 1
    from PIL import Image

    bad = []
    for path in paths[::step]:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # any decoder error names the file
            bad.append((path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    if bad:
        checked = len(paths[::step])
        raise NasError(f"{len(bad)} of {checked} checked images of {splits.name!r} cannot be decoded, e.g. "
                       f"{bad[0][0]!r} ({bad[0][1]}); remove or replace them")
    return splits


def _image_paths(data) -> list[str]:
    if isinstance(data, Subset):
        return [data.dataset.samples[i][0] for i in data.indices]
    return [p for p, _ in getattr(data, "samples", [])]


# --------------------------------------------------------------------------------------------
# Loaders


def check_randaugment(magnitude) -> int:
    """RandAugment magnitude as torchvision takes it: an integer bin 0..30 (0 = off); floats from a
    progressive schedule are rounded."""
    return int(round(check_number("RandAugment magnitude", magnitude, 0, MAX_RANDAUGMENT)))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize of a uint8 batch (or one image); antialiased when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    return v2.functional.resize(images, [size, size], antialias=True)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.float32).div_(255.0)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std)


@contextlib.contextmanager
def _one_thread():
    """Run per-image augmentation on one intra-op thread. RandAugment's ops on one small image are
    far too small to split across threads: on 2 busy CPU cores, two threads made an epoch of
    digits about 9x slower (wall and CPU time). Loader worker processes already use one thread."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _BatchView(Dataset):
    """Loader-side view of an in-memory set: ``__getitems__`` serves a whole batch at once.

    Without augmentation it slices the cached, resized tensor; with RandAugment it resizes the
    batch in one call, then augments each image separately (RandAugment draws its ops per call, so
    a batch-wide call would give every image the same ops)."""

    def __init__(self, data: TensorImages, size: int, augment: Callable | None):
        self.data, self.size, self.augment = data, size, augment
        self.cached = data.resized(size) if augment is None else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        labels = self.data.labels[idx]
        if self.cached is not None:
            return self.cached[idx], labels
        imgs = _resize(self.data.images[idx], self.size)
        with _one_thread():
            imgs = torch.stack([self.augment(im) for im in imgs])
        return _normalise(imgs), labels


def _batch_passthrough(batch):
    return batch


class _ItemView(Dataset):
    """Loader-side view of any other data set: resize (shorter side), centre crop, augment."""

    def __init__(self, data: Dataset, size: int, augment: Callable | None):
        self.data, self.augment = data, augment
        self.geometry = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img, label = self.data[i]
        img = self.geometry(img)
        if self.augment is not None:
            with _one_thread():
                img = self.augment(img)
        return img, label


def _item_collate(items):
    imgs = torch.stack([im for im, _ in items])
    labels = torch.as_tensor([int(lab) for _, lab in items], dtype=torch.int64)
    return _normalise(imgs), labels


def make_loader(dataset: Dataset, *, image_size: int, batch_size: int, train: bool,
                randaugment_magnitude: float = 0.0, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A loader of ``(float32 [B, 3, image_size, image_size] normalised, int64 [B])`` batches.

    Training loaders shuffle (seeded through their own ``torch.Generator``, never the global one),
    drop a last incomplete batch (BatchNorm cannot train on one image) and apply
    ``v2.RandAugment(magnitude=round(randaugment_magnitude))`` when the magnitude is above 0.
    RandAugment itself draws from torch's global generator, which :func:`nas.train.fit` seeds per
    epoch. Evaluation loaders keep the order and never augment.
    """
    image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    batch_size = check_int("batch_size", batch_size, 1, 1 << 20)
    num_workers = check_int("num_workers", num_workers, 0, 256)
    magnitude = check_randaugment(randaugment_magnitude)
    if not isinstance(dataset, Dataset):
        raise NasError(f"make_loader needs a torch Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise NasError("cannot make a loader for an empty data set")
    augment = v2.RandAugment(magnitude=magnitude) if train and magnitude > 0 else None
    if isinstance(dataset, TensorImages):
        view, collate = _BatchView(dataset, image_size, augment), _batch_passthrough
    else:
        view, collate = _ItemView(dataset, image_size, augment), _item_collate
    gen = torch.Generator().manual_seed(int(seed))
    return DataLoader(view, batch_size=batch_size, shuffle=train, generator=gen if train else None,
                      drop_last=train and len(dataset) > batch_size, num_workers=num_workers,
                      collate_fn=collate, persistent_workers=False)


# --------------------------------------------------------------------------------------------
# MixUp


def check_mixup(alpha) -> float:
    return check_number("mixup alpha", alpha, 0)


def make_mixup(alpha: float, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """``v2.MixUp(alpha=alpha, num_classes=num_classes)`` as a batch function
    ``(images, int64 labels) -> (mixed images, soft labels [B, num_classes])``; None when
    ``alpha == 0`` (off: EfficientNetV2 Table 6 starts every schedule there)."""
    alpha = check_mixup(alpha)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise NasError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if alpha == 0:
        return None
    mix = v2.MixUp(alpha=alpha, num_classes=num_classes)

    def apply(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mix(images, labels)

    return apply


def mixup_collate(alpha: float, num_classes: int, base: Callable = _item_collate) -> Callable:
    """A ``collate_fn`` that collates with ``base`` then applies MixUp (for user-built loaders)."""
    mix = make_mixup(alpha, num_classes)

    def collate(items):
        images, labels = base(items)
        return (images, labels) if mix is None else mix(images, labels)

    return collate
