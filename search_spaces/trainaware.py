"""EfficientNetV2's training-aware search space (V2 section 3.3).

Stage-factorized (MnasNet style) on the EfficientNetV2-S backbone: for each of its six stages the
search picks the op {MBConv, Fused-MBConv}, the kernel {3, 5}, the expansion {1, 4, 6} and the
number of layers (the backbone's count -1, 0 or +1). Channel sizes and strides are reused from the
backbone; skip/pooling options are removed, as in the paper. SE (ratio 0.25) stays on MBConv
stages only, as in V2-S.
"""

from __future__ import annotations

from search_spaces.arch import Architecture, Stage
from search_spaces.base import SearchSpace, register
from search_spaces.presets import EFFICIENTNETV2_S

OPS = ["mbconv", "fused"]
KERNELS = [3, 5]
EXPANSIONS = [1, 4, 6]
LAYER_DELTAS = [-1, 0, 1]


@register("trainaware")
class TrainAwareSpace(SearchSpace):
    description = (
        "EfficientNetV2 training-aware space on the V2-S backbone: per stage op {mbconv, fused} "
        "x kernel {3, 5} x expansion {1, 4, 6} x layers {-1, 0, +1} of V2-S"
    )

    def __init__(self, backbone: Architecture = EFFICIENTNETV2_S):
        self.backbone = backbone

    def _layers(self, repeats: int) -> list[int]:
        return sorted({max(1, repeats + d) for d in LAYER_DELTAS})

    def decisions(self):
        out = []
        for i, st in enumerate(self.backbone.stages, start=1):
            out += [
                (f"s{i}_op", OPS),
                (f"s{i}_kernel", KERNELS),
                (f"s{i}_expansion", EXPANSIONS),
                (f"s{i}_layers", self._layers(st.repeats)),
            ]
        return out

    def make(self, choice):
        stages = []
        for i, st in enumerate(self.backbone.stages, start=1):
            op = choice[f"s{i}_op"]
            stages.append(
                Stage(
                    op,
                    choice[f"s{i}_kernel"],
                    st.stride,
                    choice[f"s{i}_expansion"],
                    st.out,
                    choice[f"s{i}_layers"],
                    0.25 if op == "mbconv" else 0.0,
                    "id",
                )
            )
        return self.backbone.replace(stages=tuple(stages))

    def reference(self):
        return self.backbone
