"""Training-step time of our EfficientNet-B0 against torchvision's, in the same process and setting.

Both models do the same full step (forward, cross-entropy, backward, SGD) from
``nas.steptime.measure.make_train_step``, timed by ``nas.steptime.measure.time_step``, at the same batch and image size,
in both memory formats. Rounds are interleaved (ours, torchvision, ours, torchvision, ..., with the
order reversed every other round) so that a slow patch of a shared machine hits both alike; the
ratio is taken within each round and its median reported.

    python benchmarks/bench_step_time.py --batch-size 8 --image-size 128 --rounds 6
    python benchmarks/bench_step_time.py --tiny          # seconds on a CPU: batch 2, 16 px, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import pandas as pd
import torch
import torchvision
from common import parse_with_tiny, samples

from nas.core.device import Runtime, device_name
from nas.errors import NasError
from nas.steptime.measure import make_train_step, time_step
from search_spaces import build, preset

FORMATS = ("contiguous", "channels_last")
MODELS = {
    "ours": lambda: build(preset("efficientnet-b0")),
    "torchvision": lambda: torchvision.models.efficientnet_b0(),  # no weights: nothing is downloaded
}
# Both networks stay full size (torchvision's cannot shrink); the step gets small. At 16 px the last
# feature map is 1x1, so batch 2 is the least BatchNorm can train on.
TINY = dict(batch_size=2, image_size=16, rounds=2, min_run_time=0.05, warmup=1, threads=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds per model and format (default 6)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timed steps per round (default 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each model's first round")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="also write every round's time to FILE")
    args = parse_with_tiny(p, TINY, argv)
    for name in ("batch_size", "image_size", "rounds", "warmup"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.min_run_time <= 0:
        p.error(f"--min-run-time must be positive, got {args.min_run_time}")
    return args


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, settings = {}, {}
    for fmt in FORMATS:
        for name, make in MODELS.items():
            torch.manual_seed(0)
            runtime = Runtime.resolve(args.device, args.amp, "on" if fmt == "channels_last" else "off")
            step, s = make_train_step(
                make(),
                runtime=runtime,
                batch_size=args.batch_size,
                image_size=args.image_size,
                num_classes=1000,
                optimizer="sgd",
            )
            for _ in range(args.warmup):
                step()
            steps[name, fmt] = step
            settings = s
    times: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(args.rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            median_ms, _, _, _ = time_step(steps[key], runtime, warmup=1, min_run_time=args.min_run_time)
            times[key].append(median_ms)
        print(
            f"round {r + 1}/{args.rounds}: " + "  ".join(f"{m}/{f} {times[m, f][-1]:.1f}" for m, f in order),
            file=sys.stderr,
            flush=True,
        )
    return {
        "device": runtime.device.type,
        "device_name": device_name(runtime.device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "dtype": settings.get("dtype"),
        "rounds": args.rounds,
        "min_run_time": args.min_run_time,
        "times_ms": {f"{m}/{f}": t for (m, f), t in times.items()},
    }


def report(result: dict) -> str:
    times = {tuple(k.split("/")): v for k, v in result["times_ms"].items()}
    rows = []
    for (model, fmt), t in times.items():
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        rows.append(
            {
                "model": model,
                "format": fmt,
                "median ms": statistics.median(t),
                "IQR ms": q[2] - q[0],
                "min ms": min(t),
                "rounds": len(t),
            }
        )
    table = pd.DataFrame(rows).sort_values(["format", "model"])

    ratios = []
    for fmt in FORMATS:
        paired = [a / b for a, b in zip(times["ours", fmt], times["torchvision", fmt])]
        q = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        ratios.append(
            {
                "comparison": f"{fmt}",
                "ours/torchvision (median of per-round ratios)": statistics.median(paired),
                "IQR": q[2] - q[0],
                "min": min(paired),
                "max": max(paired),
                "rounds": len(paired),
            }
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {m: min(FORMATS, key=lambda f: med[m, f]) for m in ("ours", "torchvision")}
    ratios.append(
        {
            "comparison": f"best format (ours {best['ours']}, torchvision {best['torchvision']})",
            "ours/torchvision (median of per-round ratios)": med["ours", best["ours"]]
            / med["torchvision", best["torchvision"]],
            "IQR": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "rounds": min(len(t) for t in times.values()),
        }
    )
    head = (
        f"EfficientNet-B0 training step: batch {result['batch_size']}, {result['image_size']} px, {result['dtype']}, "
        f"{result['device']} ({result['device_name']}), {result['threads']} threads, torch {result['torch']}, "
        f"torchvision {result['torchvision']}, {result['rounds']} interleaved rounds of {result['min_run_time']} s"
        + samples(result["rounds"], "rounds: the IQR is rough")
    )
    fmt = {"median ms": "{:.1f}".format, "IQR ms": "{:.1f}".format, "min ms": "{:.1f}".format}
    return "\n\n".join(
        [
            head,
            table.to_string(index=False, formatters=fmt),
            pd.DataFrame(ratios).to_string(index=False, float_format="{:.3f}".format),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except NasError as e:
        print(f"bench_step_time: error: {e}", file=sys.stderr)
        return 2
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
