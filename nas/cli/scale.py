"""``nas grid-scale`` and ``nas scale``: compound scaling (EfficientNet V1 section 3.3).

``grid-scale`` is step 1 (fix phi, grid-search alpha, beta, gamma on the base network);
``scale`` is step 2 (fix alpha, beta, gamma, write the family for phi = 1..N). The engine is
:mod:`nas.scaling`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from nas.cli.search import add_run_arguments, add_trial_arguments, run_options, trial_settings
from nas.core.files import atomic_write_text
from nas.core.plugins import import_plugins
from nas.core.resolve import resolve_arch
from nas.errors import NasError
from nas.scaling.family import parse_coefficients, scale_family
from nas.scaling.grid import STUDY_NAME, GridOptions, GridSpec, base_slug, check_phi, default_out
from nas.search import grid_scale
from nas.study.results import read_rows
from search_spaces import Architecture, preset
from search_spaces.presets import FAMILIES


def add_parser(sub) -> None:
    _add_grid_scale(sub)
    _add_scale(sub)


def _add_grid_scale(sub) -> None:
    p = sub.add_parser(
        "grid-scale",
        help="grid-search compound scaling coefficients alpha, beta, gamma",
        description="Enumerate (alpha, beta, gamma) on a grid under |alpha*beta**2*gamma**2 - 2| "
        "<= tolerance, scale the base by each (depth alpha**phi, width beta**phi, "
        "resolution gamma**phi), train and time a proxy of each like a nas search "
        "trial (proxy image size grows with gamma**phi) and pick the best. Rerun "
        "the same command to resume.",
    )
    p.add_argument(
        "--base",
        required=True,
        help="the network to scale: preset, architecture string, JSON file or nas run directory",
    )
    p.add_argument(
        "--phi",
        type=float,
        default=1.0,
        help="compound coefficient the candidates are scaled with (default 1, the paper's step 1); "
        "the constraint stays on the per-unit product alpha*beta**2*gamma**2 = 2",
    )
    p.add_argument("--step", type=float, default=0.05, help="grid step (default 0.05)")
    p.add_argument(
        "--min", type=float, default=1.0, dest="grid_min", metavar="MIN", help="smallest coefficient (default 1)"
    )
    p.add_argument(
        "--max", type=float, default=2.0, dest="grid_max", metavar="MAX", help="largest coefficient (default 2)"
    )
    p.add_argument("--tolerance", type=float, default=0.1, help="allowed |alpha*beta**2*gamma**2 - 2| (default 0.1)")
    p.add_argument(
        "--max-candidates",
        type=int,
        default=8,
        help="evaluate at most N constraint-satisfying candidates, an evenly spread deterministic "
        "subset (default 8); the base is evaluated in addition",
    )
    p.add_argument(
        "--objective",
        default="accuracy",
        help="accuracy (default, the paper's choice) or reward: how the coefficients are chosen",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/grid-BASE-phiPHI)")
    add_run_arguments(p, study="nas-grid")
    add_trial_arguments(p)
    p.set_defaults(func=run_grid_scale)


def _add_scale(sub) -> None:
    p = sub.add_parser(
        "scale",
        help="write the scaled family of an architecture: compound (phi = 1..N) or a published table",
        description="Compound scaling (depth alpha**phi, width beta**phi, resolution gamma**phi) "
        "with EfficientNet's rounding rules, or EfficientNetV2's with --v2-rules; or "
        "the members of a published table (--coefficients efficientnet: B1..B8, L2; "
        "efficientnetv2: V2-B1..B3). One JSON per member and family.csv.",
    )
    p.add_argument(
        "--phi",
        type=float,
        default=None,
        help="largest compound coefficient N (phi = 1..N); with a published table, its first N members (default: all)",
    )
    p.add_argument(
        "--coefficients",
        required=True,
        help="A,B,G (e.g. 1.2,1.1,1.15), a coefficients.json, a grid-scale run directory, or a published "
        "table: efficientnet (V1 rules) or efficientnetv2 (V2 rules)",
    )
    p.add_argument(
        "--base",
        default=None,
        help="the network to scale (default: the base stored in the coefficients.json, or the table's B0)",
    )
    p.add_argument("--out", default=None, help="output directory (default runs/scale-BASE)")
    p.add_argument(
        "--depth-rounding",
        choices=["round", "ceil"],
        default=None,
        help="layers per stage: round(repeats*depth) (default for V1 compound scaling: keeps MACs on "
        "the (alpha*beta**2*gamma**2)**phi target) or ceil (the papers' rule; default with "
        "--v2-rules and for the published tables)",
    )
    p.add_argument(
        "--v2-rules",
        action="store_true",
        default=None,
        help="EfficientNetV2's rules: channels rounded without V1's 90%% rule, inference size capped "
        "at 480 (the published efficientnetv2 table implies them)",
    )
    p.add_argument(
        "--late-stages",
        type=int,
        default=0,
        metavar="N",
        help="with --v2-rules: give the added layers to the last N stages (V2 section 4.3's heuristic "
        "for V2-S to M and L; default 0, every stage scales)",
    )
    p.add_argument("--num-classes", type=int, default=1000, help="classes for params / MACs (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run_grid_scale(args) -> int:
    import_plugins(args.plugin)
    how = run_options(args)
    spec = GridSpec(phi=args.phi, step=args.step, lo=args.grid_min, hi=args.grid_max, tolerance=args.tolerance)
    base = resolve_arch(args.base)
    # The space only names the settings' default reference; grid-scale normalises by the base.
    settings = trial_settings(args, "trainaware")
    opts = GridOptions(
        spec=spec,
        max_candidates=args.max_candidates,
        objective=args.objective,
        storage=args.storage,
        study_name=args.study_name or STUDY_NAME,
        out=args.out or default_out(args.base, base, spec.phi),
    )
    best = grid_scale(settings, base, opts, **how)
    return 0 if best else 1


def run(args) -> int:
    n = None if args.phi is None else check_phi(args.phi, integer=True)
    table = args.coefficients.strip().lower() if args.coefficients.strip().lower() in FAMILIES else None
    coeffs, stored_base = (table, FAMILIES[table].base) if table else parse_coefficients(args.coefficients)
    if args.base is not None:
        base, spec = resolve_arch(args.base), args.base
    elif stored_base is not None:
        base, spec = (preset(stored_base) if table else Architecture.from_string(stored_base)), stored_base
    else:
        raise NasError(f"--base is needed: {args.coefficients!r} does not name the base it was searched on")
    rows = scale_family(
        base,
        coeffs,
        n,
        v2_rules=args.v2_rules,
        num_classes=args.num_classes,
        depth_rounding=args.depth_rounding,
        late_stages=args.late_stages,
    )
    out = Path(args.out or f"runs/scale-{base_slug(spec, base)}")
    table_df = _write_family(out, rows)
    if args.json:
        _print_json(args, table, coeffs, base, out, rows, table_df)
    else:
        _print_table(args, table, coeffs, out, rows, table_df)
    return 0


def _write_family(out: Path, rows: list[dict]) -> pd.DataFrame:
    """One JSON per member and family.csv (files of a larger earlier family removed)."""
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["file"] = f"{r['member']}.json" if r["phi"] else None
        if r["file"]:
            atomic_write_text(out / r["file"], r["architecture"].to_json(indent=2) + "\n")
    _remove_stale_members(out, {r["file"] for r in rows if r["file"]})
    table_df = pd.DataFrame([{k: v for k, v in r.items() if k != "architecture"} for r in rows])
    atomic_write_text(out / "family.csv", table_df.to_csv(index=False))
    return table_df


def _print_json(args, table, coeffs, base, out: Path, rows: list[dict], table_df: pd.DataFrame) -> None:
    compound = not table
    # Strict JSON (allow_nan=False): the base row's file is null, never NaN.
    data = {
        "coefficients": args.coefficients,
        "published": table,
        "alpha": coeffs.alpha if compound else None,
        "beta": coeffs.beta if compound else None,
        "gamma": coeffs.gamma if compound else None,
        "product": coeffs.product if compound else None,
        "rules": rows[0]["rules"],
        "depth_rounding": rows[0]["depth_rounding"],
        "late_stages": args.late_stages,
        "num_classes": args.num_classes,
        "base": base.to_string(),
        "out": str(out),
        "family": [{k: v for k, v in r.items() if k != "architecture"} for r in rows],
    }
    print(json.dumps(data, indent=2, allow_nan=False))


def _print_table(args, table, coeffs, out: Path, rows: list[dict], table_df: pd.DataFrame) -> None:
    rules, depth_rounding = rows[0]["rules"], rows[0]["depth_rounding"]
    rules_text = "EfficientNetV2 (section 4.3)" if rules == "v2" else "EfficientNet V1 (section 3.3)"
    if args.late_stages:
        rules_text += f", added layers to the last {args.late_stages} stages"
    shown = table_df.drop(columns=["arch", "file", "rules", "depth_rounding", "num_classes"], errors="ignore").copy()
    for c, fmt in (
        ("depth_mult", "{:.3f}"),
        ("width_mult", "{:.3f}"),
        ("macs_ratio", "{:.2f}"),
        ("target_macs_ratio", "{:.2f}"),
    ):
        shown[c] = shown[c].map(fmt.format)
    for c in ("params", "macs"):
        shown[c] = shown[c].map(lambda v: f"{int(v):,}")
    if not table:
        print(
            f"compound scaling alpha={coeffs.alpha:g} beta={coeffs.beta:g} gamma={coeffs.gamma:g} "
            f"(alpha*beta**2*gamma**2 = {coeffs.product:.3f}), {rules_text} rules, depth {depth_rounding}; "
            f"params and MACs at {args.num_classes} classes"
        )
    else:
        print(
            f"published {table} coefficients (width, depth, resolution, dropout per member), {rules_text} rules, "
            f"depth {depth_rounding}; params and MACs at {args.num_classes} classes"
        )
    print(shown.to_string(index=False))
    print()
    for r in rows:
        print(f"{'phi ' + str(r['phi']) if not table else r['member']}: {r['arch']}")
    print(f"\nwrote {', '.join(r['file'] for r in rows[1:])} and family.csv to {out}/")


def _remove_stale_members(out, keep: set[str]) -> None:
    """A rerun with fewer members (``--phi 2`` after ``--phi 3``) removes the files the earlier family.csv
    listed and this one does not, so the directory holds one family; nothing else is touched."""
    for r in read_rows(out / "family.csv") if (out / "family.csv").exists() else []:
        name = r.get("file")
        if isinstance(name, str) and name not in keep and "/" not in name and (out / name).is_file():
            (out / name).unlink()
