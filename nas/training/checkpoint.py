"""Training checkpoints: tensors and plain data only, read with ``torch.load(weights_only=True)``.

A checkpoint carries the architecture, the training configuration and the data split it was written
with, so a resumed run cannot silently continue another one: :func:`load_checkpoint` refuses a
pickled, corrupt or foreign file, or one from another architecture, configuration or split, with one
line naming what differs. Files are written atomically (:func:`nas.core.files.atomic_write`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.core.files import atomic_write
from nas.data import Splits
from nas.errors import NasError
from nas.training.config import TrainConfig
from nas.training.ema import ModelEMA
from search_spaces import Architecture

CHECKPOINT_FORMAT = "nas.checkpoint/1"
# Config fields that only say where / how fast to run; a resumed run may change them.
RUNTIME_FIELDS = ("device", "amp", "channels_last", "num_workers", "compile")


def make_checkpoint(
    model: nn.Module,
    cfg: TrainConfig,
    splits: Splits,
    epoch: int,
    history: list[dict],
    optimizer,
    scheduler,
    ema: ModelEMA | None,
    scaler,
) -> dict[str, Any]:
    """The checkpoint dict: tensors and plain data only (loadable with ``weights_only=True``)."""
    arch = getattr(model, "arch", None)
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "arch": None if arch is None else arch.to_dict(),
        "config": cfg.to_dict(),
        "data": {
            "name": splits.name,
            "num_classes": int(splits.num_classes),
            "train_size": len(splits.train),
            "val_size": len(splits.val),
        },
        "history": [dict(h) for h in history],
    }


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write atomically (:func:`nas.core.files.atomic_write`): a crash mid-write leaves the previous
    checkpoint intact."""
    atomic_write(Path(path), lambda f: torch.save(checkpoint, f), binary=True)


_REQUIRED = {
    "format": str,
    "epoch": int,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "config": dict,
    "data": dict,
    "history": list,
}
# What a nas train run's checkpoint refusal suggests; other readers (nas export) pass their own.
TRAIN_ADVICE = "delete it or use another --out"


def load_checkpoint(
    path: str | os.PathLike,
    *,
    arch=None,
    config: TrainConfig | None = None,
    dataset: str | None = None,
    splits: Splits | None = None,
    advice: str = TRAIN_ADVICE,
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check that it belongs to this run.

    Any problem is a :class:`NasError` with one line: a missing or unreadable file, a file that is
    not a PyTorch checkpoint (corrupt or another format) or holds pickled Python objects (refused
    unread), both ending with ``advice``; not a nas checkpoint; or an architecture / training config
    / data set that differs from ``arch`` / ``config`` / ``dataset`` (when given; the runtime-only
    fields device, amp, channels_last, num_workers and compile may differ). ``splits`` checks the
    data set's name, class count and split sizes (another ``val_fraction`` is another split)."""
    path = Path(path)
    ckpt = _read(path, advice)
    where = str(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise NasError(f"{where!r} is not a nas checkpoint (no format {CHECKPOINT_FORMAT!r})")
    for key, typ in _REQUIRED.items():
        if not isinstance(ckpt.get(key), typ) or isinstance(ckpt.get(key), bool):
            raise NasError(f"checkpoint {where!r} is damaged: field {key!r} missing or not a {typ.__name__}")
    if arch is not None:
        saved = Architecture.from_dict(ckpt["arch"]) if isinstance(ckpt.get("arch"), dict) else None
        if saved != arch:
            was = saved.to_string() if saved is not None else "no architecture"
            raise NasError(
                f"checkpoint {where!r} is for architecture {was}, not {arch.to_string()}; "
                "use another --out (or delete the checkpoint) to train a different one"
            )
    if config is not None:
        diff = config_differences(ckpt["config"], config)
        if diff:
            raise NasError(
                f"checkpoint {where!r} was written with different training settings "
                f"({'; '.join(diff)}); rerun with the same settings or use another --out"
            )
    if dataset is not None and ckpt["data"].get("name") != dataset:
        raise NasError(
            f"checkpoint {where!r} was trained on {ckpt['data'].get('name')!r}, not {dataset!r}; use another --out"
        )
    if splits is not None:
        _check_splits(ckpt, where, splits)
    if not 0 <= ckpt["epoch"] <= int(ckpt["config"].get("epochs", 0)):
        raise NasError(f"checkpoint {where!r} is damaged: epoch {ckpt['epoch']} out of range")
    return ckpt


def _is_torch_container(path: Path) -> bool:
    """Whether the file has the form ``torch.save`` writes: a zip archive, or (before PyTorch 1.6) a
    binary pickle, which starts with the PROTO opcode 0x80. A text file never has either."""
    try:
        with open(path, "rb") as f:
            first = f.read(1)
        return first == b"\x80" or zipfile.is_zipfile(path)
    except OSError:
        return False


def _read(path: Path, advice: str) -> Any:
    """``torch.load(weights_only=True)``; every failure is one NasError line naming the file."""
    where = str(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NasError(f"checkpoint {where!r} does not exist") from None
    except IsADirectoryError:
        raise NasError(f"checkpoint {where!r} is a directory, not a file") from None
    except PermissionError:
        raise NasError(f"cannot read checkpoint {where!r}: permission denied") from None
    except Exception as e:  # unpickling, zip, EOF and decode errors of a foreign, damaged or pickled file
        container = _is_torch_container(path)
        # weights_only refuses any class or function (a GLOBAL opcode) before it is imported or run.
        if container and isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            raise NasError(
                f"refusing checkpoint {where!r}: it holds pickled Python objects, not only tensors and "
                f"plain data (nas loads checkpoints with weights_only=True); {advice}"
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = f": {first}" if container else ""
        raise NasError(f"{where!r} is not a PyTorch checkpoint (corrupt or another format{detail}); {advice}") from None


def _check_splits(ckpt: dict[str, Any], where: str, splits: Splits) -> None:
    want = {
        "name": splits.name,
        "num_classes": int(splits.num_classes),
        "train_size": len(splits.train),
        "val_size": len(splits.val),
    }
    got = {k: ckpt["data"].get(k) for k in want}
    if got != want:
        diff = "; ".join(f"{k}: {got[k]!r} -> {want[k]!r}" for k in want if got[k] != want[k])
        raise NasError(f"checkpoint {where!r} was trained on other data ({diff}); use another --out")


def config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``field: saved -> now`` for every training-defining field that differs."""
    now = config.to_dict()
    out = []
    for key in now:
        if key in RUNTIME_FIELDS:
            continue
        if saved.get(key, "<missing>") != now[key]:
            out.append(f"{key}: {saved.get(key, '<missing>')!r} -> {now[key]!r}")
    return out


def restore(state, model, optimizer, scheduler, ema, scaler, cfg) -> tuple[int, list[dict]]:
    """Load a checkpoint into the run's objects: (epochs done, their history)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if not isinstance(state.get("ema"), dict):
                raise NasError("the checkpoint has no EMA weights but EMA is on")
            ema.load_state_dict(state["ema"])
        if scaler.is_enabled() and isinstance(state.get("scaler"), dict):
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NasError(f"checkpoint does not fit this model: {first}") from None
    epoch = int(state["epoch"])
    if not 0 <= epoch <= cfg.epochs:
        raise NasError(f"checkpoint epoch {epoch} is outside 0..{cfg.epochs}")
    return epoch, [dict(h) for h in state["history"]][:epoch]
