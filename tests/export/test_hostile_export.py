"""``nas export`` on hostile ground: an output that cannot be written or replaced, a file that is not a
checkpoint, a checkpoint holding pickled objects. Each is one ``nas: error:`` line, exit 2, and
leaves nothing behind (no temporary file, the old file untouched)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import nas.export.formats as formats
from nas.cli import main
from nas.scaling.grid import base_slug
from search_spaces import Architecture
from tests.helpers import NOT_CHECKPOINTS, TINY_ARCH, error_line


def export(capsys, *args) -> str:
    """``nas export TINY_ARCH *args``, refused: its one error line."""
    rc = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    assert out == ""
    return error_line(rc, err)


def files(directory: Path) -> dict[str, bytes | None]:
    return {p.name: p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}


@pytest.fixture
def no_export_work(monkeypatch):
    """Fails the test if the export starts: a bad --out is refused before any work."""

    def never(*a, **k):
        raise AssertionError("the export ran although --out cannot be written")

    monkeypatch.setattr(torch.onnx, "export", never)
    monkeypatch.setattr(torch.jit, "trace", never)


def test_an_out_that_is_a_directory_is_refused_before_the_export(capsys, tmp_path, no_export_work):
    # --out DIR writes DIR/NAME.onnx: here that is a directory too, which no file can replace.
    name = base_slug(TINY_ARCH, Architecture.from_string(TINY_ARCH)) + ".onnx"
    (tmp_path / name / "inside").mkdir(parents=True)
    before = files(tmp_path)
    line = export(capsys, TINY_ARCH, "--out", tmp_path)
    assert f"--out {str(tmp_path / name)!r} is a directory, not a file" in line
    assert files(tmp_path) == before


def test_a_file_the_system_refuses_to_replace_leaves_no_temporary_file(capsys, tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the previous export")

    def refuse(src, dst):  # what a sticky /tmp says when the file belongs to another user
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(formats.os, "replace", refuse)
    line = export(capsys, TINY_ARCH, "--out", target, "--image-size", "16")
    assert f"cannot write --out {str(target)!r}: Operation not permitted" in line
    assert files(tmp_path) == {"m.onnx": b"the previous export"}  # no .m.onnx.tmp left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused_before_the_export(capsys, tmp_path, no_export_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = export(capsys, TINY_ARCH, "--out", locked / "m.onnx")
    finally:
        locked.chmod(0o755)
    assert "cannot write to directory" in line and "permission denied" in line
    assert list(locked.iterdir()) == []


def test_an_out_under_a_file_is_named_as_such(capsys, tmp_path, no_export_work):
    (tmp_path / "notes.txt").write_text("not a directory\n")
    line = export(capsys, TINY_ARCH, "--out", tmp_path / "notes.txt" / "m.onnx")
    assert "is a file, not a directory" in line


@pytest.mark.parametrize("content", NOT_CHECKPOINTS.values(), ids=NOT_CHECKPOINTS.keys())
def test_a_file_that_is_not_a_checkpoint_says_so(capsys, tmp_path, content):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    for spec in (tmp_path / "checkpoint.pt", tmp_path):  # the file, or the run directory holding it
        line = export(capsys, spec, "--out", tmp_path / "m.onnx")
        assert f"{str(tmp_path / 'checkpoint.pt')!r} is not a PyTorch checkpoint (corrupt or another format" in line
        assert "pickled" not in line and "--out" not in line  # export's --out is the file it writes
        assert "nas export reads the checkpoint.pt a nas train run writes" in line
    assert files(tmp_path) == {"checkpoint.pt": content}


class Pickled:
    """Any Python object: a file holding one must not be unpickled."""

    def __reduce__(self):
        return (os.system, ("exit 1",))


def test_a_checkpoint_of_pickled_objects_is_refused_unread_with_advice_for_export(capsys, tmp_path):
    torch.save({"format": "nas.checkpoint/1", "obj": Pickled()}, tmp_path / "checkpoint.pt")
    line = export(capsys, tmp_path / "checkpoint.pt", "--out", tmp_path / "m.onnx")
    assert "holds pickled Python objects" in line and "weights_only=True" in line
    assert "--out" not in line and "nas export reads the checkpoint.pt a nas train run writes" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
