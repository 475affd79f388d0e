"""Fixtures of the data tests: the digits set, and a writer of small image folders."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from nas.data import Splits, load_dataset


@pytest.fixture(scope="session")
def digits() -> Splits:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def write_folder():
    """``write_folder(root, classes=2, per_class=5, size=(12, 10))``: an image folder of random PNGs,
    one sub-folder per class (the same images every time)."""

    def write(root, classes=2, per_class=5, size=(12, 10)):
        gen = torch.Generator().manual_seed(0)
        for c in range(classes):
            (root / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=gen)
                Image.fromarray(img.numpy()).save(root / f"class{c}" / f"{i}.png")

    return write
