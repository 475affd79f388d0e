"""Compiled against eager training step, in one process and setting: step time and compile time.

Three steps of the same network, batch and image size (:func:`nas.steptime.measure.make_train_step`):

* ``eager``: what ``--compile off`` runs;
* ``compiled``: what ``--compile on`` runs (``torch.compile`` of forward and loss; :mod:`nas.training.step`);
* ``compiled+opt``: the same with the optimiser step compiled as well (not what ``nas`` does: with a
  learning-rate schedule the optimiser's learning rate changes every step; shown to say what it
  would gain).

Each step's first call is timed on its own (for the compiled ones: the compilation); then rounds
alternate the three (order reversed every other round) and each is timed for ``--min-run-time`` by
:func:`nas.steptime.measure.time_step`. ``--cold`` turns off Inductor's on-disk caches, so the compile time
is a first run's on a fresh machine; without it a repeated run reuses compiled kernels.

    python benchmarks/bench_compile.py --threads 1                    # digits-sized B0 x 0.25, CPU
    python benchmarks/bench_compile.py --device cuda --width-mult 1 --depth-mult 1 --batch-size 256 \\
        --image-size 224 --cold
    python benchmarks/bench_compile.py --tiny     # B0 x 0.1 at 16 px, eager and compiled, one round
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from common import parse_with_tiny

TINY = dict(
    width_mult=0.1, depth_mult=0.1, batch_size=8, image_size=16, rounds=1, min_run_time=0.05, variants="eager,compiled"
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--arch", default="efficientnet-b0")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--depth-mult", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timed steps per round and step")
    p.add_argument("--variants", default="eager,compiled,compiled+opt")
    p.add_argument("--cold", action="store_true", help="no Inductor caches: a first compilation's time")
    p.add_argument("--threads", type=int, default=None)
    return parse_with_tiny(p, {**TINY, "threads": 1}, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cold:  # read when Inductor is first imported, so before torch
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import torch

    from nas.core.device import Runtime, device_name
    from nas.steptime.measure import make_train_step, time_step
    from nas.training.step import TrainStep
    from search_spaces import build, preset, scale

    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = Runtime.resolve(args.device)
    arch = scale(preset(args.arch), width=args.width_mult, depth=args.depth_mult, rounding="v2")
    steps, first = {}, {}
    for name in args.variants.split(","):
        torch.manual_seed(0)
        step, _ = make_train_step(
            build(arch, args.num_classes),
            runtime=runtime,
            batch_size=args.batch_size,
            image_size=args.image_size,
            num_classes=args.num_classes,
            compile=name != "eager",
        )
        if name == "compiled+opt":  # the TrainStep that make_train_step's closure runs
            train_step = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, TrainStep))
            train_step.optimizer.step = torch.compile(train_step.optimizer.step)
        t0 = time.perf_counter()
        step()
        runtime.synchronize()
        first[name] = time.perf_counter() - t0
        steps[name] = step
        print(f"{name}: first step {first[name]:.2f} s", flush=True)
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            times[name].append(time_step(steps[name], runtime, warmup=2, min_run_time=args.min_run_time)[0])
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.1f} ms" for n in steps), flush=True)
    print(
        f"\n== training step, eager against compiled: {arch.to_string()[:60]}..., batch {args.batch_size}, "
        f"{args.image_size} px =="
    )
    print(
        f"device {runtime.device} ({device_name(runtime.device)}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {runtime.dtype_name}, "
        f"{'channels_last' if runtime.channels_last else 'contiguous'}, caches {'off' if args.cold else 'on'}, "
        f"median of {args.rounds} round(s)"
    )
    print_speedups(times, first)
    return 0


def print_speedups(times: dict[str, list[float]], first: dict[str, float]) -> None:
    """Each variant's median step, first step, and speed-up against eager measured in the same run."""
    eager = statistics.median(times["eager"]) if "eager" in times else None
    for name in times:
        med = statistics.median(times[name])
        extra = first[name] - med / 1e3
        line = f"{name:>13}: {med:8.2f} ms/step, first step {first[name]:7.2f} s"
        if eager is not None and name != "eager":
            saved = (eager - med) / 1e3
            line += f", speed-up {eager / med:.2f}x"
            line += (
                f", compile pays for itself after {extra / saved:,.0f} steps"
                if saved > 0
                else ", never pays for itself"
            )
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
