"""What defines a training run (:class:`TrainConfig`, validated on creation, round-tripped through
JSON in every checkpoint), what :func:`nas.training.loop.fit` returns (:class:`TrainResult`), and the
error of a run whose loss became NaN or infinite (:class:`TrainingDiverged`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nas.core.device import SWITCHES, check_device
from nas.data import check_mixup, check_randaugment
from nas.errors import NasError, NasRuntimeError, check_choice, check_int, check_number
from nas.training.progressive import ProgressiveSchedule

OPTIMIZERS = ("sgd", "rmsprop", "adamw")


# Per optimiser, the learning rate used when ``lr`` is None: tuned for batch 64 on small data
# (digits, CIFAR); scale linearly with the batch size for large batches.
DEFAULT_LR = {"sgd": 0.1, "rmsprop": 0.004, "adamw": 0.003}


class TrainingDiverged(NasRuntimeError):
    """The loss became NaN or infinite (usually a learning rate too high for the model)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated on creation and by :meth:`validate`)."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "rmsprop"
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    weight_decay: float = 1e-5  # V2 section 5.1
    momentum: float = 0.9
    warmup_epochs: float = 0.0  # linear warmup, in (fractional) epochs
    cosine: bool = True  # cosine decay to 0 after warmup; else constant
    label_smoothing: float = 0.1
    ema_decay: float | None = None  # None: no weight EMA
    image_size: int | None = None  # fixed-size training; None: the architecture's resolution
    randaugment: float = 0.0  # fixed-size training: RandAugment magnitude (0 = off)
    mixup: float = 0.0  # fixed-size training: mixup alpha (0 = off)
    dropout: float | None = None  # fixed-size training; None: the architecture's
    progressive: ProgressiveSchedule | None = None  # overrides the four fixed-size values per stage
    device: str = "auto"  # auto: CUDA when available
    amp: str = "auto"  # auto: on for CUDA (bf16 if supported, else fp16)
    channels_last: str = "auto"  # auto: on everywhere (nas.core.device)
    seed: int = 0
    eval_image_size: int | None = None  # None: each epoch's training image size
    num_workers: int = 0  # loader processes for sets not held in memory (imagefolder)
    compile: str = "auto"  # torch.compile the step: auto (CUDA, long runs), on, off (nas.training.step)
    # Re-estimate BatchNorm statistics on this many training batches before each evaluation
    # (0 = off). Running averages lag far behind weights that move fast in a short proxy run, which
    # puts early-epoch accuracy at chance and makes pruning decisions noise.
    bn_recalibration: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        check_int("epochs", self.epochs, 1, 100_000)
        check_int("batch size", self.batch_size, 1, 65536)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr is not None:
            check_number("learning rate", self.lr, 0, 100, lo_open=True)
        check_number("weight decay", self.weight_decay, 0, 10)
        check_number("momentum", self.momentum, 0, 1, hi_open=True)
        check_number("warmup epochs", self.warmup_epochs, 0, self.epochs, hi_open=self.warmup_epochs > 0)
        if not isinstance(self.cosine, bool):
            raise NasError(f"cosine must be true or false, got {self.cosine!r}")
        check_number("label smoothing", self.label_smoothing, 0, 1, hi_open=True)
        if self.ema_decay is not None:
            check_number("EMA decay", self.ema_decay, 0, 1, lo_open=True, hi_open=True)
        if self.image_size is not None:
            check_int("image size", self.image_size, 8, 2048)
        check_randaugment(self.randaugment)
        check_mixup(self.mixup)
        if self.dropout is not None:
            check_number("dropout", self.dropout, 0, 1, hi_open=True)
        if self.progressive is not None and not isinstance(self.progressive, ProgressiveSchedule):
            raise NasError(f"progressive must be a ProgressiveSchedule or None, got {type(self.progressive).__name__}")
        check_device(self.device)
        check_choice("amp", self.amp, SWITCHES)
        check_choice("channels_last", self.channels_last, SWITCHES)
        check_int("seed", self.seed, 0, 2**31 - 1)
        if self.eval_image_size is not None:
            check_int("eval image size", self.eval_image_size, 8, 2048)
        check_int("num_workers", self.num_workers, 0, 256)
        check_choice("compile", self.compile, SWITCHES)
        check_int("BatchNorm recalibration batches", self.bn_recalibration, 0, 100_000)
        return self

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["progressive"] = None if self.progressive is None else self.progressive.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
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

    val_accuracy: float  # after the last epoch
    best_val_accuracy: float
    history: list[dict[str, Any]]  # one metrics dict per epoch, resumed epochs included
    wall_time_s: float  # this call only
    epochs_run: int  # epochs trained by this call
    start_epoch: int  # epochs already done when this call began (resume)
    mean_step_time_s: float  # wall time per optimiser step in this call (0 if none ran)
    eval_model: nn.Module = field(repr=False)  # the EMA model when EMA is on, else the model
    compiled: bool = False  # whether the training step ran compiled (TrainConfig.compile)
