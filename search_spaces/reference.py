"""Golden facts: what each preset must equal, and the public model that it equals.

For every preset, :data:`REFERENCE` holds its parameter count at 1000 classes and its MACs at the
native resolution, both counted with ``torch.utils.flop_counter`` on the public model named beside
it (torchvision 0.29 / timm 1.0, random weights on the meta device; shared/REFERENCE.md). The tests
read this table and check both our count and the public model's against it.

A public model has the same layers as the preset but may differ in conventions that carry no
parameters and still change the outputs (shared/REFERENCE.md, "Conventions that decide whether
weights carry over"): BatchNorm epsilon (1e-3 in TensorFlow and its ports, 1e-5 in PyTorch's
defaults), BatchNorm momentum, ReLU6, and TensorFlow's "same" padding in timm's ``tf_*`` ports.
:class:`Counterpart` records them as the Architecture fields to change, so that
``preset(name, source)`` builds a network whose outputs equal the public one's for the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nas.errors import NasError, check_choice

SOURCES = ("torchvision", "timm")

# Conventions, as Architecture fields that differ from this package's defaults
# (BatchNorm eps 1e-3, momentum 0.1, symmetric padding).
TORCHVISION_B0_B4 = {"bn_eps": 1e-5}  # efficientnet_b0..b4: PyTorch's BatchNorm defaults
TORCHVISION_B5_B7 = {"bn_momentum": 0.01}  # efficientnet_b5..b7: eps 1e-3, momentum 0.01
TORCHVISION_V2: dict[str, Any] = {}  # efficientnet_v2_*: eps 1e-3, momentum 0.1
TORCHVISION_MNASNET = {"bn_eps": 1e-5, "bn_momentum": 0.0003}  # mnasnet*: momentum 1 - 0.9997
RELU6_PYTORCH_BN = {"bn_eps": 1e-5, "activation": "relu6"}  # mobilenet_v2 / mobilenetv2_100
TIMM_TF = {"padding": "same"}  # timm tf_*: TF's eps 1e-3 and "same" padding
TIMM = {"bn_eps": 1e-5}  # timm's own (non-tf_) models


@dataclass(frozen=True)
class Counterpart:
    """A public model with the same layers as a preset, and the conventions it needs."""

    preset: str
    source: str
    model: str
    conventions: dict[str, Any] = field(default_factory=dict, hash=False)

    def build(self, num_classes: int = 1000):
        """The public model with random weights: ``pretrained=False`` / ``weights=None``, never a download.
        timm is an optional dependency (the ``test`` extra)."""
        if self.source == "torchvision":
            import torchvision  # torchvision's models module takes a second to import: only this needs it

            return getattr(torchvision.models, self.model)(weights=None, num_classes=num_classes)
        try:
            import timm  # optional (the test extra)
        except ImportError:
            raise NasError(f"building timm's {self.model} needs timm (pip install timm)") from None
        return timm.create_model(self.model, pretrained=False, num_classes=num_classes)

    def __str__(self) -> str:
        return f"{self.source} {self.model}"


def _ref(
    params: int,
    macs: int,
    torchvision: tuple[str, dict] | None = None,
    timm: tuple[str, dict] | None = None,
    **notes: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"params": params, "macs": macs, **notes}
    for source, value in (("torchvision", torchvision), ("timm", timm)):
        if value is not None:
            out[source], out[f"{source}_conventions"] = value
    return out


# preset: parameters at 1000 classes, MACs at its native resolution, its public counterparts.
REFERENCE: dict[str, dict[str, Any]] = {
    "efficientnet-b0": _ref(
        5_288_548, 385_814_752, ("efficientnet_b0", TORCHVISION_B0_B4), ("tf_efficientnet_b0", TIMM_TF)
    ),
    "efficientnet-b1": _ref(
        7_794_184, 686_802_832, ("efficientnet_b1", TORCHVISION_B0_B4), ("tf_efficientnet_b1", TIMM_TF)
    ),
    "efficientnet-b2": _ref(
        9_109_994, 993_561_872, ("efficientnet_b2", TORCHVISION_B0_B4), ("tf_efficientnet_b2", TIMM_TF)
    ),
    "efficientnet-b3": _ref(
        12_233_232, 1_827_141_392, ("efficientnet_b3", TORCHVISION_B0_B4), ("tf_efficientnet_b3", TIMM_TF)
    ),
    "efficientnet-b4": _ref(
        19_341_616, 4_393_771_024, ("efficientnet_b4", TORCHVISION_B0_B4), ("tf_efficientnet_b4", TIMM_TF)
    ),
    "efficientnet-b5": _ref(
        30_389_784, 10_266_384_752, ("efficientnet_b5", TORCHVISION_B5_B7), ("tf_efficientnet_b5", TIMM_TF)
    ),
    "efficientnet-b6": _ref(
        43_040_704, 19_067_593_536, ("efficientnet_b6", TORCHVISION_B5_B7), ("tf_efficientnet_b6", TIMM_TF)
    ),
    "efficientnet-b7": _ref(
        66_347_960, 37_745_884_192, ("efficientnet_b7", TORCHVISION_B5_B7), ("tf_efficientnet_b7", TIMM_TF)
    ),
    "efficientnet-b8": _ref(87_413_142, 62_597_461_568, timm=("tf_efficientnet_b8", TIMM_TF)),
    "efficientnet-l2": _ref(480_309_308, 475_703_653_280, timm=("tf_efficientnet_l2", TIMM_TF)),
    "efficientnetv2-s": _ref(
        21_458_488, 8_365_617_152, ("efficientnet_v2_s", TORCHVISION_V2), ("tf_efficientnetv2_s", TIMM_TF)
    ),
    "efficientnetv2-m": _ref(
        54_139_356, 24_582_460_384, ("efficientnet_v2_m", TORCHVISION_V2), ("tf_efficientnetv2_m", TIMM_TF)
    ),
    "efficientnetv2-l": _ref(
        118_515_272, 56_079_699_008, ("efficientnet_v2_l", TORCHVISION_V2), ("tf_efficientnetv2_l", TIMM_TF)
    ),
    "efficientnetv2-xl": _ref(208_119_808, 93_353_451_520, timm=("tf_efficientnetv2_xl", TIMM_TF)),
    "efficientnetv2-b0": _ref(7_139_704, 718_086_176, timm=("tf_efficientnetv2_b0", TIMM_TF)),
    "efficientnetv2-b1": _ref(8_141_052, 1_196_819_360, timm=("tf_efficientnetv2_b1", TIMM_TF)),
    "efficientnetv2-b2": _ref(10_096_086, 1_697_542_832, timm=("tf_efficientnetv2_b2", TIMM_TF)),
    "efficientnetv2-b3": _ref(14_358_406, 3_011_458_816, timm=("tf_efficientnetv2_b3", TIMM_TF)),
    "efficientnet-lite0": _ref(4_652_008, 385_187_552, timm=("efficientnet_lite0", TIMM)),
    "efficientnet-lite1": _ref(5_416_680, 600_185_232, timm=("tf_efficientnet_lite1", TIMM_TF)),
    "efficientnet-lite2": _ref(6_092_072, 859_736_272, timm=("tf_efficientnet_lite2", TIMM_TF)),
    # Lite3 / Lite4 at the authors' 280 / 300 px (timm evaluates them at 300 / 380).
    "efficientnet-lite3": _ref(8_197_096, 1_383_321_872, timm=("tf_efficientnet_lite3", TIMM_TF)),
    "efficientnet-lite4": _ref(13_006_568, 2_553_034_336, timm=("tf_efficientnet_lite4", TIMM_TF)),
    "efficientnet-edgetpu-s": _ref(5_438_392, 1_788_731_008, timm=("efficientnet_es", TIMM)),
    # The paper gives 3.9M parameters and 312M MACs for A1 (timm's semnasnet_100: 3,887,038 / 311.6M).
    "mnasnet-a1": _ref(3_887_038, 311_579_072, timm=("semnasnet_100", TIMM), paper="3.9M params, 312M MACs"),
    "mnasnet-b1": _ref(4_383_312, 314_415_872, ("mnasnet1_0", TORCHVISION_MNASNET), ("mnasnet_100", TIMM)),
    "mnasnet-small": _ref(2_030_264, 68_339_184, timm=("mnasnet_small", TIMM)),
    # MnasNet's baseline uses ReLU (as MnasNet does); MobileNetV2 itself, ReLU6.
    "mobilenetv2": _ref(
        3_504_872, 300_774_272, ("mobilenet_v2", RELU6_PYTORCH_BN), ("mobilenetv2_100", RELU6_PYTORCH_BN)
    ),
}


def counterparts(name: str) -> list[Counterpart]:
    """The public models equal to preset ``name`` (torchvision first), possibly none."""
    ref = REFERENCE.get(name, {})
    return [Counterpart(name, s, ref[s], dict(ref[f"{s}_conventions"])) for s in SOURCES if s in ref]


def counterpart(name: str, source: str) -> Counterpart:
    """The ``source`` ("torchvision" or "timm") model equal to preset ``name``."""
    check_choice("weights source", source, SOURCES)
    for cp in counterparts(name):
        if cp.source == source:
            return cp
    have = ", ".join(cp.source for cp in counterparts(name)) or "none"
    raise NasError(f"preset {name!r} has no {source} counterpart (it has: {have})")
