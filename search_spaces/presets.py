"""The published networks as architecture data.

Each table is the paper's, next to a comment naming it. Param counts and MACs that the tests check
them against live in :data:`REFERENCE` (torchvision 0.29 / the papers, ../shared/REFERENCE.md).
"""

from __future__ import annotations

from functools import lru_cache

from search_spaces.arch import Architecture
from nas.errors import NasError
from search_spaces.scaling import scale


def _arch(stem: int, stages: list[str], head: int, resolution: int, dropout: float,
          drop_path: float = 0.2, activation: str = "silu") -> Architecture:
    text = ",".join([f"stem{stem}", *stages, f"head{head}", f"res{resolution}", f"drop{dropout}",
                     f"sd{drop_path}", f"act_{activation}"])
    return Architecture.from_string(text)


# EfficientNet V1 paper, Table 1 (EfficientNet-B0 baseline network).
EFFICIENTNET_B0 = _arch(32, [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
], head=1280, resolution=224, dropout=0.2)

# The official B1..B7 coefficients (width, depth, resolution, dropout) from the authors' code;
# they are rounded by hand, not alpha**phi exactly.
EFFICIENTNET_COEFFICIENTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

# EfficientNetV2 paper, Table 4 (V2-S) and the authors' released V2-M / V2-L configs.
# Resolution is the evaluation size (384 / 480 / 480); training used 300 / 384 / 384.
EFFICIENTNETV2_S = _arch(24, [
    "r2_k3_s1_e1_i24_o24_c1",
    "r4_k3_s2_e4_i24_o48_c1",
    "r4_k3_s2_e4_i48_o64_c1",
    "r6_k3_s2_e4_i64_o128_se0.25",
    "r9_k3_s1_e6_i128_o160_se0.25",
    "r15_k3_s2_e6_i160_o256_se0.25",
], head=1280, resolution=384, dropout=0.2)

EFFICIENTNETV2_M = _arch(24, [
    "r3_k3_s1_e1_i24_o24_c1",
    "r5_k3_s2_e4_i24_o48_c1",
    "r5_k3_s2_e4_i48_o80_c1",
    "r7_k3_s2_e4_i80_o160_se0.25",
    "r14_k3_s1_e6_i160_o176_se0.25",
    "r18_k3_s2_e6_i176_o304_se0.25",
    "r5_k3_s1_e6_i304_o512_se0.25",
], head=1280, resolution=480, dropout=0.3)

EFFICIENTNETV2_L = _arch(32, [
    "r4_k3_s1_e1_i32_o32_c1",
    "r7_k3_s2_e4_i32_o64_c1",
    "r7_k3_s2_e4_i64_o96_c1",
    "r10_k3_s2_e4_i96_o192_se0.25",
    "r19_k3_s1_e6_i192_o224_se0.25",
    "r25_k3_s2_e6_i224_o384_se0.25",
    "r7_k3_s1_e6_i384_o640_se0.25",
], head=1280, resolution=480, dropout=0.4)

# MnasNet paper, Figure 7 (MnasNet-A1), in the authors' block-string grammar. The first block is a
# depthwise-separable conv (MBConv with expansion 1) without residual. ReLU throughout.
MNASNET_A1 = _arch(32, [
    "r1_k3_s11_e1_i32_o16_noskip",
    "r2_k3_s22_e6_i16_o24",
    "r3_k5_s22_e3_i24_o40_se0.25",
    "r4_k3_s22_e6_i40_o80",
    "r2_k3_s11_e6_i80_o112_se0.25",
    "r3_k5_s22_e6_i112_o160_se0.25",
    "r1_k3_s11_e6_i160_o320",
], head=1280, resolution=224, dropout=0.2, drop_path=0.0, activation="relu")

# MobileNetV2 (Sandler et al. 2018, Table 2): MnasNet's search baseline.
MOBILENETV2 = _arch(32, [
    "r1_k3_s1_e1_i32_o16_noskip",
    "r2_k3_s2_e6_i16_o24",
    "r3_k3_s2_e6_i24_o32",
    "r4_k3_s2_e6_i32_o64",
    "r3_k3_s1_e6_i64_o96",
    "r3_k3_s2_e6_i96_o160",
    "r1_k3_s1_e6_i160_o320",
], head=1280, resolution=224, dropout=0.2, drop_path=0.0, activation="relu")


def _efficientnet(name: str) -> Architecture:
    width, depth, res, dropout = EFFICIENTNET_COEFFICIENTS[name]
    return scale(EFFICIENTNET_B0, width=width, depth=depth, resolution=res, dropout=dropout)


_PRESETS = {
    **{f"efficientnet-{k}": (lambda k=k: _efficientnet(k)) for k in EFFICIENTNET_COEFFICIENTS},
    "efficientnetv2-s": lambda: EFFICIENTNETV2_S,
    "efficientnetv2-m": lambda: EFFICIENTNETV2_M,
    "efficientnetv2-l": lambda: EFFICIENTNETV2_L,
    "mnasnet-a1": lambda: MNASNET_A1,
    "mobilenetv2": lambda: MOBILENETV2,
}

# Golden facts: params at 1000 classes and MACs at the native resolution.
# torchvision 0.29's published numbers; MnasNet-A1 from the paper (3.9M params, 312M MACs).
REFERENCE = {
    "efficientnet-b0": {"params": 5_288_548, "gmacs": 0.386, "torchvision": "efficientnet_b0"},
    "efficientnet-b1": {"params": 7_794_184, "gmacs": 0.687, "torchvision": "efficientnet_b1"},
    "efficientnet-b2": {"params": 9_109_994, "gmacs": 0.994, "torchvision": "efficientnet_b2"},
    "efficientnet-b3": {"params": 12_233_232, "gmacs": 1.827, "torchvision": "efficientnet_b3"},
    "efficientnet-b4": {"params": 19_341_616, "gmacs": 4.394, "torchvision": "efficientnet_b4"},
    "efficientnet-b5": {"params": 30_389_784, "gmacs": 10.266, "torchvision": "efficientnet_b5"},
    "efficientnet-b6": {"params": 43_040_704, "gmacs": 19.068, "torchvision": "efficientnet_b6"},
    "efficientnet-b7": {"params": 66_347_960, "gmacs": 37.746, "torchvision": "efficientnet_b7"},
    "efficientnetv2-s": {"params": 21_458_488, "gmacs": 8.366, "torchvision": "efficientnet_v2_s"},
    "efficientnetv2-m": {"params": 54_139_356, "gmacs": 24.582, "torchvision": "efficientnet_v2_m"},
    "efficientnetv2-l": {"params": 118_515_272, "gmacs": 56.08, "torchvision": "efficientnet_v2_l"},
    "mnasnet-a1": {"params": 3_900_000, "gmacs": 0.312, "torchvision": None, "params_tolerance": 0.02},
}


def preset_names() -> list[str]:
    return list(_PRESETS)


@lru_cache(maxsize=None)
def preset(name: str) -> Architecture:
    """A published network by name, e.g. ``preset("efficientnet-b0")``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _PRESETS:
        raise NasError(f"unknown preset {name!r}; known: {', '.join(_PRESETS)}")
    return _PRESETS[key]()
