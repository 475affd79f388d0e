"""S: a candidate's cost on the run's target device, relative to the reference's.

What S measures is a cost (:mod:`~nas.steptime.costs`: the training step, EfficientNetV2's S, or the
inference latency, MnasNet's) at a target setting (:mod:`~nas.steptime.target`) on a target device.
A *target* is a step-time table (:mod:`~nas.steptime.table`): a self-describing file of timed pieces
of networks (:mod:`~nas.steptime.pieces`), built on its device (:mod:`~nas.steptime.build`), whose
sum with a fitted correction (:mod:`~nas.steptime.correction`) predicts any candidate's cost
(:mod:`~nas.steptime.model`) in any process, checked against direct timings
(:mod:`~nas.steptime.check`). Timing happens only where the device matches the target
(:mod:`~nas.steptime.ontarget`). A run prepares its target once (:mod:`~nas.steptime.prepared`) and
every process gets its costs from it through the run's step-time method (:mod:`~nas.steptime.methods`).
Timing a whole step: :mod:`~nas.steptime.measure`.

API (what a command or a benchmark calls)::

    from nas.steptime import StepTimeModel, Target, default_target, check
    model = StepTimeModel.load_or_build("trainaware", Runtime.resolve("auto"), Target(64, 16), num_classes=10)
    model = StepTimeModel.from_file("h100.json")     # a table from anywhere (nas calibrate --out)
    model.predict(arch)        # -> ms (cached per architecture; pieces it lacks are timed on the target only)
    model.measure(arch)        # -> ms, timed directly on the target device
    model.identity, model.fingerprint, model.setting, model.path
    check(model, k, seed=0, repeat=True)   # agreement on k unseen candidates, and of timing twice
"""

from nas.steptime.check import check
from nas.steptime.model import StepTimeModel
from nas.steptime.table import default_table_dir
from nas.steptime.target import Target, default_target

__all__ = ["StepTimeModel", "Target", "check", "default_table_dir", "default_target"]
