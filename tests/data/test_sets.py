"""Data sets: what an item is, deterministic stratified splits, the synthetic set, CIFAR's absence,
image folders, and an in-memory set's resized copies."""

from __future__ import annotations

import pytest
import torch

from nas.data import DATASETS, TensorImages, load_dataset, make_loader, split_indices
from nas.data.sets import IN_MEMORY_MAX_SIDE
from nas.errors import NasError


def test_digits_items_are_uint8_rgb_with_int_labels(digits):
    assert digits.name == "digits" and digits.num_classes == 10 and digits.native_size == 8
    assert len(digits.train) + len(digits.val) == 1797
    assert len(digits.val) == pytest.approx(0.2 * 1797, abs=10)
    img, label = digits.train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 8, 8) and isinstance(label, int)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # grey repeated
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0  # 16 -> 255


def test_split_is_deterministic_stratified_and_seeded(digits):
    again = load_dataset("digits")
    assert torch.equal(digits.train.images, again.train.images)
    assert torch.equal(digits.val.labels, again.val.labels)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(digits.val.images, other.val.images)
    counts_val = torch.bincount(digits.val.labels, minlength=10)
    counts_all = counts_val + torch.bincount(digits.train.labels, minlength=10)
    assert torch.all((counts_val - 0.2 * counts_all).abs() <= 1)


def test_split_indices_cover_everything_once():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 2)
    tr, va = split_indices(labels, 0.3, seed=5)
    assert sorted(tr.tolist() + va.tolist()) == list(range(12))
    assert torch.bincount(labels[va]).tolist() == [2, 1, 1]  # every class keeps one in train


def test_fake_is_deterministic_and_learnable():
    a, b = load_dataset("fake", seed=3), load_dataset("fake", seed=3)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, load_dataset("fake", seed=4).train.images)
    assert (len(a.train), len(a.val), a.num_classes, a.native_size) == (510, 130, 10, 32)
    # Class structure a model can learn: nearest class mean beats chance (10%) by far.
    x_tr = a.train.images.float().flatten(1)
    means = torch.stack([x_tr[a.train.labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(a.val.images.float().flatten(1), means).argmin(1)
    assert (pred == a.val.labels).float().mean() > 0.6


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(NasError) as e:
        load_dataset("mnist")
    assert "'mnist'" in str(e.value) and all(d in str(e.value) for d in DATASETS)


@pytest.mark.parametrize("bad", [0, 1, -0.1, True, "0.2"])
def test_bad_val_fraction(bad):
    with pytest.raises(NasError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(NasError) as e:
        load_dataset("cifar10", str(tmp_path), download=False)
    msg = str(e.value)
    assert str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg and "\n" not in msg


def test_resized_set_is_cached_per_size_and_device(monkeypatch):
    data = TensorImages(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 2)
    assert data.on("cpu")[0] is data.images  # already where it lives: no copy
    assert data.resized(16, "cpu") is data.resized(16, "cpu")
    assert data.resized(24).shape == (20, 3, 24, 24) and data.resized(24).dtype == torch.uint8
    # Past the cache budget a size is not kept, and batches are resized one by one instead: same images.
    monkeypatch.setattr("nas.data.sets._CACHE_BYTES", 20 * 3 * 16 * 16)
    fresh = TensorImages(data.images, data.labels)
    assert fresh.resized(16) is not None and fresh.resized(24) is None
    cached = torch.cat([x for x, _ in make_loader(data, image_size=24, batch_size=8, train=False)])
    per_batch = torch.cat([x for x, _ in make_loader(fresh, image_size=24, batch_size=8, train=False)])
    assert torch.equal(cached, per_batch)


def test_imagefolder_of_small_images_is_split_into_memory(write_folder, tmp_path):
    write_folder(tmp_path / "flat")
    s = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.2)
    assert (s.num_classes, len(s.train), len(s.val), s.native_size) == (2, 8, 2, 10)
    assert isinstance(s.train, TensorImages) and isinstance(s.val, TensorImages)
    again = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.2)
    assert torch.equal(s.val.images, again.val.images) and torch.equal(s.val.labels, again.val.labels)
    img, label = s.train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 12, 10) and isinstance(label, int)
    x, y = next(iter(make_loader(s.train, image_size=16, batch_size=4, train=True, randaugment_magnitude=5)))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64


def test_imagefolder_of_large_images_is_split_and_loaded_from_files(write_folder, tmp_path):
    write_folder(tmp_path / "flat", size=(IN_MEMORY_MAX_SIDE + 2, 40))
    s = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.2)
    assert (s.num_classes, len(s.train), len(s.val), s.native_size) == (2, 8, 2, 40)
    again = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.2)
    assert list(s.val.indices) == list(again.val.indices)
    img, label = s.train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, IN_MEMORY_MAX_SIDE + 2, 40) and isinstance(label, int)
    x, y = next(iter(make_loader(s.train, image_size=16, batch_size=4, train=True, randaugment_magnitude=5)))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64


def test_imagefolder_of_mixed_sizes_stays_on_files(tmp_path):
    from PIL import Image

    for c, size in (("a", (10, 10)), ("b", (12, 10))):
        (tmp_path / "mixed" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", size, (i * 40, 0, 0)).save(tmp_path / "mixed" / c / f"{i}.png")
    s = load_dataset(f"imagefolder:{tmp_path / 'mixed'}", val_fraction=0.34)
    assert not isinstance(s.train, TensorImages) and (len(s.train), len(s.val)) == (4, 2)


def test_imagefolder_uses_train_and_val_folders(write_folder, tmp_path):
    write_folder(tmp_path / "ds" / "train", per_class=4)
    write_folder(tmp_path / "ds" / "val", per_class=2)
    s = load_dataset(f"imagefolder:{tmp_path / 'ds'}")
    assert (len(s.train), len(s.val)) == (8, 4)
    with pytest.raises(NasError, match="not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
