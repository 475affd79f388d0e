"""MnasNet's factorized hierarchical search space (MnasNet section 4.1).

The network is split into the seven blocks (stages) of the MobileNetV2 baseline; each stage picks,
independently: the conv op {regular conv, depthwise-separable conv, MBConv e3, MBConv e6}, the
kernel {3, 5}, the SE ratio {0, 0.25}, the skip op {pooling, identity, none}, the output filters
{0.75, 1.0, 1.25} x the baseline's, and the layers {-1, 0, +1} of the baseline's.

Ops map onto the two block kinds: a regular conv is Fused-MBConv with expansion 1, a depthwise-
separable conv is MBConv with expansion 1 (see :mod:`search_spaces.arch`).
"""

from __future__ import annotations

from search_spaces.arch import Architecture, Stage
from search_spaces.base import SearchSpace, register
from search_spaces.blocks import make_divisible
from search_spaces.presets import MOBILENETV2

CONV_OPS = {"conv": ("fused", 1), "sepconv": ("mbconv", 1), "mbconv3": ("mbconv", 3), "mbconv6": ("mbconv", 6)}
KERNELS = [3, 5]
SE_RATIOS = [0.0, 0.25]
SKIPS = ["pool", "id", "none"]
FILTER_MULTS = [0.75, 1.0, 1.25]
LAYER_DELTAS = [-1, 0, 1]


@register("mnasnet")
class MnasNetSpace(SearchSpace):
    description = (
        "MnasNet factorized hierarchical space on the MobileNetV2 baseline: per stage conv op "
        "{conv, sepconv, mbconv3, mbconv6} x kernel {3, 5} x SE {0, 0.25} x skip {pool, id, none} "
        "x filters {0.75, 1, 1.25} x layers {-1, 0, +1}"
    )

    def __init__(self, baseline: Architecture = MOBILENETV2):
        self.baseline = baseline

    def decisions(self):
        out = []
        for i, st in enumerate(self.baseline.stages, start=1):
            # Distinct values only: a 1-layer stage cannot lose a layer, and small widths round
            # to the same multiple of 8.
            filters = sorted({make_divisible(st.out * m, 8) for m in FILTER_MULTS})
            layers = sorted({max(1, st.repeats + d) for d in LAYER_DELTAS})
            out += [
                (f"b{i}_conv", list(CONV_OPS)),
                (f"b{i}_kernel", KERNELS),
                (f"b{i}_se", SE_RATIOS),
                (f"b{i}_skip", SKIPS),
                (f"b{i}_filters", filters),
                (f"b{i}_layers", layers),
            ]
        return out

    def make(self, choice):
        stages = []
        for i, st in enumerate(self.baseline.stages, start=1):
            block, expansion = CONV_OPS[choice[f"b{i}_conv"]]
            stages.append(
                Stage(
                    block,
                    choice[f"b{i}_kernel"],
                    st.stride,
                    expansion,
                    choice[f"b{i}_filters"],
                    choice[f"b{i}_layers"],
                    choice[f"b{i}_se"],
                    choice[f"b{i}_skip"],
                )
            )
        return self.baseline.replace(stages=tuple(stages))

    def reference(self):
        return self.baseline
