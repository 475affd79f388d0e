"""Compound scaling (EfficientNet V1 section 3.3): the coefficient grid (:mod:`nas.scaling.grid`),
its evaluation as a problem any backend runs (:mod:`nas.scaling.problem`), and the scaled family
(:mod:`nas.scaling.family`)."""
