"""The step-time model: a full-size candidate's training step time, predicted per device.

S in the training-aware reward ``A * S**w * P**v`` (EfficientNetV2 section 3.3) stands for the time
of the candidate's training step, as sampled (width and depth 1), on the user's device at a target
setting (:class:`Target`: image size and batch). Timing every candidate directly costs seconds on a
CPU; this package predicts it from a table of per-piece costs (stem, each stage's first and repeated
block, head, classifier with the loss, and the optimiser as a function of the parameter count),
timed once per device fingerprint and setting, corrected by a fit against measured full steps and
checked against direct timing (:func:`check`, ``nas calibrate --check K``).

API (what a search, a worker process or a command calls)::

    from nas.steptime import StepTimeModel, Target, default_target, fidelity
    runtime = Runtime.resolve("auto")                       # nas.core.device
    target = default_target(runtime, space)                 # or Target(image_size, batch_size)
    model = StepTimeModel.load_or_build(space, runtime, target, table_dir=None, rebuild=False,
                                        progress=True, num_classes=10)
    model.predict(arch)        # -> ms (cached per architecture; pieces it lacks are timed first)
    model.predict(arch, image_size=N)   # another resolution (grid-scale): pieces timed on first use
    model.measure(arch)        # -> ms, the full-size step timed directly (fidelity samples)
    model.timed                # pieces timed on first use by this object
    model.fingerprint, model.path       # what the table is for, where it is
    model.breakdown(arch)      # every term of the prediction
    StepTimeModel.load(space, runtime, target, table_dir=...)   # existing table only (workers)
    fidelity(predicted, measured)  # -> {spearman, kendall_tau, mape, within_10pct, n}
    check(model, k, seed=0)        # fidelity on k random candidates timed directly, with rows

Modules, one concept each: :mod:`~nas.steptime.target` (the setting and its defaults),
:mod:`~nas.steptime.pieces` (decomposition and piece keys), :mod:`~nas.steptime.pieces` (timing a
piece and the optimiser), :mod:`~nas.steptime.cover` (which networks hold every piece of a space),
:mod:`~nas.steptime.table` (the JSON file, its fingerprint, locking and validation),
:mod:`~nas.steptime.model` (building, the table's pieces, the prediction formula),
:mod:`~nas.steptime.correction` (what the piece sum misses, fitted and chosen by leave-one-out),
:mod:`~nas.steptime.check` (the agreement figures and the self-check).
"""

from nas.core.agreement import fidelity
from nas.steptime.check import check
from nas.steptime.model import StepTimeModel
from nas.steptime.table import default_table_dir
from nas.steptime.target import Target, default_target

__all__ = ["StepTimeModel", "Target", "check", "default_table_dir", "default_target", "fidelity"]
