"""Load torchvision's and timm's public weights into a network built from an Architecture.

:func:`load_weights` translates the public key names onto ours, checks that every tensor has a place
and the right shape, and loads them; anything that does not fit is refused with one
:class:`NasError` line naming the first offending key. Outputs equal the public model's only when
the architecture also has its conventions (BatchNorm epsilon, ReLU6, "same" padding):
``preset(name, source)`` has them, :mod:`search_spaces.reference` lists them.

The translation is written per block kind, from the layer order of each library (which our blocks
share: expand, depthwise, SE, project):

=====================  ======================  ==========================  ==================================
our block              timm (EfficientNet)     torchvision EfficientNet    torchvision MobileNetV2 / MNASNet
=====================  ======================  ==========================  ==================================
MBConv, expansion > 1  InvertedResidual        MBConv (same keys as ours)  InvertedResidual / _InvertedResidual
MBConv, expansion 1    DepthwiseSeparableConv  MBConv                      InvertedResidual / MNASNet sepconv
Fused-MBConv, e > 1    EdgeResidual            FusedMBConv                 -
Fused-MBConv, e 1      ConvBnAct               FusedMBConv                 -
=====================  ======================  ==========================  ==================================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from nas.errors import NasError, check_choice
from search_spaces.blocks import MBConv
from search_spaces.builder import Network
from search_spaces.reference import SOURCES

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Optional on the public side: BatchNorm's step counter is not needed to evaluate or fine-tune (and
# several published checkpoints drop it); ours then keeps its own.
_OPTIONAL = ("num_batches_tracked",)


def _units(block: nn.Module) -> list[tuple[str, str, str]]:
    """(role, our path inside the block, "cna" or "se") for each layer of one of our blocks, in order;
    roles are "expand", "dw", "project" (MBConv), "expand", "project" (Fused-MBConv) or "conv"
    (Fused-MBConv with expansion 1)."""
    if getattr(block, "shortcut", None) is not None:
        raise NasError("a block with MnasNet's pooling skip has no torchvision or timm counterpart")
    layers = list(block.block)
    convs = sum(not _is_se(m) for m in layers)
    if isinstance(block, MBConv):
        roles = ["expand", "dw", "project"] if convs == 3 else ["dw", "project"]
    else:
        roles = ["expand", "project"] if convs == 2 else ["conv"]
    out, k = [], 0
    for i, m in enumerate(layers):
        if _is_se(m):
            out.append(("se", f"block.{i}", "se"))
        else:
            out.append((roles[k], f"block.{i}", "cna"))
            k += 1
    return out


def _is_se(m: nn.Module) -> bool:
    return isinstance(m, SqueezeExcitation)


def _kind(block: nn.Module) -> str:
    """timm's class name for one of our blocks."""
    roles = {r for r, _, _ in _units(block)}
    if isinstance(block, MBConv):
        return "ir" if "expand" in roles else "ds"
    return "er" if "expand" in roles else "cn"


# timm's names for each role's conv and norm, per block class (timm/models/_efficientnet_blocks.py).
_TIMM_NAMES = {
    "ir": {"expand": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3")},
    "ds": {"dw": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")},
    "er": {"expand": ("conv_exp", "bn1"), "project": ("conv_pwl", "bn2")},
    "cn": {"conv": ("conv", "bn1")},
}


def _pairs_for_cna(ours: str, conv: str, norm: str, module: nn.Module) -> Iterator[tuple[str, str]]:
    yield f"{ours}.0.weight", f"{conv}.weight"
    if module[0].bias is not None:
        yield f"{ours}.0.bias", f"{conv}.bias"
    for p in _BN:
        yield f"{ours}.1.{p}", f"{norm}.{p}"


def _pairs_for_se(ours: str, reduce: str, expand: str) -> Iterator[tuple[str, str]]:
    for a, b in (("fc1", reduce), ("fc2", expand)):
        yield f"{ours}.{a}.weight", f"{b}.weight"
        yield f"{ours}.{a}.bias", f"{b}.bias"


def _blocks(model: Network) -> Iterator[tuple[int, int, int, nn.Module]]:
    """(stage index from 1, block index in the stage, global block index, block) in order."""
    g = 0
    for k, stage in enumerate(list(model.features)[1:-1], start=1):
        for j, block in enumerate(stage):
            yield k, j, g, block
            g += 1


def _timm_pairs(model: Network) -> Iterator[tuple[str, str]]:
    f = model.features
    yield from _pairs_for_cna("features.0", "conv_stem", "bn1", f[0])
    for k, j, _, block in _blocks(model):
        kind, theirs = _kind(block), f"blocks.{k - 1}.{j}"
        for role, path, unit in _units(block):
            ours = f"features.{k}.{j}.{path}"
            if unit == "se":
                if kind == "cn":
                    raise NasError(f"block {k}.{j} (Fused-MBConv, expansion 1, with SE) has no timm counterpart")
                yield from _pairs_for_se(ours, f"{theirs}.se.conv_reduce", f"{theirs}.se.conv_expand")
            else:
                conv, norm = _TIMM_NAMES[kind][role]
                yield from _pairs_for_cna(ours, f"{theirs}.{conv}", f"{theirs}.{norm}", block.get_submodule(path))
    yield from _pairs_for_cna(f"features.{len(f) - 1}", "conv_head", "bn2", f[-1])
    yield from (("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias"))


def _torchvision_efficientnet_pairs(model: Network) -> Iterator[tuple[str, str]]:
    # Our layout is torchvision's efficientnet.py; only the classifier is Sequential(Dropout, Linear) there.
    for key in model.state_dict():
        yield key, key.replace("classifier.", "classifier.1.", 1) if key.startswith("classifier.") else key


def _torchvision_mobilenetv2_pairs(model: Network) -> Iterator[tuple[str, str]]:
    # features.0 stem, then one InvertedResidual per block (not grouped in stages) whose ``conv`` is
    # [expand CNA], depthwise CNA, project Conv2d, BatchNorm2d; then the head CNA; classifier.1.
    f = model.features
    yield from _pairs_for_cna("features.0", "features.0.0", "features.0.1", f[0])
    g = 0
    for k, j, g, block in _blocks(model):
        theirs, idx = f"features.{g + 1}.conv", 0
        for role, path, unit in _units(block):
            ours = f"features.{k}.{j}.{path}"
            if unit == "se" or _kind(block) not in ("ir", "ds"):
                raise NasError(f"block {k}.{j} has no counterpart in torchvision's MobileNetV2 (SE or Fused-MBConv)")
            if role == "project":
                yield from _pairs_for_cna(ours, f"{theirs}.{idx}", f"{theirs}.{idx + 1}", block.get_submodule(path))
            else:
                yield from _pairs_for_cna(ours, f"{theirs}.{idx}.0", f"{theirs}.{idx}.1", block.get_submodule(path))
                idx += 1
    head = f"features.{g + 2}"
    yield from _pairs_for_cna(f"features.{len(f) - 1}", f"{head}.0", f"{head}.1", f[-1])
    yield from (("classifier.weight", "classifier.1.weight"), ("classifier.bias", "classifier.1.bias"))


def _torchvision_mnasnet_pairs(model: Network) -> Iterator[tuple[str, str]]:
    # ``layers``: stem conv 0 / bn 1, the first stage's depthwise-separable conv (3 / 4, 6 / 7), then one
    # Sequential per later stage of _InvertedResidual blocks whose ``layers`` are 0 / 1 expand,
    # 3 / 4 depthwise, 6 / 7 project; then the head conv / bn; classifier.1.
    f = model.features
    stages = list(f)[1:-1]
    first = stages[0][0]
    if len(stages[0]) != 1 or _kind(first) != "ds" or any(u == "se" for _, _, u in _units(first)):
        raise NasError(
            "torchvision's MNASNet starts with one depthwise-separable conv without SE; this network does not"
        )
    yield from _pairs_for_cna("features.0", "layers.0", "layers.1", f[0])
    for (_, path, _), (conv, norm) in zip(_units(first), (("layers.3", "layers.4"), ("layers.6", "layers.7"))):
        yield from _pairs_for_cna(f"features.1.0.{path}", conv, norm, first.get_submodule(path))
    names = {"expand": (0, 1), "dw": (3, 4), "project": (6, 7)}
    for k, j, _, block in _blocks(model):
        if k == 1:
            continue
        if _kind(block) != "ir" or any(u == "se" for _, _, u in _units(block)):
            raise NasError(f"block {k}.{j} has no counterpart in torchvision's MNASNet (only MBConv without SE)")
        theirs = f"layers.{8 + k - 2}.{j}.layers"
        for role, path, _ in _units(block):
            c, n = names[role]
            yield from _pairs_for_cna(
                f"features.{k}.{j}.{path}", f"{theirs}.{c}", f"{theirs}.{n}", block.get_submodule(path)
            )
    head = 8 + len(stages) - 1
    yield from _pairs_for_cna(f"features.{len(f) - 1}", f"layers.{head}", f"layers.{head + 1}", f[-1])
    yield from (("classifier.weight", "classifier.1.weight"), ("classifier.bias", "classifier.1.bias"))


def key_map(model: Network, state_dict: Mapping[str, Any], source: str) -> dict[str, str]:
    """Our state-dict key -> the public one, for ``model`` and a ``source`` state dict."""
    check_choice("weights source", source, SOURCES)
    if source == "timm":
        pairs = _timm_pairs(model)
    elif "layers.0.weight" in state_dict:
        pairs = _torchvision_mnasnet_pairs(model)
    elif "features.1.conv.0.0.weight" in state_dict:
        pairs = _torchvision_mobilenetv2_pairs(model)
    else:
        pairs = _torchvision_efficientnet_pairs(model)
    return dict(pairs)


def _check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """NaN or infinite weights load without an error and give NaN outputs (or a NaN loss at the first
    step): a damaged or diverged checkpoint, refused by its first bad key."""
    for k, v in state_dict.items():
        if (v.is_floating_point() or v.is_complex()) and not v.is_meta:  # a meta tensor has no values
            bad = ~torch.isfinite(v)
            if bad.any():
                what = "NaN" if torch.isnan(v).any() else "infinite values"
                raise NasError(
                    f"the {source} state dict's {k!r} holds {what} ({int(bad.sum())} of {v.numel()} values): "
                    "a damaged or diverged checkpoint; nothing was loaded"
                )


def load_weights(
    model: nn.Module, state_dict: Mapping[str, Any], source: str = "torchvision", *, classifier: bool = True
) -> dict[str, str]:
    """Load a torchvision or timm state dict into ``model`` (a :class:`Network`).

    Every tensor of ``model`` must find its public counterpart with the same shape, and every public
    tensor must be used (BatchNorm's ``num_batches_tracked`` may be absent) and hold finite values;
    otherwise a :class:`NasError` names the first key that does not fit and nothing is loaded. With
    ``classifier=False`` the classifier keeps its own weights (fine-tuning to other classes) and the
    public classifier is ignored. Returns the key map used (ours -> theirs).
    """
    if not isinstance(model, Network):
        raise NasError(f"load_weights() takes a network built by search_spaces.build, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise NasError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    bad = next((k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise NasError(f"state dict entry {bad!r} is not a tensor ({type(state_dict[bad]).__name__})")
    _check_finite(state_dict, source)
    full = key_map(model, state_dict, source)
    ours = model.state_dict()
    if set(full) != set(ours):  # a bug in the translation, not the user's input
        raise RuntimeError(f"key map misses {sorted(set(ours) - set(full))[:3]}")
    mapping = full if classifier else {k: v for k, v in full.items() if not k.startswith("classifier.")}
    known = set(full.values())  # the public classifier is known even where it is not loaded
    extra = [k for k in state_dict if k not in known]
    missing = [(k, v) for k, v in mapping.items() if v not in state_dict and not v.endswith(_OPTIONAL)]
    if missing:
        k, v = missing[0]
        raise NasError(
            f"the {source} state dict has no {v!r} (for our {k!r}; {len(missing)} missing): not the same architecture"
        )
    if extra:
        raise NasError(
            f"the {source} state dict has {len(extra)} tensor(s) this network has no place for, "
            f"first {extra[0]!r}: not the same architecture"
        )
    for k, v in mapping.items():
        if v in state_dict and tuple(state_dict[v].shape) != tuple(ours[k].shape):
            raise NasError(
                f"shape mismatch: {source} {v!r} is {list(state_dict[v].shape)} but our {k!r} is "
                f"{list(ours[k].shape)}: not the same architecture"
                + (" (or another class count: classifier=False keeps ours)" if k.startswith("classifier.") else "")
            )
    new = dict(ours)
    new.update({k: state_dict[v] for k, v in mapping.items() if v in state_dict})
    model.load_state_dict(new)
    return {k: v for k, v in mapping.items() if v in state_dict}
