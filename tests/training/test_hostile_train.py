"""``nas train`` on hostile ground: a checkpoint that is no PyTorch file, one of pickled objects, a step
that cannot fit in memory, an allocator that refuses during training. Each is one ``nas: error:``
line (exit 2 for a bad file, 1 for memory), and the run directory is left as it was."""

from __future__ import annotations

import pytest
import torch

import nas.core.memory as memory
from nas.cli import main
from nas.training.step import TrainStep
from tests.helpers import NOT_CHECKPOINTS, TRAIN_ARGS, Evil, error_line

ALLOCATOR = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 25836912640 bytes."


def train(capsys, out, *args, code: int) -> str:
    """``nas train`` (TRAIN_ARGS) into ``out``, refused: its one error line."""
    rc = main([*TRAIN_ARGS, "--out", str(out), *args])
    return error_line(rc, capsys.readouterr().err, code)


@pytest.mark.parametrize("content", NOT_CHECKPOINTS.values(), ids=NOT_CHECKPOINTS.keys())
def test_a_checkpoint_that_is_no_pytorch_file_says_so(capsys, tmp_path, content):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    line = train(capsys, tmp_path, code=2)
    assert f"{str(tmp_path / 'checkpoint.pt')!r} is not a PyTorch checkpoint (corrupt or another format)" in line
    assert "pickled" not in line and line.endswith("; delete it or use another --out")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == content


def test_a_checkpoint_of_pickled_objects_is_refused_unread_with_its_own_message(capsys, tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-executed"
    torch.save({"format": "nas.checkpoint/1", "payload": Evil(str(marker))}, tmp_path / "checkpoint.pt")
    line = train(capsys, tmp_path, code=2)
    assert "holds pickled Python objects" in line and "weights_only=True" in line
    assert "not a PyTorch checkpoint" not in line and line.endswith("; delete it or use another --out")
    assert not marker.exists() and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_step_that_cannot_fit_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 10**6)
    line = train(capsys, tmp_path / "run", code=1)
    assert "out of memory: a training step at batch 128, 16 px needs about" in line  # the largest stage
    assert "more than the 1 MB available on cpu; lower --batch-size or --image-size" in line
    assert not (tmp_path / "run").exists()


def test_an_allocators_refusal_during_training_is_one_line(capsys, tmp_path, monkeypatch):
    def cannot_allocate(self, images, labels):
        raise RuntimeError(ALLOCATOR)

    monkeypatch.setattr(TrainStep, "__call__", cannot_allocate)
    line = train(capsys, tmp_path / "run", code=1)
    assert f"out of memory while training ({ALLOCATOR}); lower --batch-size or --image-size" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
