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


def test_stage_string_i_must_match_previous_out():
    ok = "stem24,r1_k3_s1_e1_i24_o16,r1_k3_s2_e6_i16_o32"
    assert Architecture.from_string(ok).stage_inputs() == [24, 16]
    with pytest.raises(NasError, match="i24"):
        Architecture.from_string("stem24,r1_k3_s1_e1_i24_o16,r1_k3_s2_e6_i24_o32")
    with pytest.raises(NasError, match="i16"):
        Architecture.from_string("stem32,r1_k3_s1_e1_i16_o16")


BAD_STRINGS = [
    # (text, a piece of the message that names the bad value)
    ("stem32,r1_k3_s1_e1_i32_o16_zz", "'zz'"),
    ("stem32,r1_k3_s1_e1_i32_o16,bogus7", "'bogus7'"),
    ("stem32,r1_k7_s1_e1_i32_o16", "got 7"),
    ("stem32,r1_k3_s1_e0_i32_o16", "got 0"),
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
    (_with(["stages", 0, "kernel"], 7), "got 7"),
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
    with pytest.raises(NasError, match="got 7"):
        Stage("mbconv", 7, 1, 1, 16, 1)
    with pytest.raises(NasError, match="got -0.1"):
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
