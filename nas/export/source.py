"""What ``nas export`` exports: a trained network (a ``nas train`` checkpoint, its EMA weights when the
run kept them) or an architecture with seeded random weights whose BatchNorm statistics are
estimated on random images first (see :mod:`nas.export.formats`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas.core.resolve import recorded_num_classes, resolve_arch
from nas.errors import NasError, check_int
from nas.training.checkpoint import load_checkpoint
from nas.training.evaluation import recalibrate_bn
from search_spaces import Architecture, build

# A checkpoint nas export cannot read is named with this advice (nas train's would suggest --out,
# which here names the file being written).
ADVICE = "nas export reads the checkpoint.pt a nas train run writes, or an architecture"


@dataclass
class Source:
    """A network to export and where it came from."""

    model: nn.Module
    arch: Architecture
    num_classes: int
    weights: str  # "random (seed 0)" or the checkpoint it was read from
    random: bool = False


def _checkpoint_path(spec: str) -> Path | None:
    path = Path(spec)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        return path / "checkpoint.pt"
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return path
    return None


def load_source(spec: str, num_classes: int | None = None, seed: int = 0) -> Source:
    """The network ``spec`` names: trained weights from a checkpoint (or a ``nas train`` run
    directory), else the architecture with random weights (seeded)."""
    if num_classes is not None:
        check_int("--num-classes", num_classes, 1, 1_000_000)
    ckpt_path = _checkpoint_path(spec)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, advice=ADVICE)
        if not isinstance(ckpt.get("arch"), dict):
            raise NasError(f"checkpoint {str(ckpt_path)!r} records no architecture")
        arch = Architecture.from_dict(ckpt["arch"])
        recorded = ckpt["data"].get("num_classes")
        if num_classes is not None and num_classes != recorded:
            raise NasError(
                f"--num-classes {num_classes}: checkpoint {str(ckpt_path)!r} was trained with {recorded} classes"
            )
        model = build(arch, recorded)
        ema = ckpt.get("ema")
        state = ema["module"] if isinstance(ema, dict) and isinstance(ema.get("module"), dict) else ckpt["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise NasError(
                f"checkpoint {str(ckpt_path)!r} does not fit its own architecture: {str(e).strip().splitlines()[0]}"
            ) from None
        which = "EMA weights" if state is not ckpt["model"] else "weights"
        return Source(model.eval(), arch, recorded, f"{which} of {ckpt_path} (epoch {ckpt['epoch']})")
    arch = resolve_arch(spec)
    n = num_classes or recorded_num_classes(spec)[0] or 1000
    torch.manual_seed(seed)
    return Source(
        build(arch, n).eval(), arch, n, f"random (seed {seed}), BatchNorm statistics of random images", random=True
    )


def calibrate_random(model: nn.Module, image_size: int, batches: int = 2, batch_size: int = 8, seed: int = 0) -> None:
    """Estimate BatchNorm statistics on random normal images (see :mod:`nas.export.formats`)."""
    g = torch.Generator().manual_seed(seed)
    images = [(torch.randn(batch_size, 3, image_size, image_size, generator=g), None) for _ in range(batches)]
    with torch.no_grad():
        recalibrate_bn(model, images, "cpu", batches)
    model.eval()
