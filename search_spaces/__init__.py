"""Architectures as data, the networks they build into, the published presets and the search spaces.

Names are loaded on first use (PEP 562), so that ``import nas.errors`` (which every
``nas`` command does) does not pay for importing torch: ``nas --help`` and a bad-input error stay quick.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Architecture": "arch",
    "Stage": "arch",
    "SearchSpace": "base",
    "Chooser": "base",
    "OptunaChooser": "base",
    "RngChooser": "base",
    "get_space": "base",
    "space_names": "base",
    "Network": "builder",
    "build": "builder",
    "count_macs": "builder",
    "count_params": "builder",
    "NasError": "nas.errors",
    "REFERENCE": "reference",
    "Counterpart": "reference",
    "counterpart": "reference",
    "counterparts": "reference",
    "preset": "presets",
    "preset_names": "presets",
    "compound": "scaling",
    "round_filters": "scaling",
    "round_repeats": "scaling",
    "scale": "scaling",
    "scale_v2": "scaling",
    "load_weights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")
    mod = _EXPORTS[name]
    value = getattr(importlib.import_module(mod if "." in mod else f"search_spaces.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
