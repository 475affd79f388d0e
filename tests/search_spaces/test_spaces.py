"""Search spaces: contract tests every registered space runs, plus the facts of each space."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch

from search_spaces import (
    Architecture,
    NasError,
    RngChooser,
    SearchSpace,
    build,
    count_params,
    get_space,
    preset,
    scale,
    space_names,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


SPACES = space_names()
SMALL_SAMPLES = 25  # per space, built at width 0.25 / depth 0.25
FULL_SAMPLES = 2  # per space, built as sampled


def forward_backward(arch: Architecture, num_classes: int = 10) -> None:
    torch.manual_seed(0)
    model = build(arch, num_classes).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient in {arch}"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient in {arch}"


# -- contract: every registered space ------------------------------------------------------------------


def test_registry():
    assert {"trainaware", "mnasnet"} <= set(SPACES)
    for name in SPACES:
        space = get_space(name)
        assert isinstance(space, SearchSpace)
        assert space.name == name
        assert space.describe()
    with pytest.raises(NasError, match="'nope'") as e:
        get_space("nope")
    assert "trainaware" in str(e.value)  # the message lists the known spaces


@pytest.mark.parametrize("name", SPACES)
def test_size_is_the_product_of_option_counts(name):
    space = get_space(name)
    decisions = space.decisions()
    names = [n for n, _ in decisions]
    assert len(names) == len(set(names)), "decision names must be unique (they are Optuna param names)"
    for n, opts in decisions:
        assert len(opts) >= 1 and len(set(opts)) == len(opts), f"{n} has repeated options {opts}"
    assert space.size() == math.prod(len(opts) for _, opts in decisions)


@pytest.mark.parametrize("name", SPACES)
def test_seeded_sampling_is_repeatable(name):
    space = get_space(name)
    a = [space.sample(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    assert space.sample(7) == a[0]  # an int seed means default_rng(seed)
    assert space.sample(RngChooser(7)) == a[0]
    rng1, rng2 = np.random.default_rng(11), np.random.default_rng(11)
    seq1 = [space.sample(rng1) for _ in range(20)]
    assert seq1 == [space.sample(rng2) for _ in range(20)]
    assert len(set(seq1)) > 1  # a generator advances: consecutive samples differ
    assert {space.sample(s) for s in range(20)} != {a[0]}


@pytest.mark.parametrize("name", SPACES)
def test_sampling_from_an_optuna_trial(name):
    space = get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    arch = space.sample(trial)
    assert isinstance(arch, Architecture)
    decisions = dict(space.decisions())
    assert set(trial.params) == set(decisions)
    for k, v in trial.params.items():
        assert v in decisions[k]
    assert space.make(trial.params) == arch
    # Replaying the recorded decisions gives the same architecture.
    assert space.sample(optuna.trial.FixedTrial(trial.params)) == arch
    study.tell(trial, 0.5)
    assert study.trials[0].params == trial.params


@pytest.mark.parametrize("name", SPACES)
def test_every_option_of_every_decision_makes_a_valid_architecture(name):
    space = get_space(name)
    decisions = space.decisions()
    base = {n: opts[0] for n, opts in decisions}
    for n, opts in decisions:
        for o in opts:
            arch = space.make({**base, n: o})
            assert Architecture.from_string(arch.to_string()) == arch
    assert isinstance(space.reference(), Architecture)


@pytest.mark.parametrize("name", SPACES)
def test_small_samples_build_and_train(name):
    space = get_space(name)
    rng = np.random.default_rng(2024)
    for _ in range(SMALL_SAMPLES):
        arch = space.sample(rng)
        small = scale(arch, width=0.25, depth=0.25, rounding="v2")
        assert len(small.stages) == len(arch.stages)
        forward_backward(small)


@pytest.mark.slow
@pytest.mark.parametrize("name", SPACES)
def test_full_size_samples_build_and_train(name):
    space = get_space(name)
    forward_backward(space.reference())
    for seed in range(FULL_SAMPLES):
        arch = space.sample(seed)
        model_params = count_params(arch, 10)
        assert model_params == build(arch, 10).num_params()
        forward_backward(arch)


# -- trainaware ---------------------------------------------------------------------------------------


def test_trainaware_size_by_hand():
    # Per V2-S stage: op {mbconv, fused} x kernel {3, 5} x expansion {1, 4, 6} x layers {-1, 0, +1};
    # every V2-S stage has at least 2 layers, so -1 is always possible: 36 options, six stages.
    assert get_space("trainaware").size() == (2 * 2 * 3 * 3) ** 6 == 2_176_782_336


def test_trainaware_keeps_the_v2s_backbone():
    space = get_space("trainaware")
    v2s = preset("efficientnetv2-s")
    assert space.reference() == v2s
    rng = np.random.default_rng(5)
    seen_ops, seen_layers = set(), set()
    for _ in range(300):
        a = space.sample(rng)
        assert (a.stem, a.head, a.resolution, a.activation) == (v2s.stem, v2s.head, v2s.resolution, v2s.activation)
        assert [s.out for s in a.stages] == [s.out for s in v2s.stages]
        assert [s.stride for s in a.stages] == [s.stride for s in v2s.stages]
        for s, ref in zip(a.stages, v2s.stages):
            assert s.skip == "id"  # skip/pooling ops were removed from the V2 space
            assert s.se == (0.25 if s.block == "mbconv" else 0.0)
            assert s.kernel in (3, 5) and s.expansion in (1, 4, 6)
            assert s.repeats - ref.repeats in (-1, 0, 1)
            seen_ops.add(s.block)
            seen_layers.add(s.repeats - ref.repeats)
    assert seen_ops == {"mbconv", "fused"} and seen_layers == {-1, 0, 1}


# -- mnasnet ------------------------------------------------------------------------------------------


def test_mnasnet_size_by_hand():
    # MobileNetV2 stages (out, layers): (16,1) (24,2) (32,3) (64,4) (96,3) (160,3) (320,1).
    # Per stage: conv op 4 x kernel 2 x SE 2 x skip 3 = 48, times the distinct filter and layer options.
    # Filters 0.75/1/1.25 x out, rounded to 8 with the 90% rule: 16 -> {16 (12 rounds up), 16, 24} = 2;
    # 24 -> {24 (18 rounds up), 24, 32} = 2; the others give 3 distinct values.
    # Layers -1/0/+1, at least 1: a 1-layer stage has 2 options, the others 3.
    filters = [2, 2, 3, 3, 3, 3, 3]
    layers = [2, 3, 3, 3, 3, 3, 2]
    expected = 1
    for f, n_layers in zip(filters, layers):
        expected *= 48 * f * n_layers
    assert expected == 48**7 * (2 * 2) * (2 * 3) * (3 * 3) ** 4 * (3 * 2)
    assert get_space("mnasnet").size() == expected


def test_mnasnet_samples():
    space = get_space("mnasnet")
    mbv2 = preset("mobilenetv2")
    assert space.reference() == mbv2
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(300):
        a = space.sample(rng)
        assert [s.stride for s in a.stages] == [s.stride for s in mbv2.stages]
        assert a.activation == "relu"
        for s, ref in zip(a.stages, mbv2.stages):
            assert (s.block, s.expansion) in {("fused", 1), ("mbconv", 1), ("mbconv", 3), ("mbconv", 6)}
            assert s.se in (0.0, 0.25) and s.skip in ("pool", "id", "none")
            assert 0.75 * ref.out - 8 < s.out <= 1.25 * ref.out + 4  # rounded to a multiple of 8
            assert s.out % 8 == 0
            assert max(1, ref.repeats - 1) <= s.repeats <= ref.repeats + 1
            seen.add((s.block, s.expansion, s.skip))
    assert len(seen) == 4 * 3


def test_mnasnet_pool_skip_builds_a_shortcut():
    space = get_space("mnasnet")
    decisions = space.decisions()
    choice = {n: opts[0] for n, opts in decisions}
    choice.update({n: "pool" for n, _ in decisions if n.endswith("_skip")})
    arch = space.make(choice)
    assert {s.skip for s in arch.stages} == {"pool"}
    small = scale(arch, width=0.25, depth=0.25, rounding="v2")
    shortcuts = [m for m in build(small, 10).modules() if type(m).__name__ == "_Shortcut"]
    assert len(shortcuts) == small.num_blocks  # every block, also those that stride or change width
    forward_backward(small)


@pytest.mark.parametrize("skip", ["id", "pool"])
def test_regular_conv_with_a_skip_trains(skip):
    # MnasNet's regular conv (Fused-MBConv e1) ends in ReLU, whose backward reads its output: the
    # residual must not be added into it in place.
    arch = Architecture.from_string(f"stem16,r2_k3_s1_e1_i16_o16_c1_{skip}skip,act_relu,sd0".replace("_idskip", ""))
    forward_backward(arch)
