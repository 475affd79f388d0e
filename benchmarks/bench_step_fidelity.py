"""How faithful is S? The step-time table and the proxy's step against the directly timed full size.

In one run on this device: build a table afresh (its build time is a figure), then take
``--candidates`` random candidates of the space that the table has not seen (the calibration
networks its correction was fitted on, the reference among them, are left out:
:func:`nas.steptime.check.unseen_candidates`) and, for each,

* measured: the full-size candidate timed directly, twice, exactly as a search's fidelity check
  times it (:meth:`StepTimeModel.measure`: the table's cost, optimiser, class count, image size,
  batch and clock): the second timing against the first is the measurement's own error, the floor
  any prediction is judged against;
* table: the table's prediction (:meth:`StepTimeModel.predict`);
* proxy (``--cost step``): the shrunk proxy's training step as ``--step-time proxy`` times it (the
  default proxy's width, depth, image size, batch and optimiser, the table's class count).

It prints the agreement of each with the first timing (Spearman, Kendall tau, mean and median
absolute error, share within +-10%), the range of S each gives, and whether the table meets the
issue's bar: Spearman >= 0.95 and a median error at most the measurement's own plus 3 points.

    python benchmarks/bench_step_fidelity.py --candidates 12                 # training step, CPU default
    python benchmarks/bench_step_fidelity.py --candidates 12 --cost latency  # inference latency
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import parse_with_tiny, samples
from report_parts import TinyTrainAware  # noqa: F401  (registers the --tiny space)

from nas.core.agreement import agreement, describe
from nas.core.device import Runtime
from nas.errors import check_int
from nas.steptime import StepTimeModel, default_target
from nas.steptime.check import unseen_candidates
from nas.steptime.measure import measure_step_time
from nas.trial.settings import ProxyConfig, proxy_arch
from search_spaces import get_space

TINY = dict(
    space="trainaware-tiny",
    target_image_size=16,
    target_batch_size=4,
    candidates=4,
    min_run_time=0.02,
    piece_time=0.005,
    calibration=2,
)
SPEARMAN_GOAL, POINTS_OVER_REPEAT = 0.95, 0.03


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="trainaware")
    p.add_argument("--cost", default="step", help="step (training step, default) or latency (inference)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--candidates", type=int, default=12, help="unseen random candidates (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidates (default 0)")
    p.add_argument("--target-image-size", type=int, default=None, help="default: the device's default target")
    p.add_argument("--target-batch-size", type=int, default=None, help="default: the device's default target")
    p.add_argument("--num-classes", type=int, default=10, help="classes (default 10: the default search's digits)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per direct timing (default 0.5)")
    p.add_argument("--piece-time", type=float, default=None, help="seconds per piece (default: the table's)")
    p.add_argument("--calibration", type=int, default=None, help="calibration networks (default: the table's)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    return parse_with_tiny(p, TINY, argv)


def build(args, runtime: Runtime) -> tuple[StepTimeModel, float]:
    """A table built afresh in a temporary file, and its build time (s)."""
    space = get_space(args.space)
    target = default_target(
        runtime, space, image_size=args.target_image_size, batch_size=args.target_batch_size, cost=args.cost
    )
    extra = {
        k: v
        for k, v in (("piece_run_time", args.piece_time), ("calibration_samples", args.calibration))
        if v is not None
    }
    path = Path(tempfile.mkdtemp(prefix="nas-fidelity-")) / "table.json"
    t0 = time.perf_counter()
    model = StepTimeModel.load_or_build(space, runtime, target, path=path, num_classes=args.num_classes, **extra)
    return model, time.perf_counter() - t0


def proxy_ms(model: StepTimeModel, runtime: Runtime, arch, min_run_time: float) -> float:
    """The proxy's training step as ``--step-time proxy`` times it, at the table's class count."""
    proxy = ProxyConfig()
    r = measure_step_time(
        proxy_arch(arch, proxy),
        runtime=runtime,
        batch_size=proxy.train.batch_size,
        image_size=proxy.image_size,
        num_classes=model.num_classes,
        optimizer=proxy.train.optimizer,
        min_run_time=min_run_time,
        statistic="min",
        repeats=2,
    )
    return r.step_time_ms


def rows(model: StepTimeModel, runtime: Runtime, args) -> list[dict]:
    out = []
    for i, arch in enumerate(unseen_candidates(model, args.candidates, args.seed)):
        row = {
            "arch": arch.to_string(),
            "predicted_ms": model.predict(arch),
            "measured_ms": model.measure(arch, min_run_time=args.min_run_time),
            "measured_again_ms": model.measure(arch, min_run_time=args.min_run_time),
        }
        if args.cost == "step":
            row["proxy_ms"] = proxy_ms(model, runtime, arch, args.min_run_time)
        out.append(row)
        timed = f"measured {row['measured_ms']:8.1f} / {row['measured_again_ms']:8.1f} ms"
        print(f"  {i + 1:>2}/{args.candidates}  predicted {row['predicted_ms']:8.1f} ms  {timed}", file=sys.stderr)
    return out


def figures(model: StepTimeModel, data: list[dict], build_s: float) -> dict:
    measured = [r["measured_ms"] for r in data]
    out = {
        "table_vs_measured": agreement([r["predicted_ms"] for r in data], measured),
        "measured_again_vs_measured": agreement([r["measured_again_ms"] for r in data], measured),
        "build_s": build_s,
        "table": str(model.path),
        "pieces": len(model.table.pieces),
        "correction": model.table.correction["form"],
        "setting": model.setting,
        "fingerprint": model.fingerprint,
        "rows": data,
    }
    if "proxy_ms" in data[0]:
        out["proxy_vs_measured"] = agreement([r["proxy_ms"] for r in data], measured)
    t, rep = out["table_vs_measured"], out["measured_again_vs_measured"]
    out["goal"] = {
        "spearman": t["spearman"] is not None and t["spearman"] >= SPEARMAN_GOAL,
        "median_error": t["median_ape"] <= rep["median_ape"] + POINTS_OVER_REPEAT,
    }
    return out


def report(f: dict, n: int) -> str:
    st, fp = f["setting"], f["fingerprint"]
    lines = [
        f"{st['space']} {st['cost']} at {st['image_size']} px, batch {st['batch_size']}, {st['num_classes']} classes "
        f"on {fp['device_name']} ({fp['threads'] or 'all'} threads); {n} unseen candidates{samples(n, 'candidates')}",
        f"table built in {f['build_s']:.1f} s ({f['pieces']} pieces, correction {f['correction']})",
        f"table vs measured:          {describe(f['table_vs_measured'])}",
        f"measured again vs measured: {describe(f['measured_again_vs_measured'])}",
    ]
    if "proxy_vs_measured" in f:
        lines.append(f"proxy vs measured:          {describe(f['proxy_vs_measured'])}")
    g, t, rep = f["goal"], f["table_vs_measured"], f["measured_again_vs_measured"]
    lines.append(
        f"goal: Spearman >= {SPEARMAN_GOAL} {'met' if g['spearman'] else 'NOT met'}; median error "
        f"{100 * t['median_ape']:.1f}% against the measurement's own {100 * rep['median_ape']:.1f}% + "
        f"{100 * POINTS_OVER_REPEAT:.0f} points {'met' if g['median_error'] else 'NOT met'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads, 1, 4096))
    check_int("--candidates", args.candidates, 3, 10_000)
    runtime = Runtime.resolve(args.device)
    model, build_s = build(args, runtime)
    f = figures(model, rows(model, runtime, args), build_s)
    print(report(f, args.candidates))
    if args.json:
        Path(args.json).write_text(json.dumps(f, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
