"""Progressive learning vs fixed-size training at equal epochs (EfficientNetV2 section 4.2 / 5).

Trains the same architecture on digits three ways, each for the same number of epochs and seeds:

* ``progressive``: a Table 6 schedule scaled to end at ``--size`` px (``s``: 14 -> 32 px, RandAugment
  5 -> 15, dropout 0.1 -> 0.3);
* ``fixed+reg``: every epoch at ``--size`` px with the schedule's *final* regularisation (what the
  progressive run ends with, applied from the start);
* ``fixed``: every epoch at ``--size`` px with the architecture's own dropout and no augmentation.

and prints wall time, CPU time and final validation accuracy (evaluated at ``--size`` px) side by
side, with the ratios progressive / fixed. Runs of different kinds are interleaved per seed so that
a change in machine load hits all of them alike. Example::

    python benchmarks/bench_progressive.py --epochs 10 --seeds 2 --threads 1
    python benchmarks/bench_progressive.py --tiny   # seconds: V2-S x 0.1, 16 px, 2 epochs in 2 stages
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from common import parse_with_tiny, samples

from nas.core.resolve import resolve_arch
from nas.data import load_dataset, make_loader
from nas.training.config import TrainConfig
from nas.training.evaluation import evaluate
from nas.training.loop import fit
from nas.training.progressive import get_schedule
from search_spaces import build, scale

TINY = dict(width_mult=0.1, depth_mult=0.1, size=16, epochs=2, stages=2, seeds=1, threads=1)


def run_one(kind: str, arch, splits, args, seed: int) -> dict:
    sched = get_schedule(args.schedule, stages=args.stages).scaled_to(args.size)
    end = sched.stage(sched.stages - 1)
    common = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        device="cpu",
        seed=seed,
        eval_image_size=args.size,
    )
    if kind == "progressive":
        cfg = TrainConfig(progressive=sched, **common)
    elif kind == "fixed+reg":
        cfg = TrainConfig(
            image_size=args.size, randaugment=end.randaugment, mixup=end.mixup, dropout=end.dropout, **common
        )
    else:
        cfg = TrainConfig(image_size=args.size, **common)
    torch.manual_seed(seed)
    model = build(arch, splits.num_classes)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fit(model, splits, cfg, progress=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    loader = make_loader(splits.val, image_size=args.size, batch_size=256, train=False)
    acc = evaluate(result.eval_model, loader, "cpu")
    return {
        "kind": kind,
        "seed": seed,
        "wall_s": wall,
        "cpu_s": cpu,
        "val_accuracy": acc,
        "step_ms": 1000 * result.mean_step_time_s,
        "sizes": [h["image_size"] for h in result.history],
        "curve": [round(h["val_accuracy"], 4) for h in result.history],
    }


def summarise(runs: list[dict], kinds: list[str], seeds: int) -> None:
    """Means over seeds per kind, and progressive against each fixed-size baseline of the same run."""

    def mean(kind: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs if r["kind"] == kind)

    def spread(kind: str, key: str) -> float:
        vals = [r[key] for r in runs if r["kind"] == kind]
        return statistics.stdev(vals) if len(vals) > 1 else 0.0

    print(f"\n{'run':<12} {'wall s':>8} {'cpu s':>8} {'ms/step':>8} {'val acc %':>12}")
    for kind in kinds:
        print(
            f"{kind:<12} {mean(kind, 'wall_s'):8.1f} {mean(kind, 'cpu_s'):8.1f} {mean(kind, 'step_ms'):8.1f} "
            f"{100 * mean(kind, 'val_accuracy'):7.1f} ±{100 * spread(kind, 'val_accuracy'):3.1f}"
        )
    for base in ("fixed+reg", "fixed"):
        print(
            f"progressive / {base:<9}: wall {mean('progressive', 'wall_s') / mean(base, 'wall_s'):.2f}x, "
            f"cpu {mean('progressive', 'cpu_s') / mean(base, 'cpu_s'):.2f}x, accuracy "
            f"{100 * (mean('progressive', 'val_accuracy') - mean(base, 'val_accuracy')):+.1f} points"
            + samples(seeds, "seeds")
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="efficientnetv2-s")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--depth-mult", type=float, default=0.25)
    p.add_argument("--schedule", default="s", help="s, m or l (EfficientNetV2 Table 6)")
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--size", type=int, default=32, help="final training and evaluation size (px)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="rmsprop")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = parse_with_tiny(p, TINY, argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    arch = scale(resolve_arch(args.arch), width=args.width_mult, depth=args.depth_mult, rounding="v2")
    splits = load_dataset("digits")
    kinds = ["progressive", "fixed+reg", "fixed"]
    print(
        f"{args.arch} x width {args.width_mult:g} depth {args.depth_mult:g} "
        f"({build(arch, 10).num_params():,} params); digits {len(splits.train)}/{len(splits.val)}; "
        f"{args.epochs} epochs, {args.seeds} seed(s), {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}"
    )
    print(get_schedule(args.schedule, stages=args.stages).scaled_to(args.size).table(args.epochs))
    runs = []
    for seed in range(args.seeds):
        for kind in kinds:
            r = run_one(kind, arch, splits, args, seed)
            runs.append(r)
            print(
                f"  seed {seed} {kind:<12} wall {r['wall_s']:6.1f}s  cpu {r['cpu_s']:6.1f}s  "
                f"val {100 * r['val_accuracy']:5.1f}%  sizes {r['sizes']}",
                flush=True,
            )

    summarise(runs, kinds, args.seeds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
