"""Batches on the device: normalised, shuffled by seed, augmented for training only, never through a
DataLoader for an in-memory set, and an image folder's persistent workers."""

from __future__ import annotations

import pytest
import torch

import nas.data.batches as batches_mod
from nas.data import TensorImages, load_dataset, make_batches, make_loader
from nas.data.sets import IN_MEMORY_MAX_SIDE
from nas.errors import NasError


@pytest.mark.parametrize("size", [8, 16, 27, 32])
def test_loader_yields_normalised_float_batches(digits, size):
    loader = make_loader(digits.val, image_size=size, batch_size=50, train=False)
    images, labels = next(iter(loader))
    assert images.shape == (50, 3, size, size) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and torch.equal(labels, digits.val.labels[:50])
    assert images.min() < -1.5 and images.max() > 1.5  # normalised, not 0..1 or 0..255
    assert sum(len(y) for _, y in loader) == len(digits.val)


def test_train_shuffle_is_seeded_and_drops_the_partial_batch(digits):
    def order(seed):
        return torch.cat([y for _, y in make_loader(digits.train, image_size=8, batch_size=100, train=True, seed=seed)])

    first, again, other = order(0), order(0), order(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len(first) == len(digits.train) // 100 * 100


def test_randaugment_changes_train_images_only(digits):
    plain = make_loader(digits.train, image_size=16, batch_size=64, train=True, seed=2)
    aug = make_loader(digits.train, image_size=16, batch_size=64, train=True, seed=2, randaugment_magnitude=9)
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(aug))
    assert torch.equal(y0, y1)  # same order: shuffling has its own generator
    assert not torch.equal(x0, x1)
    ev = make_loader(digits.val, image_size=16, batch_size=64, train=False, randaugment_magnitude=9)
    ev0 = make_loader(digits.val, image_size=16, batch_size=64, train=False)
    assert torch.equal(next(iter(ev))[0], next(iter(ev0))[0])


def test_in_memory_batches_never_touch_a_dataloader(digits, monkeypatch):
    def no_loader(*a, **k):
        raise AssertionError("an in-memory set must not go through a DataLoader")

    monkeypatch.setattr(batches_mod, "DataLoader", no_loader)
    placed = []
    real_on = TensorImages.on
    monkeypatch.setattr(TensorImages, "on", lambda self, dev: placed.append(torch.device(dev)) or real_on(self, dev))
    batches = make_batches(digits.train, device="cpu", batch_size=64, train=True)
    epoch = batches.epoch(16, randaugment=9, seed=3)
    got = list(epoch)
    assert len(got) == len(epoch) == len(digits.train) // 64
    assert all(x.device.type == "cpu" and y.device.type == "cpu" and x.dtype == torch.float32 for x, y in got)
    assert placed and set(placed) == {torch.device("cpu")}
    again = list(batches.epoch(16, randaugment=9, seed=3))  # an epoch is a function of its seed ...
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, again))
    torch.manual_seed(0)
    first = next(iter(epoch))[0]
    torch.manual_seed(0)
    assert torch.equal(first, next(iter(epoch))[0])  # ... and of torch's generator (RandAugment)


@pytest.mark.parametrize(
    "kw",
    [
        dict(image_size=4),
        dict(image_size=16.0),
        dict(batch_size=0),
        dict(batch_size=True),
        dict(randaugment_magnitude=31),
        dict(randaugment_magnitude=-1),
        dict(num_workers=-1),
    ],
)
def test_bad_loader_arguments(digits, kw):
    args = dict(image_size=16, batch_size=8, train=True) | kw
    with pytest.raises(NasError):
        make_loader(digits.val, **args)


def test_imagefolder_workers_persist_and_give_the_batches_of_no_workers(write_folder, tmp_path):
    write_folder(tmp_path / "flat", per_class=6, size=(IN_MEMORY_MAX_SIDE + 1, 12))  # too large to be kept in memory
    s = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.25)
    inline = make_batches(s.train, batch_size=4, train=True)
    pooled = make_batches(s.train, batch_size=4, train=True, num_workers=2)

    def run(batches, size, seed):
        torch.manual_seed(1)  # RandAugment's draws, as fit() seeds them per epoch
        return list(batches.epoch(size, randaugment=9, seed=seed))

    a, b = run(inline, 16, seed=5), run(pooled, 16, seed=5)
    workers = pooled._loader._iterator._workers
    c = run(pooled, 24, seed=6)  # the next epoch, at the next stage's size, on the same workers
    assert pooled._loader._iterator._workers is workers and all(w.is_alive() for w in workers)
    assert len(a) == len(b) == 2 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert all(x.shape == (4, 3, 24, 24) for x, _ in c)
    assert torch.equal(torch.cat([y for _, y in c]).sort().values, torch.cat([y for _, y in a]).sort().values)
    pooled.close()
    assert not any(w.is_alive() for w in (w.join(5) or w for w in workers))
