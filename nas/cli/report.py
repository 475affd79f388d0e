"""``nas report RUN_DIR``: print a search's (or a grid's) summary again from its files."""

from __future__ import annotations

from pathlib import Path

from nas.core.files import read_json
from nas.core.files import read_json as _r
from nas.errors import NasError, check_int
from nas.study.fidelity import fidelity_lines
from nas.study.problems import problem_from_config
from nas.study.results import read_rows
from nas.study.rundir import CONFIG


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="summarise a run directory (trials.csv or grid.csv, best.json)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--top", type=int, default=10, help="rows in the table (default 10)")
    p.add_argument("--plot", action="store_true", help="redraw the plot from the results file")
    p.set_defaults(func=run)


def run(args) -> int:

    check_int("--top", args.top, 1, 100_000)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise NasError(f"run directory {str(run_dir)!r} does not exist")
    config = read_json(run_dir / CONFIG, "run configuration")
    problem = problem_from_config(config)[0]
    path = run_dir / problem.results_file
    if not path.is_file():
        raise NasError(f"{str(run_dir)!r} has no {problem.results_file} (no trial finished yet)")
    rows = read_rows(path)
    df = problem.table(rows)
    print(problem.summary(df) if problem.kind != "search" else problem.summary(df, top=args.top))
    best_path = run_dir / "best.json"
    if best_path.exists():
        best = read_json(best_path, "best architecture file")
        m, obj = best.get("metrics", {}), best.get("objective", "reward")
        figures = [f"{k} {m[k]:.4f}" for k in dict.fromkeys([obj, "accuracy"]) if isinstance(m.get(k), (int, float))]
        if isinstance(m.get("step_time_ms"), (int, float)):
            figures.append(f"step time {m['step_time_ms']:.2f} ms on {m.get('device_name', '?')}")
        print(f"\nbest architecture (trial {m.get('number')}, {', '.join(figures)}):")
        print(best["arch"])
    fid = run_dir / "fidelity.json"
    if fid.exists():
        data = read_json(fid, "fidelity file")
        for line in fidelity_lines(data if isinstance(data, dict) else {}):
            print(line)
    if args.plot:
        path = problem.plot(
            run_dir,
            df,
            {
                k: v
                for k, v in (_r(best_path, "best") if best_path.exists() else {}).items()
                if k in ("space", "target")
            },
        )
        print(f"wrote {path}" if path else "no complete trial to plot")
    return 0
