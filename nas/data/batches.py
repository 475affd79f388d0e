"""The batches a training run consumes: ``(float32 [B, 3, S, S] normalised, int64 [B])`` on the device.

A :class:`Batches` serves one split on one device for a whole run; each epoch asks it for an
:class:`Epoch` at that epoch's image size, RandAugment magnitude and shuffling seed (progressive
learning changes all three, EfficientNetV2 section 4.2).

* In-memory sets (:class:`nas.data.TensorImages`: digits, fake, CIFAR) live on the training device
  as uint8 tensors. A batch is gathered there, resized there (or sliced from a resized copy kept per
  size), augmented and normalised there: no DataLoader, no worker, no host round trip.
* Any other data set (``imagefolder``) is decoded, resized and centre-cropped to uint8 by a
  ``DataLoader`` whose worker processes live for the whole run (``persistent_workers``); batches are
  pinned when the device is CUDA and copied with ``non_blocking=True``; RandAugment and
  normalisation then run on the device, as for in-memory sets.

Determinism: the shuffling order comes from a generator seeded with the epoch's seed, RandAugment
draws from torch's global generator in the main process (:func:`nas.training.loop.fit` seeds it per epoch),
and worker processes draw nothing. So an epoch is a function of its seed whatever the worker count,
and a run resumed from a checkpoint sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from nas.data.augment import check_randaugment, make_randaugment, normalise, resize
from nas.data.sets import TensorImages
from nas.errors import NasError, check_int

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048


class Epoch:
    """One pass over a split, with a length in batches. Iterating again gives the same order (the
    epoch's seed); RandAugment's draws come from torch's generator, which the caller seeds."""

    def __init__(self, batches: Batches, image_size: int, randaugment: int, seed: int):
        self.batches, self.image_size, self.randaugment, self.seed = batches, image_size, randaugment, seed

    def __len__(self) -> int:
        return self.batches.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = make_randaugment(self.randaugment) if self.batches.train else None
        for images, labels in self.batches.uint8_batches(self.image_size, self.seed):
            yield normalise(images if augment is None else augment(images)), labels


class Batches(abc.ABC):
    """Batches of one split on one device (base class; :func:`make_batches` picks the kind).

    Training batches are shuffled and a last incomplete batch is dropped (BatchNorm cannot train on
    one image); evaluation batches keep the order, keep every image and are never augmented."""

    def __init__(self, dataset: Dataset, *, device: torch.device, batch_size: int, train: bool):
        self.dataset, self.device, self.batch_size, self.train = dataset, device, batch_size, train
        self.drop_last = train and len(dataset) > batch_size

    @property
    def num_batches(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, image_size: int, *, randaugment: float = 0.0, seed: int = 0) -> Epoch:
        image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        return Epoch(self, image_size, check_randaugment(randaugment), int(seed))

    def order(self, seed: int) -> torch.Tensor:
        """The epoch's order of image indices (seeded shuffle for training, else in order)."""
        n = len(self.dataset)
        if not self.train:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    @abc.abstractmethod
    def uint8_batches(self, size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's (uint8 images at ``size`` px on the device, labels) batches, in
        :meth:`order` ``(seed)``; each kind of set gets them its own way."""

    def close(self) -> None:  # noqa: B027 (an optional hook: in-memory batches hold nothing to release)
        """Release worker processes (if any); the object can still serve epochs afterwards."""


class _MemoryBatches(Batches):
    """An in-memory set on the device: gather, resize (or slice a resized copy), all on the device."""

    dataset: TensorImages

    def uint8_batches(self, size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.dataset.on(self.device)
        resized = self.dataset.resized(size, self.device)
        # One upload per epoch; the batches are then index_selects on the device.
        order = self.order(seed).to(self.device, non_blocking=True)
        for b in range(self.num_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if resized is not None:
                yield resized.index_select(0, idx), labels.index_select(0, idx)
            else:
                yield resize(images.index_select(0, idx), size), labels.index_select(0, idx)


class _EpochSampler(Sampler):
    """Yields ``(index, image size)`` for the epoch set by :meth:`set`: the size travels with the
    index, so persistent workers (which hold a copy of the data set made when they started) resize
    to the size of the epoch being served."""

    def __init__(self, batches: Batches):
        self.batches, self.size, self.seed = batches, MIN_IMAGE_SIZE, 0

    def set(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return len(self.batches.dataset)

    def __iter__(self):
        size = self.size
        return ((int(i), size) for i in self.batches.order(self.seed))


class _FolderItems(Dataset):
    """Worker side: decode, resize the shorter side, centre-crop; uint8 out (augmentation and
    normalisation happen on the device)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        i, size = key
        img, label = self.data[i]
        img = v2.functional.center_crop(v2.functional.resize(img, size, antialias=True), [size, size])
        return img, int(label)


def _collate(items):
    return torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items], dtype=torch.int64)


class _LoaderBatches(Batches):
    """Any map-style data set through one DataLoader kept for the whole run."""

    def __init__(self, dataset: Dataset, *, device: torch.device, batch_size: int, train: bool, num_workers: int):
        super().__init__(dataset, device=device, batch_size=batch_size, train=train)
        self.num_workers = num_workers
        self.sampler = _EpochSampler(self)
        self._loader: DataLoader | None = None

    def _get_loader(self) -> DataLoader:
        if self._loader is None:
            cuda = self.device.type == "cuda"
            # generator: the loader draws its workers' base seed from it; without one it would draw
            # from torch's global generator and shift every later RandAugment draw of the epoch.
            self._loader = DataLoader(
                _FolderItems(self.dataset),
                batch_size=self.batch_size,
                sampler=self.sampler,
                drop_last=self.drop_last,
                num_workers=self.num_workers,
                collate_fn=_collate,
                pin_memory=cuda,
                pin_memory_device=str(self.device) if cuda else "",
                persistent_workers=self.num_workers > 0,
                generator=torch.Generator().manual_seed(0),
                prefetch_factor=4 if self.num_workers > 0 else None,
            )
        return self._loader

    def uint8_batches(self, size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set(size, seed)
        for images, labels in self._get_loader():
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._loader = None  # the last reference: its iterator shuts the workers down


def make_batches(
    dataset: Dataset, *, device: torch.device | str = "cpu", batch_size: int, train: bool, num_workers: int = 0
) -> Batches:
    """Batches of ``dataset`` on ``device`` for a whole run (see the module docstring).
    ``num_workers`` only applies to sets that are not in memory."""
    batch_size = check_int("batch_size", batch_size, 1, 1 << 20)
    num_workers = check_int("num_workers", num_workers, 0, 256)
    if not isinstance(dataset, Dataset):
        raise NasError(f"batches need a torch Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise NasError("cannot make batches of an empty data set")
    device = torch.device(device)
    if isinstance(dataset, TensorImages):
        return _MemoryBatches(dataset, device=device, batch_size=batch_size, train=train)
    return _LoaderBatches(dataset, device=device, batch_size=batch_size, train=train, num_workers=num_workers)


def make_loader(
    dataset: Dataset,
    *,
    image_size: int,
    batch_size: int,
    train: bool,
    randaugment_magnitude: float = 0.0,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> Epoch:
    """One epoch of batches (:func:`make_batches` then :meth:`Batches.epoch`), for a single pass
    such as a final evaluation. RandAugment applies to training batches only."""
    batches = make_batches(dataset, device=device, batch_size=batch_size, train=train, num_workers=num_workers)
    return batches.epoch(image_size, randaugment=randaugment_magnitude, seed=seed)
