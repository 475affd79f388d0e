"""``nas export``: a network to ONNX or TorchScript, checked against PyTorch (the logic is :mod:`nas.export`)."""

from __future__ import annotations

import json

from nas.errors import check_choice, check_int
from nas.export.formats import FORMATS, SUFFIX, check, export, resolve_out
from nas.export.source import calibrate_random, load_source
from nas.scaling.grid import base_slug


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a network to ONNX or TorchScript and check it against PyTorch",
        description="SPEC is a nas train run directory or its checkpoint.pt (trained weights), "
        "or a preset, architecture string, JSON file or nas search run directory "
        "(random weights). The file takes any batch size at the exported image size; "
        "it is run on a random batch and the largest difference from PyTorch printed.",
    )
    p.add_argument("spec", metavar="ARCH|RUN_DIR|CHECKPOINT")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", default=None, help="output file (default: NAME.onnx / NAME.pt in the current directory)")
    p.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the native resolution)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classifier outputs for an architecture (default: the count a run records, else 1000); "
        "a checkpoint's own count cannot be changed",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    fmt = check_choice("--format", args.format, FORMATS)
    if args.image_size is not None:
        check_int("--image-size", args.image_size, 8, 2048)
    src = load_source(args.spec, args.num_classes)
    size = args.image_size or src.arch.resolution
    out = resolve_out(args.out, f"{base_slug(args.spec, src.arch)}{SUFFIX[fmt]}", args.spec)
    if src.random:
        calibrate_random(src.model, size)
    export(src.model, out, fmt, size)
    result = check(out, fmt, src.model, size)
    params = sum(p.numel() for p in src.model.parameters())
    info = {
        "file": str(out),
        "format": fmt,
        "bytes": out.stat().st_size,
        "arch": src.arch.to_string(),
        "params": params,
        "num_classes": src.num_classes,
        "image_size": size,
        "dynamic_batch": True,
        "weights": src.weights,
        "checked_with": result.runtime,
        "check_batch": result.batch,
        "max_abs_diff": result.max_abs_diff,
        "max_abs_output": result.max_abs_output,
    }
    if args.json:
        print(json.dumps(info, indent=2, allow_nan=False))
        return 0
    print(
        f"wrote {out} ({fmt}, {info['bytes'] / 1e6:.1f} MB): {params:,} parameters at {src.num_classes} classes, "
        f"input [batch, 3, {size}, {size}] with any batch size"
    )
    print(f"weights: {src.weights}")
    if result.max_abs_diff is None:
        print(f"check: {result.runtime}")
    else:
        print(
            f"check: largest difference from PyTorch {result.max_abs_diff:.3g} (outputs up to "
            f"{result.max_abs_output:.3g}) on a random batch of {result.batch} ({result.runtime})"
        )
    return 0
