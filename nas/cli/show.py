"""``nas show``: the stage table, parameters and MACs of an architecture."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd

from nas.core.resolve import recorded_num_classes, resolve_arch
from nas.errors import NasError
from search_spaces import count_macs, count_params

if TYPE_CHECKING:
    from search_spaces import Architecture


def add_parser(sub) -> None:
    p = sub.add_parser(
        "show",
        help="print an architecture's stage table, parameters and MACs",
        description="ARCH is a preset name (nas presets), an architecture string, "
        "an architecture JSON file or a run directory.",
    )
    p.add_argument("arch", metavar="ARCH")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="count parameters for this many classes (default: the class count a run directory or "
        "result file records, else 1000)",
    )
    p.add_argument("--resolution", type=int, default=None, help="count MACs at this size (default: native)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def summary(arch: Architecture, num_classes: int = 1000, resolution: int | None = None) -> dict:

    res = resolution or arch.resolution
    return {
        "arch": arch.to_string(),
        "architecture": arch.to_dict(),
        "params": count_params(arch, num_classes),
        "macs": count_macs(arch, res, num_classes),
        "resolution": res,
        "num_classes": num_classes,
    }


def stage_table(arch: Architecture) -> str:

    rows = [
        {
            "stage": 0,
            "op": "conv3x3 (stem)",
            "kernel": 3,
            "stride": 2,
            "expansion": "",
            "in": 3,
            "out": arch.stem,
            "layers": 1,
            "se": "",
            "skip": "",
        }
    ]
    for k, (s, cin) in enumerate(zip(arch.stages, arch.stage_inputs()), start=1):
        rows.append(
            {
                "stage": k,
                "op": "Fused-MBConv" if s.block == "fused" else "MBConv",
                "kernel": s.kernel,
                "stride": s.stride,
                "expansion": s.expansion,
                "in": cin,
                "out": s.out,
                "layers": s.repeats,
                "se": s.se or "",
                "skip": s.skip,
                "nominal in": s.nominal_in or "",
            }
        )
    rows.append(
        {
            "stage": len(arch.stages) + 1,
            "op": "conv1x1 (head)",
            "kernel": 1,
            "stride": 1,
            "expansion": "",
            "in": arch.stages[-1].out,
            "out": arch.head,
            "layers": 1,
            "se": "",
            "skip": "",
        }
    )
    df = pd.DataFrame(rows)
    if not any(s.nominal_in for s in arch.stages):  # TF's nominal input (fc): shown only where used
        df = df.drop(columns=["nominal in"])
    return df.fillna("").to_string(index=False)


def run(args) -> int:

    if args.num_classes is not None and args.num_classes < 1:
        raise NasError(f"--num-classes must be positive, got {args.num_classes}")
    if args.resolution is not None and not 8 <= args.resolution <= 2048:
        raise NasError(f"--resolution must be in [8, 2048], got {args.resolution}")
    arch = resolve_arch(args.arch)
    num_classes, source = (args.num_classes, "--num-classes") if args.num_classes else recorded_num_classes(args.arch)
    num_classes, source = (num_classes, source) if num_classes else (1000, "default")
    info = {**summary(arch, num_classes, args.resolution), "num_classes_from": source}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(stage_table(arch))
    where = {"default": "", "--num-classes": ""}.get(source, f", as recorded in {source}")
    print(f"\narch        {info['arch']}")
    print(f"params      {info['params']:,}  (at {num_classes} classes{where})")
    print(f"MACs        {info['macs']:,}  ({info['macs'] / 1e9:.3f} G at {info['resolution']} px)")
    print(f"activation  {arch.activation}   dropout {arch.dropout}   stochastic depth {arch.drop_path}")
    print(f"BatchNorm   eps {arch.bn_eps:g}   momentum {arch.bn_momentum:g}   padding {arch.padding}")
    return 0
