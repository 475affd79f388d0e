"""The problems a run can solve, by the ``kind`` its ``config.json`` records: a process that joins
a run (``nas worker``, a Ray trial, ``nas report``) rebuilds the problem from that file."""

from __future__ import annotations

from typing import Any

from nas.errors import NasError
from nas.study.grid import GridProblem
from nas.study.problem import Problem
from nas.study.space import SearchProblem

PROBLEMS: dict[str, type[Problem]] = {SearchProblem.kind: SearchProblem, GridProblem.kind: GridProblem}


def problem_from_config(config: dict[str, Any]):
    """Rebuild a run's problem from its ``config.json``. Returns ``(problem, sampler, pruner, storage)``."""
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in PROBLEMS:
        raise NasError(f"the run configuration is of kind {kind!r}; known: {', '.join(PROBLEMS)}")
    try:
        return PROBLEMS[kind].from_config(config)
    except (KeyError, TypeError) as e:
        raise NasError(f"the run configuration is not a complete {kind} configuration: {e}") from None
