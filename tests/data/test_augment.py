"""On-device augmentation: RandAugment drawn per image, and MixUp."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from nas.data import BatchRandAugment, make_loader, make_mixup, resize
from nas.errors import NasError


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
