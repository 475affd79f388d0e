"""The published networks: exact parameter counts and MACs against the table of published figures and
against torchvision's and timm's models, and layer-by-layer equality with them."""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import REFERENCE, NasError, build, count_macs, count_params, counterpart, preset, preset_names

WITH_TORCHVISION = sorted(n for n, r in REFERENCE.items() if r.get("torchvision"))
PAIRS = sorted((n, s) for n, r in REFERENCE.items() for s in ("torchvision", "timm") if s in r)


@cache
def torchvision_model(fn: str) -> nn.Module:
    """torchvision's model on the meta device: no weights, no memory, no download."""
    with torch.device("meta"):
        return getattr(torchvision.models, fn)()


@cache
def public_model(name: str, source: str) -> nn.Module:
    """The preset's torchvision or timm counterpart on the meta device."""
    with torch.device("meta"):
        return counterpart(name, source).build()


@cache
def our_model(name: str, source: str | None = None) -> nn.Module:
    with torch.device("meta"):
        return build(preset(name, source))


def public_macs(model: nn.Module, resolution: int) -> int:
    with torch.device("meta"):
        x = torch.empty(1, 3, resolution, resolution)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


def layer_signature(model: nn.Module) -> tuple[list[tuple], Counter]:
    """Convolutions (with TF "same" padding told apart), BatchNorms (epsilon, momentum) and linear
    layers in module order, and the activations by kind (timm's SE registers its activation between
    its convolutions, torchvision's after them, so their order differs)."""
    layers, acts = [], Counter()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            same = type(m).__name__ == "Conv2dSame"  # timm's and ours
            layers.append(
                (
                    "conv",
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    "same" if same else m.padding,
                    m.groups,
                    m.bias is not None,
                )
            )
        elif isinstance(m, nn.BatchNorm2d):
            layers.append(("bn", m.num_features, m.eps, round(m.momentum, 6)))
        elif isinstance(m, nn.Linear):
            layers.append(("linear", m.in_features, m.out_features))
        elif isinstance(m, (nn.SiLU, nn.ReLU, nn.ReLU6)):
            acts[type(m).__name__] += 1
    return layers, acts


def conv_signature(model: nn.Module) -> list[tuple]:
    """Every convolution and linear layer in module order, with the settings that define it."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(
                (
                    "conv",
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.groups,
                    m.bias is not None,
                )
            )
        elif isinstance(m, nn.Linear):
            out.append(("linear", m.in_features, m.out_features))
    return out


def stage_structure(model: nn.Module) -> list[tuple]:
    """(block class, repeats, output channels, stride) per stage of an EfficientNet-style ``features``."""
    rows = []
    for stage in list(model.features)[1:-1]:
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        stride = max(c.stride[0] for c in stage[0].modules() if isinstance(c, nn.Conv2d))
        rows.append((type(stage[0]).__name__, len(stage), convs[-1].out_channels, stride))
    return rows


PUBLISHED = {  # issue 12: every published network the format builds, as a preset with a public twin
    *(f"efficientnet-b{k}" for k in range(9)),
    "efficientnet-l2",
    *(f"efficientnetv2-{k}" for k in ("s", "m", "l", "xl", "b0", "b1", "b2", "b3")),
    *(f"efficientnet-lite{k}" for k in range(5)),
    "efficientnet-edgetpu-s",
    "mnasnet-a1",
    "mnasnet-b1",
    "mnasnet-small",
    "mobilenetv2",
}


def test_the_table_covers_the_families():
    assert {f"efficientnet-b{k}" for k in range(8)} <= set(WITH_TORCHVISION)
    assert {"efficientnetv2-s", "efficientnetv2-m", "efficientnetv2-l", "mnasnet-b1"} <= set(WITH_TORCHVISION)
    assert set(REFERENCE) == set(preset_names()) == PUBLISHED
    assert {n for n, _ in PAIRS} == PUBLISHED  # each has a torchvision or timm counterpart


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_equal_the_table(name):
    assert count_params(preset(name)) == REFERENCE[name]["params"]


@pytest.mark.parametrize(
    "name", [n if REFERENCE[n]["params"] < 60e6 else pytest.param(n, marks=pytest.mark.slow) for n in sorted(REFERENCE)]
)  # MACs of the largest take 1-3 s each to count
def test_macs_equal_the_table(name):
    assert count_macs(preset(name)) == REFERENCE[name]["macs"]


@pytest.mark.slow  # 41 MAC counts (~1 s each); the layer-by-layer equality below implies them
@pytest.mark.parametrize("name,source", PAIRS)
def test_the_public_model_has_the_tables_figures(name, source):
    """The table is what torchvision's / timm's model counts (parameters at 1000 classes, MACs at the
    preset's native resolution), so the presets equal those models, not only the table."""
    theirs = public_model(name, source)
    assert sum(p.numel() for p in theirs.parameters()) == REFERENCE[name]["params"]
    assert public_macs(theirs, preset(name).resolution) == REFERENCE[name]["macs"]


@pytest.mark.parametrize(
    "name,source", [p if REFERENCE[p[0]]["params"] < 60e6 else pytest.param(*p, marks=pytest.mark.slow) for p in PAIRS]
)
def test_layers_and_conventions_equal_the_public_model(name, source):
    assert layer_signature(our_model(name, source)) == layer_signature(public_model(name, source))


def test_macs_resolution_argument():
    arch = preset("efficientnet-b0")
    native = count_macs(arch)
    assert count_macs(arch, 224) == native  # the native resolution is the default
    # Half the side, a bit over a quarter of the work (the classifier and SE layers do not shrink, and
    # 7 px rounds up to 4 after the last stride-2 stage).
    assert native / 4 < count_macs(arch, 112) < native / 3


@pytest.mark.parametrize("name", ["efficientnet-b2", "efficientnetv2-s"])
def test_stage_structure_equals_torchvision(name):
    ours, theirs = our_model(name), torchvision_model(REFERENCE[name]["torchvision"])
    expected = stage_structure(theirs)
    assert stage_structure(ours) == expected
    # ... and the architecture data says the same as the modules built from it.
    arch = preset(name)
    kinds = {"mbconv": "MBConv", "fused": "FusedMBConv"}
    assert [(kinds[s.block], s.repeats, s.out, s.stride) for s in arch.stages] == expected
    assert theirs.features[0][0].out_channels == arch.stem
    assert theirs.features[-1][0].out_channels == arch.head


def test_stage_structure_of_b2_by_hand():
    # B0 scaled by width 1.1 / depth 1.2: channels 16 24 48 88 120 208 352, repeats ceil(r * 1.2).
    assert stage_structure(our_model("efficientnet-b2")) == [
        ("MBConv", 2, 16, 1),
        ("MBConv", 3, 24, 2),
        ("MBConv", 3, 48, 2),
        ("MBConv", 4, 88, 2),
        ("MBConv", 4, 120, 1),
        ("MBConv", 5, 208, 2),
        ("MBConv", 2, 352, 1),
    ]


def test_mnasnet_a1_matches_the_paper():
    arch = preset("mnasnet-a1")
    assert count_params(arch) == pytest.approx(3.9e6, rel=0.005)  # the paper: 3.9M params, 312M MACs
    assert count_macs(arch) == pytest.approx(312e6, rel=0.005)
    assert arch.activation == "relu"
    assert arch.stages[0].skip == "none"


def test_mobilenetv2_equals_torchvision():
    # MnasNet's baseline: the same layers as torchvision's mobilenet_v2 (ReLU vs ReLU6 has no parameters).
    theirs = torchvision_model("mobilenet_v2")
    assert count_params(preset("mobilenetv2")) == sum(p.numel() for p in theirs.parameters()) == 3_504_872
    assert conv_signature(our_model("mobilenetv2")) == conv_signature(theirs)


def test_params_depend_on_num_classes():
    # Only the classifier changes: (head + 1) * classes.
    arch = preset("efficientnet-b0")
    assert count_params(arch, 1000) - count_params(arch, 10) == (1280 + 1) * 990


def test_preset_lookup():
    assert preset("EfficientNet-B0") == preset("efficientnet-b0")
    for bad in ("nope", "efficientnet-b9", "efficientnetv2-b4", ""):
        with pytest.raises(NasError, match=repr(bad)):
            preset(bad)
    with pytest.raises(NasError, match="efficientnet-b0"):  # the message lists the known names
        preset("nope")
