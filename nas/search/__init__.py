"""A run from start to end: the library's entry points (:func:`search`, :func:`grid_scale`), which
resolve the settings once, and the driver that runs a problem on a backend."""
