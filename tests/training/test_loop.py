"""The training loop (progressive stages observed on the model and loader), checkpoints, and
``nas train`` run as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import nas.data.batches as batches_mod
import nas.training.loop as train_mod
from nas.data import Splits, TensorImages, load_dataset, make_loader
from nas.errors import NasError
from nas.training.checkpoint import load_checkpoint
from nas.training.config import TrainConfig, TrainingDiverged
from nas.training.evaluation import evaluate
from nas.training.loop import fit
from nas.training.progressive import get_schedule
from search_spaces import Architecture, build

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread (conftest.py)

TINY = "stem8,r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e4_i8_o16,head32,res16"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small() -> Splits:
    """256 / 128 digits: enough to learn, small enough for a 1-second epoch."""
    d = load_dataset("digits")
    return Splits(
        "digits-small",
        TensorImages(d.train.images[:256], d.train.labels[:256]),
        TensorImages(d.val.images[:128], d.val.labels[:128]),
        10,
        8,
    )


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(Architecture.from_string(TINY), 10)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 2, "batch_size": 32, "device": "cpu"} | kw))


# ------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "kw",
    [
        dict(epochs=0),
        dict(optimizer="adam"),
        dict(lr=-1.0),
        dict(lr=float("nan")),
        dict(warmup_epochs=2),
        dict(label_smoothing=1.0),
        dict(ema_decay=1.0),
        dict(image_size=4),
        dict(randaugment=40),
        dict(mixup=-1),
        dict(dropout=1.0),
        dict(device="tpu"),
        dict(amp="yes"),
        dict(seed=-1),
        dict(batch_size=2.5),
        dict(progressive="s"),
    ],
)
def test_impossible_config_values_are_refused(kw):
    with pytest.raises(NasError):
        cfg(**kw)


def test_config_dict_round_trip():
    c = cfg(progressive=get_schedule("m", size_end=32), ema_decay=0.99, lr=0.01)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain data only
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(NasError, match="unknown training config"):
        TrainConfig.from_dict({**d, "epoch": 3})


# ------------------------------------------------------------------------------------------------
# Progressive learning, observed where it acts


def test_each_stage_sets_the_dropout_the_model_uses_and_the_size_it_sees(small, monkeypatch):
    sched = get_schedule("l", size_start=8, size_end=16)  # 8, 11, 13, 16 px; mixup 0 -> 0.4
    model = tiny_model()
    seen_dropout, seen_size, per_epoch = set(), set(), []
    model.dropout.register_forward_pre_hook(lambda m, inp: seen_dropout.add(round(m.p, 6)) if m.training else None)
    model.register_forward_pre_hook(lambda m, inp: seen_size.add(inp[0].shape[-1]) if m.training else None)
    loader_args, mixups = [], []
    real_augment, real_mixup = batches_mod.make_randaugment, train_mod.make_mixup

    def spy_augment(magnitude):
        loader_args.append(magnitude)
        return real_augment(magnitude)

    def spy_mixup(alpha, num_classes):
        mix = real_mixup(alpha, num_classes)
        if mix is None:
            mixups.append((alpha, 0))
            return None
        mixups.append([alpha, 0])

        def counted(x, y):
            mixups[-1][1] += 1
            return mix(x, y)

        return counted

    monkeypatch.setattr(batches_mod, "make_randaugment", spy_augment)
    monkeypatch.setattr(train_mod, "make_mixup", spy_mixup)

    def on_epoch_end(epoch, metrics):
        per_epoch.append((set(seen_dropout), set(seen_size), metrics))
        seen_dropout.clear()
        seen_size.clear()

    fit(model, small, cfg(epochs=4, progressive=sched), on_epoch_end=on_epoch_end, progress=False)
    assert len(per_epoch) == 4
    for i, (drop, size, metrics) in enumerate(per_epoch):
        st = sched.stage(i)
        assert drop == {round(st.dropout, 6)} and size == {st.image_size}
        assert (metrics["stage"], metrics["image_size"], metrics["dropout"]) == (i, st.image_size, st.dropout)
    assert [d for d, _, _ in per_epoch] == [{0.1}, {0.233333}, {0.366667}, {0.5}]
    assert loader_args == [5, 12, 18, 25]
    assert [round(a, 6) for a, _ in mixups] == [0.0, 0.133333, 0.266667, 0.4]
    assert mixups[0][1] == 0 and all(n == 256 // 32 for _, n in mixups[1:])  # every batch mixed


def test_fixed_size_training_uses_the_architecture_defaults(small):
    model = tiny_model()
    sizes = set()
    model.register_forward_pre_hook(lambda m, inp: sizes.add(inp[0].shape[-1]) if m.training else None)
    result = fit(model, small, cfg(epochs=1), progress=False)
    assert sizes == {16} and model.dropout.p == pytest.approx(0.2)  # res16, drop0.2 of TINY
    assert result.history[0]["image_size"] == 16 and result.epochs_run == 1


def test_tiny_network_learns_the_fake_set():
    splits = load_dataset("fake")
    result = fit(tiny_model(), splits, cfg(epochs=3, image_size=16), progress=False)
    assert result.val_accuracy > 0.3  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_result_other_seed_differs(small):
    c = cfg(epochs=2, image_size=12, randaugment=7, mixup=0.2)
    timings = ("epoch_time_s", "images_per_s")
    strip = lambda r: [{k: v for k, v in h.items() if k not in timings} for h in r.history]  # noqa: E731
    a = fit(tiny_model(), small, c, progress=False)
    b = fit(tiny_model(), small, c, progress=False)
    other = fit(tiny_model(), small, cfg(epochs=2, image_size=12, randaugment=7, mixup=0.2, seed=1), progress=False)
    assert strip(a) == strip(b)
    assert strip(a) != strip(other)


def test_pruning_exception_from_the_callback_propagates(small):
    calls = []

    def prune(epoch, metrics):
        calls.append(epoch)
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        fit(tiny_model(), small, cfg(epochs=3, image_size=8), on_epoch_end=prune, progress=False)
    assert calls == [1]


class _NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(x.mean((2, 3))) * float("nan")


def test_divergence_reports_the_epoch_then_raises(small, tmp_path):
    seen = []
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit(
            _NaNNet(),
            small,
            cfg(image_size=8),
            on_epoch_end=lambda e, m: seen.append(m["train_loss"]),
            checkpoint_path=tmp_path / "c.pt",
            progress=False,
        )
    assert len(seen) == 1 and seen[0] != seen[0]  # NaN
    assert not (tmp_path / "c.pt").exists()


def test_evaluate_is_top1_accuracy(small):
    class Always(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            out[:, 3] = 1
            return out

    loader = make_loader(small.val, image_size=8, batch_size=50, train=False)
    expected = float((small.val.labels == 3).float().mean())
    assert evaluate(Always(), loader, "cpu") == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# Checkpoints


def test_resumed_run_equals_an_uninterrupted_one(small, tmp_path):
    c = cfg(epochs=3, progressive=get_schedule("m", stages=3, size_start=8, size_end=16), ema_decay=0.9)
    full = fit(tiny_model(), small, c, progress=False)

    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop

    path = tmp_path / "ckpt.pt"
    with pytest.raises(Stop):
        fit(tiny_model(), small, c, checkpoint_path=path, on_epoch_end=stop, progress=False)
    state = load_checkpoint(path, arch=Architecture.from_string(TINY), config=c, dataset="digits-small")
    assert state["epoch"] == 1
    resumed_model = tiny_model(seed=123)  # different init: the checkpoint must restore everything
    resumed = fit(resumed_model, small, c, state=state, checkpoint_path=path, progress=False)
    assert resumed.start_epoch == 1 and resumed.epochs_run == 2
    key = lambda r: [(h["epoch"], h["train_loss"], h["val_accuracy"], h["lr"]) for h in r.history]  # noqa: E731
    assert key(resumed) == key(full)
    for (name, a), b in zip(full.eval_model.state_dict().items(), resumed.eval_model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def checkpoint(small, tmp_path_factory) -> tuple[Path, TrainConfig]:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    c = cfg(epochs=1, image_size=8, ema_decay=0.9)
    fit(tiny_model(), small, c, checkpoint_path=path, progress=False)
    return path, c


def test_checkpoint_is_plain_data_loadable_with_weights_only(checkpoint):
    path, c = checkpoint
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "nas.checkpoint/1" and raw["epoch"] == 1
    assert raw["arch"] == Architecture.from_string(TINY).to_dict() and raw["config"] == c.to_dict()
    assert {"model", "optimizer", "scheduler", "ema", "history", "data"} <= set(raw)
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temporary file


def test_mismatched_architecture_or_settings_are_refused(checkpoint, small):
    path, _c = checkpoint
    other = Architecture.from_string(TINY.replace("o16", "o24"))
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
    # may resume it (a compiled step gives the eager result up to rounding: tests/test_step.py).
    load_checkpoint(path, config=cfg(epochs=1, image_size=8, ema_decay=0.9, device="auto", amp="off", compile="on"))


class Evil:
    """Unpickling this runs a shell command: exactly what weights_only must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


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


# ------------------------------------------------------------------------------------------------
# nas train, as a user runs it


def cli_args(epochs: int = 3) -> list[str]:
    return [
        "train",
        TINY,
        "--dataset",
        "digits",
        "--epochs",
        str(epochs),
        "--width-mult",
        "1",
        "--depth-mult",
        "1",
        "--progressive",
        "s",
        "--stages",
        "3",
        "--image-size-start",
        "8",
        "--image-size-end",
        "16",
        "--batch-size",
        "128",
        "--no-progress",
    ]


CLI_ARGS = cli_args()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_cli_resume_finish_and_mismatch(run_nas, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_nas(*CLI_ARGS, "--out", out, "--stop-after", "1")
    assert rc == 0, err
    assert "image size" in stdout and "stopped after epoch 1/3" in stdout  # the schedule table came first
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1"]
    rc, stdout, err = run_nas(*CLI_ARGS, "--out", out)
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
    assert final["arch"] == Architecture.from_string(TINY).to_string()
    # Rerunning a finished run, or with other settings, in-process (the same main() the script runs).
    from nas.cli import main

    capsys.readouterr()
    assert main([*CLI_ARGS, "--out", str(out)]) == 0
    assert "is finished (3/3 epochs)" in capsys.readouterr().out
    before = (out / "checkpoint.pt").read_bytes(), (out / "metrics.csv").read_bytes()
    assert main([*CLI_ARGS, "--out", str(out), "--lr", "0.01"]) == 2
    assert "lr: None -> 0.01" in _one_line_error(2, capsys.readouterr().err)
    assert ((out / "checkpoint.pt").read_bytes(), (out / "metrics.csv").read_bytes()) == before


@pytest.mark.slow
def test_cli_resumes_after_a_kill(tmp_path):
    out = tmp_path / "run"
    args = cli_args(epochs=4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.cli", *args, "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    p = subprocess.run(
        [sys.executable, "-m", "nas.cli", *args, "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert f"resumed from epoch {done}/4" in p.stdout
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3", "4"]


@pytest.mark.slow  # one interpreter start: over 10 s on a busy 2-core box
def test_cli_refuses_a_pickled_checkpoint(run_nas, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "executed"
    torch.save(Evil(str(marker)), out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    rc, _, err = run_nas(*CLI_ARGS, "--out", out)
    assert "pickled Python objects" in _one_line_error(rc, err)
    assert not marker.exists() and (out / "checkpoint.pt").read_bytes() == before
    assert not (out / "metrics.csv").exists()


@pytest.mark.slow  # one interpreter start: over 10 s on a busy 2-core box
def test_cli_unknown_dataset_is_one_line_exit_2(run_nas, tmp_path):
    rc, _, err = run_nas(*CLI_ARGS, "--out", tmp_path / "run", "--dataset", "mnist")
    assert "unknown dataset 'mnist'; known: digits, fake" in _one_line_error(rc, err)
    assert not (tmp_path / "run").exists()


# The same error path in-process (``main`` is what the console script runs): fast enough for many cases.


def test_cli_refuses_a_corrupt_checkpoint_in_process(tmp_path, capsys):
    from nas.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert main([*CLI_ARGS, "--out", str(out)]) == 2
    assert "corrupt" in _one_line_error(2, capsys.readouterr().err)
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
    from nas.cli import main

    assert main([*CLI_ARGS, "--out", str(tmp_path / "run"), *args]) == 2
    assert message in _one_line_error(2, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, train_size, eval_size",
    [
        (["--progressive", "off", "--image-size", "24"], 24, 24),  # not the architecture's 16 px
        (["--progressive", "off", "--image-size", "24", "--eval-image-size", "12"], 24, 12),
        (["--progressive", "s", "--stages", "2", "--image-size-start", "8", "--image-size-end", "20"], 20, 20),
        (["--progressive", "off"], 16, 16),  # TINY's res16, under 4 x digits' 8 px
    ],
)
def test_cli_evaluates_at_the_last_training_size_by_default(tmp_path, capsys, args, train_size, eval_size):
    from nas.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                TINY,
                "--epochs",
                "1",
                "--width-mult",
                "1",
                "--depth-mult",
                "1",
                "--batch-size",
                "128",
                "--no-progress",
                "--out",
                str(out),
                *args,
            ]
        )
        == 0
    )
    final = json.loads((out / "final.json").read_text())
    assert (final["eval_image_size"], final["config"]["eval_image_size"]) == (eval_size, eval_size)
    assert _rows(out / "metrics.csv")[-1]["image_size"] == str(train_size)
    assert f"at {eval_size} px" in capsys.readouterr().out


def test_cli_final_evaluation_re_estimates_batchnorm(tmp_path, capsys):
    from nas.cli import main

    base = [
        "train",
        TINY,
        "--epochs",
        "1",
        "--width-mult",
        "1",
        "--depth-mult",
        "1",
        "--progressive",
        "off",
        "--batch-size",
        "128",
        "--no-progress",
    ]
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
    from nas.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, even where a GPU exists
    assert main([*CLI_ARGS, "--out", str(tmp_path / "run"), *args]) == 2
    assert message in _one_line_error(2, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_bn_recalibration_replaces_stale_running_stats_with_the_batch_average():
    import torch
    from torch import nn

    from nas.training.evaluation import recalibrate_bn

    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.1))
    model[0].running_mean.fill_(100.0)  # stale statistics, as after a short run
    batches = [(torch.randn(4, 3, 5, 5) * 2 + k, torch.zeros(4)) for k in range(3)]
    model.eval()
    recalibrate_bn(model, batches, "cpu", batches=2)
    expected = torch.stack([b[0].mean(dim=(0, 2, 3)) for b in batches[:2]]).mean(0)  # only 2 batches used
    assert torch.allclose(model[0].running_mean, expected, atol=1e-5)
    assert model[0].momentum == 0.1 and not model.training  # settings restored
