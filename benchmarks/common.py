"""Helpers the benchmark scripts share (imported by name: a script's own folder is on ``sys.path``).

* :func:`parse_with_tiny`: a ``--tiny`` flag that swaps in small defaults, flags given still winning;
* :func:`samples`: how many samples a figure stands on, said when it is fewer than ten.
"""

from __future__ import annotations

import argparse
from typing import Any

FEW_SAMPLES = 10  # a figure from fewer samples says how many


def parse_with_tiny(p: argparse.ArgumentParser, tiny: dict[str, Any], argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--tiny``, again with ``tiny`` as the defaults, so that the flags given
    on the command line still win. Tiny shrinks sizes and repetitions, never what is measured."""
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a run of seconds on a CPU (the tests run it): " + ", ".join(f"{k}={v}" for k, v in tiny.items()),
    )
    args = p.parse_args(argv)
    if args.tiny:
        p.set_defaults(**tiny)
        args = p.parse_args(argv)
    return args


def samples(n: int, what: str = "samples") -> str:
    """`` (n samples)`` when a figure stands on fewer than :data:`FEW_SAMPLES`, else nothing."""
    if n >= FEW_SAMPLES:
        return ""
    return f" ({n} {what[:-1] if n == 1 and what.endswith('s') else what})"
