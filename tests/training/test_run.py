"""A whole training run (:mod:`nas.training.run`): settings resolved before anything is written, resume,
--stop-after, the finished run, the final evaluation; and ``nas train`` as a user runs it."""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nas.training.run as run_mod
from nas.cli import main, make_parser
from nas.core.memory import estimate_step_memory
from nas.errors import NasError
from nas.training.options import TrainOptions
from nas.training.run import resolve
from search_spaces import Architecture
from tests.helpers import REPO, TINY_TRAIN, TRAIN_ARGS, Evil, error_line, main_in_process, nas_env

# One epoch of TINY_TRAIN as given (no default scaling on digits), 11 steps of batch 128.
ONE_EPOCH = [
    "train",
    TINY_TRAIN,
    "--epochs",
    "1",
    "--width-mult",
    "1",
    "--depth-mult",
    "1",
    "--batch-size",
    "128",
    "--no-progress",
]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------
# The library


def test_the_cli_takes_its_defaults_from_the_library():
    args = make_parser().parse_args(["train", "efficientnet-b0"])
    names = [f.name for f in dataclasses.fields(TrainOptions) if f.name != "progress"]
    assert TrainOptions(**{n: getattr(args, n) for n in names}) == TrainOptions("efficientnet-b0")
    assert args.no_progress is False


def test_resolve_decides_every_setting_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = resolve(TrainOptions("efficientnet-b0", epochs=2))
    assert (run.width, run.depth) == (0.25, 0.25) and run.arch != run.base  # small data: a smaller copy
    assert run.config.eval_image_size == 32 and run.config.progressive.size_end == 32  # 4 x digits' 8 px
    assert run.out.parent == Path("runs") and run.out.name.startswith("train-efficientnet-b0-")
    assert list(tmp_path.iterdir()) == []
    given = resolve(TrainOptions(TINY_TRAIN, width_mult=1, depth_mult=1, progressive="off", out="mine"))
    assert given.arch == given.base == Architecture.from_string(TINY_TRAIN) and given.out == Path("mine")
    assert given.config.image_size == given.config.eval_image_size == 16  # res16, under 4 x 8 px


def test_a_given_run_directory_is_vetted_before_the_data_is_loaded(monkeypatch):
    seen = []

    def refuse(path):
        seen.append(path)
        raise NasError(f"--out {str(path)!r} is a file, not a directory")

    def no_data(*a, **k):
        raise AssertionError("the data was loaded although the run directory is refused")

    monkeypatch.setattr(run_mod, "load_dataset", no_data)
    with pytest.raises(NasError, match="is a file"):
        resolve(TrainOptions(TINY_TRAIN, out="taken"), check_out=refuse)
    assert seen == [Path("taken")]


def test_the_memory_check_is_for_the_largest_step_of_the_run():
    run = resolve(TrainOptions(TINY_TRAIN, width_mult=1, depth_mult=1, image_size_start=8, image_size_end=24, ema=0.9))
    assert [run.config.progressive.stage(i).image_size for i in range(4)] == [8, 13, 19, 24]
    expected = estimate_step_memory(run.arch, 64, 24, 10, ema=True).total
    assert run.check_memory() == expected


def test_execute_trains_tells_and_returns_the_final_evaluation(tmp_path):
    opts = TrainOptions(TINY_TRAIN, epochs=1, width_mult=1, depth_mult=1, batch_size=128, progress=False)
    run = resolve(dataclasses.replace(opts, out=str(tmp_path / "run")))
    lines = []
    final = run.execute(echo=lines.append)
    assert json.loads(run.final_path.read_text()) == final and final["epochs"] == 1
    assert lines[0].startswith(f"architecture {TINY_TRAIN}") and lines[-1].startswith("final val accuracy")
    assert any(line.startswith("epoch 1/1") for line in lines) and f"run directory {run.out}" in lines
    lines.clear()
    assert run.execute(echo=lines.append) is None
    assert len(lines) == 1 and "is finished (1/1 epochs); final val accuracy" in lines[0]
    assert lines[0].endswith("nothing to do (use another --out to train again)")


# ------------------------------------------------------------------------------------------------
# nas train, as a user runs it


@pytest.mark.slow
def test_cli_resume_finish_and_mismatch(run_nas, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_nas(*TRAIN_ARGS, "--out", out, "--stop-after", "1")
    assert rc == 0, err
    assert "image size" in stdout and "stopped after epoch 1/3" in stdout  # the schedule table came first
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1"]
    rc, stdout, err = main_in_process([*TRAIN_ARGS, "--out", out], capsys)  # the resume, in this process
    assert rc == 0, err
    assert "resumed from epoch 1/3" in stdout
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [r["image_size"] for r in rows] == ["8", "12", "16"] and [r["stage"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == [
        "epoch",
        "stage",
        "image_size",
        "dropout",
        "randaugment",
        "mixup",
        "train_loss",
        "val_accuracy",
        "lr",
        "epoch_time_s",
        "images_per_s",
    ]
    final = json.loads((out / "final.json").read_text())
    assert final["eval_image_size"] == 16 and 0.0 <= final["val_accuracy"] <= 1.0  # res16 under 4 x 8 px
    assert final["arch"] == Architecture.from_string(TINY_TRAIN).to_string()
    # Rerunning a finished run, or with other settings, in-process (the same main() the script runs).
    capsys.readouterr()
    assert main([*TRAIN_ARGS, "--out", str(out)]) == 0
    assert "is finished (3/3 epochs)" in capsys.readouterr().out
    before = (out / "checkpoint.pt").read_bytes(), (out / "metrics.csv").read_bytes()
    rc = main([*TRAIN_ARGS, "--out", str(out), "--lr", "0.01"])
    assert "lr: None -> 0.01" in error_line(rc, capsys.readouterr().err)
    assert ((out / "checkpoint.pt").read_bytes(), (out / "metrics.csv").read_bytes()) == before


@pytest.mark.slow
def test_cli_resumes_after_a_kill(tmp_path):
    out = tmp_path / "run"
    args = [*TRAIN_ARGS, "--epochs", "4", "--out", str(out)]
    command = [sys.executable, "-m", "nas.cli", *args]
    proc = subprocess.Popen(command, cwd=REPO, env=nas_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint before the deadline"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 4 and not (out / "final.json").exists()
    p = subprocess.run(command, cwd=REPO, env=nas_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resumed from epoch {done}/4" in p.stdout
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3", "4"]


def test_cli_refuses_a_pickled_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "executed"
    torch.save(Evil(str(marker)), out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    rc, _, err = main_in_process([*TRAIN_ARGS, "--out", out], capsys)
    assert "pickled Python objects" in error_line(rc, err)
    assert not marker.exists() and (out / "checkpoint.pt").read_bytes() == before
    assert not (out / "metrics.csv").exists()


def test_cli_unknown_dataset_is_one_line_exit_2(tmp_path, capsys):
    rc, _, err = main_in_process([*TRAIN_ARGS, "--out", tmp_path / "run", "--dataset", "mnist"], capsys)
    assert "unknown dataset 'mnist'; known: digits, fake" in error_line(rc, err)
    assert not (tmp_path / "run").exists()


# The same error path in-process (``main`` is what the console script runs): fast enough for many cases.


def test_cli_refuses_a_corrupt_checkpoint_in_process(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    rc = main([*TRAIN_ARGS, "--out", str(out)])
    assert "corrupt" in error_line(rc, capsys.readouterr().err)
    assert (out / "checkpoint.pt").read_bytes() == b"\x00garbage" and not (out / "metrics.csv").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--progressive", "xl"], "unknown progressive schedule 'xl'"),
        (["--progressive", "off", "--image-size-end", "32"], "--image-size-end"),
        (["--randaugment", "5"], "--randaugment"),
        (["--epochs", "0"], "epochs"),
        (["--lr", "nan"], "learning rate"),
        (["--width-mult", "0"], "width multiplier"),
        (["--stop-after", "0"], "--stop-after"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    rc = main([*TRAIN_ARGS, "--out", str(tmp_path / "run"), *args])
    assert message in error_line(rc, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, train_size, eval_size",
    [
        (["--progressive", "off", "--image-size", "24"], 24, 24),  # not the architecture's 16 px
        (["--progressive", "off", "--image-size", "24", "--eval-image-size", "12"], 24, 12),
        (["--progressive", "s", "--stages", "2", "--image-size-start", "8", "--image-size-end", "20"], 20, 20),
        (["--progressive", "off"], 16, 16),  # TINY_TRAIN's res16, under 4 x digits' 8 px
    ],
)
def test_cli_evaluates_at_the_last_training_size_by_default(tmp_path, capsys, args, train_size, eval_size):
    out = tmp_path / "run"
    assert main([*ONE_EPOCH, "--out", str(out), *args]) == 0
    final = json.loads((out / "final.json").read_text())
    assert (final["eval_image_size"], final["config"]["eval_image_size"]) == (eval_size, eval_size)
    assert _rows(out / "metrics.csv")[-1]["image_size"] == str(train_size)
    assert f"at {eval_size} px" in capsys.readouterr().out


def test_cli_final_evaluation_re_estimates_batchnorm(tmp_path, capsys):
    base = [*ONE_EPOCH, "--progressive", "off"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    final = json.loads((tmp_path / "a" / "final.json").read_text())
    assert final["final_bn_recalibration"] == 16 and final["compiled"] is False
    assert "BatchNorm re-estimated on 16 batches" in capsys.readouterr().out
    # One epoch of 11 steps leaves the running averages far behind the weights: re-estimating helps.
    assert final["val_accuracy"] > final["val_accuracy_running_stats"]
    assert main([*base, "--out", str(tmp_path / "b"), "--final-bn-recalibration", "0"]) == 0
    off = json.loads((tmp_path / "b" / "final.json").read_text())
    assert off["val_accuracy"] == off["val_accuracy_running_stats"] == final["val_accuracy_running_stats"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cuda:1"], "'cuda:1'"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--compile", "yes"], "compile must be one of auto, on, off"),
        (["--final-bn-recalibration", "-1"], "--final-bn-recalibration"),
    ],
)
def test_cli_refuses_a_device_or_compile_it_cannot_use_before_writing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, even where a GPU exists
    rc = main([*TRAIN_ARGS, "--out", str(tmp_path / "run"), *args])
    assert message in error_line(rc, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
