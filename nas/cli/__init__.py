"""The ``nas`` command line. ``main()`` is the console script; it returns the exit code.

Bad input (a :class:`NasError`) prints one line ``nas: error: ...`` and exits 2, never a traceback; a run
that fails for another reason (:class:`NasRuntimeError`: training diverged) prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from nas import __version__
from nas.cli import (
    calibrate,
    export,
    listing,
    measure,
    report,
    scale,
    search,
    show,
    train,
    worker,
)
from nas.core import interrupt
from nas.errors import NasError, NasRuntimeError

# One module per command, each with ``add_parser(subparsers)`` (which sets ``func``) and ``run(args) -> int``:
# a new command is one module plus one entry here.
COMMANDS = (show, measure, calibrate, listing, search, report, train, scale, worker, export)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nas", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in COMMANDS:
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C is only recorded from here on and acted on at a safe point (nas.core.interrupt): Python's own
    # handler would raise KeyboardInterrupt anywhere, also inside code torch runs for Python during an
    # import, after which the interpreter ends by SIGINT (exit -2) even though the exception is caught.

    with interrupt.handle_interrupts():
        try:
            parser = make_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            interrupt.check()
            code = int(args.func(args) or 0)
            interrupt.check()  # a request no safe point took: the work is done, the exit says interrupted
            return code
        except NasError as e:
            print(f"nas: error: {e}", file=sys.stderr)
            return 2
        except NasRuntimeError as e:
            print(f"nas: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("nas: interrupted", file=sys.stderr)
            return 130
