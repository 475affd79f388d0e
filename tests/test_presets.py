"""The published networks: exact parameter counts, MACs, and layer-by-layer equality with torchvision."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
import torchvision
from torch import nn

from search_spaces import REFERENCE, NasError, build, count_macs, count_params, preset, preset_names

WITH_TORCHVISION = sorted(n for n, r in REFERENCE.items() if r.get("torchvision"))


@lru_cache(maxsize=None)
def torchvision_model(fn: str) -> nn.Module:
    """torchvision's model on the meta device: no weights, no memory, no download."""
    with torch.device("meta"):
        return getattr(torchvision.models, fn)()


@lru_cache(maxsize=None)
def our_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return build(preset(name))


def conv_signature(model: nn.Module) -> list[tuple]:
    """Every convolution and linear layer in module order, with the settings that define it."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.groups,
                        m.bias is not None))
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


def test_the_table_covers_the_families():
    assert {f"efficientnet-b{k}" for k in range(8)} <= set(WITH_TORCHVISION)
    assert {"efficientnetv2-s", "efficientnetv2-m", "efficientnetv2-l"} <= set(WITH_TORCHVISION)
    assert set(REFERENCE) <= set(preset_names())


@pytest.mark.parametrize("name", WITH_TORCHVISION)
def test_params_equal_table_and_torchvision(name):
    ref = REFERENCE[name]
    ours = count_params(preset(name))
    theirs = sum(p.numel() for p in torchvision_model(ref["torchvision"]).parameters())
    assert ours == ref["params"]
    assert ours == theirs


@pytest.mark.parametrize("name", WITH_TORCHVISION)
def test_macs_within_one_percent_of_table(name):
    assert count_macs(preset(name)) == pytest.approx(REFERENCE[name]["gmacs"] * 1e9, rel=0.01)


def test_macs_resolution_argument():
    arch = preset("efficientnet-b0")
    native = count_macs(arch)
    assert count_macs(arch, 224) == native  # the native resolution is the default
    # Half the side, a bit over a quarter of the work (the classifier and SE layers do not shrink, and
    # 7 px rounds up to 4 after the last stride-2 stage).
    assert native / 4 < count_macs(arch, 112) < native / 3


@pytest.mark.parametrize("name", WITH_TORCHVISION)
def test_layers_equal_torchvision(name):
    ours, theirs = our_model(name), torchvision_model(REFERENCE[name]["torchvision"])
    assert conv_signature(ours) == conv_signature(theirs)


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
        ("MBConv", 2, 16, 1), ("MBConv", 3, 24, 2), ("MBConv", 3, 48, 2), ("MBConv", 4, 88, 2),
        ("MBConv", 4, 120, 1), ("MBConv", 5, 208, 2), ("MBConv", 2, 352, 1),
    ]


def test_mnasnet_a1_matches_the_paper():
    arch = preset("mnasnet-a1")
    ref = REFERENCE["mnasnet-a1"]
    assert count_params(arch) == pytest.approx(3.9e6, rel=0.02)
    assert count_params(arch) == pytest.approx(ref["params"], rel=ref["params_tolerance"])
    assert count_macs(arch) == pytest.approx(312e6, rel=0.02)
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
    for bad in ("nope", "efficientnet-b8", ""):
        with pytest.raises(NasError, match=repr(bad)):
            preset(bad)
    with pytest.raises(NasError, match="efficientnet-b0"):  # the message lists the known names
        preset("nope")
