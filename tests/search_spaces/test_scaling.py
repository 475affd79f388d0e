"""Compound scaling (EfficientNet V1 section 3.3) and EfficientNetV2's scaling rules (V2 section 4.3)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from search_spaces import (
    REFERENCE,
    Architecture,
    NasError,
    compound,
    count_macs,
    count_params,
    preset,
    round_filters,
    round_repeats,
    scale,
    scale_v2,
)

# The official B0..B7 coefficients (REFERENCE.md): width, depth, resolution, dropout.
FAMILY = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 300, 0.3),
    4: (1.4, 1.8, 380, 0.4),
    5: (1.6, 2.2, 456, 0.4),
    6: (1.8, 2.6, 528, 0.5),
    7: (2.0, 3.1, 600, 0.5),
}


def torchvision_stages(fn: str) -> tuple[int, list[tuple[int, int]], int, float]:
    """(stem channels, [(repeats, out channels) per stage], head channels, dropout) of a torchvision model."""
    with torch.device("meta"):
        model = getattr(torchvision.models, fn)()
    stages = []
    for stage in list(model.features)[1:-1]:
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        stages.append((len(stage), convs[-1].out_channels))
    dropout = next(m.p for m in model.classifier if isinstance(m, nn.Dropout))
    return model.features[0][0].out_channels, stages, model.features[-1][0].out_channels, dropout


@pytest.mark.parametrize("k", sorted(FAMILY))
def test_scaling_b0_gives_the_family(k):
    w, d, r, p = FAMILY[k]
    b0 = preset("efficientnet-b0")
    scaled = scale(b0, width=w, depth=d, resolution=r, dropout=p)
    assert scaled == preset(f"efficientnet-b{k}")
    assert scaled.resolution == r and scaled.dropout == p
    stem, stages, head, dropout = torchvision_stages(f"efficientnet_b{k}")
    assert scaled.stem == stem
    assert [(s.repeats, s.out) for s in scaled.stages] == stages
    assert scaled.head == head
    assert scaled.dropout == dropout
    # Only channels, repeats, resolution and dropout change.
    assert [(s.block, s.kernel, s.stride, s.expansion, s.se, s.skip) for s in scaled.stages] == [
        (s.block, s.kernel, s.stride, s.expansion, s.se, s.skip) for s in b0.stages
    ]


@pytest.mark.parametrize(
    "channels,width,v1,v2",
    [
        (40, 1.1, 48, 48),  # 44 -> nearest multiple of 8 is 48 (int(44 + 4) // 8 * 8)
        (32, 1.1, 32, 32),  # 35.2 -> 32, and 32 >= 0.9 * 35.2 = 31.68
        (16, 1.2, 24, 16),  # 19.2 -> 16 < 0.9 * 19.2 = 17.28: V1 adds 8, V2 does not (B3's first stage is 24)
        (24, 0.75, 24, 16),  # 18 -> 16 < 16.2: the same
        (24, 1.4, 32, 32),  # 33.6 -> 32 >= 30.24
        (320, 1.1, 352, 352),  # B2's last stage
        (1280, 1.1, 1408, 1408),
        (112, 1.8, 200, 200),  # 201.6 -> 200
        (16, 0.25, 8, 8),  # 4 -> never below 8
        (12, 1.0, 12, 12),  # width 1 leaves channels alone: scaling by 1 is the identity
    ],
)
def test_round_filters_by_hand(channels, width, v1, v2):
    assert round_filters(channels, width) == v1
    assert round_filters(channels, width, "v1") == v1
    assert round_filters(channels, width, "v2") == v2


def test_round_filters_rejects_unknown_rounding():
    with pytest.raises(NasError, match="'v3'"):
        round_filters(32, 1.1, "v3")


@pytest.mark.parametrize(
    "repeats,depth,expected",
    [
        (3, 1.1, 4),
        (4, 2.2, 9),
        (1, 3.1, 4),
        (2, 1.0, 2),
        (15, 1.0, 15),
        (6, 0.25, 2),
        (1, 0.25, 1),
        (2, 1.5, 3),
    ],
)
def test_round_repeats_is_ceil(repeats, depth, expected):
    assert round_repeats(repeats, depth) == expected


def test_scaling_never_mutates_its_input():
    for name in ("efficientnet-b0", "efficientnetv2-s"):
        a = preset(name)
        before, before_json = a.to_string(), a.to_json()
        out = [
            scale(a, width=1.3, depth=2.0, resolution_mult=1.2, dropout=0.4),
            scale_v2(a, width=1.2, depth=1.5, resolution_mult=1.5),
            compound(a, 2, 1.2, 1.1, 1.15),
        ]
        assert a.to_string() == before and a.to_json() == before_json
        assert Architecture.from_string(before) == a
        assert all(o is not a and o != a for o in out)
    assert scale(preset("efficientnet-b0")) == preset("efficientnet-b0")  # all multipliers 1: same value


def test_scale_resolution_mult_and_rounding():
    b0 = preset("efficientnet-b0")
    assert scale(b0, resolution_mult=1.15).resolution == 258  # round(224 * 1.15) = round(257.6)
    assert scale(b0, width=0.75).stages[1].out == 24  # V1: 18 -> 24
    assert scale(b0, width=0.75, rounding="v2").stages[1].out == 16


V2S_REPEATS = [2, 4, 4, 6, 9, 15]
V2S_CHANNELS = [24, 48, 64, 128, 160, 256]


def test_scale_v2_caps_resolution_at_480():
    v2s = preset("efficientnetv2-s")
    assert v2s.resolution == 384
    assert scale_v2(v2s, resolution_mult=2.0).resolution == 480  # 768 capped
    assert scale_v2(v2s, resolution_mult=1.1).resolution == 422  # round(422.4), under the cap
    assert scale_v2(v2s, resolution_mult=2.0, max_resolution=512).resolution == 512


def test_scale_v2_gives_extra_layers_to_the_last_stages():
    v2s = preset("efficientnetv2-s")
    assert [s.repeats for s in v2s.stages] == V2S_REPEATS
    scaled = scale_v2(v2s, depth=1.5, late_stages=2)
    # ceil(r * 1.5) over all stages would add 1+2+2+3+5+8 = 21 layers. They all go to stages 5 and 6,
    # split 9:15: 7.875 and 13.125 -> 7 + 13, and the one left over to the larger remainder (stage 5).
    assert [s.repeats for s in scaled.stages] == [2, 4, 4, 6, 9 + 8, 15 + 13]
    assert scaled.num_blocks == sum(round_repeats(r, 1.5) for r in V2S_REPEATS)
    assert [s.out for s in scaled.stages] == V2S_CHANNELS
    # late_stages=1: everything to the last stage.
    assert [s.repeats for s in scale_v2(v2s, depth=1.5, late_stages=1).stages] == [2, 4, 4, 6, 9, 15 + 21]
    # No extra depth, no change in repeats.
    assert [s.repeats for s in scale_v2(v2s, width=1.2, late_stages=2).stages] == V2S_REPEATS
    # The total follows the depth rounding: at 1.02 nearest adds nothing, ceil one layer per stage.
    assert scale_v2(v2s, depth=1.02, late_stages=2, depth_rounding="round").num_blocks == sum(V2S_REPEATS)
    assert scale_v2(v2s, depth=1.02, late_stages=2).num_blocks == sum(V2S_REPEATS) + 6


def test_scale_v2_without_late_stages_is_automls_rule():
    """Without the late-stage heuristic every stage gets ceil(repeats * depth), as the authors'
    effnetv2_model.round_repeats; with V2's channel rounding this makes V2-B1..B3 from V2-B0."""
    b0 = preset("efficientnetv2-b0")
    for k, (w, d, r, p) in {1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3), 3: (1.2, 1.4, 300, 0.3)}.items():
        scaled = scale_v2(b0, width=w, depth=d, resolution=r, dropout=p)
        assert scaled == preset(f"efficientnetv2-b{k}")
        assert [s.repeats for s in scaled.stages] == [math.ceil(s.repeats * d) for s in b0.stages]
        assert count_params(scaled) == REFERENCE[f"efficientnetv2-b{k}"]["params"]  # timm's tf_efficientnetv2_bK
    # V1's channel rounding (the 90% rule) or nearest depth give other networks (the issue's figures).
    assert count_params(scale(b0, width=1.2, depth=1.4, resolution=300, dropout=0.3)) == 14_377_062
    assert (
        count_params(scale(b0, width=1.2, depth=1.4, resolution=300, dropout=0.3, depth_rounding="round")) == 13_412_496
    )
    assert count_params(scale_v2(b0, width=1.2, depth=1.4, resolution=300, late_stages=2)) == 16_962_192


def test_lite_family_keeps_stem_head_and_end_stages():
    lite0 = preset("efficientnet-lite0")
    lite4 = scale(lite0, width=1.4, depth=1.8, resolution=300, dropout=0.3, fix_head_stem=True)
    assert lite4 == preset("efficientnet-lite4")
    assert (lite4.stem, lite4.head) == (32, 1280)
    assert [s.repeats for s in lite4.stages] == [1, 4, 4, 6, 6, 8, 1]  # ceil(r * 1.8), first and last fixed
    assert count_params(lite4) == REFERENCE["efficientnet-lite4"]["params"]


def test_scaling_rounds_the_nominal_input_too():
    es = preset("efficientnet-edgetpu-s")
    assert es.stages[0].nominal_in == 24
    wide = scale(es, width=1.2)
    assert (wide.stem, wide.stages[0].nominal_in) == (40, 32)  # 38.4 -> 40, 28.8 -> 32: V1 rounding


def test_scale_v2_rounds_channels_the_v2_way():
    v2s = preset("efficientnetv2-s")
    narrow = scale_v2(v2s, width=0.75)
    assert narrow.stem == 16  # 18 -> 16 (V1 would give 24)
    assert [s.out for s in narrow.stages] == [16, 40, 48, 96, 120, 192]  # 18, 36, 48, 96, 120, 192
    wide = scale_v2(v2s, width=1.2)
    assert (wide.stem, wide.head) == (32, 1536)
    assert [s.out for s in wide.stages] == [32, 56, 80, 152, 192, 304]


@pytest.mark.parametrize(
    "repeats,depth,expected",
    [
        (1, 1.2, 1),
        (2, 1.25, 3),
        (3, 1.5, 5),
        (4, 1.1, 4),
        (1, 0.25, 1),
        (15, 2.0, 30),
    ],
)
def test_round_repeats_nearest(repeats, depth, expected):
    assert round_repeats(repeats, depth, "round") == expected


def test_round_repeats_rejects_unknown_rounding():
    with pytest.raises(NasError, match="'floor'"):
        round_repeats(3, 1.2, "floor")


ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


@pytest.mark.parametrize("phi", [1, 2, 3, 4])
def test_compound_scaling_macs_nearest_depth(phi):
    """FLOPs grow by (alpha * beta**2 * gamma**2)**phi (V1 eq. 3) when depth rounds to the nearest layer."""
    b0 = preset("efficientnet-b0")
    scaled = compound(b0, phi, ALPHA, BETA, GAMMA, depth_rounding="round")
    assert [s.repeats for s in scaled.stages] == [max(1, math.floor(s.repeats * ALPHA**phi + 0.5)) for s in b0.stages]
    ratio = count_macs(scaled) / count_macs(b0)
    assert ratio == pytest.approx((ALPHA * BETA**2 * GAMMA**2) ** phi, rel=0.15)


@pytest.mark.parametrize("phi", [1, 2, 3, 4])
def test_compound_scaling_macs_ceil_depth(phi):
    """With the papers' ceil depth rounding (the default) the law holds only for width and resolution.

    ceil(repeats * alpha**phi) on B0's one- and two-block stages adds up to 23% more MACs than alpha**phi
    (phi=1: every stage gains a block, 16 -> 23 blocks; the whole network lands 34% over the target),
    so the depth factor is measured, not assumed.
    """
    alpha, beta, gamma = ALPHA, BETA, GAMMA
    b0 = preset("efficientnet-b0")
    base = count_macs(b0)
    scaled = compound(b0, phi, alpha, beta, gamma)
    assert scaled == scale(b0, width=beta**phi, depth=alpha**phi, resolution_mult=gamma**phi)
    assert scaled.resolution == round(224 * gamma**phi)
    assert [s.repeats for s in scaled.stages] == [math.ceil(s.repeats * alpha**phi) for s in b0.stages]
    ratio = count_macs(scaled) / base
    depth_ratio = count_macs(scale(b0, depth=alpha**phi)) / base
    assert alpha**phi <= depth_ratio <= 1.25 * alpha**phi  # ceil only ever adds
    assert ratio == pytest.approx(depth_ratio * (beta**2 * gamma**2) ** phi, rel=0.15)
    assert 0.95 <= ratio / (alpha * beta**2 * gamma**2) ** phi <= 1.4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0},
        {"width": -1.0},
        {"width": float("nan")},
        {"width": float("inf")},
        {"width": True},
        {"width": "1.1"},
        {"depth": 0},
        {"depth": -2},
        {"resolution_mult": 0},
        {"resolution": 4},
        {"dropout": 1.5},
        {"rounding": "v3"},
    ],
)
def test_scale_rejects_bad_multipliers(kwargs):
    bad = next(iter(kwargs.values()))
    with pytest.raises(NasError) as e:
        scale(preset("efficientnet-b0"), **kwargs)
    assert repr(bad) in str(e.value) or str(bad) in str(e.value)  # the message names the value


@pytest.mark.parametrize(
    "args",
    [
        (-1, 1.2, 1.1, 1.15),
        (1, 0.9, 1.1, 1.15),
        (1, 1.2, 0.5, 1.15),
        (1, 1.2, 1.1, float("nan")),
        (1, "1.2", 1.1, 1.15),
        (True, 1.2, 1.1, 1.15),
    ],
)
def test_compound_rejects_bad_coefficients(args):
    with pytest.raises(NasError):
        compound(preset("efficientnet-b0"), *args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0},
        {"depth": -1},
        {"resolution_mult": 0},
        {"late_stages": -1},
        {"late_stages": 7},
        {"depth_rounding": "floor"},
        {"max_resolution": 4},
    ],
)
def test_scale_v2_rejects_bad_arguments(kwargs):
    with pytest.raises(NasError):
        scale_v2(preset("efficientnetv2-s"), **kwargs)
