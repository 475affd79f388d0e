"""Compound scaling (EfficientNet V1 section 3.3): the coefficient grid and its candidates
(:mod:`nas.scaling.grid`) and the scaled family (:mod:`nas.scaling.family`); the grid's evaluation is
:class:`nas.study.grid.GridProblem`."""
