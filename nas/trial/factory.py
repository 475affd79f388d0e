"""An evaluator outside a run, for a script or a benchmark: the settings resolved, the data loaded,
the target prepared (a step-time table loaded or built on this machine), as the driver does for a run
(:mod:`nas.search.driver`), without a run directory."""

from __future__ import annotations

from nas.trial.evaluator import Evaluator, get_evaluator
from nas.trial.settings import TrialSettings
from nas.trial.target import check_classes, prepare, resolve
from search_spaces import Architecture


def evaluator_for(
    settings: TrialSettings,
    *,
    reference: Architecture | None = None,
    device: str | None = None,
    progress=False,
    log=None,
) -> Evaluator:
    """The evaluator ``settings.evaluator`` names, ready to score candidates in this process."""
    kind = get_evaluator(settings.evaluator)
    if not kind.needs_target:
        return kind(settings, reference=reference)
    settings = resolve(settings, device)
    data = kind.load_data(settings)
    check_classes(settings, data.num_classes)
    target = prepare(
        settings, num_classes=data.num_classes, reference=reference, device=device, progress=progress, log=log
    )
    return kind(settings, target=target, reference=reference, data=data)
