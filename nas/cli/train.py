"""``nas train``: train one architecture, with EfficientNetV2 progressive learning by default.

The flags become a :class:`nas.training.run.TrainOptions`; the run itself (image sizes, resume, final
evaluation, the files it writes) is :mod:`nas.training.run`. Defaults are the library's: the parser
takes them from ``TrainOptions``.
"""

from __future__ import annotations

import dataclasses
import functools

from nas.study.rundir import RunDir
from nas.training.options import SMALL_DEFAULT_MULT, TrainOptions
from nas.training.run import resolve


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an architecture (EfficientNetV2 progressive learning by default)",
        description="Train ARCH (a preset name, architecture string, JSON file or run directory) on a data "
        "set, with EfficientNetV2 progressive learning (paper section 4.2, Table 6). Rerun the "
        "same command to resume after an interruption.",
    )
    _data_model_and_schedule_flags(p)
    _optimisation_flags(p)
    _run_flags(p)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.default is not dataclasses.MISSING}
    p.set_defaults(func=run, **defaults)


def _data_model_and_schedule_flags(p) -> None:
    p.add_argument("arch", metavar="ARCH")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", help="digits (default, offline), fake, cifar10, cifar100 or imagefolder:PATH")
    d.add_argument("--data-dir", help="where cifar10/cifar100 live (default ~/.cache/nas/data)")
    d.add_argument("--val-fraction", type=float, help="held-out share of the training data (0.2)")
    m = p.add_argument_group("model")
    m.add_argument(
        "--width-mult",
        type=float,
        help=f"train a copy scaled in width (default {SMALL_DEFAULT_MULT} on digits/fake, else 1)",
    )
    m.add_argument(
        "--depth-mult",
        type=float,
        help=f"train a copy scaled in depth (default {SMALL_DEFAULT_MULT} on digits/fake, else 1)",
    )
    s = p.add_argument_group("progressive learning (EfficientNetV2 Table 6)")
    s.add_argument("--progressive", help="schedule: s (default), m, l or off")
    s.add_argument("--stages", type=int, help="number of stages M (default 4)")
    for name, typ, what in (
        ("image-size", int, "image size in px"),
        ("randaugment", float, "RandAugment magnitude"),
        ("mixup", float, "mixup alpha"),
        ("dropout", float, "dropout"),
    ):
        s.add_argument(f"--{name}-start", type=typ, help=f"first stage's {what}")
        s.add_argument(f"--{name}-end", type=typ, help=f"last stage's {what}")
    f = p.add_argument_group("fixed-size training (--progressive off)")
    f.add_argument("--image-size", type=int, help="training image size (default: the eval size)")
    f.add_argument("--randaugment", type=float, help="RandAugment magnitude (default 0 = off)")
    f.add_argument("--mixup", type=float, help="mixup alpha (default 0 = off)")
    f.add_argument("--dropout", type=float, help="dropout (default: the architecture's)")


def _optimisation_flags(p) -> None:
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--epochs",
        type=int,
        help="default 20: on digits progressive s reaches 90-95%% (71-84%% at 10; seeds 0-2)",
    )
    o.add_argument("--batch-size", type=int)
    o.add_argument("--optimizer", help="rmsprop (default, as the papers), sgd or adamw")
    o.add_argument("--lr", type=float, help="learning rate (default: rmsprop 0.004, sgd 0.1, adamw 0.003)")
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--warmup-epochs", type=float)
    o.add_argument("--label-smoothing", type=float)
    o.add_argument("--ema", type=float, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.99)")
    o.add_argument(
        "--bn-recalibration",
        type=int,
        metavar="BATCHES",
        help="re-estimate BatchNorm statistics on this many training batches at the evaluation "
        "size before each evaluation (0 = off)",
    )
    o.add_argument(
        "--eval-image-size",
        type=int,
        help="evaluation size (default: the last epoch's training size); also the schedule's target "
        "size (default: the architecture's resolution, at most 4x the data's)",
    )
    o.add_argument(
        "--final-bn-recalibration",
        type=int,
        metavar="BATCHES",
        help="re-estimate BatchNorm statistics on this many training batches before the final "
        "evaluation (default 16; 0 = off)",
    )


def _run_flags(p) -> None:
    r = p.add_argument_group("run")
    r.add_argument("--out", help="run directory (default runs/train-<arch>-<hash>)")
    r.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--amp", help="mixed precision: auto (CUDA only), on or off")
    r.add_argument(
        "--compile",
        nargs="?",
        const="on",
        metavar="auto|on|off",
        help="torch.compile the training step: auto (default: on CUDA when each image size trains "
        "2,000 steps or more), on (also --compile alone) or off",
    )
    r.add_argument("--seed", type=int)
    r.add_argument("--workers", type=int, help="data loader worker processes (0)")
    r.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N more epochs (rerun the same command to continue)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    names = [f.name for f in dataclasses.fields(TrainOptions) if f.name != "progress"]
    options = TrainOptions(**{name: getattr(args, name) for name in names}, progress=not args.no_progress)
    # The run directory is vetted as every command's is (nas.study.rundir): not a file, writable.
    plan = resolve(options, check_out=lambda path: RunDir(path).check())
    plan.execute(echo=functools.partial(print, flush=True))
    return 0
