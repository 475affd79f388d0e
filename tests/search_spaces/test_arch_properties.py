"""Property tests of the architecture format (hypothesis): any valid architecture survives its string
and JSON forms unchanged, counts what it is, and any mangled string is refused with a NasError, never
another exception."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.errors import NasError
from search_spaces import Architecture, count_params, get_space
from search_spaces.arch import ACTIVATIONS, BLOCKS, KERNELS, PADDINGS, SKIPS, STRIDES, Stage

channels = st.integers(1, 512)
ratios = st.sampled_from([0.0, 0.25, 0.5, 0.0625])

stages = st.builds(
    Stage,
    block=st.sampled_from(BLOCKS),
    kernel=st.sampled_from(KERNELS),
    stride=st.sampled_from(STRIDES),
    expansion=st.integers(1, 9),
    out=channels,
    repeats=st.integers(1, 8),
    se=ratios,
    skip=st.sampled_from(SKIPS),
    nominal_in=st.one_of(st.none(), channels),
)

architectures = st.builds(
    Architecture,
    stem=channels,
    stages=st.lists(stages, min_size=1, max_size=8).map(tuple),
    head=st.integers(1, 2048),
    resolution=st.integers(8, 2048),
    dropout=st.sampled_from([0.0, 0.2, 0.5]),
    drop_path=st.sampled_from([0.0, 0.2]),
    activation=st.sampled_from(ACTIVATIONS),
    padding=st.sampled_from(PADDINGS),
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(architectures)
def test_the_string_form_round_trips(arch):
    text = arch.to_string()
    again = Architecture.from_string(text)
    assert again == arch
    assert again.to_string() == text


@PROPS
@given(architectures)
def test_the_json_form_round_trips(arch):
    assert Architecture.from_json(arch.to_json()) == arch


@PROPS
@given(architectures)
def test_the_block_count_is_the_sum_of_repeats(arch):
    assert arch.num_blocks == sum(s.repeats for s in arch.stages) >= len(arch.stages)


@PROPS
@given(architectures, st.data())
def test_a_mangled_string_is_refused_with_one_error(arch, data):
    """Delete, duplicate or replace one character: the result either parses to a valid architecture
    (which then round-trips) or is refused with a NasError, the error every command turns into one line."""
    text = arch.to_string()
    i = data.draw(st.integers(0, len(text) - 1))
    edit = data.draw(st.sampled_from(["delete", "duplicate", "replace"]))
    char = data.draw(st.sampled_from(list("_,0123456789rkseiocx.-")))
    mangled = {
        "delete": text[:i] + text[i + 1 :],
        "duplicate": text[: i + 1] + text[i:],
        "replace": text[:i] + char + text[i + 1 :],
    }[edit]
    try:
        parsed = Architecture.from_string(mangled)
    except NasError as e:
        assert str(e)
    else:
        assert Architecture.from_string(parsed.to_string()) == parsed


@pytest.mark.parametrize("name", ["trainaware", "mnasnet"])
@settings(max_examples=12, deadline=None)  # counting builds the network: a dozen per space
@given(data=st.data())
def test_every_choice_of_a_space_is_a_valid_countable_architecture(name, data):
    """Any combination of a space's decisions (drawn by hypothesis, not by the space's own sampler)
    makes a valid architecture whose string round-trips and whose classifier alone depends on the class count."""
    space = get_space(name)
    choice = {key: data.draw(st.sampled_from(options), label=key) for key, options in space.decisions()}
    arch = space.make(choice)
    assert Architecture.from_string(arch.to_string()) == arch
    # The classifier is the only part that depends on the class count: (head + 1) weights per class.
    assert count_params(arch, num_classes=1000) - count_params(arch, num_classes=10) == 990 * (arch.head + 1)
