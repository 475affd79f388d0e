"""The training loop shared by ``nas train`` and the search's proxy training.

One epoch: take the progressive-learning stage's settings (EfficientNetV2 section 4.2, Algorithm 1:
image size, RandAugment magnitude, mixup alpha, dropout), train one pass over the training split,
evaluate top-1 on the validation split, optionally checkpoint, then call ``on_epoch_end``.

Optimisers follow the papers' recipes where they name one: RMSProp with decay 0.9, momentum 0.9,
epsilon 1e-3 (EfficientNet V1 section 5.2, V2 section 5.1), linear warmup then cosine decay, label
smoothing 0.1, optional weight EMA. Weight decay is not applied to biases and BatchNorm parameters
(as in the authors' code). Small-data defaults (learning rates per optimiser, batch 64) are ours.

Reproducibility: every epoch re-seeds torch's generator from ``(seed, epoch)`` inside
``torch.random.fork_rng`` (RandAugment, mixup, dropout and stochastic depth draw from it) and the
loader shuffles with its own generator seeded the same way. So on CPU the same seed gives the same
result, and a run resumed from a checkpoint gives exactly the result of an uninterrupted one.

Checkpoints hold only tensors and plain data (dicts, lists, str, numbers): they are read with
``torch.load(weights_only=True)`` always, which refuses pickled Python objects.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nas.data import Splits, check_mixup, check_randaugment, make_loader, make_mixup
from nas.errors import NasError
from nas.progressive import ProgressiveSchedule, StageSettings

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
DEVICES = ("auto", "cpu", "cuda")
SWITCHES = ("auto", "on", "off")
# Per optimiser, the learning rate used when ``lr`` is None: tuned for batch 64 on small data
# (digits, CIFAR); scale linearly with the batch size for large batches.
DEFAULT_LR = {"sgd": 0.1, "rmsprop": 0.004, "adamw": 0.003}
CHECKPOINT_FORMAT = "nas.checkpoint/1"
# Config fields that only say where / how fast to run; a resumed run may change them.
RUNTIME_FIELDS = ("device", "amp", "channels_last", "num_workers")


class TrainingDiverged(NasError):
    """The loss became NaN or infinite (usually a learning rate too high for the model)."""


def _num(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NasError(f"{name} must be a finite number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise NasError(f"{name} must be in {rng}, got {value!r}")
    return float(value)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise NasError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise NasError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


@dataclass
class TrainConfig:
    """Everything that defines a training run (validated on creation and by :meth:`validate`)."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "rmsprop"
    lr: float | None = None                 # None: DEFAULT_LR[optimizer]
    weight_decay: float = 1e-5              # V2 section 5.1
    momentum: float = 0.9
    warmup_epochs: float = 0.0              # linear warmup, in (fractional) epochs
    cosine: bool = True                     # cosine decay to 0 after warmup; else constant
    label_smoothing: float = 0.1
    ema_decay: float | None = None          # None: no weight EMA
    image_size: int | None = None           # fixed-size training; None: the architecture's resolution
    randaugment: float = 0.0                # fixed-size training: RandAugment magnitude (0 = off)
    mixup: float = 0.0                      # fixed-size training: mixup alpha (0 = off)
    dropout: float | None = None            # fixed-size training; None: the architecture's
    progressive: ProgressiveSchedule | None = None  # overrides the four fixed-size values per stage
    device: str = "auto"                    # auto: CUDA when available
    amp: str = "auto"                       # auto: on for CUDA (bf16 if supported, else fp16)
    channels_last: str = "auto"             # auto: on for CUDA
    seed: int = 0
    eval_image_size: int | None = None      # None: each epoch's training image size
    num_workers: int = 0
    # Re-estimate BatchNorm statistics on this many training batches before each evaluation
    # (0 = off). Running averages lag far behind weights that move fast in a short proxy run, which
    # puts early-epoch accuracy at chance and makes pruning decisions noise.
    bn_recalibration: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainConfig":
        _int("epochs", self.epochs, 1, 100_000)
        _int("batch size", self.batch_size, 1, 1 << 20)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr is not None:
            _num("learning rate", self.lr, 0, 100, lo_open=True)
        _num("weight decay", self.weight_decay, 0, 10)
        _num("momentum", self.momentum, 0, 1, hi_open=True)
        _num("warmup epochs", self.warmup_epochs, 0, self.epochs, hi_open=self.warmup_epochs > 0)
        if not isinstance(self.cosine, bool):
            raise NasError(f"cosine must be true or false, got {self.cosine!r}")
        _num("label smoothing", self.label_smoothing, 0, 1, hi_open=True)
        if self.ema_decay is not None:
            _num("EMA decay", self.ema_decay, 0, 1, lo_open=True, hi_open=True)
        if self.image_size is not None:
            _int("image size", self.image_size, 8, 2048)
        check_randaugment(self.randaugment)
        check_mixup(self.mixup)
        if self.dropout is not None:
            _num("dropout", self.dropout, 0, 1, hi_open=True)
        if self.progressive is not None and not isinstance(self.progressive, ProgressiveSchedule):
            raise NasError(f"progressive must be a ProgressiveSchedule or None, got {type(self.progressive).__name__}")
        _choice("device", self.device, DEVICES)
        _choice("amp", self.amp, SWITCHES)
        _choice("channels_last", self.channels_last, SWITCHES)
        _int("seed", self.seed, 0, 2**31 - 1)
        if self.eval_image_size is not None:
            _int("eval image size", self.eval_image_size, 8, 2048)
        _int("num_workers", self.num_workers, 0, 256)
        _int("BatchNorm recalibration batches", self.bn_recalibration, 0, 100_000)
        return self

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["progressive"] = None if self.progressive is None else self.progressive.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Any) -> "TrainConfig":
        if not isinstance(data, dict):
            raise NasError(f"a training config must be an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise NasError(f"unknown training config field(s) {', '.join(unknown)}")
        data = dict(data)
        if data.get("progressive") is not None:
            data["progressive"] = ProgressiveSchedule.from_dict(data["progressive"])
        return cls(**data)


@dataclass
class TrainResult:
    """What :func:`fit` returns. Accuracies are top-1 fractions in [0, 1]."""

    val_accuracy: float           # after the last epoch
    best_val_accuracy: float
    history: list[dict[str, Any]]  # one metrics dict per epoch, resumed epochs included
    wall_time_s: float            # this call only
    epochs_run: int               # epochs trained by this call
    start_epoch: int              # epochs already done when this call began (resume)
    mean_step_time_s: float       # wall time per optimiser step in this call (0 if none ran)
    eval_model: nn.Module = field(repr=False)  # the EMA model when EMA is on, else the model


# ------------------------------------------------------------------------------------------------
# Devices, precision


def resolve_device(name: str) -> torch.device:
    _choice("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise NasError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision. auto: on for CUDA only; bf16 where the device
    supports it, else fp16 (with a GradScaler)."""
    _choice("amp", mode, SWITCHES)
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16  # CPU autocast supports bf16 only


# ------------------------------------------------------------------------------------------------
# EMA, optimiser, schedule


class ModelEMA:
    """Exponential moving average of weights and buffers (V1 section 5.2: decay 0.9999).

    The first update copies the model; later ones do ``ema = decay * ema + (1 - decay) * model``
    for floating tensors and copy the others (BatchNorm's step counters). With few steps per run
    use a smaller decay (e.g. 0.99), or the average is mostly the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state, state = self.module.state_dict(), model.state_dict()
        for k, v in ema_state.items():
            src = state[k].detach()
            if self.updates == 0 or not v.is_floating_point():
                v.copy_(src)
            else:
                v.lerp_(src.to(v.dtype), 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    lr = cfg.learning_rate
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1e-3, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))


def lr_factor(step: int, total_steps: int, warmup_steps: int, cosine: bool) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay towards 0 (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


def num_train_batches(n: int, batch_size: int) -> int:
    """Batches per training epoch, matching :func:`nas.data.make_loader` (drops a last partial batch)."""
    return n // batch_size if n > batch_size else 1


# ------------------------------------------------------------------------------------------------
# Per-epoch settings


def epoch_settings(cfg: TrainConfig, epoch: int, base_size: int, base_dropout: float) -> tuple[int, StageSettings]:
    """(stage index, settings) of a 0-based epoch: the progressive stage, or the fixed values."""
    if cfg.progressive is not None:
        i = cfg.progressive.stage_index(epoch, cfg.epochs)
        return i, cfg.progressive.stage(i)
    return 0, StageSettings(image_size=cfg.image_size or base_size, randaugment=check_randaugment(cfg.randaugment),
                            mixup=float(cfg.mixup), dropout=base_dropout if cfg.dropout is None else float(cfg.dropout))


def _set_dropout(model: nn.Module, p: float) -> None:
    if hasattr(model, "set_dropout"):
        model.set_dropout(p)
    elif isinstance(getattr(model, "dropout", None), nn.Dropout):
        model.dropout.p = float(p)
    else:
        raise NasError(f"{type(model).__name__} has no set_dropout() or .dropout layer; cannot schedule dropout")


def _current_dropout(model: nn.Module) -> float:
    d = getattr(model, "dropout", None)
    return float(d.p) if isinstance(d, nn.Dropout) else 0.0


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**63 - 1)


# ------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, device: torch.device | str, batches: int, *,
                   amp: torch.dtype | None = None, channels_last: bool = False) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average over
    ``batches`` training batches (the BN recalibration used to evaluate weight-shared or briefly
    trained candidates in NAS). Restores each layer's momentum and the train/eval mode."""
    device = torch.device(device)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for i, (images, _) in enumerate(loader):
            if i >= batches:
                break
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                model(images)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


def evaluate(model: nn.Module, loader, device: torch.device | str, *, amp: torch.dtype | None = None,
             channels_last: bool = False) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` over ``loader``; restores the train/eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(images)
            correct += int((logits.argmax(1) == labels).sum())
            total += labels.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise NasError("cannot evaluate on an empty data set")
    return correct / total


# ------------------------------------------------------------------------------------------------
# Training


def fit(model: nn.Module, splits: Splits, cfg: TrainConfig, *,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        state: dict[str, Any] | None = None, checkpoint_path: str | os.PathLike | None = None,
        progress: bool = True) -> TrainResult:
    """Train ``model`` on ``splits.train`` for ``cfg.epochs`` epochs, evaluating on ``splits.val``.

    * ``on_epoch_end(epoch, metrics)`` is called after every epoch (``epoch`` 1-based; metrics keys:
      epoch, stage, image_size, dropout, randaugment, mixup, train_loss, val_accuracy, lr,
      epoch_time_s). Whatever it raises (e.g. ``optuna.TrialPruned``) propagates.
    * ``state``: a checkpoint from :func:`load_checkpoint` to resume from (model, optimiser,
      schedule, EMA and history are restored; training continues at its epoch).
    * ``checkpoint_path``: written (atomically) after every epoch, before ``on_epoch_end``.
    * When the loss becomes NaN or infinite the epoch stops, ``on_epoch_end`` still gets its
      metrics (``train_loss`` non-finite), then :class:`TrainingDiverged` (a NasError) is raised;
      no checkpoint is written for that epoch.
    """
    if not isinstance(cfg, TrainConfig):
        raise NasError(f"fit() needs a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    if not isinstance(splits, Splits):
        raise NasError(f"fit() needs Splits from nas.data.load_dataset, got {type(splits).__name__}")
    arch = getattr(model, "arch", None)
    base_size = cfg.image_size or getattr(arch, "resolution", None)
    if cfg.progressive is None and base_size is None:
        raise NasError("give TrainConfig.image_size: the model carries no architecture resolution")
    base_dropout = getattr(arch, "dropout", None)
    base_dropout = _current_dropout(model) if base_dropout is None else base_dropout

    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = num_train_batches(len(splits.train), cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, cfg.cosine))
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    start_epoch, history = 0, []
    if state is not None:
        start_epoch, history = _restore(state, model, optimizer, scheduler, ema, scaler, cfg)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_model = ema.module if ema is not None else model
    t_start = time.perf_counter()
    step_time, steps = 0.0, 0
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        stage, s = epoch_settings(cfg, epoch, base_size, base_dropout)
        seed = _epoch_seed(cfg.seed, epoch)
        if cfg.progressive is not None or cfg.dropout is not None or hasattr(model, "set_dropout"):
            _set_dropout(model, s.dropout)  # a model without dropout is fine unless one is asked for
        loader = make_loader(splits.train, image_size=s.image_size, batch_size=cfg.batch_size, train=True,
                             randaugment_magnitude=s.randaugment, seed=seed, num_workers=cfg.num_workers)
        mix = make_mixup(s.mixup, splits.num_classes)
        devices = [device.index or 0] if device.type == "cuda" else []
        loss_sum, seen, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
        diverged: tuple[float, float] | None = None
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model.train()
            bar = _progress(loader, progress, f"epoch {epoch + 1}/{cfg.epochs} stage {stage} {s.image_size}px")
            for images, labels in bar:
                t_step = time.perf_counter()
                if mix is not None:
                    images, labels = mix(images, labels)
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    loss = loss_fn(model(images), labels)
                if not torch.isfinite(loss):
                    diverged = (float(loss.detach()), optimizer.param_groups[0]["lr"])
                    break
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                n = images.shape[0]
                loss_sum += float(loss.detach()) * n
                seen += n
                step_time += time.perf_counter() - t_step
                steps += 1
                if progress:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", refresh=False)
        val_size = cfg.eval_image_size or s.image_size
        if cfg.bn_recalibration and diverged is None:
            calib = make_loader(splits.train, image_size=val_size, batch_size=cfg.batch_size, train=True,
                                seed=seed, num_workers=cfg.num_workers)
            recalibrate_bn(eval_model, calib, device, cfg.bn_recalibration, amp=amp, channels_last=channels_last)
        val_loader = make_loader(splits.val, image_size=val_size, batch_size=max(cfg.batch_size, 256),
                                 train=False, num_workers=cfg.num_workers)
        acc = evaluate(eval_model, val_loader, device, amp=amp, channels_last=channels_last)
        metrics = {
            "epoch": epoch + 1, "stage": stage, "image_size": s.image_size, "dropout": s.dropout,
            "randaugment": s.randaugment, "mixup": s.mixup, "train_loss": loss_sum / max(seen, 1),
            "val_accuracy": acc, "lr": lr, "epoch_time_s": time.perf_counter() - t_epoch,
        }
        if diverged is not None:
            # Report the epoch (train_loss NaN/inf) so a caller's hook can react, e.g. the search
            # failing the trial, but never checkpoint the broken weights over good ones.
            metrics["train_loss"] = diverged[0]
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, dict(metrics))
            raise TrainingDiverged(f"training diverged: loss is {diverged[0]} at epoch {epoch + 1} "
                                   f"(learning rate {diverged[1]:.3g}); lower the learning rate")
        history.append(metrics)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, make_checkpoint(
                model, cfg, splits, epoch + 1, history, optimizer, scheduler, ema, scaler))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, dict(metrics))

    accs = [h["val_accuracy"] for h in history]
    return TrainResult(
        val_accuracy=accs[-1] if accs else float("nan"),
        best_val_accuracy=max(accs) if accs else float("nan"),
        history=history, wall_time_s=time.perf_counter() - t_start,
        epochs_run=cfg.epochs - start_epoch, start_epoch=start_epoch,
        mean_step_time_s=step_time / steps if steps else 0.0, eval_model=eval_model)


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI), so files stay readable.
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)


# ------------------------------------------------------------------------------------------------
# Checkpoints


def make_checkpoint(model: nn.Module, cfg: TrainConfig, splits: Splits, epoch: int, history: list[dict],
                    optimizer, scheduler, ema: ModelEMA | None, scaler) -> dict[str, Any]:
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
        "data": {"name": splits.name, "num_classes": int(splits.num_classes), "train_size": len(splits.train),
                 "val_size": len(splits.val)},
        "history": [dict(h) for h in history],
    }


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write atomically (:func:`nas.results.atomic_write`): a crash mid-write leaves the previous
    checkpoint intact."""
    from nas.results import atomic_write

    atomic_write(Path(path), lambda f: torch.save(checkpoint, f), binary=True)


_REQUIRED = {"format": str, "epoch": int, "model": dict, "optimizer": dict, "scheduler": dict,
             "config": dict, "data": dict, "history": list}


def load_checkpoint(path: str | os.PathLike, *, arch=None, config: TrainConfig | None = None,
                    dataset: str | None = None, splits: Splits | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check that it belongs to this run.

    Any problem is a :class:`NasError` with one line: unreadable or corrupt file, a file holding
    pickled Python objects (refused unread), not a nas checkpoint, or an architecture / training
    config / data set that differs from ``arch`` / ``config`` / ``dataset`` (when given; the
    runtime-only fields device, amp, channels_last and num_workers may differ). ``splits`` checks
    the data set's name, class count and split sizes (another ``val_fraction`` is another split)."""
    path = Path(path)
    where = str(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NasError(f"checkpoint {where!r} does not exist") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise NasError(f"refusing checkpoint {where!r}: it holds pickled Python objects, not only tensors "
                           "and plain data (nas loads checkpoints with weights_only=True); delete it or use "
                           "another --out") from None
        raise NasError(f"checkpoint {where!r} is corrupt or not a PyTorch file ({first})") from None
    except Exception as e:  # zip / EOF / decode errors from a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NasError(f"checkpoint {where!r} is corrupt or not a PyTorch file ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise NasError(f"{where!r} is not a nas checkpoint (no format {CHECKPOINT_FORMAT!r})")
    for key, typ in _REQUIRED.items():
        if not isinstance(ckpt.get(key), typ) or isinstance(ckpt.get(key), bool):
            raise NasError(f"checkpoint {where!r} is damaged: field {key!r} missing or not a {typ.__name__}")
    if arch is not None:
        from search_spaces import Architecture

        saved = Architecture.from_dict(ckpt["arch"]) if isinstance(ckpt.get("arch"), dict) else None
        if saved != arch:
            was = saved.to_string() if saved is not None else "no architecture"
            raise NasError(f"checkpoint {where!r} is for architecture {was}, not {arch.to_string()}; "
                           "use another --out (or delete the checkpoint) to train a different one")
    if config is not None:
        diff = config_differences(ckpt["config"], config)
        if diff:
            raise NasError(f"checkpoint {where!r} was written with different training settings "
                           f"({'; '.join(diff)}); rerun with the same settings or use another --out")
    if dataset is not None and ckpt["data"].get("name") != dataset:
        raise NasError(f"checkpoint {where!r} was trained on {ckpt['data'].get('name')!r}, not {dataset!r}; "
                       "use another --out")
    if splits is not None:
        want = {"name": splits.name, "num_classes": int(splits.num_classes), "train_size": len(splits.train),
                "val_size": len(splits.val)}
        got = {k: ckpt["data"].get(k) for k in want}
        if got != want:
            diff = "; ".join(f"{k}: {got[k]!r} -> {want[k]!r}" for k in want if got[k] != want[k])
            raise NasError(f"checkpoint {where!r} was trained on other data ({diff}); use another --out")
    if not 0 <= ckpt["epoch"] <= int(ckpt["config"].get("epochs", 0)):
        raise NasError(f"checkpoint {where!r} is damaged: epoch {ckpt['epoch']} out of range")
    return ckpt


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


def _restore(state, model, optimizer, scheduler, ema, scaler, cfg) -> tuple[int, list[dict]]:
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
