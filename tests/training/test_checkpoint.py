"""Checkpoints: a resumed run equals an uninterrupted one; plain data read with weights_only; a
checkpoint of another architecture, configuration or split, a corrupt one and a pickled one are
refused (as ``nas train`` shows them: tests/training/test_hostile_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.data import Splits, TensorImages
from nas.errors import NasError
from nas.training.checkpoint import load_checkpoint
from nas.training.config import TrainConfig
from nas.training.loop import fit
from nas.training.progressive import get_schedule
from search_spaces import Architecture
from tests.helpers import TINY_TRAIN, Evil


def test_resumed_run_equals_an_uninterrupted_one(small, tiny_model, cfg, tmp_path):
    c = cfg(epochs=3, progressive=get_schedule("m", stages=3, size_start=8, size_end=16), ema_decay=0.9)
    full = fit(tiny_model(), small, c, progress=False)

    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop

    path = tmp_path / "ckpt.pt"
    with pytest.raises(Stop):
        fit(tiny_model(), small, c, checkpoint_path=path, on_epoch_end=stop, progress=False)
    state = load_checkpoint(path, arch=Architecture.from_string(TINY_TRAIN), config=c, dataset="digits-small")
    assert state["epoch"] == 1
    resumed_model = tiny_model(seed=123)  # different init: the checkpoint must restore everything
    resumed = fit(resumed_model, small, c, state=state, checkpoint_path=path, progress=False)
    assert resumed.start_epoch == 1 and resumed.epochs_run == 2
    key = lambda r: [(h["epoch"], h["train_loss"], h["val_accuracy"], h["lr"]) for h in r.history]  # noqa: E731
    assert key(resumed) == key(full)
    for (name, a), b in zip(full.eval_model.state_dict().items(), resumed.eval_model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def checkpoint(small, tiny_model, cfg, tmp_path_factory) -> tuple[Path, TrainConfig]:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    c = cfg(epochs=1, image_size=8, ema_decay=0.9)
    fit(tiny_model(), small, c, checkpoint_path=path, progress=False)
    return path, c


def test_checkpoint_is_plain_data_loadable_with_weights_only(checkpoint):
    path, c = checkpoint
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "nas.checkpoint/1" and raw["epoch"] == 1
    assert raw["arch"] == Architecture.from_string(TINY_TRAIN).to_dict() and raw["config"] == c.to_dict()
    assert {"model", "optimizer", "scheduler", "ema", "history", "data"} <= set(raw)
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temporary file


def test_mismatched_architecture_or_settings_are_refused(checkpoint, small, cfg):
    path, _c = checkpoint
    other = Architecture.from_string(TINY_TRAIN.replace("o16", "o24"))
    with pytest.raises(NasError, match="is for architecture"):
        load_checkpoint(path, arch=other)
    with pytest.raises(NasError, match=r"lr: None -> 0\.01"):
        load_checkpoint(path, config=cfg(epochs=1, image_size=8, ema_decay=0.9, lr=0.01))
    with pytest.raises(NasError, match="trained on 'digits-small'"):
        load_checkpoint(path, dataset="digits")
    with pytest.raises(NasError, match="train_size: 256 -> 200"):
        load_checkpoint(
            path,
            splits=Splits(
                "digits-small", TensorImages(small.train.images[:200], small.train.labels[:200]), small.val, 10, 8
            ),
        )
    load_checkpoint(path, splits=small)
    # Where and how fast to run is not part of the experiment: another device, AMP or compile setting
    # may resume it (a compiled step gives the eager result up to rounding: tests/training/test_step.py).
    load_checkpoint(path, config=cfg(epochs=1, image_size=8, ema_decay=0.9, device="auto", amp="off", compile="on"))


def test_corrupt_truncated_and_pickled_files_are_refused_unchanged(checkpoint, tmp_path):
    good = checkpoint[0].read_bytes()
    cases = {"garbage.pt": b"this is not a checkpoint", "truncated.pt": good[: len(good) // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NasError, match="corrupt") as e:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value)
        assert (tmp_path / name).read_bytes() == data
    marker = tmp_path / "executed"
    torch.save({"format": "nas.checkpoint/1", "payload": Evil(str(marker))}, tmp_path / "evil.pt")
    before = (tmp_path / "evil.pt").read_bytes()
    with pytest.raises(NasError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists() and (tmp_path / "evil.pt").read_bytes() == before
    torch.save({"hello": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(NasError, match="not a nas checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
