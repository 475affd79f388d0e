"""Fixtures shared by the whole test suite. Keep this file small: helpers used by one module live there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_nas(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """Run the CLI as a user does, in a fresh interpreter: ``python -m nas.cli *args``.

    Returns ``(returncode, stdout, stderr)``. Warnings are not silenced, so a stray warning on stderr
    fails the tests that demand a single error line.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-m", "nas.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd or REPO, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(name="run_nas", scope="session")
def run_nas_fixture():
    """The :func:`run_nas` helper as a fixture: ``rc, out, err = run_nas("show", "efficientnet-b0")``."""
    return run_nas
