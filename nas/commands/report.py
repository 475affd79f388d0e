"""``nas report RUN_DIR``: print a finished (or running) search's summary again."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="summarise a run directory (trials.csv, best.json)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--top", type=int, default=10, help="rows in the table (default 10)")
    p.add_argument("--plot", action="store_true", help="redraw pareto.png from trials.csv")
    p.set_defaults(func=run)


def run(args) -> int:
    from nas.results import load_run, plot_pareto, summary_table

    df, best = load_run(args.run_dir)
    print(summary_table(df, top=args.top))
    if best:
        m = best.get("metrics", {})
        print(f"\nbest architecture (trial {m.get('number')}, reward {m.get('reward', float('nan')):.4f}, "
              f"accuracy {m.get('accuracy', float('nan')):.4f}, step time {m.get('step_time_ms', float('nan')):.2f} ms "
              f"on {m.get('device_name', '?')}):")
        print(best["arch"])
    if args.plot:
        path = plot_pareto(args.run_dir, df)
        print(f"wrote {path}" if path else "no complete trial to plot")
    return 0
