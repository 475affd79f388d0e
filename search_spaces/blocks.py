"""The building blocks: MBConv and Fused-MBConv (EfficientNet V1 section 4, V2 section 3.2).

Layer order, channel rounding and squeeze sizes follow torchvision's ``efficientnet.py`` so that the
published networks have exactly torchvision's parameter counts. The pieces are torchvision ops
(``Conv2dNormActivation``, ``SqueezeExcitation``, ``StochasticDepth``).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation, StochasticDepth

ACTIVATION_LAYERS: dict[str, Callable[..., nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to the nearest multiple of ``divisor``, never below 90% of ``value`` (the V1 rule)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def expanded_channels(in_channels: int, expansion: int) -> int:
    return in_channels if expansion == 1 else make_divisible(in_channels * expansion, 8)


def squeeze_channels(in_channels: int, se_ratio: float) -> int:
    """SE width is relative to the block's *input* channels (EfficientNet, MnasNet)."""
    return max(1, int(in_channels * se_ratio))


class _Shortcut(nn.Module):
    """MnasNet's pooling skip: average-pool to the output size, 1x1 conv when channels change."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[..., nn.Module]):
        super().__init__()
        layers: list[nn.Module] = []
        if stride > 1:
            layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
        if cin != cout:
            layers.append(Conv2dNormActivation(cin, cout, 1, norm_layer=norm, activation_layer=None))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Block(nn.Module):
    """Shared residual logic; subclasses fill ``self.block``."""

    def _init_skip(self, cin: int, cout: int, stride: int, skip: str, drop_path: float, norm) -> None:
        self.use_identity = skip == "id" and stride == 1 and cin == cout
        self.shortcut = _Shortcut(cin, cout, stride, norm) if skip == "pool" else None
        residual = self.use_identity or self.shortcut is not None
        self.stochastic_depth = StochasticDepth(drop_path, "row") if residual and drop_path > 0 else nn.Identity()
        # ReLU's backward reads its own output, so the residual must not be added in place into a block
        # that ends in ReLU (MnasNet's regular conv: Fused-MBConv e1 without SE, with ReLU).
        last = self.block[-1]
        self.inplace_add = not (isinstance(last, nn.Sequential) and isinstance(last[-1], nn.ReLU))

    def _add(self, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.inplace_add:
            out += residual  # in place, as torchvision: one activation-sized allocation less per block
            return out
        return out + residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_identity:
            out = self._add(self.stochastic_depth(out), x)
        elif self.shortcut is not None:
            out = self._add(self.stochastic_depth(out), self.shortcut(x))
        return out


class MBConv(_Block):
    """Inverted residual: 1x1 expand, kxk depthwise, SE, 1x1 project (linear)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, se: float,
                 skip: str, drop_path: float, act: Callable[..., nn.Module], norm: Callable[..., nn.Module]):
        super().__init__()
        mid = expanded_channels(cin, expansion)
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(Conv2dNormActivation(cin, mid, 1, norm_layer=norm, activation_layer=act))
        layers.append(Conv2dNormActivation(mid, mid, kernel, stride, groups=mid, norm_layer=norm, activation_layer=act))
        if se > 0:
            layers.append(SqueezeExcitation(mid, squeeze_channels(cin, se), activation=act))
        layers.append(Conv2dNormActivation(mid, cout, 1, norm_layer=norm, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self._init_skip(cin, cout, stride, skip, drop_path, norm)


class FusedMBConv(_Block):
    """EfficientNetV2's Fused-MBConv: one regular kxk conv replaces expand + depthwise.

    With expansion 1 it is a single kxk conv + BN + activation (no projection), which is also
    MnasNet's "regular convolution" op.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, se: float,
                 skip: str, drop_path: float, act: Callable[..., nn.Module], norm: Callable[..., nn.Module]):
        super().__init__()
        layers: list[nn.Module] = []
        if expansion != 1:
            mid = expanded_channels(cin, expansion)
            layers.append(Conv2dNormActivation(cin, mid, kernel, stride, norm_layer=norm, activation_layer=act))
            if se > 0:
                layers.append(SqueezeExcitation(mid, squeeze_channels(cin, se), activation=act))
            layers.append(Conv2dNormActivation(mid, cout, 1, norm_layer=norm, activation_layer=None))
        else:
            layers.append(Conv2dNormActivation(cin, cout, kernel, stride, norm_layer=norm, activation_layer=act))
            if se > 0:
                layers.append(SqueezeExcitation(cout, squeeze_channels(cin, se), activation=act))
        self.block = nn.Sequential(*layers)
        self._init_skip(cin, cout, stride, skip, drop_path, norm)


BLOCK_CLASSES = {"mbconv": MBConv, "fused": FusedMBConv}

# BatchNorm as in the reference implementations (TF's epsilon 1e-3).
default_norm = partial(nn.BatchNorm2d, eps=1e-3)
