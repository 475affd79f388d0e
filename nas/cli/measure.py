"""``nas measure``: time the real training step of an architecture on this machine, or with
``--latency`` its inference latency (the forward pass in evaluation mode, batch 1 by default).

When a step-time table (``nas calibrate``) exists for this device and setting (``--image-size``,
``--batch-size``, the cost, ``--num-classes``), the table's prediction is printed beside the
measurement, so any architecture can be checked against the model.
"""

from __future__ import annotations

import json
import sys

import torch

from nas.core.device import SWITCHES, Runtime
from nas.core.memory import check_step_memory, out_of_memory_as_error
from nas.core.resolve import resolve_arch
from nas.errors import check_choice, check_int
from nas.steptime import StepTimeModel, Target
from nas.steptime.costs import get_cost
from nas.steptime.measure import FORMAT_SWITCH, MEMORY_FORMATS, measure_step_time
from search_spaces import count_params, get_space

AMP_MODES = SWITCHES


def add_timing_arguments(p) -> None:
    """How a timing runs on this machine, and where its tables live (nas measure, nas calibrate)."""
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); part of a table's fingerprint",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall (default): elapsed time; cpu: process CPU time, steadier on a CPU shared with other "
        "jobs (needs --device cpu --threads 1)",
    )
    p.add_argument(
        "--table-dir",
        default=None,
        help="where this machine's step-time tables live (default $NAS_CACHE_DIR/steptime or ~/.cache/nas/steptime)",
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="time one training step (forward, loss, backward, optimizer step) or, with "
        "--latency, one inference forward pass",
    )
    p.add_argument("arch", metavar="ARCH", help="preset, architecture string, JSON file or run directory")
    p.add_argument(
        "--latency",
        action="store_true",
        help="time the inference latency: the forward pass in evaluation mode (batch 1 unless --batch-size)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (1 with --latency)")
    p.add_argument("--image-size", type=int, default=None, help="default: the architecture's resolution")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto")
    p.add_argument("--amp", choices=AMP_MODES, default="auto")
    p.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timed steps (default 2)")
    p.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="off",
        metavar="on|off",
        help="time the torch.compile'd step (--compile alone: on); the compilation is reported apart",
    )
    add_timing_arguments(p)
    p.add_argument(
        "--space",
        default=None,
        help="predict with this space's step-time table (default: the first table for this setting)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads, 1, 4096))
    compile_step = check_choice("--compile", args.compile, ("on", "off")) == "on"
    arch = resolve_arch(args.arch)
    if args.space is not None:
        get_space(args.space)
    cost = "latency" if args.latency else "step"  # the two costs nas.steptime.costs registers
    batch = args.batch_size if args.batch_size is not None else (1 if args.latency else 32)
    runtime = Runtime.resolve(args.device, args.amp, FORMAT_SWITCH[args.memory_format])
    if not args.latency:  # inference holds no activations for a backward pass: far less than a training step
        check_step_memory(arch, batch, args.image_size or arch.resolution, args.num_classes, runtime)
    with out_of_memory_as_error("timing the training step" if not args.latency else "timing the forward pass"):
        r = measure_step_time(
            arch,
            device=args.device,
            batch_size=batch,
            image_size=args.image_size,
            num_classes=args.num_classes,
            amp=args.amp,
            memory_format=args.memory_format,
            cost=cost,
            min_run_time=args.min_run_time,
            compile=compile_step,
            clock=args.clock,
            progress=_progress_line,
        )
    out = {"arch": arch.to_string(), "params": count_params(arch, args.num_classes), **r.to_dict()}
    out.update(_prediction(arch, runtime, Target(r.image_size, r.batch_size, cost), args))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print(r, out)
    return 0


def _print(r, out: dict) -> None:
    what = f"{get_cost(r.cost).what:<11}"
    print(f"{what} {r.step_time_ms:.2f} ms median  (IQR {r.iqr_ms:.2f} ms, {r.runs} runs x {r.steps_per_run} steps)")
    if "predicted_step_time_ms" in out:
        p = out["predicted_step_time_ms"]
        timed = f" ({out['predicted_timed_pieces']} pieces timed first)" if out["predicted_timed_pieces"] else ""
        print(
            f"predicted   {p:.2f} ms ({p / r.step_time_ms - 1:+.1%}) by the {out['table_space']} step-time table "
            f"{out['table']}{timed}"
        )
    mode = "training" if get_cost(r.cost).training else "inference, evaluation mode"
    print(
        f"setting     batch {r.batch_size}, {r.image_size} px, {r.dtype}{' (AMP)' if r.amp else ''}, "
        f"{r.memory_format}, {mode}, {r.clock} clock{', compiled' if r.compiled else ''}"
    )
    if r.compiled:
        print(f"compile     {r.compile_s:.1f} s (the first step, beyond a compiled step)")
    print(f"device      {r.device} ({r.device_name}), torch {r.torch_version}, {r.threads} threads")
    print(f"params      {out['params']:,}")


def _prediction(arch, runtime, target: Target, args) -> dict:
    """The step-time table's prediction for this device and setting, when there is a table."""
    model = StepTimeModel.find(
        runtime,
        target,
        table_dir=args.table_dir,
        spaces=[args.space] if args.space else None,
        num_classes=args.num_classes,
        clock=args.clock,
    )
    if model is None:
        return {}
    return {
        "predicted_step_time_ms": model.predict(arch),
        "table": str(model.path),
        "table_space": model.space.name,
        "predicted_timed_pieces": model.timed,
    }


def _progress_line(done: int, total: int, seconds: float) -> None:
    """Slow steps (the full-size network on a CPU): say what is happening, on stderr."""
    print(f"timing: step {done} of at least {total} took {seconds:.1f} s ...", file=sys.stderr, flush=True)
