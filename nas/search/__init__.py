"""A run from start to end: the library's entry points (:func:`search`, :func:`grid_scale`), which
run user settings through the one driver (:mod:`nas.search.driver`), where they are resolved once
and the run's target is prepared before its first trial."""

from nas.scaling.grid import GridOptions, GridSpec
from nas.search.api import grid_scale, search
from nas.study.space import SearchOptions
from nas.trial.settings import ProxyConfig, TrialSettings

__all__ = ["GridOptions", "GridSpec", "ProxyConfig", "SearchOptions", "TrialSettings", "grid_scale", "search"]
