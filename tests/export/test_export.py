"""``nas export``: ONNX and TorchScript files that give PyTorch's outputs at any batch size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.cli import main
from nas.data import Splits, TensorImages, load_dataset
from nas.errors import NasError
from nas.export.formats import check, export
from nas.export.source import calibrate_random, load_source
from nas.training.config import TrainConfig
from nas.training.loop import fit
from search_spaces import Architecture, build
from tests.helpers import TINY_ARCH

# TF "same" padding (computed per call), ReLU6, a nominal input width, BatchNorm eps 1e-5.
TF_STYLE = "stem16,r1_k3_s2_e4_i8_o16_c1_noskip,r2_k5_s2_e6_i16_o24,head64,res48,act_relu6,bneps1e-05,pad_same"


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def model_for(text: str, seed: int = 0, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build(Architecture.from_string(text), num_classes)
    calibrate_random(m, 32)
    return m.eval()


@pytest.mark.parametrize("text", [TINY_ARCH, TF_STYLE])
def test_onnx_file_gives_pytorchs_outputs_at_any_batch(tmp_path, text):
    ort = pytest.importorskip("onnxruntime")
    model = model_for(text)
    path = export(model, tmp_path / "m.onnx", "onnx", 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # traced at 1: the batch dimension is dynamic
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = model(x)
        out = session.run(None, {"images": x.numpy()})[0]
        assert out.shape == (batch, 10)
        assert ref.abs().max() > 0.05  # BatchNorm statistics estimated: outputs of order 1, not ~0
        np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-5)
    result = check(path, "onnx", model, 32)
    assert result.max_abs_diff < 1e-5 and result.runtime.startswith("onnxruntime")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("text", [TINY_ARCH, TF_STYLE])
def test_torchscript_file_gives_pytorchs_outputs_at_any_batch(tmp_path, text):
    model = model_for(text)
    path = export(model, tmp_path / "m.pt", "torchscript", 32)
    loaded = torch.jit.load(str(path))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    assert check(path, "torchscript", model, 32).max_abs_diff <= 1e-6


def test_without_onnxruntime_the_file_is_validated_not_run(tmp_path, monkeypatch):
    model = model_for(TINY_ARCH)
    path = export(model, tmp_path / "m.onnx", "onnx", 32)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    result = check(path, "onnx", model, 32)
    assert result.max_abs_diff is None and "onnxruntime is not installed" in result.runtime


def test_without_onnx_the_onnx_format_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(NasError, match="needs the onnx package"):
        export(model_for(TINY_ARCH), tmp_path / "m.onnx", "onnx", 32)
    assert list(tmp_path.iterdir()) == []


def test_export_command_text_and_json(capsys, tmp_path):
    rc, out, err = cli(capsys, "export", TINY_ARCH, "--out", tmp_path / "tiny.onnx", "--num-classes", "7")
    assert rc == 0 and err == "", err
    assert "at 7 classes" in out and "input [batch, 3, 32, 32] with any batch size" in out
    assert "largest difference from PyTorch" in out and "onnxruntime" in out
    rc, out, err = cli(
        capsys, "export", TINY_ARCH, "--format", "torchscript", "--out", tmp_path, "--image-size", "40", "--json"
    )
    assert rc == 0, err
    info = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert Path(info["file"]) == tmp_path / (Path(info["file"]).name) and info["file"].endswith(".torchscript.pt")
    assert info["image_size"] == 40 and info["num_classes"] == 1000 and info["max_abs_diff"] <= 1e-6
    assert info["params"] == sum(p.numel() for p in build(Architecture.from_string(TINY_ARCH), 1000).parameters())
    assert info["weights"].startswith("random")


def test_export_command_as_a_user_runs_it(run_nas, tmp_path):
    rc, out, err = run_nas("export", "mnasnet-small", "--image-size", "64", "--out", tmp_path / "small.onnx")
    assert rc == 0 and err == "", err  # no exporter warning reaches the user
    assert (tmp_path / "small.onnx").stat().st_size > 8e6  # 2.0M float32 parameters
    assert "2,030,264 parameters at 1000 classes" in out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A nas train run directory with an EMA checkpoint (one epoch on 256 digits)."""
    run = tmp_path_factory.mktemp("train")
    d = load_dataset("digits")
    small = Splits(
        "digits-small",
        TensorImages(d.train.images[:256], d.train.labels[:256]),
        TensorImages(d.val.images[:64], d.val.labels[:64]),
        10,
        8,
    )
    torch.manual_seed(0)
    model = build(Architecture.from_string(TINY_ARCH), 10)
    fit(
        model,
        small,
        TrainConfig(epochs=1, batch_size=64, device="cpu", image_size=16, ema_decay=0.5),
        checkpoint_path=run / "checkpoint.pt",
        progress=False,
    )
    return run


def test_a_trained_run_exports_its_ema_weights(capsys, trained, tmp_path):
    src = load_source(str(trained))
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert src.num_classes == 10 and not src.random and "EMA weights" in src.weights
    ema = ckpt["ema"]["module"]
    assert all(torch.equal(v, ema[k]) for k, v in src.model.state_dict().items())
    assert not torch.equal(ema["classifier.weight"], ckpt["model"]["classifier.weight"])  # EMA, not the last step
    rc, out, err = cli(capsys, "export", trained / "checkpoint.pt", "--out", tmp_path / "t.onnx", "--image-size", "16")
    assert rc == 0, err
    assert "at 10 classes" in out and "EMA weights of" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--format", "tflite"], "--format must be one of onnx, torchscript; got 'tflite'"),
        (["--image-size", "4"], "--image-size must be an integer in [8, 2048], got 4"),
        (["--num-classes", "0"], "--num-classes must be an integer in [1, 1000000], got 0"),
        (["--out", "{tmp}/no/such/dir/m.onnx"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, args, words):
    rc, out, err = cli(
        capsys,
        "export",
        TINY_ARCH,
        *[a.replace("{tmp}", str(tmp_path)) for a in args],
        *([] if "--out" in args else ["--out", tmp_path / "m.onnx"]),
    )
    assert rc == 2 and out == "" and err.startswith("nas: error: ") and words in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_is_never_overwritten_or_relabelled(capsys, trained):
    before = (trained / "checkpoint.pt").read_bytes()
    rc, _, err = cli(
        capsys, "export", trained / "checkpoint.pt", "--format", "torchscript", "--out", trained / "checkpoint.pt"
    )
    assert rc == 2 and "is the file being exported" in err and len(err.splitlines()) == 1
    rc, _, err = cli(capsys, "export", trained, "--num-classes", "1000")
    assert rc == 2 and "trained with 10 classes" in err
    assert (trained / "checkpoint.pt").read_bytes() == before


class Pickled:
    """Any Python object: a file holding one must not be unpickled."""


def test_a_pickled_checkpoint_is_refused(capsys, tmp_path):
    torch.save({"format": "nas.checkpoint/1", "obj": Pickled()}, tmp_path / "checkpoint.pt")
    rc, _, err = cli(capsys, "export", tmp_path / "checkpoint.pt", "--out", tmp_path / "x.onnx")
    assert rc == 2 and "pickled" in err and not (tmp_path / "x.onnx").exists()


def test_random_weights_are_calibrated_and_seeded():
    a, b = load_source("mnasnet-small"), load_source("mnasnet-small")
    assert a.random and all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = a.model(x).abs().max()
        calibrate_random(a.model, 64)
        after = a.model(x).abs().max()
    assert after > 100 * before  # freshly initialised outputs are tiny in evaluation mode; estimated, order 1
    assert a.model.training is False
