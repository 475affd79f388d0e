"""Export a network to ONNX or TorchScript, and check the file against PyTorch.

What is exported: a network built from an architecture (a preset, a block string, a JSON file, a
``nas search`` run directory: random weights, for deployment and latency work) or a trained one (a
``nas train`` run directory or its ``checkpoint.pt``, read with ``weights_only=True``: the EMA
weights when the run kept them, as its final evaluation used them).

Random weights as initialised leave a deep network's activations near zero in evaluation mode
(EfficientNet-B0's logits are ~1e-13), which would make both the check and any latency measured on
the file meaningless; so their BatchNorm statistics are estimated on random images first
(:func:`nas.training.evaluation.recalibrate_bn`), giving outputs of order 1.

The export traces the network in evaluation mode at one image size with a dynamic batch dimension.
The check runs the exported file on a random batch of another size than the traced one and reports
the largest absolute difference from PyTorch's output: ONNX through onnxruntime when it is installed
(otherwise the file is only validated with ``onnx.checker``, not run), TorchScript through
``torch.jit.load``.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas.errors import NasError, check_choice, check_int

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TRACE_BATCH, CHECK_BATCH = 1, 3  # checking at another batch size than the traced one proves it dynamic
OPSET = 17


@dataclass
class Check:
    max_abs_diff: float | None  # None: the file was validated, not run
    max_abs_output: float  # PyTorch's largest output, the scale the difference is measured against
    runtime: str
    batch: int


@contextmanager
def _quiet_export() -> Iterator[None]:
    """The warnings tracing prints by design, not for the user to act on: the legacy (TorchScript-based)
    ONNX exporter and torch.jit are deprecated in favour of torch.export (whose ONNX path needs
    onnxscript, not a dependency here), and TF "same" padding is computed from the traced image
    size, which the export fixes on purpose (the batch stays dynamic)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def check_out(path: str | os.PathLike) -> Path:
    """``path`` as :func:`export` can write it: a file (not a directory) in an existing directory this
    process may write to and, when it exists, replace. Refused in one NasError line, before any work."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise NasError(f"--out {str(path)!r} is a directory, not a file; choose another --out")
    if not parent.is_dir():
        what = "is a file, not a directory" if parent.exists() else "does not exist"
        raise NasError(f"--out {str(path)!r}: directory {str(parent)!r} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NasError(f"--out {str(path)!r}: cannot write to directory {str(parent)!r} (permission denied)")
    # In a sticky directory (/tmp) only the file's owner, the directory's or root may replace a file.
    sticky = path.exists() and parent.stat().st_mode & stat.S_ISVTX
    if sticky and os.geteuid() not in (0, path.stat().st_uid, parent.stat().st_uid):
        raise NasError(f"--out {str(path)!r} belongs to another user and cannot be replaced; choose another --out")
    return path


def resolve_out(out: str | None, name: str, source: str) -> Path:
    """Where :func:`export` writes: ``out`` (a file, or a directory to put ``name`` in), else ``name``
    in the current directory; checked (:func:`check_out`), and never the ``source`` being exported."""
    path = Path(out or name)
    path = path / name if path.is_dir() else path
    src = Path(source)
    if src.exists() and path.resolve() in (src.resolve(), src.resolve() / "checkpoint.pt"):
        raise NasError(f"--out {str(path)!r} is the file being exported; choose another name")
    return check_out(path)


def export(model: nn.Module, path: str | os.PathLike, fmt: str, image_size: int) -> Path:
    """Write ``model`` (evaluation mode, on the CPU, float32) to ``path``; dynamic batch size. The
    file is written whole or not at all: a failure leaves neither it nor a temporary file behind,
    and one that the file system refuses is one NasError line."""
    check_choice("--format", fmt, FORMATS)
    image_size = check_int("--image-size", image_size, 8, 2048)
    path = check_out(path)
    model = model.eval().cpu().float()
    x = torch.randn(TRACE_BATCH, 3, image_size, image_size)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with _quiet_export(), torch.no_grad():
            if fmt == "onnx":
                _onnx_export(model, x, tmp)
            else:
                torch.jit.trace(model, x).save(str(tmp))
        os.replace(tmp, path)  # atomic: the old file or the new one, never half of one
    except OSError as e:
        raise NasError(f"cannot write --out {str(path)!r}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _onnx_export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it to write the file; an optional dependency)
    except ImportError:
        raise NasError("--format onnx needs the onnx package (pip install onnx)") from None
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
    )


def check(path: str | os.PathLike, fmt: str, model: nn.Module, image_size: int, seed: int = 1) -> Check:
    """Run the exported file and PyTorch on the same random batch; the largest absolute difference."""
    x = torch.randn(CHECK_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.eval()(x)
    scale = float(ref.abs().max())
    if fmt == "torchscript":
        with _quiet_export(), torch.no_grad():
            out = torch.jit.load(str(path), map_location="cpu")(x)
        return Check(float((out - ref).abs().max()), scale, f"torch.jit {torch.__version__}", CHECK_BATCH)
    import onnx  # optional (pip install -e ".[export]"): only ONNX files need it

    onnx.checker.check_model(str(path))
    try:
        import onnxruntime as ort  # optional: without it the file is validated, not run
    except ImportError:
        return Check(
            None,
            scale,
            f"onnx.checker {onnx.__version__} (onnxruntime is not installed: the file was "
            "validated, not run; pip install onnxruntime to compare outputs)",
            CHECK_BATCH,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": x.numpy()})[0]
    return Check(float(abs(out - ref.numpy()).max()), scale, f"onnxruntime {ort.__version__}", CHECK_BATCH)
