"""The ``surrogate`` evaluators: a candidate of the ``accel-nasbench`` space scored in milliseconds from
surrogates fitted on Accel-NASBench's ImageNet records (:mod:`nas.trial.anb`), with no training and
no timing, so a search's quality can be measured over thousands of trials.

* A: the surrogate of the records' proxy ImageNet top-1 (``val_top1`` / 100);
* S: ``surrogate``: the surrogate of the records' training time (seconds, ``cost_ms`` its
  milliseconds); ``surrogate-<platform>`` (a100, 3090, tpuv2, tpuv3, zcu102, vck190): the surrogate
  of the recorded inference throughput on that accelerator, ``cost_ms`` = 1000 / throughput and
  ``latency_ms`` the same; either relative to the reference's (EfficientNet-B0, which is in the space);
* P: exact, this project's parameter count (which equals every record's) relative to B0's.

Everything else of a run (driver, samplers, pruners, backends, results files, resume) is unchanged:
the evaluator needs no target and no data set. The pruning hook is called once, after the one
"epoch" a surrogate trial has.
"""

from __future__ import annotations

import types
from typing import Any

from nas.errors import NasError
from nas.trial.anb import PLATFORMS, Surrogate, features, surrogate
from nas.trial.evaluator import Evaluator, TrialPruned, register_evaluator
from search_spaces import Architecture
from search_spaces.accelnasbench import NUM_CLASSES, count_macs, count_params

SPACE = "accel-nasbench"


class SurrogateEvaluator(Evaluator):
    """A, S and P of an ``accel-nasbench`` candidate from the records' surrogates (module docstring)."""

    needs_target = False
    needs_data = False
    space = SPACE  # the only space it scores (the contract suite reads this)
    cost_quantity = "train_time"

    def __init__(self, settings, *, target=None, reference=None, data=None):
        self.check_space(settings)
        super().__init__(settings, target=target, reference=reference, data=data)
        self.accuracy_model: Surrogate = surrogate("accuracy")
        self.cost_model: Surrogate = surrogate(self.cost_quantity)
        self.reference_params = count_params(self.reference_arch)
        self.reference_cost = self._cost(self.reference_arch)[0]

    @classmethod
    def check_space(cls, settings) -> None:
        if settings.space != SPACE:
            raise NasError(
                f"the {cls.name} evaluator scores the {SPACE} space only (its surrogates are fitted on "
                f"Accel-NASBench's records), got --space {settings.space}"
            )

    @classmethod
    def load_data(cls, settings):
        """No data set: the records' surrogates stand for ImageNet (1,000 classes)."""
        cls.check_space(settings)
        return types.SimpleNamespace(num_classes=NUM_CLASSES)

    def describe(self) -> str:
        return (
            f"A, S from Accel-NASBench surrogates (no training): A of ImageNet top-1 "
            f"({self.accuracy_model.describe()}), S of {self.what} ({self.cost_model.describe()}), "
            f"relative to the reference; P exact"
        )

    @property
    def what(self) -> str:
        return "the training time"

    def _cost(self, arch: Architecture) -> tuple[float, dict[str, Any]]:
        """(the cost in ms, its columns) of ``arch`` (one of the space: NasError otherwise)."""
        x = features([self.space.choice_of(arch)])
        seconds = float(self.cost_model.predict(x)[0])
        return seconds * 1000.0, {"cost": "train_time", "train_time_s": seconds}

    def size(self, arch: Architecture) -> dict[str, Any]:
        """Parameters and MACs counted analytically (no network built: a trial stays in milliseconds)."""
        params = count_params(arch)
        return {
            "arch": arch.to_string(),
            "params": params,
            "num_classes": NUM_CLASSES,
            "macs": count_macs(arch),
            "P": params / self.reference_params,
            "reference_params": self.reference_params,
        }

    def known(self, arch: Architecture, *, image_scale: float = 1.0, fidelity: bool = False) -> dict[str, Any]:
        if image_scale != 1.0:
            raise NasError(f"the {self.name} evaluator scores the records' 224 px only, got image scale {image_scale}")
        ms, columns = self._cost(arch)
        return {
            **self.size(arch),
            **columns,
            "cost_ms": ms,
            "S": ms / self.reference_cost,
            "reference_ms": self.reference_cost,
        }

    def evaluate(self, arch, *, seed=0, image_scale=1.0, fidelity=False, on_epoch=None) -> dict[str, Any]:
        known = self.known(arch, image_scale=image_scale)
        accuracy = float(self.accuracy_model.predict(features([self.space.choice_of(arch)]))[0])
        metrics = {**known, "accuracy": min(1.0, max(0.0, accuracy)), "epochs": 1}
        if on_epoch is not None and on_epoch(1, metrics["accuracy"], known):
            raise TrialPruned("stopped after epoch 1", metrics)
        return self.score(metrics)


class ThroughputSurrogateEvaluator(SurrogateEvaluator):
    """S from an accelerator's recorded inference throughput (S = the reference's throughput / this one's)."""

    platform = ""

    @property
    def what(self) -> str:
        return f"the {self.platform} inference throughput (S = 1 / throughput)"

    def _cost(self, arch: Architecture) -> tuple[float, dict[str, Any]]:
        x = features([self.space.choice_of(arch)])
        throughput = float(self.cost_model.predict(x)[0])
        ms = 1000.0 / throughput
        return ms, {"cost": self.cost_quantity, "latency_ms": ms, self.cost_quantity: throughput}


register_evaluator("surrogate")(SurrogateEvaluator)
SurrogateEvaluator.help = (
    f"{SPACE} space only: A and S from surrogates of Accel-NASBench's ImageNet records (S: training time), "
    "P exact; milliseconds a trial, no training"
)
for _platform in PLATFORMS:
    _kind = type(
        f"Surrogate{_platform.upper()}Evaluator",
        (ThroughputSurrogateEvaluator,),
        {
            "platform": _platform,
            "cost_quantity": f"throughput_{_platform}",
            "help": f"as surrogate, S from the recorded {_platform} inference throughput (1 / throughput)",
        },
    )
    register_evaluator(f"surrogate-{_platform}")(_kind)
