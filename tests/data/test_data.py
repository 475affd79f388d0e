"""Data sets, deterministic splits, batches on the device (resize, per-image RandAugment, shuffling),
image-folder loading with persistent workers, and MixUp."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

import nas.data.batches as batches_mod
from nas.data import (
    DATASETS,
    BatchRandAugment,
    Splits,
    TensorImages,
    load_dataset,
    make_batches,
    make_loader,
    make_mixup,
    resize,
    split_indices,
)
from nas.errors import NasError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread (conftest.py)


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_dataset("digits")


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


def test_randaugment_draws_its_ops_per_image_like_the_per_image_transform(digits):
    one = resize(digits.train.images[:1], 16).repeat(64, 1, 1, 1)  # 64 copies of one image
    torch.manual_seed(7)
    out = BatchRandAugment(magnitude=15)(one)
    assert len({bytes(im.numpy()) for im in out}) > 10  # a batch-wide call would give one image 64 times
    assert torch.equal(one, resize(digits.train.images[:1], 16).repeat(64, 1, 1, 1))  # input untouched
    x = resize(digits.train.images[:48], 20)
    torch.manual_seed(11)
    reference = torch.stack([v2.RandAugment(magnitude=12)(im) for im in x])
    torch.manual_seed(11)
    assert torch.equal(BatchRandAugment(magnitude=12)(x), reference)  # same draws, same images


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


def test_mixup_mixes_images_and_labels():
    assert make_mixup(0.0, 10) is None
    images = torch.randn(8, 3, 8, 8)
    labels = torch.arange(8) % 4
    torch.manual_seed(0)
    mixed, soft = make_mixup(0.4, 4)(images, labels)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    assert not torch.equal(mixed, images)
    with pytest.raises(NasError):
        make_mixup(-0.1, 4)


def test_mixup_runs_on_the_batches_device(digits):
    x, y = next(iter(make_loader(digits.train, image_size=8, batch_size=16, train=True, device="cpu")))
    mixed, soft = make_mixup(0.2, 10)(x, y)
    assert mixed.device == x.device and soft.device == y.device and soft.shape == (16, 10)


def _write_folder(root, classes=2, per_class=5, size=(12, 10)):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=gen)
            Image.fromarray(img.numpy()).save(root / f"class{c}" / f"{i}.png")


def test_imagefolder_split_and_loader(tmp_path):
    _write_folder(tmp_path / "flat")
    s = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.2)
    assert (s.num_classes, len(s.train), len(s.val), s.native_size) == (2, 8, 2, 10)
    again = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.2)
    assert list(s.val.indices) == list(again.val.indices)
    img, label = s.train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 12, 10) and isinstance(label, int)
    x, y = next(iter(make_loader(s.train, image_size=16, batch_size=4, train=True, randaugment_magnitude=5)))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64


def test_imagefolder_workers_persist_and_give_the_batches_of_no_workers(tmp_path):
    _write_folder(tmp_path / "flat", per_class=6)
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


def test_imagefolder_uses_train_and_val_folders(tmp_path):
    _write_folder(tmp_path / "ds" / "train", per_class=4)
    _write_folder(tmp_path / "ds" / "val", per_class=2)
    s = load_dataset(f"imagefolder:{tmp_path / 'ds'}")
    assert (len(s.train), len(s.val)) == (8, 4)
    with pytest.raises(NasError, match="not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
