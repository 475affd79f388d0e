"""Device names: ``cpu``, ``cuda`` and ``cuda:N`` mean the same GPU to every path that takes one.

CI has no GPU: these tests pretend to have two (``torch.cuda`` queries patched) and check what each
path would use, without running anything on a GPU."""

from __future__ import annotations

import pytest
import torch

from nas.core.device import Runtime, resolve_device
from nas.data import TensorImages, make_batches
from nas.errors import NasError
from nas.training.config import TrainConfig


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_cuda_n_resolves_to_that_gpu(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto").type == "cuda" and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(NasError, match=r"'cuda:2' does not exist: this machine has 2 GPU\(s\) \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


def test_training_forks_and_places_everything_on_the_named_gpu(two_gpus):
    rt = Runtime.resolve("cuda:1")
    assert rt.device == torch.device("cuda:1") and rt.amp is torch.bfloat16
    assert rt.cuda_indices == [1]  # the random state a seeded epoch forks is that GPU's
    assert rt.device_context().idx == 1  # the run's current device
    assert Runtime.resolve("cuda").cuda_indices == [0]  # plain cuda: the current device
    assert Runtime.resolve("cpu").cuda_indices == []
    # Data goes where training runs: in-memory sets to that GPU, image-folder batches pinned for it.
    images = TensorImages(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    assert make_batches(images, device=rt.device, batch_size=2, train=True).device == torch.device("cuda:1")
    folder = make_batches(
        torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4)),
        device=rt.device,
        batch_size=2,
        train=True,
    )
    loader = folder._get_loader()
    assert loader.pin_memory and loader.pin_memory_device == "cuda:1"


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:7", "auto"])
def test_every_device_name_is_a_valid_training_setting(name):
    assert TrainConfig(device=name).device == name  # resolved (and checked against the GPUs) when run


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA", "cuda1", ""])
def test_malformed_device_names_are_refused(name):
    with pytest.raises(NasError, match="unknown device"):
        TrainConfig(device=name)
    with pytest.raises(NasError, match="unknown device"):
        resolve_device(name)


def test_cudnn_autotune_is_on_for_the_block_only():
    from nas.core.device import cudnn_autotune

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with cudnn_autotune(True):
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.benchmark
        with cudnn_autotune(False):  # a CPU run leaves the setting as it found it
            assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
