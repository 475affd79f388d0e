"""What a user asks of a training run (:class:`TrainOptions`, ``nas train``'s flags as data) and the
training config it resolves to (:func:`training_config`); :func:`nas.training.run.resolve` applies both.

Image sizes. Pixels beyond 4x a data set's own image size carry no information, only cost, so the
target size is the architecture's resolution clamped to ``4 * native`` (digits: 8 px -> 32 px;
CIFAR: 128 px; an image folder keeps the architecture's), or ``eval_image_size``. Progressive
learning keeps Table 6's sizes when they fit under the target (as on ImageNet, where V2-S trains up
to 300 px and evaluates at 384); otherwise the schedule is scaled so its last stage trains at the
target, keeping its start/end ratio (digits with ``s``: 14 -> 32 px). Fixed-size training
(``progressive="off"``) trains at the target unless ``image_size`` is given. Evaluation (every
epoch's and the final one) runs at the size the last epoch trains at, unless ``eval_image_size``
says otherwise: a network trained at 224 px is not judged at 32 px.

Default model size. On the small offline sets (digits, fake) the architecture is scaled by width
0.25 and depth 0.25 (V2 rounding) unless ``width_mult`` / ``depth_mult`` say otherwise: on 2 CPU
cores EfficientNetV2-S then trains 10 epochs on digits in about a minute (the full network takes
over a minute per epoch). Other data sets train the architecture as given.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.errors import NasError
from nas.training.config import TrainConfig
from nas.training.progressive import ProgressiveSchedule, get_schedule

SMALL_DATASETS = ("digits", "fake")
SMALL_DEFAULT_MULT = 0.25


@dataclass(frozen=True)
class TrainOptions:
    """What a user asks of a training run: ``nas train``'s flags as data, named as the flags are
    (``--image-size-start`` is ``image_size_start``). None is a default :func:`nas.training.run.resolve` works out."""

    arch: str
    dataset: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.2
    width_mult: float | None = None  # default SMALL_DEFAULT_MULT on SMALL_DATASETS, else 1
    depth_mult: float | None = None
    progressive: str = "s"  # a Table 6 schedule (s, m, l) or "off"
    stages: int | None = None
    image_size_start: int | None = None
    image_size_end: int | None = None
    randaugment_start: float | None = None
    randaugment_end: float | None = None
    mixup_start: float | None = None
    mixup_end: float | None = None
    dropout_start: float | None = None
    dropout_end: float | None = None
    image_size: int | None = None  # fixed-size training (progressive "off") from here to dropout
    randaugment: float | None = None
    mixup: float | None = None
    dropout: float | None = None
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "rmsprop"
    lr: float | None = None
    weight_decay: float = 1e-5
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    ema: float | None = None  # the weight EMA's decay
    bn_recalibration: int = 0
    eval_image_size: int | None = None
    final_bn_recalibration: int = 16
    out: str | None = None
    device: str = "auto"
    amp: str = "auto"
    compile: str = "auto"
    seed: int = 0
    workers: int = 0
    stop_after: int | None = None  # stop after this many more epochs (the run can be executed again)
    progress: bool = True


def _schedule(o: TrainOptions, target: int) -> ProgressiveSchedule | None:
    ranges = dict(
        size_start=o.image_size_start,
        size_end=o.image_size_end,
        randaugment_start=o.randaugment_start,
        randaugment_end=o.randaugment_end,
        mixup_start=o.mixup_start,
        mixup_end=o.mixup_end,
        dropout_start=o.dropout_start,
        dropout_end=o.dropout_end,
    )
    fixed = {"--image-size": o.image_size, "--randaugment": o.randaugment, "--mixup": o.mixup, "--dropout": o.dropout}
    if str(o.progressive).strip().lower() == "off":
        given = [f"--{k.replace('size_', 'image-size-').replace('_', '-')}" for k, v in ranges.items() if v is not None]
        if given or o.stages is not None:
            raise NasError(f"{', '.join(given) or '--stages'} set(s) a progressive schedule, but --progressive is off")
        return get_schedule("off")
    given = [k for k, v in fixed.items() if v is not None]
    if given:
        raise NasError(
            f"{', '.join(given)} set(s) fixed-size training; with --progressive {o.progressive} use "
            f"the -start/-end options, or --progressive off"
        )
    sched = get_schedule(o.progressive)  # validates the name first
    if o.image_size_end is None and o.image_size_start is None and sched.size_end > target:
        ranges["size_end"] = target  # get_schedule scales the start with it
    return get_schedule(o.progressive, stages=o.stages, **ranges)


def training_config(o: TrainOptions, target: int) -> TrainConfig:
    """The training config of ``o``; ``target`` is the size the schedule ends at unless told otherwise."""
    progressive = _schedule(o, target)
    image_size = None if progressive else (target if o.image_size is None else o.image_size)
    last = progressive.stage(progressive.stages - 1).image_size if progressive else image_size
    return TrainConfig(
        epochs=o.epochs,
        batch_size=o.batch_size,
        optimizer=o.optimizer,
        lr=o.lr,
        weight_decay=o.weight_decay,
        warmup_epochs=o.warmup_epochs,
        label_smoothing=o.label_smoothing,
        ema_decay=o.ema,
        image_size=image_size,
        randaugment=o.randaugment or 0.0,
        mixup=o.mixup or 0.0,
        dropout=o.dropout,
        progressive=progressive,
        device=o.device,
        amp=o.amp,
        seed=o.seed,
        eval_image_size=last if o.eval_image_size is None else o.eval_image_size,
        num_workers=o.workers,
        bn_recalibration=o.bn_recalibration,
        compile=o.compile,
    )
