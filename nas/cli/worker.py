"""``nas worker``: one more process for a search, sharing its run directory's Optuna storage."""

from __future__ import annotations

from nas.backends.workers import run_worker
from nas.core.interrupt import handle_interrupts
from nas.core.plugins import import_plugins


def add_parser(sub) -> None:
    p = sub.add_parser(
        "worker",
        help="run trials of an existing search in this process, alongside others",
        description="Joins the search in RUN_DIR (made by nas search): runs --trials trials "
        "against the same Optuna storage as every other worker of that run. Each "
        "architecture is trained once across all workers. Start several to use "
        "several GPUs or cores of one machine (nas search --workers N does that).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the search's run directory (nas search --out)")
    p.add_argument("--trials", type=int, default=1, help="trials this worker runs (default 1)")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register search spaces or rewards); repeatable",
    )
    p.add_argument("--quiet", action="store_true", help="no line per trial (nas search --workers follows progress)")
    p.set_defaults(func=run)


def run(args) -> int:

    import_plugins(args.plugin)
    with handle_interrupts():
        run_worker(args.run_dir, args.trials, echo=(lambda line: None) if args.quiet else print)
    return 0
