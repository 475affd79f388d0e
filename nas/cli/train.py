"""``nas train``: train one architecture, with EfficientNetV2 progressive learning by default.

Writes into ``--out`` (default ``runs/train-<arch>-<hash>``, the hash naming the architecture and
data set): ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (after every epoch) and
``final.json`` (the final evaluation). Rerunning the same command continues from the last completed
epoch; a checkpoint written with other settings is refused, never overwritten.

Image sizes. Pixels beyond 4x a data set's own image size carry no information, only cost, so the
target size is the architecture's resolution clamped to ``4 * native`` (digits: 8 px -> 32 px;
CIFAR: 128 px; an image folder keeps the architecture's), or ``--eval-image-size``. Progressive
learning keeps Table 6's sizes when they fit under the target (as on ImageNet, where V2-S trains up
to 300 px and evaluates at 384); otherwise the schedule is scaled so its last stage trains at the
target, keeping its start/end ratio (digits with ``s``: 14 -> 32 px). Fixed-size training
(``--progressive off``) trains at the target unless ``--image-size`` is given. Evaluation (every
epoch's and the final one) runs at the size the last epoch trains at, unless ``--eval-image-size``
says otherwise: a network trained at 224 px is not judged at 32 px.

Final evaluation. BatchNorm statistics are re-estimated on ``--final-bn-recalibration`` (16)
training batches at the evaluation size first (:func:`nas.training.evaluation.recalibrate_bn`); ``final.json``
keeps the accuracy with the running statistics too. On digits (width and depth 0.25) the running
statistics of a 1-epoch EfficientNet-B0 score 10.0% (chance) and the re-estimated ones 80.5%; after
3 to 20 epochs the two agree within 2% (a few of 359 images), for a fraction of a second (README).

Default model size. On the small offline sets (digits, fake) the architecture is scaled by width
0.25 and depth 0.25 (V2 rounding) unless ``--width-mult`` / ``--depth-mult`` say otherwise: on 2 CPU
cores EfficientNetV2-S then trains 10 epochs on digits in about a minute (the full network takes
over a minute per epoch). Other data sets train the architecture as given.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from nas.core.files import atomic_write_text
from nas.errors import NasError

SMALL_DATASETS = ("digits", "fake")
SMALL_DEFAULT_MULT = 0.25
CSV_COLUMNS = [
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


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an architecture (EfficientNetV2 progressive learning by default)",
        description="Train ARCH (a preset name, architecture string, JSON file or run directory) on a data "
        "set, with EfficientNetV2 progressive learning (paper section 4.2, Table 6). Rerun the "
        "same command to resume after an interruption.",
    )
    p.add_argument("arch", metavar="ARCH")
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset", default="digits", help="digits (default, offline), fake, cifar10, cifar100 or imagefolder:PATH"
    )
    d.add_argument("--data-dir", default=None, help="where cifar10/cifar100 live (default ~/.cache/nas/data)")
    d.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of the training data (0.2)")
    m = p.add_argument_group("model")
    m.add_argument(
        "--width-mult",
        type=float,
        default=None,
        help=f"train a copy scaled in width (default {SMALL_DEFAULT_MULT} on digits/fake, else 1)",
    )
    m.add_argument(
        "--depth-mult",
        type=float,
        default=None,
        help=f"train a copy scaled in depth (default {SMALL_DEFAULT_MULT} on digits/fake, else 1)",
    )
    s = p.add_argument_group("progressive learning (EfficientNetV2 Table 6)")
    s.add_argument("--progressive", default="s", help="schedule: s (default), m, l or off")
    s.add_argument("--stages", type=int, default=None, help="number of stages M (default 4)")
    for name, typ, what in (
        ("image-size", int, "image size in px"),
        ("randaugment", float, "RandAugment magnitude"),
        ("mixup", float, "mixup alpha"),
        ("dropout", float, "dropout"),
    ):
        s.add_argument(f"--{name}-start", type=typ, default=None, help=f"first stage's {what}")
        s.add_argument(f"--{name}-end", type=typ, default=None, help=f"last stage's {what}")
    f = p.add_argument_group("fixed-size training (--progressive off)")
    f.add_argument("--image-size", type=int, default=None, help="training image size (default: the eval size)")
    f.add_argument("--randaugment", type=float, default=None, help="RandAugment magnitude (default 0 = off)")
    f.add_argument("--mixup", type=float, default=None, help="mixup alpha (default 0 = off)")
    f.add_argument("--dropout", type=float, default=None, help="dropout (default: the architecture's)")
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--epochs",
        type=int,
        default=20,
        help="default 20: on digits progressive s reaches 90-95%% (71-84%% at 10; seeds 0-2)",
    )
    o.add_argument("--batch-size", type=int, default=64)
    o.add_argument("--optimizer", default="rmsprop", help="rmsprop (default, as the papers), sgd or adamw")
    o.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: rmsprop 0.004, sgd 0.1, adamw 0.003)"
    )
    o.add_argument("--weight-decay", type=float, default=1e-5)
    o.add_argument("--warmup-epochs", type=float, default=0.0)
    o.add_argument("--label-smoothing", type=float, default=0.1)
    o.add_argument("--ema", type=float, default=None, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.99)")
    o.add_argument(
        "--bn-recalibration",
        type=int,
        default=0,
        metavar="BATCHES",
        help="re-estimate BatchNorm statistics on this many training batches at the evaluation "
        "size before each evaluation (0 = off)",
    )
    o.add_argument(
        "--eval-image-size",
        type=int,
        default=None,
        help="evaluation size (default: the last epoch's training size); also the schedule's target "
        "size (default: the architecture's resolution, at most 4x the data's)",
    )
    o.add_argument(
        "--final-bn-recalibration",
        type=int,
        default=16,
        metavar="BATCHES",
        help="re-estimate BatchNorm statistics on this many training batches before the final "
        "evaluation (default 16; 0 = off)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--out", default=None, help="run directory (default runs/train-<arch>-<hash>)")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--amp", default="auto", help="mixed precision: auto (CUDA only), on or off")
    r.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="auto",
        metavar="auto|on|off",
        help="torch.compile the training step: auto (default: on CUDA when each image size trains "
        "2,000 steps or more), on (also --compile alone) or off",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--workers", type=int, default=0, help="data loader worker processes (0)")
    r.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after N more epochs (rerun the same command to continue)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------


def _schedule(args, target: int):
    from nas.training.progressive import get_schedule

    ranges = dict(
        size_start=args.image_size_start,
        size_end=args.image_size_end,
        randaugment_start=args.randaugment_start,
        randaugment_end=args.randaugment_end,
        mixup_start=args.mixup_start,
        mixup_end=args.mixup_end,
        dropout_start=args.dropout_start,
        dropout_end=args.dropout_end,
    )
    fixed = {
        "--image-size": args.image_size,
        "--randaugment": args.randaugment,
        "--mixup": args.mixup,
        "--dropout": args.dropout,
    }
    if str(args.progressive).strip().lower() == "off":
        given = [f"--{k.replace('size_', 'image-size-').replace('_', '-')}" for k, v in ranges.items() if v is not None]
        if given or args.stages is not None:
            raise NasError(f"{', '.join(given) or '--stages'} set(s) a progressive schedule, but --progressive is off")
        return get_schedule("off")
    given = [k for k, v in fixed.items() if v is not None]
    if given:
        raise NasError(
            f"{', '.join(given)} set(s) fixed-size training; with --progressive {args.progressive} use "
            f"the -start/-end options, or --progressive off"
        )
    sched = get_schedule(args.progressive)  # validates the name first
    if args.image_size_end is None and args.image_size_start is None and sched.size_end > target:
        ranges["size_end"] = target  # get_schedule scales the start with it
    return get_schedule(args.progressive, stages=args.stages, **ranges)


def _config(args, target: int):
    """The training config; ``target`` is the size the schedule ends at unless told otherwise."""
    from nas.training.config import TrainConfig

    progressive = _schedule(args, target)
    image_size = None if progressive else (target if args.image_size is None else args.image_size)
    last = progressive.stage(progressive.stages - 1).image_size if progressive else image_size
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        ema_decay=args.ema,
        image_size=image_size,
        randaugment=args.randaugment or 0.0,
        mixup=args.mixup or 0.0,
        dropout=args.dropout,
        progressive=progressive,
        device=args.device,
        amp=args.amp,
        seed=args.seed,
        eval_image_size=last if args.eval_image_size is None else args.eval_image_size,
        num_workers=args.workers,
        bn_recalibration=args.bn_recalibration,
        compile=args.compile,
    )


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    """Rewritten whole (atomically) after every epoch from the checkpoint's history, so a kill at
    any moment never leaves a duplicated or missing row."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


class _StopRequested(Exception):
    """--stop-after reached (the checkpoint of that epoch is already written)."""


def _epoch_line(m: dict, epochs: int) -> str:
    return (
        f"epoch {m['epoch']:>{len(str(epochs))}}/{epochs}  stage {m['stage']}  {m['image_size']:>3} px  "
        f"RA {m['randaugment']:>2}  mixup {m['mixup']:.3g}  dropout {m['dropout']:.3g}  "
        f"loss {m['train_loss']:.4f}  val {100 * m['val_accuracy']:.2f}%  lr {m['lr']:.3g}  "
        f"{m['epoch_time_s']:.1f}s  {m.get('images_per_s', 0):.0f} img/s"
    )


def run(args) -> int:
    import torch

    from nas.core.device import Runtime
    from nas.core.resolve import resolve_arch
    from nas.data import load_dataset, make_loader, probe
    from nas.study.rundir import RunDir
    from nas.training.checkpoint import load_checkpoint
    from nas.training.evaluation import evaluate, recalibrate_bn
    from nas.training.loop import fit
    from nas.training.step import resolve_compile
    from search_spaces import build, preset_names, scale

    if args.stop_after is not None and args.stop_after < 1:
        raise NasError(f"--stop-after must be a positive integer, got {args.stop_after}")
    if args.final_bn_recalibration < 0:
        raise NasError(f"--final-bn-recalibration must be 0 or more batches, got {args.final_bn_recalibration}")
    base = resolve_arch(args.arch)
    if args.out is not None:
        RunDir(args.out).check()  # not a file, not under a file, writable: before loading anything
    splits = probe(load_dataset(args.dataset, args.data_dir, seed=args.seed, val_fraction=args.val_fraction))
    small = splits.name in SMALL_DATASETS
    width = args.width_mult if args.width_mult is not None else (SMALL_DEFAULT_MULT if small else 1.0)
    depth = args.depth_mult if args.depth_mult is not None else (SMALL_DEFAULT_MULT if small else 1.0)
    arch = scale(base, width=width, depth=depth, rounding="v2") if (width, depth) != (1.0, 1.0) else base
    cfg = _config(
        args, min(arch.resolution, 4 * splits.native_size) if args.eval_image_size is None else args.eval_image_size
    )
    eval_size = cfg.eval_image_size
    # The device (and a compile it cannot run) is refused before anything is written.
    runtime = Runtime.resolve(cfg.device, cfg.amp, cfg.channels_last)
    resolve_compile(cfg.compile, runtime, 0)

    key = hashlib.sha1(f"{arch.to_string()}|{splits.name}".encode()).hexdigest()[:8]
    label = args.arch.strip().lower() if args.arch.strip().lower() in preset_names() else "arch"
    out = Path(args.out or f"runs/train-{label}-{key}")
    RunDir(out).check()
    ckpt_path, csv_path, final_path = out / "checkpoint.pt", out / "metrics.csv", out / "final.json"

    state = None
    if ckpt_path.exists():  # refused (exit 2) before anything in `out` is written
        state = load_checkpoint(ckpt_path, arch=arch, config=cfg, splits=splits)
    done = state["epoch"] if state else 0
    if done == cfg.epochs and final_path.is_file():
        try:
            final = json.loads(final_path.read_text())
            acc = f"; final val accuracy {100 * final['val_accuracy']:.2f}% at {final['eval_image_size']} px"
        except (OSError, ValueError, KeyError, TypeError):
            acc = ""
        print(
            f"run {str(out)!r} is finished ({done}/{cfg.epochs} epochs){acc}; nothing to do "
            "(use another --out to train again)"
        )
        return 0

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build(arch, splits.num_classes)
    scaled = f" (scaled by width {width:g}, depth {depth:g})" if arch is not base else ""
    print(f"architecture {arch.to_string()}{scaled}")
    print(
        f"{model.num_params():,} parameters; {splits.name}: {len(splits.train)} train / {len(splits.val)} val "
        f"images, {splits.num_classes} classes, native {splits.native_size} px; evaluation at {eval_size} px"
    )
    if cfg.progressive is not None:
        print(cfg.progressive.table(cfg.epochs))
    else:
        print(
            f"fixed-size training at {cfg.image_size} px, RandAugment {cfg.randaugment:g}, mixup {cfg.mixup:g}, "
            f"dropout {arch.dropout if cfg.dropout is None else cfg.dropout:g}"
        )
    print(f"run directory {out}")
    rows = [dict(h) for h in state["history"][:done]] if state else []
    if state:
        print(f"resumed from epoch {done}/{cfg.epochs} ({ckpt_path})")
    write_metrics_csv(csv_path, rows)

    trained = 0

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        nonlocal trained
        rows.append(metrics)
        write_metrics_csv(csv_path, rows)
        print(_epoch_line(metrics, cfg.epochs), flush=True)
        trained += 1
        if args.stop_after is not None and trained >= args.stop_after and epoch < cfg.epochs:
            raise _StopRequested

    try:
        result = fit(
            model,
            splits,
            cfg,
            on_epoch_end=on_epoch_end,
            state=state,
            checkpoint_path=ckpt_path,
            progress=not args.no_progress,
        )
    except _StopRequested:
        print(
            f"stopped after epoch {done + trained}/{cfg.epochs} (--stop-after {args.stop_after}); "
            "rerun the same command to continue"
        )
        return 0

    val = make_loader(
        splits.val, image_size=eval_size, batch_size=max(cfg.batch_size, 256), train=False, device=runtime.device
    )
    acc = running_acc = evaluate(result.eval_model, val, runtime)
    if args.final_bn_recalibration:
        calibration = make_loader(
            splits.train,
            image_size=eval_size,
            batch_size=cfg.batch_size,
            train=True,
            seed=cfg.seed,
            device=runtime.device,
        )
        recalibrate_bn(result.eval_model, calibration, runtime, args.final_bn_recalibration)
        acc = evaluate(result.eval_model, val, runtime)
    history = result.history
    final = {
        "arch": arch.to_string(),
        "architecture": arch.to_dict(),
        "base_arch": base.to_string(),
        "width_mult": width,
        "depth_mult": depth,
        "params": model.num_params(),
        "dataset": splits.name,
        "num_classes": splits.num_classes,
        "train_size": len(splits.train),
        "val_size": len(splits.val),
        "epochs": cfg.epochs,
        "eval_image_size": eval_size,
        "ema": cfg.ema_decay is not None,
        "val_accuracy": acc,
        "val_accuracy_running_stats": running_acc,
        "final_bn_recalibration": args.final_bn_recalibration,
        "compiled": result.compiled,
        "last_epoch_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "best_val_accuracy": max((h["val_accuracy"] for h in history), default=None),
        "train_time_s": sum(h["epoch_time_s"] for h in history),
        "config": cfg.to_dict(),
    }
    atomic_write_text(final_path, json.dumps(final, indent=2) + "\n")
    recal = (
        f" (BatchNorm re-estimated on {args.final_bn_recalibration} batches; running statistics "
        f"{100 * running_acc:.2f}%)"
        if args.final_bn_recalibration
        else ""
    )
    print(
        f"final val accuracy {100 * acc:.2f}% at {eval_size} px{' (EMA weights)' if cfg.ema_decay else ''}{recal}; "
        f"{final['train_time_s']:.1f}s of training{', compiled step' if result.compiled else ''}; wrote {final_path}"
    )
    return 0
