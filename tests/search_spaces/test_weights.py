"""Public weights: torchvision's and timm's state dicts load into our networks output for output.

The public models are built with random weights (no download): on the meta device, then given
seeded random values that make every convention visible (BatchNorm variances near the epsilon,
activations beyond 6), so that a wrong epsilon, ReLU instead of ReLU6 or symmetric instead of
TensorFlow's "same" padding changes the outputs by far more than the tolerance.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from search_spaces import NasError, build, counterpart, counterparts, load_weights, preset, preset_names
from search_spaces.reference import REFERENCE

PAIRS = [(name, cp.source) for name in preset_names() for cp in counterparts(name)]
# One pair for each way keys are translated and each convention, in the quick suite; the larger
# members of the same families repeat the same code on more layers (0.5-30 s each): -m slow.
QUICK = {
    ("efficientnet-b0", "torchvision"),  # torchvision's EfficientNet layout, BatchNorm eps 1e-5
    ("efficientnet-b0", "timm"),  # timm DepthwiseSeparable / InvertedResidual, "same" padding
    ("efficientnetv2-b0", "timm"),  # timm ConvBnAct / EdgeResidual (Fused-MBConv)
    ("efficientnet-lite0", "timm"),  # ReLU6, timm's eps 1e-5
    ("efficientnet-lite1", "timm"),  # Lite scaling (fixed stem, head, end stages)
    ("efficientnet-edgetpu-s", "timm"),  # a nominal input width (fc24)
    ("mnasnet-a1", "timm"),
    ("mnasnet-small", "timm"),
    ("mnasnet-b1", "torchvision"),
    ("mnasnet-b1", "timm"),  # torchvision's MNASNet layout
    ("mobilenetv2", "torchvision"),
    ("mobilenetv2", "timm"),  # torchvision's MobileNetV2 layout
}
IMAGE = (2, 3, 64, 56)  # even sides: "same" padding is asymmetric at every stride-2 layer


@pytest.fixture(autouse=True)
def quiet_cpu():
    """One intra-op thread: on a shared 2-core machine two threads spin against each other and a
    small forward pass takes ten times longer. Denormals flushed: SiLU of the large negative
    activations these weights produce gives denormal floats, several times slower on a CPU;
    flushing changes both networks alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random values for every parameter and buffer (in place)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                normal(m.weight, (2.0 / (m.weight[0].numel())) ** 0.5)
                if m.bias is not None:
                    normal(m.bias, 0.1)
            elif isinstance(m, nn.Linear):
                normal(m.weight, m.in_features**-0.5)
                normal(m.bias, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                # Variances a few times the TF epsilon: 1e-3 against 1e-5 changes the output by ~10%;
                # scale and shift keep activations O(1) with some above 6 (ReLU6 against ReLU).
                uniform(m.running_var, 0.002, 0.01)
                normal(m.running_mean, 0.1)
                m.weight.copy_(m.running_var.sqrt() * (torch.rand(m.weight.shape, generator=g) + 0.5))
                normal(m.bias, 2.0)
                m.num_batches_tracked.zero_()
    return model


def public_model(name: str, source: str) -> nn.Module:
    with torch.device("meta"):
        model = counterpart(name, source).build()
    return randomize_(model.to_empty(device="cpu")).eval()


def ours_like(arch) -> nn.Module:
    with torch.device("meta"):
        model = build(arch)
    return model.to_empty(device="cpu").eval()


def outputs(*models: nn.Module, seed: int = 1) -> list[torch.Tensor]:
    x = torch.randn(*IMAGE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return [m(x) for m in models]


@pytest.mark.parametrize(
    "name,source", [(n, s) if (n, s) in QUICK else pytest.param(n, s, marks=pytest.mark.slow) for n, s in PAIRS]
)
def test_public_weights_give_the_public_outputs(name, source):
    theirs = public_model(name, source)
    ours = ours_like(preset(name, source))
    mapping = load_weights(ours, theirs.state_dict(), source)
    assert len(mapping) == len(ours.state_dict())  # every tensor of ours came from theirs
    a, b = outputs(ours, theirs)
    assert b.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_every_counterpart_is_tested():
    # The weights table and the presets table name the same public models.
    named = {(n, s) for n, r in REFERENCE.items() for s in ("torchvision", "timm") if s in r}
    assert named == set(PAIRS)
    assert {n for n, _ in PAIRS} == set(REFERENCE) == set(preset_names())


@pytest.mark.parametrize(
    "name,source,wrong",
    [
        ("efficientnet-b0", "torchvision", {"bn_eps": 1e-3}),  # torchvision B0 uses PyTorch's 1e-5
        ("efficientnet-b0", "timm", {"padding": "symmetric"}),  # tf_efficientnet_b0 pads like TensorFlow
        ("mobilenetv2", "torchvision", {"activation": "relu"}),  # MobileNetV2 clips at 6
    ],
)
def test_the_conventions_matter(name, source, wrong):
    """The same weights in an architecture with the wrong convention give other outputs: the
    equality above is a real check, and preset(name, source) is what makes it hold."""
    theirs = public_model(name, source)
    ours = ours_like(preset(name, source).replace(**wrong))
    load_weights(ours, theirs.state_dict(), source)
    a, b = outputs(ours, theirs)
    assert (a - b).abs().max() > 1e-2 * b.abs().max()


def test_classifier_false_keeps_our_classifier():
    theirs = public_model("mnasnet-b1", "torchvision")
    with torch.device("meta"):
        ours = build(preset("mnasnet-b1", "torchvision"), num_classes=10)
    ours = ours.to_empty(device="cpu").eval()
    nn.init.normal_(ours.classifier.weight)  # to_empty's memory may hold NaN, which torch.equal never equals
    with pytest.raises(NasError, match=re.escape("shape mismatch") + ".*classifier=False"):
        load_weights(ours, theirs.state_dict(), "torchvision")
    before = ours.classifier.weight.clone()
    mapping = load_weights(ours, theirs.state_dict(), "torchvision", classifier=False)
    assert not any(k.startswith("classifier.") for k in mapping)
    assert torch.equal(ours.classifier.weight, before)
    assert torch.equal(ours.features[0][0].weight, theirs.layers[0].weight)


def test_missing_num_batches_tracked_is_accepted():
    theirs = public_model("mobilenetv2", "timm")
    sd = {k: v for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = ours_like(preset("mobilenetv2", "timm"))
    load_weights(ours, sd, "timm")
    torch.testing.assert_close(*outputs(ours, theirs), rtol=0, atol=1e-5)


def _sd(name="efficientnet-b0", source="torchvision"):
    with torch.device("meta"):
        return counterpart(name, source).build().state_dict()


def _meta(arch):
    with torch.device("meta"):
        return build(arch)


@pytest.mark.parametrize(
    "model,sd,source,words",
    [
        # another architecture: B1 has more layers than B0
        (
            lambda: _meta(preset("efficientnet-b0")),
            lambda: _sd("efficientnet-b1"),
            "torchvision",
            "has 148 tensor(s) this network has no place for, first 'features.1.1.block.0.0.weight'",
        ),
        (
            lambda: _meta(preset("efficientnet-b1")),
            lambda: _sd("efficientnet-b0"),
            "torchvision",
            "has no 'features.1.1.",
        ),
        # same keys, other widths: B2's wider channels
        (
            lambda: _meta(preset("efficientnet-b0").replace(stem=40)),
            lambda: _sd(),
            "torchvision",
            "shape mismatch: torchvision 'features.0.0.weight' is [32, 3, 3, 3] "
            "but our 'features.0.0.weight' is [40, 3, 3, 3]",
        ),
        # a torchvision state dict read as timm's
        (lambda: _meta(preset("efficientnet-b0")), lambda: _sd(), "timm", "has no 'conv_stem.weight'"),
        (
            lambda: _meta(preset("efficientnet-b0")),
            lambda: _sd(),
            "keras",
            "weights source must be one of torchvision, timm",
        ),
        (lambda: nn.Linear(2, 2), lambda: _sd(), "torchvision", "takes a network built by search_spaces.build"),
        (lambda: _meta(preset("efficientnet-b0")), lambda: [1, 2], "torchvision", "must be a mapping"),
        (
            lambda: _meta(preset("efficientnet-b0")),
            lambda: {**_sd(), "features.0.0.weight": "x"},
            "torchvision",
            "'features.0.0.weight' is not a tensor",
        ),
        # MobileNetV2-style torchvision dict into a network with SE
        (
            lambda: _meta(preset("efficientnet-b0")),
            lambda: _sd("mobilenetv2"),
            "torchvision",
            "no counterpart in torchvision's MobileNetV2",
        ),
        (
            lambda: _meta(preset("mnasnet-a1")),
            lambda: _sd("mnasnet-b1"),
            "torchvision",
            "no counterpart in torchvision's MNASNet",
        ),
        (
            lambda: _meta(
                preset("mnasnet-a1").replace(
                    stages=tuple(dataclasses.replace(s, skip="pool") for s in preset("mnasnet-a1").stages)
                )
            ),
            lambda: _sd("mnasnet-a1", "timm"),
            "timm",
            "pooling skip has no torchvision or timm counterpart",
        ),
    ],
)
def test_a_mismatch_is_refused_with_one_line(model, sd, source, words):
    with pytest.raises(NasError, match=re.escape(words)) as e:
        load_weights(model(), sd(), source)
    assert "\n" not in str(e.value)


def test_a_refused_load_changes_nothing():
    theirs = public_model("efficientnet-b0", "torchvision")
    ours = ours_like(preset("efficientnet-b0", "torchvision"))
    load_weights(ours, theirs.state_dict(), "torchvision")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    bad = dict(theirs.state_dict())
    bad["features.8.0.weight"] = torch.zeros(1280, 320, 3, 3)  # the head conv, wrong shape, checked last
    with pytest.raises(NasError, match="shape mismatch"):
        load_weights(ours, bad, "torchvision")
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_counterpart_lookup():
    assert counterpart("efficientnet-b0", "timm").model == "tf_efficientnet_b0"
    assert preset("efficientnet-b0", "torchvision").bn_eps == 1e-5
    assert preset("efficientnet-b0", "timm").padding == "same"
    assert preset("efficientnet-b0") == preset("efficientnet-b0", "timm").replace(padding="symmetric")
    with pytest.raises(NasError, match="'efficientnetv2-b0' has no torchvision counterpart \\(it has: timm\\)"):
        preset("efficientnetv2-b0", "torchvision")
    with pytest.raises(NasError, match="'keras'"):
        preset("efficientnet-b0", "keras")
