"""The published networks as architecture data.

Each table is the paper's or the authors' released configuration, next to a comment naming it. The
figures the tests check them against (parameters, MACs) and the torchvision / timm model that each
equals live in :mod:`search_spaces.reference`.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

from nas.errors import NasError
from search_spaces.arch import Architecture
from search_spaces.reference import counterpart
from search_spaces.scaling import scale, scale_v2


def _arch(
    stem: int,
    stages: list[str],
    head: int,
    resolution: int,
    dropout: float,
    drop_path: float = 0.2,
    activation: str = "silu",
) -> Architecture:
    text = ",".join(
        [
            f"stem{stem}",
            *stages,
            f"head{head}",
            f"res{resolution}",
            f"drop{dropout}",
            f"sd{drop_path}",
            f"act_{activation}",
        ]
    )
    return Architecture.from_string(text)


# EfficientNet V1 paper, Table 1 (EfficientNet-B0 baseline network).
EFFICIENTNET_B0 = _arch(
    32,
    [
        "r1_k3_s11_e1_i32_o16_se0.25",
        "r2_k3_s22_e6_i16_o24_se0.25",
        "r2_k5_s22_e6_i24_o40_se0.25",
        "r3_k3_s22_e6_i40_o80_se0.25",
        "r3_k5_s11_e6_i80_o112_se0.25",
        "r4_k5_s22_e6_i112_o192_se0.25",
        "r1_k3_s11_e6_i192_o320_se0.25",
    ],
    head=1280,
    resolution=224,
    dropout=0.2,
)

# The official B1..B8 and L2 coefficients (width, depth, resolution, dropout) from the authors' code
# (tensorflow/tpu efficientnet_builder.py; B8 and L2 came with AdvProp and Noisy Student); they are
# rounded by hand, not alpha**phi exactly.
EFFICIENTNET_COEFFICIENTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
    "b8": (2.2, 3.6, 672, 0.5),
    "l2": (4.3, 5.3, 800, 0.5),
}

# EfficientNet-Lite (tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py): B0 without SE,
# ReLU6, scaled with the stem, the head and the first and last stages' layers fixed.
LITE_COEFFICIENTS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}

# EfficientNetV2 paper, Table 4 (V2-S) and the authors' released V2-M / V2-L configs.
# Resolution is the evaluation size (384 / 480 / 480); training used 300 / 384 / 384.
EFFICIENTNETV2_S = _arch(
    24,
    [
        "r2_k3_s1_e1_i24_o24_c1",
        "r4_k3_s2_e4_i24_o48_c1",
        "r4_k3_s2_e4_i48_o64_c1",
        "r6_k3_s2_e4_i64_o128_se0.25",
        "r9_k3_s1_e6_i128_o160_se0.25",
        "r15_k3_s2_e6_i160_o256_se0.25",
    ],
    head=1280,
    resolution=384,
    dropout=0.2,
)

EFFICIENTNETV2_M = _arch(
    24,
    [
        "r3_k3_s1_e1_i24_o24_c1",
        "r5_k3_s2_e4_i24_o48_c1",
        "r5_k3_s2_e4_i48_o80_c1",
        "r7_k3_s2_e4_i80_o160_se0.25",
        "r14_k3_s1_e6_i160_o176_se0.25",
        "r18_k3_s2_e6_i176_o304_se0.25",
        "r5_k3_s1_e6_i304_o512_se0.25",
    ],
    head=1280,
    resolution=480,
    dropout=0.3,
)

EFFICIENTNETV2_L = _arch(
    32,
    [
        "r4_k3_s1_e1_i32_o32_c1",
        "r7_k3_s2_e4_i32_o64_c1",
        "r7_k3_s2_e4_i64_o96_c1",
        "r10_k3_s2_e4_i96_o192_se0.25",
        "r19_k3_s1_e6_i192_o224_se0.25",
        "r25_k3_s2_e6_i224_o384_se0.25",
        "r7_k3_s1_e6_i384_o640_se0.25",
    ],
    head=1280,
    resolution=480,
    dropout=0.4,
)

# The authors' released V2-XL (google/automl effnetv2_configs.py, v2_xl_block; evaluated at 512 px).
EFFICIENTNETV2_XL = _arch(
    32,
    [
        "r4_k3_s1_e1_i32_o32_c1",
        "r8_k3_s2_e4_i32_o64_c1",
        "r8_k3_s2_e4_i64_o96_c1",
        "r16_k3_s2_e4_i96_o192_se0.25",
        "r24_k3_s1_e6_i192_o256_se0.25",
        "r32_k3_s2_e6_i256_o512_se0.25",
        "r8_k3_s1_e6_i512_o640_se0.25",
    ],
    head=1280,
    resolution=512,
    dropout=0.4,
)

# The smaller V2 baseline (google/automl effnetv2_configs.py, v2_base_block) and the coefficients of
# B0..B3 (width, depth, evaluation size, dropout; effnetv2_configs.efficientnetv2_params). B1..B3 are
# B0 scaled with the V2 rules: channels rounded without the 90% rule, layers ceil(repeats * depth).
EFFICIENTNETV2_B0 = _arch(
    32,
    [
        "r1_k3_s1_e1_i32_o16_c1",
        "r2_k3_s2_e4_i16_o32_c1",
        "r2_k3_s2_e4_i32_o48_c1",
        "r3_k3_s2_e4_i48_o96_se0.25",
        "r5_k3_s1_e6_i96_o112_se0.25",
        "r8_k3_s2_e6_i112_o192_se0.25",
    ],
    head=1280,
    resolution=224,
    dropout=0.2,
)

EFFICIENTNETV2_COEFFICIENTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
}

# MnasNet paper, Figure 7 (MnasNet-A1), in the authors' block-string grammar. The first block is a
# depthwise-separable conv (MBConv with expansion 1) without residual. ReLU throughout.
MNASNET_A1 = _arch(
    32,
    [
        "r1_k3_s11_e1_i32_o16_noskip",
        "r2_k3_s22_e6_i16_o24",
        "r3_k5_s22_e3_i24_o40_se0.25",
        "r4_k3_s22_e6_i40_o80",
        "r2_k3_s11_e6_i80_o112_se0.25",
        "r3_k5_s22_e6_i112_o160_se0.25",
        "r1_k3_s11_e6_i160_o320",
    ],
    head=1280,
    resolution=224,
    dropout=0.2,
    drop_path=0.0,
    activation="relu",
)

# MnasNet-B1 (MnasNet paper, Figure 6; tensorflow/tpu mnasnet_models.py mnasnet_b1): no SE.
MNASNET_B1 = _arch(
    32,
    [
        "r1_k3_s11_e1_i32_o16_noskip",
        "r3_k3_s22_e3_i16_o24",
        "r3_k5_s22_e3_i24_o40",
        "r3_k5_s22_e6_i40_o80",
        "r2_k3_s11_e6_i80_o96",
        "r4_k5_s22_e6_i96_o192",
        "r1_k3_s11_e6_i192_o320_noskip",
    ],
    head=1280,
    resolution=224,
    dropout=0.2,
    drop_path=0.0,
    activation="relu",
)

# MnasNet-small (tensorflow/tpu mnasnet_models.py mnasnet_small): the first stage's i16 is nominal
# (the stem has 8 channels) and has no effect on a depthwise-separable conv, so it reads i8.
MNASNET_SMALL = _arch(
    8,
    [
        "r1_k3_s11_e1_i16_o8",
        "r1_k3_s22_e3_i8_o16",
        "r2_k3_s22_e6_i16_o16",
        "r4_k5_s22_e6_i16_o32_se0.25",
        "r3_k3_s11_e6_i32_o32_se0.25",
        "r3_k5_s22_e6_i32_o88_se0.25",
        "r1_k3_s11_e6_i88_o144",
    ],
    head=1280,
    resolution=224,
    dropout=0.0,
    drop_path=0.0,
    activation="relu",
)

# EfficientNet-EdgeTPU-S (tensorflow/tpu efficientnet/edgetpu/efficientnet_edgetpu_builder.py):
# Fused-MBConv early stages, ReLU, no SE. The first stage's i24 is nominal (the stem has 32
# channels) and sets the expanded width 24 * 4 = 96: it is kept as fc24.
EFFICIENTNET_EDGETPU_S = _arch(
    32,
    [
        "r1_k3_s11_e4_i24_o24_c1_noskip",
        "r2_k3_s22_e8_i24_o32_c1",
        "r4_k3_s22_e8_i32_o48_c1",
        "r5_k5_s22_e8_i48_o96",
        "r4_k5_s11_e8_i96_o144",
        "r2_k5_s22_e8_i144_o192",
    ],
    head=1280,
    resolution=224,
    dropout=0.2,
    activation="relu",
)

# EfficientNet-Lite0 (see LITE_COEFFICIENTS): B0's table without SE, ReLU6.
EFFICIENTNET_LITE0 = _arch(
    32,
    [
        "r1_k3_s11_e1_i32_o16",
        "r2_k3_s22_e6_i16_o24",
        "r2_k5_s22_e6_i24_o40",
        "r3_k3_s22_e6_i40_o80",
        "r3_k5_s11_e6_i80_o112",
        "r4_k5_s22_e6_i112_o192",
        "r1_k3_s11_e6_i192_o320",
    ],
    head=1280,
    resolution=224,
    dropout=0.2,
    activation="relu6",
)

# MobileNetV2 (Sandler et al. 2018, Table 2): MnasNet's search baseline.
MOBILENETV2 = _arch(
    32,
    [
        "r1_k3_s1_e1_i32_o16_noskip",
        "r2_k3_s2_e6_i16_o24",
        "r3_k3_s2_e6_i24_o32",
        "r4_k3_s2_e6_i32_o64",
        "r3_k3_s1_e6_i64_o96",
        "r3_k3_s2_e6_i96_o160",
        "r1_k3_s1_e6_i160_o320",
    ],
    head=1280,
    resolution=224,
    dropout=0.2,
    drop_path=0.0,
    activation="relu",
)


def _scaled(base: Architecture, coefficients: tuple, *, v2: bool = False, fix_head_stem: bool = False) -> Architecture:
    width, depth, res, dropout = coefficients
    if v2:
        return scale_v2(base, width=width, depth=depth, resolution=res, dropout=dropout)
    return scale(base, width=width, depth=depth, resolution=res, dropout=dropout, fix_head_stem=fix_head_stem)


_PRESETS = {
    **{f"efficientnet-{k}": (lambda c=c: _scaled(EFFICIENTNET_B0, c)) for k, c in EFFICIENTNET_COEFFICIENTS.items()},
    "efficientnetv2-s": lambda: EFFICIENTNETV2_S,
    "efficientnetv2-m": lambda: EFFICIENTNETV2_M,
    "efficientnetv2-l": lambda: EFFICIENTNETV2_L,
    "efficientnetv2-xl": lambda: EFFICIENTNETV2_XL,
    **{
        f"efficientnetv2-{k}": (lambda c=c: _scaled(EFFICIENTNETV2_B0, c, v2=True))
        for k, c in EFFICIENTNETV2_COEFFICIENTS.items()
    },
    **{
        f"efficientnet-{k}": (lambda c=c: _scaled(EFFICIENTNET_LITE0, c, fix_head_stem=True))
        for k, c in LITE_COEFFICIENTS.items()
    },
    "efficientnet-edgetpu-s": lambda: EFFICIENTNET_EDGETPU_S,
    "mnasnet-a1": lambda: MNASNET_A1,
    "mnasnet-b1": lambda: MNASNET_B1,
    "mnasnet-small": lambda: MNASNET_SMALL,
    "mobilenetv2": lambda: MOBILENETV2,
}


class Family(NamedTuple):
    """A published coefficient table: each member is the base scaled by (width, depth, resolution,
    dropout), resolution given for the base's ``base_resolution``; ``v2_rules`` says which rules."""

    base: str
    base_resolution: int
    members: dict[str, tuple[float, float, int, float]]
    v2_rules: bool


# The tables a family can be scaled with (``nas scale --coefficients NAME``).
FAMILIES = {
    "efficientnet": Family(
        "efficientnet-b0", 224, {k: c for k, c in EFFICIENTNET_COEFFICIENTS.items() if k != "b0"}, False
    ),
    "efficientnetv2": Family(
        "efficientnetv2-b0", 224, {k: c for k, c in EFFICIENTNETV2_COEFFICIENTS.items() if k != "b0"}, True
    ),
}


def preset_names() -> list[str]:
    return list(_PRESETS)


@cache
def _preset(key: str) -> Architecture:
    return _PRESETS[key]()


def preset(name: str, source: str | None = None) -> Architecture:
    """A published network by name, e.g. ``preset("efficientnet-b0")``.

    ``source="torchvision"`` or ``"timm"`` gives the same layers with that library's conventions
    (BatchNorm epsilon and momentum, ReLU6, "same" padding), so that its weights load output for
    output (:func:`search_spaces.load_weights`); the library's model is named in
    :data:`search_spaces.reference.REFERENCE`.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _PRESETS:
        raise NasError(f"unknown preset {name!r}; known: {', '.join(_PRESETS)}")
    arch = _preset(key)
    if source is None:
        return arch

    return arch.replace(**counterpart(key, source).conventions)
