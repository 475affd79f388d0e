"""Backends: how a run's trials are scheduled (:mod:`nas.backends.base`), one module each:
``embedded`` (Optuna in this process), ``workers`` (N processes sharing the run's Optuna storage,
several per GPU if asked), ``ray`` (Ray Tune on a cluster)."""

from nas.backends import embedded, ray, workers  # noqa: F401  (each registers itself on import)
from nas.backends.base import BACKENDS, Backend, Flag, backend_from_flags, get_backend, register_backend

__all__ = ["BACKENDS", "Backend", "Flag", "backend_from_flags", "get_backend", "register_backend"]
