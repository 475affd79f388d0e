"""Accel-NASBench's space (Accel-NASBench, "Sustainable Benchmarking for Accelerator-Aware NAS").

Stage-factorized on the EfficientNet-B0 backbone: the seven stages keep B0's channels and strides
((in, out, stride): (32, 16, 1), (16, 24, 2), (24, 40, 2), (40, 80, 2), (80, 112, 1), (112, 192, 2),
(192, 320, 1); stem 32, head 1280, 224 px, 1000 classes) and each picks its expansion {1, 4, 6},
kernel {3, 5}, layers {1, 2, 3, 4} and squeeze-excitation off/on (ratio 0.25 of the block's input,
as in B0). 48 choices per stage, 48**7 (about 5.9e11) architectures; B0 itself is one of them and is
the reference.

Accel-NASBench trained 5,138 of them on ImageNet (its records ship with ``nas``, see
``nas/trial/accel-nasbench/``). :func:`choice_from_record` turns a record's ``architecture``
into this space's decisions. :func:`count_params` and :func:`count_macs` count analytically (no
network is built), for the blocks this space has (MBConv, identity skip):

* parameters equal :func:`search_spaces.builder.count_params` and every record's ``params`` exactly
  (the records give millions to six decimals: the exact count);
* MACs equal :func:`search_spaces.builder.count_macs`: the multiply-accumulates of convolutions and
  the classifier. The records' ``macs`` are larger, by 3.8% to 16.7% (median 9.5%) over the 5,138
  records, because their counter also counts element-wise work: 4 operations per BatchNorm output
  element, and each adaptive average pool's input plus output elements (SE's squeeze and the head's
  global pool). :func:`record_macs` adds exactly those terms to ours and reproduces every record's
  figure to the MAC (the test over all records checks it), so the difference is only what is
  counted, not the network.
"""

from __future__ import annotations

from typing import Any

from nas.errors import NasError
from search_spaces.arch import Architecture, Stage
from search_spaces.base import SearchSpace, register
from search_spaces.blocks import expanded_channels, squeeze_channels
from search_spaces.presets import EFFICIENTNET_B0

EXPANSIONS = [1, 4, 6]
KERNELS = [3, 5]
LAYERS = [1, 2, 3, 4]
SE = [False, True]
SE_RATIO = 0.25
STAGES = 7
NUM_CLASSES = 1000
RECORD_KEYS = {"expansion": "e", "kernel": "k", "layers": "l", "se": "se"}


@register("accel-nasbench")
class AccelNASBenchSpace(SearchSpace):
    description = (
        "Accel-NASBench's space on the EfficientNet-B0 backbone (B0's channels and strides): per stage "
        "expansion {1, 4, 6} x kernel {3, 5} x layers {1, 2, 3, 4} x SE {off, on}"
    )

    backbone = EFFICIENTNET_B0

    def decisions(self):
        out = []
        for i in range(1, STAGES + 1):
            out += [
                (f"s{i}_expansion", EXPANSIONS),
                (f"s{i}_kernel", KERNELS),
                (f"s{i}_layers", LAYERS),
                (f"s{i}_se", SE),
            ]
        return out

    def make(self, choice):
        stages = []
        for i, st in enumerate(self.backbone.stages, start=1):
            se = choice[f"s{i}_se"]
            if not isinstance(se, bool):
                raise NasError(f"s{i}_se must be true or false, got {se!r}")
            stages.append(
                Stage(
                    "mbconv",
                    choice[f"s{i}_kernel"],
                    st.stride,
                    choice[f"s{i}_expansion"],
                    st.out,
                    choice[f"s{i}_layers"],
                    SE_RATIO if se else 0.0,
                    "id",
                )
            )
        return self.backbone.replace(stages=tuple(stages))

    def reference(self):
        return self.backbone

    def choice_of(self, arch: Architecture) -> dict[str, Any]:
        """The decisions that make ``arch``; NasError naming what differs for one outside the space."""
        if len(arch.stages) != STAGES:
            raise NasError(f"not an accel-nasbench architecture: {len(arch.stages)} stages, not {STAGES}: {arch}")
        choice: dict[str, Any] = {}
        for i, st in enumerate(arch.stages, start=1):
            choice.update(
                {
                    f"s{i}_expansion": st.expansion,
                    f"s{i}_kernel": st.kernel,
                    f"s{i}_layers": st.repeats,
                    f"s{i}_se": st.se > 0,
                }
            )
        options = dict(self.decisions())
        bad = [f"{k}={v!r}" for k, v in choice.items() if v not in options[k]]
        if bad or self.make(choice) != arch:
            what = ", ".join(bad) or "its backbone (stem, channels, strides, head, SE ratio or skips)"
            raise NasError(f"not an accel-nasbench architecture ({what}): {arch}")
        return choice


def choice_from_record(architecture: Any) -> dict[str, Any]:
    """An Accel-NASBench record's ``architecture`` (``block0_e``, ``block0_k``, ``block0_l``,
    ``block0_se``, ... ``block6_se``) as this space's decisions, checked."""
    if not isinstance(architecture, dict):
        raise NasError(f"an Accel-NASBench architecture must be an object, got {type(architecture).__name__}")
    options = dict(AccelNASBenchSpace().decisions())
    choice = {}
    for i in range(STAGES):
        for name, key in RECORD_KEYS.items():
            field = f"block{i}_{key}"
            if field not in architecture:
                raise NasError(f"Accel-NASBench architecture lacks {field!r}")
            value, decision = architecture[field], f"s{i + 1}_{name}"
            if value not in options[decision] or isinstance(value, bool) != (name == "se"):
                raise NasError(f"Accel-NASBench architecture has {field}={value!r}; allowed: {options[decision]}")
            choice[decision] = value
    return choice


def _blocks(arch: Architecture):
    """(input channels, output channels, kernel, stride, expansion, SE ratio, input size, output size)
    of every block, at the architecture's resolution (symmetric padding: ceil(size / stride))."""
    size = -(-arch.resolution // 2)  # the stem's stride
    cin = arch.stem
    for st in arch.stages:
        if st.block != "mbconv" or st.skip != "id" or st.nominal_in is not None:
            raise NasError(f"the analytic count covers MBConv stages with identity skips only, got {st}")
        for r in range(st.repeats):
            stride = st.stride if r == 0 else 1
            out = -(-size // stride)
            yield cin, st.out, st.kernel, stride, st.expansion, st.se, size, out
            cin, size = st.out, out


def _mid(cin: int, expansion: int) -> int:
    return expanded_channels(cin, expansion) if expansion != 1 else cin


def count_params(arch: Architecture, num_classes: int = NUM_CLASSES) -> int:
    """Parameters of ``build(arch, num_classes)``, counted without building it."""
    total = 3 * arch.stem * 9 + 2 * arch.stem  # stem conv 3x3 and its BatchNorm
    last = arch.stem
    for cin, cout, k, _, e, se, _, _ in _blocks(arch):
        mid = _mid(cin, e)
        if e != 1:
            total += cin * mid + 2 * mid
        total += mid * k * k + 2 * mid
        if se > 0:
            sq = squeeze_channels(cin, se)
            total += 2 * mid * sq + sq + mid  # two 1x1 convolutions with biases
        total += mid * cout + 2 * cout
        last = cout
    return total + last * arch.head + 2 * arch.head + arch.head * num_classes + num_classes


def _macs_and_elements(arch: Architecture, num_classes: int) -> tuple[int, int, int]:
    """(convolution and classifier MACs, BatchNorm output elements, average-pool input + output elements)."""
    size = -(-arch.resolution // 2)
    macs, bn, pool = size * size * 3 * arch.stem * 9, size * size * arch.stem, 0
    last = arch.stem
    for cin, cout, k, _, e, se, s_in, s_out in _blocks(arch):
        mid = _mid(cin, e)
        if e != 1:
            macs += s_in * s_in * cin * mid
            bn += s_in * s_in * mid
        macs += s_out * s_out * mid * k * k + s_out * s_out * mid * cout
        bn += s_out * s_out * (mid + cout)
        if se > 0:
            macs += 2 * mid * squeeze_channels(cin, se)
            pool += s_out * s_out * mid + mid
        last, size = cout, s_out
    macs += size * size * last * arch.head + arch.head * num_classes
    bn += size * size * arch.head
    pool += size * size * arch.head + arch.head
    return macs, bn, pool


def count_macs(arch: Architecture, num_classes: int = NUM_CLASSES) -> int:
    """Multiply-accumulates of convolutions and the classifier at the architecture's resolution: what
    :func:`search_spaces.builder.count_macs` counts, without building the network."""
    return _macs_and_elements(arch, num_classes)[0]


def record_macs(arch: Architecture, num_classes: int = NUM_CLASSES) -> int:
    """The MACs as Accel-NASBench's records count them: ours, plus 4 per BatchNorm output element,
    plus each adaptive average pool's input and output elements (see the module docstring)."""
    macs, bn, pool = _macs_and_elements(arch, num_classes)
    return macs + 4 * bn + pool
