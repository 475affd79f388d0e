"""``nas calibrate``: build (or reuse) a step-time table of this device, and check it.

The table (:mod:`nas.steptime`) predicts a full-size candidate's cost (training step or latency) at
a target setting. This command builds it once per device and setting (with a progress bar; a killed
build resumes), then times ``--check K`` random full-size candidates it has not seen directly and
prints how well the predictions agree: Spearman, Kendall tau, mean and median error and the share
within +-10%, stored in the table as its own check. ``--out FILE`` writes the table where you say:
that file is a *target* that ``nas search --target FILE`` uses on any machine. ``--grid-base ARCH``
also times what ``nas grid-scale --base ARCH`` will need (the base scaled at its grid's resolutions).
"""

from __future__ import annotations

import json
import sys

import torch
from tqdm import tqdm

from nas.cli.measure import AMP_MODES, add_timing_arguments
from nas.core.device import Runtime
from nas.core.resolve import resolve_arch
from nas.errors import check_int, check_positive
from nas.scaling.grid import BASE, GridSpec, enumerate_candidates, scale_candidate, select_spread
from nas.steptime import StepTimeModel, check, default_target
from nas.steptime.build import PIECE_RUN_TIME, check_fields
from nas.steptime.costs import COSTS
from nas.study.strategies import help_text
from search_spaces import get_space, space_names


def _setting_arguments(p) -> None:
    g = p.add_argument_group("what the table stands for")
    g.add_argument("--space", default="trainaware", help=f"{', '.join(space_names())} (default trainaware)")
    g.add_argument("--cost", default="step", help=help_text(COSTS, "step"))
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--amp", choices=AMP_MODES, default="auto", help="mixed precision (default: on for CUDA)")
    g.add_argument(
        "--target-image-size",
        type=int,
        default=None,
        help="image size (default: 64 on CPU for the training step; the space's resolution on CUDA and for latency)",
    )
    g.add_argument(
        "--target-batch-size",
        type=int,
        default=None,
        help="batch (default: 16 on CPU; on CUDA 128 at 224 px, same pixels per batch; 1 for latency)",
    )
    g.add_argument(
        "--latency-batch-size",
        type=int,
        default=None,
        help="with --cost latency: the same as --target-batch-size (default 1)",
    )
    g.add_argument(
        "--num-classes",
        type=int,
        default=1000,
        help="classifier outputs (default 1000; a search uses its data's: 10 for digits)",
    )


def _build_arguments(p) -> None:
    g = p.add_argument_group("building and checking")
    g.add_argument(
        "--check",
        type=int,
        default=8,
        metavar="K",
        help="random full-size candidates to time directly against the predictions (default 8; 0: none)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the check's candidates (default 0)")
    g.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the table to FILE (a target for nas search --target FILE); default: this machine's table directory",
    )
    g.add_argument("--rebuild", action="store_true", help="build the table again, replacing the stored one")
    g.add_argument(
        "--piece-time",
        type=float,
        default=None,
        help=f"seconds of repeated timing per piece, at least (default {PIECE_RUN_TIME:g})",
    )
    g.add_argument(
        "--min-run-time",
        type=float,
        default=0.5,
        help="seconds of repeated timing per full-size step and repeat (default 0.5; 2 repeats, fastest kept)",
    )
    add_timing_arguments(g)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="build this device's step-time table for a space and check its predictions",
        description=__doc__.splitlines()[0],
    )
    _setting_arguments(p)
    _build_arguments(p)
    g = p.add_argument_group("what nas grid-scale will need")
    g.add_argument(
        "--grid-base",
        default=None,
        metavar="ARCH",
        help="also time the pieces of this base scaled by the grid's candidates at their resolutions",
    )
    g.add_argument("--phi", type=float, default=1.0, help="the grid's phi (default 1)")
    g.add_argument("--max-candidates", type=int, default=8, help="the grid's candidates (default 8)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _model(args) -> StepTimeModel:
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads, 1, 4096))
    check_positive("--min-run-time", args.min_run_time)
    piece_time = check_positive("--piece-time", args.piece_time) if args.piece_time is not None else PIECE_RUN_TIME
    space = get_space(args.space)
    runtime = Runtime.resolve(args.device, args.amp, "auto")
    batch = args.latency_batch_size if args.latency_batch_size is not None else args.target_batch_size
    target = default_target(runtime, space, image_size=args.target_image_size, batch_size=batch, cost=args.cost)
    say = _say(args)
    fp = runtime.fingerprint()
    say(
        f"step-time model: space {space.name}, {fp['device']} ({fp['device_name']}), {fp['threads'] or 'all'} "
        f"threads, {fp['dtype']}, {fp['memory_format']}, torch {fp['torch']}, {args.clock} clock"
    )
    say(f"target: {target}, {args.num_classes} classes")
    return StepTimeModel.load_or_build(
        space,
        runtime,
        target,
        table_dir=args.table_dir,
        path=args.out,
        rebuild=args.rebuild,
        progress=True,
        num_classes=args.num_classes,
        piece_run_time=piece_time,
        measure_run_time=args.min_run_time,
        clock=args.clock,
    )


def _say(args):
    return (lambda *a: print(*a, file=sys.stderr)) if args.json else print


def _cover_grid(model: StepTimeModel, args) -> int:
    """Time what ``nas grid-scale --base ARCH`` will need; how many pieces that was."""
    base = resolve_arch(args.grid_base)
    spec = GridSpec(phi=args.phi)
    before = model.timed
    for c in (
        BASE,
        *select_spread(enumerate_candidates(spec), check_int("--max-candidates", args.max_candidates, 1, 10_000)),
    ):
        scale = c.gamma**spec.phi
        model.predict(scale_candidate(base, c, spec.phi), max(8, round(model.target.image_size * scale)))
    model.predict(base)
    return model.timed - before


def _describe(model: StepTimeModel, args) -> None:
    say, t = _say(args), model.table
    c = t.correction
    say(f"table: {t.path} (identity {t.identity})")
    say(
        f"       {len(t.pieces)} pieces "
        f"({'every piece of the space pre-filled' if t.prefilled else 'timed on first use'}), "
        f"{'built now' if model.built else 'reused: built'} in {t.build_s:.1f} s on {t.created}"
    )
    loo = f"leave-one-out MAPE {c['loo_mape']:.1%} on {len(c['points'])} calibration networks"
    if c["form"] == "raw":
        say(f"correction: none, the piece sum itself (no fitted form beat it on the calibration networks; {loo})")
    else:
        say(
            f"correction: {c['form']}: a {c['a']:.4f}, b {c['b']:+.3f} ms/block, d {c['d']:+.3g} ms/parameter, "
            f"c {c['c']:+.2f} ms ({loo})"
        )


def _check(model: StepTimeModel, args) -> dict:
    say = _say(args)
    bar = tqdm(total=args.check, desc="check", unit="candidate", leave=False, file=sys.stderr)
    rep = check(
        model,
        args.check,
        seed=check_int("--seed", args.seed, 0, 2**32 - 1),
        min_run_time=args.min_run_time,
        progress=lambda done, total, row: bar.update(1),
    )
    bar.close()
    say(
        f"check: {rep['n']} random full-size candidates the table has not seen (seed {args.seed}) timed directly"
        + (f"; {rep['timed']} pieces timed on first use" if rep["timed"] else "")
    )
    say(f"  {'predicted ms':>12} {'measured ms':>12} {'error':>7}")
    for r in rep["rows"]:
        say(f"  {r['predicted_ms']:12.1f} {r['measured_ms']:12.1f} {r['predicted_ms'] / r['measured_ms'] - 1:+7.1%}")
    rank = "" if rep["spearman"] is None else f"Spearman {rep['spearman']:.3f}  Kendall tau {rep['kendall_tau']:.3f}  "
    say(
        f"{rank}MAPE {rep['mape']:.1%}  median error {rep['median_ape']:.1%}  "
        f"within +-10% {rep['within_10pct']:.0%} of {rep['n']}"
    )
    model.table.check = {
        k: rep[k] for k in ("n", "spearman", "kendall_tau", "mape", "median_ape", "within_10pct", "rows")
    }
    model.table.save()
    return rep


def run(args) -> int:
    check_int("--check", args.check, 0, 10_000)
    model = _model(args)
    if args.grid_base:
        n = _cover_grid(model, args)
        _say(args)(
            f"grid-scale cover: {n} pieces timed for --grid-base {args.grid_base} --phi {args.phi:g} "
            f"--max-candidates {args.max_candidates}"
        )
    _describe(model, args)
    fp, st = model.fingerprint, model.setting
    result = {
        **{
            k: fp[k]
            for k in ("device", "device_name", "torch", "dtype", "memory_format", "threads", "allocator", "clock")
        },
        "space": st["space"],
        "cost": st["cost"],
        "target_image_size": st["image_size"],
        "target_batch_size": st["batch_size"],
        "num_classes": st["num_classes"],
        **check_fields(model),
    }
    empty = {
        "spearman": None,
        "kendall_tau": None,
        "mape": None,
        "median_ape": None,
        "within_10pct": None,
        "n": 0,
        "timed": 0,
        "rows": [],
    }
    if args.check:
        rep = _check(model, args)
        result.update({k: rep[k] for k in empty})
    else:
        result.update(empty)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0
