"""``nas calibrate``: build (or reuse) this device's step-time table for a space, and check it.

The table (:mod:`nas.steptime`) predicts a full-size candidate's training step time at a target
setting; this command builds it once per device fingerprint and setting (with a progress bar), then
times ``--check K`` random full-size candidates directly and prints how well the predictions agree:
Spearman, Kendall tau, mean absolute percentage error and the share within +-10%.
"""

from __future__ import annotations

import json
import math
import sys

AMP_MODES = ("auto", "on", "off")  # nas.core.device.SWITCHES; not imported here to keep `nas --help` fast


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="build this device's step-time table for a space and check its predictions",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--space", default="trainaware", help="search space (default trainaware)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--amp", choices=AMP_MODES, default="auto", help="mixed precision (default: on for CUDA)")
    p.add_argument(
        "--target-image-size",
        type=int,
        default=None,
        help="image size of the full-size step (default: 64 on CPU, the space's resolution on CUDA)",
    )
    p.add_argument(
        "--target-batch-size",
        type=int,
        default=None,
        help="batch of the full-size step (default: 16 on CPU; on CUDA 128 at 224 px, same pixels per batch)",
    )
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument(
        "--check",
        type=int,
        default=8,
        metavar="K",
        help="random full-size candidates to time directly against the predictions (default 8; 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the check's candidates (default 0)")
    p.add_argument(
        "--table-dir", default=None, help="where tables live (default $NAS_CACHE_DIR/steptime or ~/.cache/nas/steptime)"
    )
    p.add_argument("--rebuild", action="store_true", help="build the table again, replacing the stored one")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); part of the table's fingerprint",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall (default): elapsed time; cpu: process CPU time, steadier on a CPU shared with other "
        "jobs (needs --device cpu --threads 1)",
    )
    p.add_argument(
        "--piece-time",
        type=float,
        default=None,
        help="seconds of repeated timing per piece, at least (default 0.05; at least 8 runs too)",
    )
    p.add_argument(
        "--min-run-time",
        type=float,
        default=0.5,
        help="seconds of repeated timing per full-size step and repeat (default 0.5; 2 repeats, fastest kept)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _clean(v):
    """NaN (a correlation of fewer than two candidates) is not JSON: null."""
    return None if isinstance(v, float) and math.isnan(v) else v


def run(args) -> int:
    import torch

    from nas.core.device import Runtime
    from nas.errors import check_int, check_positive
    from nas.steptime import StepTimeModel, check, default_target
    from nas.steptime.model import PIECE_RUN_TIME
    from search_spaces import get_space

    if args.threads is not None:
        check_int("--threads", args.threads, 1, 4096)
        torch.set_num_threads(args.threads)
    check_int("--check", args.check, 0, 10_000)
    check_int("--seed", args.seed, 0, 2**32 - 1)
    check_positive("--min-run-time", args.min_run_time)
    piece_time = check_positive("--piece-time", args.piece_time) if args.piece_time is not None else PIECE_RUN_TIME
    space = get_space(args.space)
    runtime = Runtime.resolve(args.device, args.amp, "auto")
    target = default_target(runtime, space, image_size=args.target_image_size, batch_size=args.target_batch_size)
    fp = runtime.fingerprint()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(
        f"step-time model: space {space.name}, {fp['device']} ({fp['device_name']}), "
        f"{fp['threads'] or 'all'} threads, {fp['dtype']}, {fp['memory_format']}, torch {fp['torch']}, "
        f"{args.clock} clock"
    )
    say(
        f"target: {target}"
        + ("" if args.target_image_size or args.target_batch_size else f" (the {fp['device']} default)")
    )

    model = StepTimeModel.load_or_build(
        space,
        runtime,
        target,
        table_dir=args.table_dir,
        rebuild=args.rebuild,
        progress=True,
        num_classes=args.num_classes,
        piece_run_time=piece_time,
        measure_run_time=args.min_run_time,
        clock=args.clock,
    )
    t = model.table
    c = t.correction
    say(f"table: {t.path}")
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

    result = {
        "space": space.name,
        **{k: fp[k] for k in ("device", "device_name", "torch", "dtype", "memory_format", "threads")},
        "target_image_size": target.image_size,
        "target_batch_size": target.batch_size,
        "num_classes": args.num_classes,
        "clock": args.clock,
        "table": str(t.path),
        "pieces": len(t.pieces),
        "prefilled": t.prefilled,
        "build_s": t.build_s,
        "built_now": model.built,
        "correction": {k: c[k] for k in ("form", "a", "b", "d", "c", "loo_mape")},
    }
    if args.check:
        from tqdm import tqdm

        bar = tqdm(total=args.check, desc="check", unit="candidate", leave=False, file=sys.stderr)
        rep = check(
            model,
            args.check,
            seed=args.seed,
            min_run_time=args.min_run_time,
            progress=lambda done, total, row: bar.update(1),
        )
        bar.close()
        say(
            f"check: {rep['n']} random full-size candidates (seed {args.seed}) timed directly"
            + (f"; {rep['timed']} pieces timed on first use" if rep["timed"] else "")
        )
        say(f"  {'predicted ms':>12} {'measured ms':>12} {'error':>7}")
        for r in rep["rows"]:
            say(
                f"  {r['predicted_ms']:12.1f} {r['measured_ms']:12.1f} {r['predicted_ms'] / r['measured_ms'] - 1:+7.1%}"
            )
        say(
            f"Spearman {rep['spearman']:.3f}  Kendall tau {rep['kendall_tau']:.3f}  MAPE {rep['mape']:.1%}  "
            f"within +-10% {rep['within_10pct']:.0%} of {rep['n']}"
        )
        result.update({k: _clean(rep[k]) for k in ("spearman", "kendall_tau", "mape", "within_10pct", "n", "timed")})
        result["rows"] = rep["rows"]
    else:
        result.update(
            {"spearman": None, "kendall_tau": None, "mape": None, "within_10pct": None, "n": 0, "timed": 0, "rows": []}
        )
    if args.json:
        print(json.dumps(result, indent=2))
    return 0
