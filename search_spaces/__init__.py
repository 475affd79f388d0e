"""Architectures as data, the networks they build into, the published presets and the search spaces."""

from search_spaces.arch import Architecture, Stage
from search_spaces.base import Chooser, OptunaChooser, RngChooser, SearchSpace, get_space, space_names
from search_spaces.builder import Network, build, count_macs, count_params
from search_spaces.errors import NasError
from search_spaces.presets import REFERENCE, preset, preset_names
from search_spaces.scaling import compound, round_filters, round_repeats, scale, scale_v2

# Each space registers itself on import; a new space is one new file plus one line here.
from search_spaces import mnasnet as _mnasnet  # noqa: E402,F401
from search_spaces import trainaware as _trainaware  # noqa: E402,F401

__all__ = [
    "Architecture", "Stage", "SearchSpace", "Chooser", "OptunaChooser", "RngChooser",
    "get_space", "space_names", "Network", "NasError", "REFERENCE",
    "build", "count_macs", "count_params", "preset", "preset_names",
    "compound", "round_filters", "round_repeats", "scale", "scale_v2",
]
