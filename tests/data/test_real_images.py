"""The image-folder path on real photographs: the CIFAR-10 JPEG files in ``../shared/data/cifar10/``
(decoding, class count, the probe, the split, augmentation at each size, the in-memory and the
file-by-file paths giving the same batches). Skipped, with the reason, where ``../shared`` is absent."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import nas.data.sets as sets_mod
from nas.data import TensorImages, load_dataset, make_batches, probe
from nas.errors import NasError
from tests.helpers import REPO

ARCHIVE = REPO.parent / "shared" / "data" / "cifar10" / "cifar10-12k.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN, VAL = 8, 3  # files per class taken from the archive's train/ and val/


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """The first TRAIN (VAL) JPEG files of every class of the shared archive, unpacked as they are."""
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} is absent (the shared CIFAR-10 images live beside the repository)")
    root = tmp_path_factory.mktemp("cifar")
    keep = {
        f"{part}/{c}/{i:04d}.jpg" for part, n in (("train", TRAIN), ("val", VAL)) for c in CLASSES for i in range(n)
    }
    with tarfile.open(ARCHIVE) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/", 1)[-1] in keep]
        tar.extractall(root, members=members, filter="data")
    assert len(members) == len(keep), "the archive's layout changed"
    return root / "cifar10-12k"


def test_jpegs_decode_to_the_pixels_pil_reads_with_the_class_names_in_order(cifar):
    s = probe(load_dataset(f"imagefolder:{cifar}"))
    assert (s.num_classes, len(s.train), len(s.val), s.native_size) == (10, 10 * TRAIN, 10 * VAL, 32)
    assert isinstance(s.train, TensorImages)  # 32 px photographs are decoded once, into memory
    img, label = s.train[TRAIN]  # sorted by class, then file: the second class's first file
    assert label == CLASSES.index("automobile")
    with Image.open(cifar / "train" / "automobile" / "0000.jpg") as im:
        pil = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert img.dtype == torch.uint8 and torch.equal(img, pil)
    assert torch.bincount(s.val.labels).tolist() == [VAL] * 10
    assert len({int(v) for v in s.train.images.flatten(1).float().std(1).round()}) > 5  # real photographs vary


def test_a_flat_folder_of_photographs_is_split_by_class_and_seed(cifar, tmp_path):
    flat = tmp_path / "flat"
    for c in CLASSES[:3]:
        (flat / c).mkdir(parents=True)
        for f in sorted((cifar / "train" / c).iterdir()):
            (flat / c / f.name).symlink_to(f)
    a, b = (load_dataset(f"imagefolder:{flat}", val_fraction=0.25, seed=k) for k in (0, 1))
    again = load_dataset(f"imagefolder:{flat}", val_fraction=0.25, seed=0)
    assert (a.num_classes, len(a.train), len(a.val)) == (3, 18, 6)
    assert torch.bincount(a.val.labels).tolist() == [2, 2, 2]
    assert torch.equal(a.val.images, again.val.images) and not torch.equal(a.val.images, b.val.images)


@pytest.mark.parametrize("size", [16, 24, 32, 64])
def test_augmented_batches_at_each_size_are_the_same_from_memory_and_from_the_files(cifar, monkeypatch, size):
    mem = load_dataset(f"imagefolder:{cifar}")
    monkeypatch.setattr(sets_mod, "IN_MEMORY_MAX_SIDE", 0)  # too large for memory: decoded batch by batch
    files = load_dataset(f"imagefolder:{cifar}")
    assert not isinstance(files.train, TensorImages)

    def batches(data, magnitude):
        torch.manual_seed(3)  # RandAugment's draws, as fit() seeds them
        return list(make_batches(data, batch_size=16, train=True).epoch(size, randaugment=magnitude, seed=7))

    plain, augmented = batches(mem.train, 0), batches(mem.train, 9)
    assert len(plain) == 10 * TRAIN // 16 and all(x.shape == (16, 3, size, size) for x, _ in plain)
    for (x, y), (u, v) in zip(plain, batches(files.train, 0)):
        assert torch.equal(y, v) and torch.allclose(x, u)
    assert all(torch.equal(y, v) for (_, y), (_, v) in zip(plain, augmented))
    assert not all(torch.allclose(x, u) for (x, _), (u, _) in zip(plain, augmented))
    assert all(torch.isfinite(x).all() for x, _ in augmented)


def test_a_corrupt_jpeg_among_real_ones_is_named(cifar, tmp_path):
    bad = tmp_path / "bad"
    for part in ("train", "val"):
        for c in CLASSES[:2]:
            (bad / part / c).mkdir(parents=True)
            for f in sorted((cifar / part / c).iterdir()):
                (bad / part / c / f.name).write_bytes(f.read_bytes())
    (bad / "train" / "bird").mkdir()
    (bad / "val" / "bird").mkdir()
    (bad / "train" / "bird" / "0000.jpg").write_bytes((cifar / "train" / "bird" / "0000.jpg").read_bytes()[:200])
    (bad / "val" / "bird" / "0000.jpg").write_bytes((cifar / "val" / "bird" / "0000.jpg").read_bytes())
    with pytest.raises(NasError, match=r"1 of \d+ images .* cannot be decoded, e\.g\. .*bird/0000\.jpg"):
        load_dataset(f"imagefolder:{bad}")
