"""One trial, whatever schedules it: the settings that define a search, the proxy a candidate is
trained as, the run's target its cost is measured on, the evaluators that score it (a registry:
:mod:`nas.trial.evaluator`), and the objective every backend runs."""

from nas.trial import proxy, surrogate  # noqa: F401  (the built-in evaluators register themselves on import)
