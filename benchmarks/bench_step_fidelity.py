"""How faithful is S? The proxy's step time and the step-time table against the measured full-size step.

In one run on this device, over ``--candidates`` random candidates of the space (and its reference):

* proxy: today's method, the candidate shrunk by ``nas.trial.settings.proxy_arch`` with the default
  ``nas.trial.settings.ProxyConfig`` (width 0.25, depth 0.25, 32 px, batch 64), timed as a search trial times
  it (``measure_min_run_time`` of the proxy config);
* measured: the full-size candidate timed directly at the target setting, twice (each the fastest of
  ``--repeats`` timings): the first against the second is the measurement's own repeatability, the
  noise floor no prediction can beat; their mean is what the others are compared with;
* table: ``StepTimeModel.predict`` from a table built in this run (build time reported; for a space
  too large to pre-fill, the pieces the candidates need are timed on first use, and counted).

It prints Spearman of proxy vs measured, Spearman and Kendall tau of table vs measured, MAPE, the
share within +-10%, the table's build time and the time of one prediction (a fresh model, so no
cached result), and the range of S (candidate / reference) each method gives.

    python benchmarks/bench_step_fidelity.py --threads 1 --clock cpu --candidates 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from nas.core.device import Runtime
from nas.errors import NasError, check_int, check_positive
from nas.steptime import StepTimeModel, default_target, fidelity
from nas.steptime.measure import measure_step_time
from nas.steptime.methods import StepTimeConfig
from nas.trial.settings import ProxyConfig, proxy_arch
from search_spaces import get_space


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="trainaware")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--candidates", type=int, default=12, help="random candidates besides the reference (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidates (default 0)")
    p.add_argument("--target-image-size", type=int, default=None, help="default: the device's default target")
    p.add_argument("--target-batch-size", type=int, default=None, help="default: the device's default target")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall, or cpu (process CPU time, 1 thread only): used for every timing of the run",
    )
    p.add_argument(
        "--min-run-time",
        type=float,
        default=0.5,
        help="seconds per full-size timing and repeat (default 0.5, as nas calibrate)",
    )
    p.add_argument("--repeats", type=int, default=2, help="timings per full-size measurement, fastest kept (default 2)")
    p.add_argument("--table-dir", default=None, help="build the table here (default: a fresh temporary folder)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads, 1, 4096))
    check_int("--candidates", args.candidates, 2, 10_000)
    check_positive("--min-run-time", args.min_run_time)
    check_int("--repeats", args.repeats, 1, 100)
    space = get_space(args.space)
    runtime = Runtime.resolve(args.device)
    target = default_target(runtime, space, image_size=args.target_image_size, batch_size=args.target_batch_size)
    fp = runtime.fingerprint()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(
        f"{space.name}: {fp['device']} ({fp['device_name']}), {torch.get_num_threads()} threads, {fp['dtype']}, "
        f"{fp['memory_format']}, {args.clock} clock, target {target}, load {os.getloadavg()[0]:.1f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        table_dir = args.table_dir or tmp
        t0 = time.perf_counter()
        model = StepTimeModel.load_or_build(
            space, runtime, target, table_dir=table_dir, rebuild=True, progress=True, clock=args.clock
        )
        build_s = time.perf_counter() - t0
        log(
            f"table built in {build_s:.1f} s: {len(model.table.pieces)} pieces, "
            f"correction {model.table.correction['form']}"
        )
        rng = np.random.default_rng(args.seed)
        archs = [space.reference()] + [space.sample(rng) for _ in range(args.candidates)]

        # Pieces a lazily filled table lacks are timed by a first pass; a fresh model (empty cache) on
        # the complete table then gives the time of one prediction.
        first = StepTimeModel.load(space, runtime, target, table_dir=table_dir, clock=args.clock)
        for a in archs:
            first.predict(a)
        fresh = StepTimeModel.load(space, runtime, target, table_dir=table_dir, clock=args.clock)
        predict_ms = []
        for a in archs:
            t = time.perf_counter()
            fresh.predict(a)
            predict_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        for a in archs:
            fresh.predict(a)
        cached_ms = (time.perf_counter() - t) * 1e3 / len(archs)
        model = StepTimeModel.load(space, runtime, target, table_dir=table_dir, clock=args.clock)

        proxy = ProxyConfig()
        rows = []
        for i, a in enumerate(archs):
            torch.manual_seed(0)
            p_ms = measure_step_time(
                proxy_arch(a, proxy),
                runtime=runtime,
                batch_size=proxy.train.batch_size,
                image_size=proxy.image_size,
                num_classes=10,
                min_run_time=StepTimeConfig().min_run_time,
                clock=args.clock,
            ).step_time_ms
            m1 = model.measure(a, min_run_time=args.min_run_time, repeats=args.repeats)
            m2 = model.measure(a, min_run_time=args.min_run_time, repeats=args.repeats)
            rows.append(
                {
                    "arch": a.to_string(),
                    "proxy_ms": p_ms,
                    "measured_ms": (m1 + m2) / 2,
                    "measured_1": m1,
                    "measured_2": m2,
                    "predicted_ms": model.predict(a),
                }
            )
            r = rows[-1]
            log(
                f"{'reference' if i == 0 else f'candidate {i}'}: proxy {p_ms:.1f} ms, measured {m1:.1f} / {m2:.1f} ms, "
                f"table {r['predicted_ms']:.1f} ms, load {os.getloadavg()[0]:.1f}"
            )
        timed = first.timed

    df = pd.DataFrame(rows)
    for col in ("proxy_ms", "measured_ms", "predicted_ms"):
        df["S_" + col.split("_")[0]] = df[col] / df[col].iloc[0]
    return {
        "space": space.name,
        "device": fp["device"],
        "device_name": fp["device_name"],
        "torch": fp["torch"],
        "threads": torch.get_num_threads(),
        "dtype": fp["dtype"],
        "memory_format": fp["memory_format"],
        "clock": args.clock,
        "target": target.to_dict(),
        "candidates": args.candidates,
        "seed": args.seed,
        "build_s": build_s,
        "pieces": len(model.table.pieces),
        "prefilled": model.table.prefilled,
        "correction": {k: v for k, v in model.table.correction.items() if k != "points"},
        "predict_ms_first": statistics.median(predict_ms),
        "predict_ms_max": max(predict_ms),
        "predict_ms_cached": cached_ms,
        "timed_on_first_use": timed,
        "proxy_vs_measured": fidelity(df.proxy_ms, df.measured_ms),
        "table_vs_measured": fidelity(df.predicted_ms, df.measured_ms),
        "repeat_vs_repeat": fidelity(df.measured_1, df.measured_2),
        "rows": df.to_dict(orient="records"),
    }


def report(r: dict) -> str:
    df = pd.DataFrame(r["rows"])
    head = (
        f"step-time fidelity, space {r['space']}: {r['device']} ({r['device_name']}), {r['threads']} threads, "
        f"{r['dtype']}, {r['memory_format']}, {r['clock']} clock, torch {r['torch']}; target "
        f"{r['target']['image_size']} px, batch {r['target']['batch_size']}; reference + {r['candidates']} "
        f"candidates (seed {r['seed']})"
    )
    table = df[["proxy_ms", "measured_1", "measured_2", "predicted_ms", "S_proxy", "S_measured", "S_predicted"]]
    table.index = ["reference"] + [f"cand {i}" for i in range(1, len(df))]

    def line(name, f, rank_only=False):
        s = f"{name:<28} Spearman {f['spearman']:.3f}  Kendall tau {f['kendall_tau']:.3f}"
        return s if rank_only else s + f"  MAPE {f['mape']:.1%}  within +-10% {f['within_10pct']:.0%}  (n {f['n']})"

    lines = [
        line("proxy vs measured", r["proxy_vs_measured"], rank_only=True),
        line("table vs measured", r["table_vs_measured"]),
        line("measured vs measured again", r["repeat_vs_repeat"]),
        f"S range: proxy {df.S_proxy.min():.2f}-{df.S_proxy.max():.2f}, measured {df.S_measured.min():.2f}-"
        f"{df.S_measured.max():.2f}, table {df.S_predicted.min():.2f}-{df.S_predicted.max():.2f}",
        f"table: built in {r['build_s']:.1f} s ({r['pieces']} pieces, "
        f"{'pre-filled' if r['prefilled'] else 'timed on first use'}; "
        f"correction {r['correction']['form']}: a {r['correction']['a']:.3f}, b {r['correction']['b']:.3f}, "
        f"d {r['correction']['d']:.3g}, c {r['correction']['c']:.1f})",
        f"prediction: {r['predict_ms_first']:.3f} ms median per candidate (max {r['predict_ms_max']:.3f} ms) "
        f"with an empty cache, {r['predict_ms_cached']:.4f} ms cached; "
        f"{r['timed_on_first_use']} pieces timed on first use",
    ]
    return "\n\n".join([head, table.to_string(float_format="{:.2f}".format), "\n".join(lines)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except NasError as e:
        print(f"bench_step_fidelity: error: {e}", file=sys.stderr)
        return 2
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
