"""``nas grid-scale`` and ``nas scale``: compound scaling (EfficientNet V1 section 3.3).

``grid-scale`` is step 1 (fix phi, grid-search alpha, beta, gamma on the base network);
``scale`` is step 2 (fix alpha, beta, gamma, write the family for phi = 1..N). The engine is
:mod:`nas.scaling`.
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    from nas.commands.search import add_run_arguments, add_trial_arguments

    p = sub.add_parser("grid-scale", help="grid-search compound scaling coefficients alpha, beta, gamma",
                       description="Enumerate (alpha, beta, gamma) on a grid under |alpha*beta**2*gamma**2 - 2| "
                                   "<= tolerance, scale the base by each (depth alpha**phi, width beta**phi, "
                                   "resolution gamma**phi), train and time a proxy of each like a nas search "
                                   "trial (proxy image size grows with gamma**phi) and pick the best. Rerun "
                                   "the same command to resume.")
    p.add_argument("--base", required=True,
                   help="the network to scale: preset, architecture string, JSON file or nas run directory")
    p.add_argument("--phi", type=float, default=1.0,
                   help="compound coefficient the candidates are scaled with (default 1, the paper's step 1); "
                        "the constraint stays on the per-unit product alpha*beta**2*gamma**2 = 2")
    p.add_argument("--step", type=float, default=0.05, help="grid step (default 0.05)")
    p.add_argument("--min", type=float, default=1.0, dest="grid_min", metavar="MIN",
                   help="smallest coefficient (default 1)")
    p.add_argument("--max", type=float, default=2.0, dest="grid_max", metavar="MAX",
                   help="largest coefficient (default 2)")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="allowed |alpha*beta**2*gamma**2 - 2| (default 0.1)")
    p.add_argument("--max-candidates", type=int, default=8,
                   help="evaluate at most N constraint-satisfying candidates, an evenly spread deterministic "
                        "subset (default 8); the base is evaluated in addition")
    p.add_argument("--objective", default="accuracy",
                   help="accuracy (default, the paper's choice) or reward: how the coefficients are chosen")
    p.add_argument("--out", default=None, help="run directory (default runs/grid-BASE-phiPHI)")
    add_run_arguments(p, study="nas-grid")
    add_trial_arguments(p)
    p.set_defaults(func=run_grid_scale)

    p = sub.add_parser("scale", help="write the compound-scaled family of an architecture for phi = 1..N",
                       description="Depth alpha**phi, width beta**phi, resolution gamma**phi with EfficientNet's "
                                   "rounding rules (or EfficientNetV2's with --v2-rules), one JSON per phi and "
                                   "family.csv.")
    p.add_argument("--phi", type=float, required=True, help="largest compound coefficient N (phi = 1..N)")
    p.add_argument("--coefficients", required=True,
                   help="A,B,G (e.g. 1.2,1.1,1.15), a coefficients.json or a grid-scale run directory")
    p.add_argument("--base", default=None,
                   help="the network to scale (default: the base stored in the coefficients.json)")
    p.add_argument("--out", default=None, help="output directory (default runs/scale-BASE)")
    p.add_argument("--depth-rounding", choices=["round", "ceil"], default="round",
                   help="layers per stage: round(repeats*alpha**phi) (default: keeps MACs on the "
                        "(alpha*beta**2*gamma**2)**phi target) or ceil (the rule of the published B1..B7)")
    p.add_argument("--v2-rules", action="store_true",
                   help="EfficientNetV2's rules: inference size capped at 480, extra layers to the last stages")
    p.add_argument("--num-classes", type=int, default=1000, help="classes for params / MACs (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run_grid_scale(args) -> int:
    from nas.commands.search import backend_options, trial_settings
    from nas.driver import Job, run as run_job
    from nas.plugins import import_plugins
    from nas.resolve import resolve_arch
    from nas.scaling.grid import STUDY_NAME, GridOptions, GridSpec, default_out, proxy_duplicates
    from nas.scaling.problem import GridProblem

    import_plugins(args.plugin)
    backend, options = backend_options(args)
    spec = GridSpec(phi=args.phi, step=args.step, lo=args.grid_min, hi=args.grid_max, tolerance=args.tolerance)
    base = resolve_arch(args.base)
    # The space only names the settings' default reference; grid-scale normalises by the base.
    settings = trial_settings(args, "trainaware")
    opts = GridOptions(spec=spec, max_candidates=args.max_candidates, objective=args.objective, storage=args.storage,
                       study_name=args.study_name or STUDY_NAME, out=args.out or default_out(args.base, base, spec.phi))
    problem = GridProblem(settings, base, opts)
    plan = problem.plan
    print(f"{plan.n_feasible} of {spec.grid_points} grid points (alpha, beta, gamma in [{spec.lo:g}, {spec.hi:g}] "
          f"step {spec.step:g}) satisfy |alpha*beta**2*gamma**2 - 2| <= {spec.tolerance:g}; evaluating "
          f"{len(plan.selected)} of them (evenly spread, --max-candidates {opts.max_candidates}) and the base")
    same = proxy_duplicates(base, settings, plan)
    if same:
        print(f"note: at proxy scale (--width-mult {settings.proxy.width:g}, --depth-mult {settings.proxy.depth:g}) "
              f"{'; '.join(' = '.join(c.label() for c in g) for g in same)} train the same network at the same "
              "image size; raise --width-mult/--depth-mult to tell them apart")
    job = Job(problem=problem, n_trials=len(plan.candidates), out=opts.out, backend=backend, sampler="random",
              pruner="none", storage=opts.storage, options=options, plugins=tuple(args.plugin),
              restart=args.restart, progress=not args.no_progress)
    return 0 if run_job(job) else 1


def run(args) -> int:
    from pathlib import Path

    import pandas as pd

    from nas.errors import NasError
    from nas.scaling.family import parse_coefficients, scale_family
    from nas.scaling.grid import base_slug, check_phi
    from nas.resolve import resolve_arch
    from nas.files import atomic_write_text

    n = check_phi(args.phi, integer=True)
    if args.num_classes < 1:
        raise NasError(f"--num-classes must be positive, got {args.num_classes}")
    coeffs, stored_base = parse_coefficients(args.coefficients)
    if args.base is not None:
        base, spec = resolve_arch(args.base), args.base
    elif stored_base is not None:
        from search_spaces import Architecture

        base, spec = Architecture.from_string(stored_base), stored_base
    else:
        raise NasError(f"--base is needed: {args.coefficients!r} does not name the base it was searched on")
    rows = scale_family(base, coeffs, n, v2_rules=args.v2_rules, num_classes=args.num_classes,
                        depth_rounding=args.depth_rounding)
    out = Path(args.out or f"runs/scale-{base_slug(spec, base)}")
    out.mkdir(parents=True, exist_ok=True)
    for r in rows[1:]:
        r["file"] = f"phi{r['phi']}.json"
        atomic_write_text(out / r["file"], r["architecture"].to_json(indent=2) + "\n")
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "architecture"} for r in rows])
    atomic_write_text(out / "family.csv", table.to_csv(index=False))
    rules = "EfficientNetV2 (section 4.3)" if args.v2_rules else "EfficientNet V1 (section 3.3)"
    if args.json:
        print(json.dumps({"alpha": coeffs.alpha, "beta": coeffs.beta, "gamma": coeffs.gamma,
                          "product": coeffs.product, "rules": "v2" if args.v2_rules else "v1",
                          "depth_rounding": args.depth_rounding, "out": str(out),
                          "family": table.to_dict(orient="records")}, indent=2))
        return 0
    shown = table.drop(columns=["arch", "file"], errors="ignore").copy()
    for c, fmt in (("depth_mult", "{:.3f}"), ("width_mult", "{:.3f}"), ("macs_ratio", "{:.2f}"),
                   ("target_macs_ratio", "{:.2f}")):
        shown[c] = shown[c].map(fmt.format)
    for c in ("params", "macs"):
        shown[c] = shown[c].map(lambda v: f"{int(v):,}")
    print(f"compound scaling alpha={coeffs.alpha:g} beta={coeffs.beta:g} gamma={coeffs.gamma:g} "
          f"(alpha*beta**2*gamma**2 = {coeffs.product:.3f}), {rules} rules, {args.num_classes} classes")
    print(shown.to_string(index=False))
    print()
    for r in rows:
        print(f"phi {r['phi']}: {r['arch']}")
    print(f"\nwrote {', '.join(r['file'] for r in rows[1:])} and family.csv to {out}/")
    return 0
