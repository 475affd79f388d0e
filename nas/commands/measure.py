"""``nas measure``: time the real training step of an architecture on this machine."""

from __future__ import annotations

import json

AMP_MODES = ("auto", "on", "off")  # nas.device.SWITCHES; not imported here to keep `nas --help` fast
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # nas.measure.MEMORY_FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser("measure", help="time one training step (forward, loss, backward, optimizer step)")
    p.add_argument("arch", metavar="ARCH", help="preset, architecture string, JSON file or run directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=None, help="default: the architecture's resolution")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto")
    p.add_argument("--amp", choices=AMP_MODES, default="auto")
    p.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timed steps (default 2)")
    p.add_argument("--compile", nargs="?", const="on", default="off", metavar="on|off",
                   help="time the torch.compile'd step (--compile alone: on); the compilation is reported apart")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 gives steadier figures on a busy CPU")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from nas.measure import measure_step_time
    from nas.resolve import resolve_arch
    from search_spaces import count_params

    if args.threads is not None:
        import torch

        from nas.errors import NasError

        if args.threads < 1:
            raise NasError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    from nas.errors import check_choice

    compile_step = check_choice("--compile", args.compile, ("on", "off")) == "on"
    arch = resolve_arch(args.arch)
    r = measure_step_time(arch, device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                          num_classes=args.num_classes, amp=args.amp, memory_format=args.memory_format,
                          min_run_time=args.min_run_time, compile=compile_step)
    out = {"arch": arch.to_string(), "params": count_params(arch, args.num_classes), **r.to_dict()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"step time   {r.step_time_ms:.2f} ms median  (IQR {r.iqr_ms:.2f} ms, {r.runs} runs x {r.steps_per_run} steps)")
    print(f"setting     batch {r.batch_size}, {r.image_size} px, {r.dtype}{' (AMP)' if r.amp else ''}, "
          f"{r.memory_format}{', compiled' if r.compiled else ''}")
    if r.compiled:
        print(f"compile     {r.compile_s:.1f} s (the first step, beyond a compiled step)")
    print(f"device      {r.device} ({r.device_name}), torch {r.torch_version}, {r.threads} threads")
    print(f"params      {out['params']:,}")
    return 0
