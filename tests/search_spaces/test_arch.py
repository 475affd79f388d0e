"""The architecture data format: block strings and JSON round-trip, and bad input is refused by name."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from search_spaces import Architecture, NasError, Stage, get_space, preset, preset_names, space_names

SAMPLES_PER_SPACE = 1000


def _roundtrips(a: Architecture) -> None:
    text = a.to_string()
    back = Architecture.from_string(text)
    assert back == a, text
    assert back.to_string() == text  # canonical form is a fixed point
    assert Architecture.from_json(a.to_json()) == a
    assert Architecture.from_json(a.to_json(indent=2)) == a


@pytest.mark.parametrize("space_name", space_names())
def test_sampled_architectures_roundtrip(space_name):
    space = get_space(space_name)
    rng = np.random.default_rng(1234)
    seen = set()
    for _ in range(SAMPLES_PER_SPACE):
        a = space.sample(rng)
        _roundtrips(a)
        seen.add(a)
    # The check is only meaningful if the samples are varied.
    assert len(seen) > SAMPLES_PER_SPACE * 0.9


def test_every_space_is_tested():
    assert {"trainaware", "mnasnet"} <= set(space_names())


@pytest.mark.parametrize("name", preset_names())
def test_presets_roundtrip(name):
    _roundtrips(preset(name))


def test_roundtrip_of_awkward_floats():
    a = preset("efficientnet-b0")
    s = dataclasses.replace(a.stages[0], se=0.1 + 0.2)  # 0.30000000000000004
    odd = a.replace(stages=(s, *a.stages[1:]), dropout=1e-05, drop_path=0.0)
    _roundtrips(odd)
    assert Architecture.from_string(odd.to_string()).stages[0].se == 0.1 + 0.2


def test_canonical_form_of_v1_strings():
    v1 = "stem32,r1_k3_s11_e1_i32_o16_se0.25,r2_k3_s22_e6_i16_o24_se0.25"
    a = Architecture.from_string(v1)
    assert [s.stride for s in a.stages] == [1, 2]
    canonical = a.to_string()
    assert "_s22_" not in canonical and "_s11_" not in canonical and "_s2_" in canonical
    assert canonical.startswith("stem32,r1_k3_s1_e1_i32_o16_se0.25,r2_k3_s2_e6_i16_o24_se0.25,head1280,")
    assert Architecture.from_string(canonical).to_string() == canonical
    # The stride written as two digits means the same as one digit.
    assert Architecture.from_string(v1.replace("s22", "s2").replace("s11", "s1")) == a


def test_string_defaults_and_optional_i():
    a = Architecture.from_string("r1_k3_s1_e1_i32_o16,r2_k5_s2_e6_o24_se0.25_c1")
    assert a.stem == 32  # taken from the first stage's i
    assert a.stages[1] == Stage("fused", 5, 2, 6, 24, 2, 0.25, "id")
    assert (a.head, a.resolution, a.dropout, a.drop_path, a.activation) == (1280, 224, 0.2, 0.2, "silu")


def test_mnasnet_tokens_parse():
    a = Architecture.from_string("stem32,r1_k3_s11_e1_i32_o16_noskip,r2_k5_s22_e3_i16_o24_poolskip_c0,act_relu")
    assert [s.skip for s in a.stages] == ["none", "pool"]
    assert [s.block for s in a.stages] == ["mbconv", "mbconv"]
    assert a.activation == "relu"


def test_stage_string_i_must_match_previous_out_or_is_nominal():
    ok = "stem24,r1_k3_s1_e1_i24_o16,r1_k3_s2_e6_i16_o32"
    assert Architecture.from_string(ok).stage_inputs() == [24, 16]
    # The TF decoders' nominal i: it sets the expanded width (24 * 6) of the stage's first block and
    # is kept as fc24; the canonical form writes the real input as i.
    a = Architecture.from_string("stem24,r1_k3_s1_e1_i24_o16,r2_k3_s2_e6_i24_o32")
    assert a.stages[1].nominal_in == 24
    assert a.to_string().startswith("stem24,r1_k3_s1_e1_i24_o16,r2_k3_s2_e6_i16_o32_fc24,head")
    _roundtrips(a)
    # Where it changes no width (expansion 1, no SE) a nominal i is dropped (MnasNet-small's i16).
    b = Architecture.from_string("stem32,r1_k3_s1_e1_i16_o16")
    assert b == Architecture.from_string("stem32,r1_k3_s1_e1_i32_o16") and b.stages[0].nominal_in is None
    # fc equal to the real input says nothing either.
    assert Architecture.from_string(ok.replace("o32", "o32_fc16")) == Architecture.from_string(ok)
    with pytest.raises(NasError, match="i24 and fc8"):
        Architecture.from_string("stem24,r1_k3_s1_e1_i24_o16,r1_k3_s2_e6_i24_o32_fc8")


def test_nominal_input_sets_the_first_blocks_widths():
    from torch import nn

    from search_spaces import build

    a = Architecture.from_string("stem32,r2_k3_s2_e4_i24_o24_se0.25,head64,res32")
    first, second = build(a).features[1]
    convs = [m for m in first.modules() if isinstance(m, nn.Conv2d)]
    # expand 32 -> 96 (24 * 4, not 32 * 4), SE squeeze int(24 * 0.25) = 6; the second block is ordinary
    assert [(c.in_channels, c.out_channels) for c in convs] == [(32, 96), (96, 96), (96, 6), (6, 96), (96, 24)]
    assert next(m.out_channels for m in second.modules() if isinstance(m, nn.Conv2d)) == 96  # 24 * 4


BAD_STRINGS = [
    # (text, a piece of the message that names the bad value)
    ("stem32,r1_k3_s1_e1_i32_o16_zz", "'zz'"),
    ("stem32,r1_k3_s1_e1_i32_o16,bogus7", "'bogus7'"),
    ("stem32,r1_k9_s1_e1_i32_o16", "got 9"),
    ("stem32,r1_k3_s1_e0_i32_o16", "got 0"),
    ("stem32,r1_k3_s1_e10_i32_o16", "got 10"),
    ("stem32,r1_k3_s1_e6_i32_o16_fc0", "got 0"),
    ("stem32,r1_k3_s1_e6_i32_o16_fc8_fc16", "'fc16'"),
    ("stem32,r1_k3_s1_e1_i32_o16,bneps0", "BatchNorm epsilon must be in (0, 0.1], got 0.0"),
    ("stem32,r1_k3_s1_e1_i32_o16,bneps0.5", "got 0.5"),
    ("stem32,r1_k3_s1_e1_i32_o16,bneps-1", "'bneps-1'"),
    ("stem32,r1_k3_s1_e1_i32_o16,bnmom0", "BatchNorm momentum must be in (0, 1], got 0.0"),
    ("stem32,r1_k3_s1_e1_i32_o16,bnmom1.5", "got 1.5"),
    ("stem32,r1_k3_s1_e1_i32_o16,bneps1e-05,bneps0.001", "'bneps0.001'"),
    ("stem32,r1_k3_s1_e1_i32_o16,pad_valid", "padding must be one of symmetric, same; got 'valid'"),
    ("stem32,r1_k3_s1_e1_i32_o16,pad_same,pad_same", "duplicate token 'pad_same'"),
    ("stem32,r1_k3_s1_e1_i32_o16,act_relu7", "'relu7'"),
    ("stem32,r1_k3_s3_e1_i32_o16", "got 3"),
    ("stem32,r1_k3_s33_e1_i32_o16", "got 3"),
    ("stem32,r1_k3_s12_e1_i32_o16", "'s12'"),
    ("stem32,r1_k3_k5_s1_e1_i32_o16", "'k5'"),
    ("stem32,r1_k3_s1_e1_i32_o16_se0.25_se0.5", "'se0.5'"),
    ("stem32,r1_k3_s1_e1_i32_o16_noskip_poolskip", "'poolskip'"),
    ("stem32,r1_k3_s1_e1_i32_o16,res224,res240", "'res240'"),
    ("stem32,r1_k3_s1_e1_i32_o16_c2", "got 2"),
    ("stem32,r1_k3_s1_e1_i32_o16_se1.5", "got 1.5"),
    ("stem32,r0_k3_s1_e1_i32_o16", "got 0"),
    ("stem32,r1_k3_s1_e1_i32", "missing token(s) o"),
    ("stem32,r1_k3.5_s1_e1_i32_o16", "'k3.5'"),
    ("stem32,r1_k3_s1_e1_i32_o16,drop-0.1", "'drop-0.1'"),
    ("stem32,r1_k3_s1_e1_i32_o16,drop1.0", "got 1.0"),
    ("stem32,r1_k3_s1_e1_i32_o16,act_gelu", "'gelu'"),
    ("stem32,r1_k3_s1_e1_i32_o16,res4", "got 4"),
    ("stem32,,r1_k3_s1_e1_i32_o16", "doubled comma"),
    ("stem32,head1280", "no stage"),
    ("r1_k3_s1_e1_o16", "stem"),
    ("", "empty"),
    ("   ", "empty"),
]


@pytest.mark.parametrize("text,names", BAD_STRINGS, ids=[t or "empty" for t, _ in BAD_STRINGS])
def test_bad_strings_are_refused_by_name(text, names):
    with pytest.raises(NasError, match=re.escape(names)):
        Architecture.from_string(text)


def test_nas_error_is_a_value_error():
    # Callers that only know the standard library can still catch it.
    with pytest.raises(ValueError):
        Architecture.from_string("")


def _b0_dict():
    return json.loads(preset("efficientnet-b0").to_json())


def _with(path, value):
    d = _b0_dict()
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return json.dumps(d)


BAD_JSON = [
    ("{not json", "not valid architecture JSON"),
    ("[1, 2]", "must be an object"),
    ("null", "must be an object"),
    (_with(["dropout"], -0.1), "got -0.1"),
    (_with(["drop_path"], 1.5), "got 1.5"),
    (_with(["colour"], "red"), "'colour'"),
    (_with(["stages", 0, "colour"], "red"), "'colour'"),
    (_with(["stages", 0, "kernel"], 9), "got 9"),
    (_with(["stages", 0, "nominal_in"], 0), "got 0"),
    (_with(["stages", 0, "nominal_in"], "24"), "got '24'"),
    (_with(["bn_eps"], -1e-5), "got -1e-05"),
    (_with(["bn_eps"], "1e-5"), "got '1e-5'"),
    (_with(["bn_momentum"], 0), "got 0"),
    (_with(["padding"], "valid"), "'valid'"),
    (_with(["stages", 0, "kernel"], 3.0), "got 3.0"),  # a float would print as k3.0, which does not parse
    (_with(["stages", 0, "stride"], "2"), "got '2'"),
    (_with(["stages", 0, "expansion"], 0), "got 0"),
    (_with(["stages", 0, "block"], "resnet"), "'resnet'"),
    (_with(["stages", 0, "skip"], "maybe"), "'maybe'"),
    (_with(["stages", 0, "se"], "0.25"), "'0.25'"),
    (_with(["stem"], 32.0), "got 32.0"),
    (_with(["stages"], []), "at least one stage"),
    (_with(["stages"], "r1_k3_s1_e1_i32_o16"), "'stages' must be a list"),
    (_with(["format"], "nas.architecture/99"), "'nas.architecture/99'"),
    (_with(["activation"], "gelu"), "'gelu'"),
]


@pytest.mark.parametrize("text,names", BAD_JSON)
def test_bad_json_is_refused_by_name(text, names):
    with pytest.raises(NasError, match=re.escape(names)):
        Architecture.from_json(text)


def test_json_missing_stage_field():
    d = _b0_dict()
    del d["stages"][0]["kernel"]
    with pytest.raises(NasError, match="kernel"):
        Architecture.from_dict(d)


def test_json_format_tag_is_written_and_optional():
    d = _b0_dict()
    assert d["format"] == "nas.architecture/1"
    del d["format"]
    assert Architecture.from_dict(d) == preset("efficientnet-b0")


def test_constructors_validate_too():
    with pytest.raises(NasError, match="got 9"):
        Stage("mbconv", 9, 1, 1, 16, 1)
    with pytest.raises(NasError, match=r"got -0.1"):
        Architecture(stem=32, stages=(Stage("mbconv", 3, 1, 1, 16, 1),), dropout=-0.1)
    with pytest.raises(NasError, match="Stage objects"):
        Architecture(stem=32, stages=("r1_k3_s1_e1_i32_o16",))


def test_architecture_and_stage_are_frozen():
    a = preset("efficientnet-b0")
    before = a.to_string()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.stem = 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.stages[0].out = 99
    with pytest.raises(TypeError):
        a.stages[0] = a.stages[1]  # a tuple, not a list
    assert a.to_string() == before
    assert hash(a) == hash(Architecture.from_string(before))


def test_stages_given_as_list_become_a_tuple():
    a = Architecture(stem=32, stages=[Stage("mbconv", 3, 1, 1, 16, 1)])
    assert isinstance(a.stages, tuple)
    hash(a)


# -- the format's extensions: conventions, kernel 7, large expansions, nominal inputs ----------------


def random_architecture(rng: np.random.Generator) -> Architecture:
    """Any architecture the format can hold, well beyond what the search spaces sample."""
    stages = []
    for _ in range(int(rng.integers(1, 8))):
        expansion = int(rng.integers(1, 10))
        se = float(rng.choice([0.0, 0.25, 0.125, 1 / 3]))
        stages.append(
            Stage(
                str(rng.choice(["mbconv", "fused"])),
                int(rng.choice([3, 5, 7])),
                int(rng.choice([1, 2])),
                expansion,
                int(rng.integers(1, 400)),
                int(rng.integers(1, 20)),
                se,
                str(rng.choice(["id", "none", "pool"])),
                int(rng.integers(1, 400)) if rng.random() < 0.3 else None,
            )
        )
    return Architecture(
        stem=int(rng.integers(1, 100)),
        stages=tuple(stages),
        head=int(rng.integers(1, 3000)),
        resolution=int(rng.integers(8, 1000)),
        dropout=float(rng.random() * 0.9),
        drop_path=float(rng.random() * 0.5),
        activation=str(rng.choice(["silu", "relu", "relu6"])),
        bn_eps=float(rng.choice([1e-3, 1e-5, 1.001e-3, 0.1])),
        bn_momentum=float(rng.choice([0.1, 0.01, 0.0003, 1.0])),
        padding=str(rng.choice(["symmetric", "same"])),
    )


def test_every_format_feature_roundtrips():
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(SAMPLES_PER_SPACE):
        a = random_architecture(rng)
        _roundtrips(a)
        seen.add(a)
    assert len(seen) == SAMPLES_PER_SPACE
    assert {a.padding for a in seen} == {"symmetric", "same"} and any(s.nominal_in for a in seen for s in a.stages)


def test_new_tokens_appear_only_when_used():
    b0 = preset("efficientnet-b0")
    assert b0.to_string() == (
        "stem32,r1_k3_s1_e1_i32_o16_se0.25,r2_k3_s2_e6_i16_o24_se0.25,r2_k5_s2_e6_i24_o40_se0.25,"
        "r3_k3_s2_e6_i40_o80_se0.25,r3_k5_s1_e6_i80_o112_se0.25,r4_k5_s2_e6_i112_o192_se0.25,"
        "r1_k3_s1_e6_i192_o320_se0.25,head1280,res224,drop0.2,sd0.2,act_silu"
    )
    for name in preset_names():
        text = preset(name).to_string()
        assert not re.search(r"bneps|bnmom|pad_", text), name
        assert ("_fc" in text) == (name == "efficientnet-edgetpu-s"), name
    tv = preset("mobilenetv2").replace(bn_eps=1e-5, bn_momentum=0.01, padding="same", activation="relu6")
    assert tv.to_string().endswith(",act_relu6,bneps1e-05,bnmom0.01,pad_same")
    # Old JSON files (without the new fields) still load, with the defaults.
    d = json.loads(b0.to_json())
    for k in ("bn_eps", "bn_momentum", "padding"):
        del d[k]
    for st in d["stages"]:
        del st["nominal_in"]
    assert Architecture.from_dict(d) == b0
    assert Architecture.from_string(tv.to_string().replace("pad_same", "pad_symmetric")) == tv.replace(
        padding="symmetric"
    )


# The TF decoders' definitions that the format used to refuse (tensorflow/tpu mnasnet_models.py and
# efficientnet/edgetpu/efficientnet_edgetpu_builder.py): kernel 7, expansion 9, nominal i values.
TF_DEFINITIONS = {
    "mnasnet-d1": "stem32,r1_k3_s11_e9_i32_o24,r3_k3_s22_e9_i24_o36,r5_k3_s22_e9_i36_o48,r4_k5_s22_e9_i48_o96,"
    "r5_k7_s11_e3_i96_o96,r3_k3_s22_e9_i96_o80,r1_k7_s11_e6_i80_o320_noskip,act_relu",
    "mnasnet-d1-320": "stem32,r3_k5_s11_e6_i32_o24,r4_k7_s22_e9_i24_o36,r5_k5_s22_e9_i36_o48,r5_k7_s22_e6_i48_o96,"
    "r5_k3_s11_e9_i96_o144,r5_k5_s22_e6_i144_o160,r1_k7_s11_e9_i160_o320,act_relu",
    "mnasnet-small": "stem8,r1_k3_s11_e1_i16_o8,r1_k3_s22_e3_i8_o16,r2_k3_s22_e6_i16_o16,r4_k5_s22_e6_i16_o32_se0.25,"
    "r3_k3_s11_e6_i32_o32_se0.25,r3_k5_s22_e6_i32_o88_se0.25,r1_k3_s11_e6_i88_o144,act_relu",
    "efficientnet-edgetpu-s": "stem32,r1_k3_s11_e4_i24_o24_c1_noskip,r2_k3_s22_e8_i24_o32_c1,r4_k3_s22_e8_i32_o48_c1,"
    "r5_k5_s22_e8_i48_o96,r4_k5_s11_e8_i96_o144,r2_k5_s22_e8_i144_o192,act_relu",
}


@pytest.mark.parametrize("name", sorted(TF_DEFINITIONS))
def test_tf_definitions_are_accepted(name):
    import torch
    from torch import nn

    from search_spaces import build

    a = Architecture.from_string(TF_DEFINITIONS[name])
    _roundtrips(a)
    with torch.device("meta"):
        convs = [m for m in build(a).modules() if isinstance(m, nn.Conv2d)]
    kernels = {c.kernel_size[0] for c in convs}
    if name.startswith("mnasnet-d1"):
        assert 7 in kernels and 9 in {s.expansion for s in a.stages}
        assert any(c.out_channels == 24 * 9 for c in convs)  # e9 on the 24-channel stage
    if name in preset_names():  # the presets (checked against timm) are these strings
        assert a.stages == preset(name).stages and a.stem == preset(name).stem


@pytest.mark.parametrize(
    "parse, value, words",
    [
        (Architecture.from_string, None, "an architecture string must be a str, got NoneType None"),
        (Architecture.from_string, b"stem32", "an architecture string must be a str, got bytes b'stem32'"),
        (Stage.parse, 5, "a stage string must be a str, got int 5"),
    ],
)
def test_text_forms_name_a_value_that_is_not_text(parse, value, words):
    with pytest.raises(NasError, match=re.escape(words)):
        parse(value)
