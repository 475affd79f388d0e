"""An architecture as the pieces whose training-step costs add up to its own.

A network built by :func:`search_spaces.build` is ``stem -> stages -> head conv -> pool, dropout,
classifier``, and within a stage every block after the first is the same module (stride 1, out ->
out channels; only its stochastic-depth rate differs, and the cost of stochastic depth does not
depend on the rate). So a network at a given input size is made of these pieces, each with a count:

* ``stem``: the stem convolution;
* ``block``: a stage's first block (possibly strided, in -> out channels), count 1, and its repeated
  block (stride 1, out -> out), count ``repeats - 1``;
* ``head``: the 1x1 head convolution;
* ``tail``: global pooling, dropout, the classifier and the loss.

The optimiser's step is not a piece: its cost is a function of the parameter count
(:mod:`nas.steptime.pieces`).

A piece's key is its identity: two pieces with the same key are the same module on the same input.
It is derived from the architecture's own text form (:meth:`Architecture.to_string`): the piece's
stage written as a one-block stage string (``r1_k3_s2_e4_i24_o48_c1``), the network-level tokens
that shape every module (``act_silu``, and whatever tokens the format gains, which enter the key
without a change here), a flag for stochastic depth or dropout being on, and the input shape
(``NxCxHxW``). Tokens that do not change a piece's module are left out (``head`` for a block,
``res``, the dropout and stochastic-depth *rates*), so the pieces of differently scaled networks are
shared where they are the same module.

Keys are computed without building anything (:func:`decompose`, microseconds); the modules and
their inputs come from a really built network (:func:`extract`), so a timed piece is exactly the
module the full network contains.

"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from search_spaces import Architecture

# Network-level tokens that do not shape a piece's module (its own channels are in its key, the rates
# only switch a layer on or off): everything else in the text form is part of every key.
_NOT_SHAPING = re.compile(r"^(r\d.*|stem\d+|head\d+|res\d+|drop[\d.e-]+|sd[\d.e-]+)$")


@dataclass(frozen=True)
class PieceRef:
    """Where a piece sits in a built network: ``kind`` and, for blocks, (stage index, block index)."""

    key: str
    kind: str  # stem | block | head | tail
    stage: int = -1
    block: int = -1


def network_tokens(arch: Architecture) -> str:
    """The tokens of ``arch``'s text form that shape every piece (``act_silu`` today)."""
    return ",".join(t for t in arch.to_string().split(",") if not _NOT_SHAPING.match(t))


def _shape(batch: int, channels: int, size: int) -> str:
    return f"{batch}x{channels}x{size}x{size}"


def decompose(arch: Architecture, image_size: int, batch_size: int, num_classes: int) -> list[tuple[PieceRef, int]]:
    """The pieces of ``arch`` at ``image_size`` and ``batch_size``, in network order, with their
    counts. Spatial sizes follow 'same' padding, ``ceil(size / stride)``, which every convolution of
    the builder has (odd kernels, padding ``(k - 1) // 2``); :func:`extract` checks them against the
    real shapes."""
    net = network_tokens(arch)
    size = math.ceil(image_size / 2)  # the stem's stride
    out = [(PieceRef(f"stem|{net}|stem{arch.stem}|{_shape(batch_size, 3, image_size)}", "stem"), 1)]
    cin, idx = arch.stem, 0
    for i, st in enumerate(arch.stages):
        first = dataclasses.replace(st, repeats=1)
        # Stochastic depth is on for a residual block when its rate, drop_path * idx / total, is > 0.
        sd = "|sd" if arch.drop_path > 0 and idx > 0 else ""
        out.append(
            (PieceRef(f"block|{net}|{first.to_string(cin)}{sd}|{_shape(batch_size, cin, size)}", "block", i, 0), 1)
        )
        size = math.ceil(size / st.stride)
        if st.repeats > 1:
            rep = dataclasses.replace(st, repeats=1, stride=1)
            sd = "|sd" if arch.drop_path > 0 else ""
            out.append(
                (
                    PieceRef(
                        f"block|{net}|{rep.to_string(st.out)}{sd}|{_shape(batch_size, st.out, size)}", "block", i, 1
                    ),
                    st.repeats - 1,
                )
            )
        cin, idx = st.out, idx + st.repeats
    out.append((PieceRef(f"head|{net}|head{arch.head}|{_shape(batch_size, cin, size)}", "head"), 1))
    drop = "|dropout" if arch.dropout > 0 else ""
    out.append((PieceRef(f"tail|{net}|classes{num_classes}{drop}|{_shape(batch_size, arch.head, size)}", "tail"), 1))
    return out


def tail_module(net: nn.Module) -> nn.Module:
    """The network after its feature extractor: the same object with ``features`` replaced by an
    identity, so its forward is the network's own (pool, flatten, dropout, classifier) and its
    parameters are the classifier's."""
    tail = copy.copy(net)
    tail._modules = {**net._modules, "features": nn.Identity()}
    return tail


def piece_modules(net: nn.Module, refs: list[PieceRef]) -> list[nn.Module]:
    """The module of each piece in a network built from the architecture ``refs`` came from."""
    feats = net.features
    stages = len(feats) - 2
    if stages != len(net.arch.stages):
        raise RuntimeError(
            f"the built network has {stages} stages in features, its architecture {len(net.arch.stages)}"
        )
    mods = []
    for r in refs:
        if r.kind == "stem":
            mods.append(feats[0])
        elif r.kind == "head":
            mods.append(feats[stages + 1])
        elif r.kind == "tail":
            mods.append(tail_module(net))
        else:
            mods.append(feats[1 + r.stage][r.block])
    return mods


@torch.no_grad()
def extract(
    net: nn.Module, refs: list[PieceRef], images: torch.Tensor, runtime
) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """``{key: (module, input)}`` for the pieces ``refs`` of the built network ``net`` (on
    ``runtime``'s device and layout, in training mode): one forward pass of the network, module by
    module in the order ``net.features`` runs them, records each piece's real input (its dtype under
    autocast, its memory format). Raises RuntimeError when a real shape differs from the key's (the
    builder changed in a way :func:`decompose` does not know)."""
    wanted = {(r.kind, r.stage, r.block): r for r in refs}
    mods = dict(zip((r.key for r in refs), piece_modules(net, refs)))
    found: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def keep(kind: str, stage: int, block: int, x: torch.Tensor) -> None:
        r = wanted.get((kind, stage, block))
        if r is None or r.key in found:
            return
        shape = "x".join(map(str, x.shape))
        if not r.key.endswith("|" + shape):
            raise RuntimeError(f"piece {r.key!r} has input shape {shape} in the built network")
        found[r.key] = (mods[r.key], x)

    feats = net.features
    x = images
    with runtime.autocast():
        keep("stem", -1, -1, x)
        x = feats[0](x)
        for s, stage in enumerate(feats[1:-1]):
            for b, block in enumerate(stage):
                keep("block", s, min(b, 1), x)
                x = block(x)
        keep("head", -1, -1, x)
        x = feats[-1](x)
        keep("tail", -1, -1, x)
    return found


def piece_params(module: nn.Module) -> tuple[int, int]:
    """(parameter count, parameter tensors) the optimiser steps for this piece."""
    ps = [p for p in module.parameters() if p.requires_grad]
    return sum(p.numel() for p in ps), len(ps)
