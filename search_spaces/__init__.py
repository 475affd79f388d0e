"""Architectures as data, the networks they build into, the published presets and the search spaces."""

from search_spaces.arch import Architecture, Stage
from search_spaces.builder import Network, build, count_macs, count_params
from search_spaces.errors import NasError
from search_spaces.presets import REFERENCE, preset, preset_names
from search_spaces.scaling import compound, round_filters, round_repeats, scale, scale_v2

__all__ = [
    "Architecture", "Stage", "Network", "NasError", "REFERENCE",
    "build", "count_macs", "count_params", "preset", "preset_names",
    "compound", "round_filters", "round_repeats", "scale", "scale_v2",
]
