"""User plugins: ``--plugin MODULE`` imports a module that registers search spaces or rewards
(``search_spaces.base.register``, ``rewards.register``), so ``--space`` / ``--reward`` can name them
like built-in ones. Every process that evaluates trials imports them (workers, Ray nodes)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType

from nas.errors import NasError

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def import_plugins(names: Sequence[str]) -> list[ModuleType]:
    """Import user modules (``--plugin MODULE``) that register search spaces or rewards.

    The current directory is searched as ``python -m`` does, so ``--plugin myspace`` finds
    ``./myspace.py``. Errors become one-line :class:`NasError`\\ s naming the module."""
    mods = []
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise NasError(f"--plugin takes a Python module name such as mypkg.spaces, got {name!r}")
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                raise NasError(
                    f"plugin module {name!r} not found (looked in the current directory and on PYTHONPATH)"
                ) from None
            raise NasError(f"plugin {name!r} failed to import: {e}") from None
        except Exception as e:  # the user's module: any error at import time
            raise NasError(f"plugin {name!r} failed to import: {type(e).__name__}: {e}") from None
    return mods
