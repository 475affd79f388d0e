"""The building blocks: MBConv and Fused-MBConv (EfficientNet V1 section 4, V2 section 3.2).

Layer order, channel rounding and squeeze sizes follow torchvision's ``efficientnet.py`` so that the
published networks have exactly torchvision's parameter counts and its state-dict layout. The pieces
are torchvision ops (``ConvNormActivation``, ``SqueezeExcitation``, ``StochasticDepth``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation, StochasticDepth
from torchvision.ops.misc import ConvNormActivation

ACTIVATION_LAYERS: dict[str, Callable[..., nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6}
# Activations whose backward reads their own output: a residual must not be added in place after them.
_OUTPUT_SAVING = (nn.ReLU, nn.Hardtanh)  # ReLU6 is a Hardtanh


class Conv2dSame(nn.Conv2d):
    """TensorFlow's "same" padding: ``ceil(size / stride)`` outputs, the padding split with the extra
    pixel at the bottom / right. It depends on the input size, so it is computed per call; for
    stride 1 and odd kernels it equals the symmetric ``kernel // 2``, which :func:`conv_norm_act`
    uses instead (the layout of timm's ``tf_*`` ports, ``timm.layers.Conv2dSame``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Conv2dSameNormActivation(ConvNormActivation):
    """``Conv2dNormActivation`` with a :class:`Conv2dSame` convolution (same layout and keys)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, conv_layer=Conv2dSame, **kwargs)


def conv_norm_act(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    norm: Callable[..., nn.Module],
    act: Callable[..., nn.Module] | None,
    padding: str = "symmetric",
) -> nn.Module:
    """Conv, BatchNorm, activation: torchvision's ``Conv2dNormActivation`` layout (keys ``0`` conv,
    ``1`` norm), with TensorFlow's asymmetric "same" padding where it differs from the symmetric one."""
    if padding == "same" and stride > 1:
        return Conv2dSameNormActivation(cin, cout, kernel, stride, 0, groups, norm_layer=norm, activation_layer=act)
    return Conv2dNormActivation(cin, cout, kernel, stride, groups=groups, norm_layer=norm, activation_layer=act)


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
            layers.append(conv_norm_act(cin, cout, 1, norm=norm, act=None))
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
        self.inplace_add = not (isinstance(last, nn.Sequential) and isinstance(last[-1], _OUTPUT_SAVING))

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
    """Inverted residual: 1x1 expand, kxk depthwise, SE, 1x1 project (linear).

    ``nominal_in`` (TF's nominal ``i``, see :mod:`search_spaces.arch`) replaces ``cin`` in the
    expanded and SE widths; the convolutions still read the ``cin`` channels they are given.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        expansion: int,
        se: float,
        skip: str,
        drop_path: float,
        act: Callable[..., nn.Module],
        norm: Callable[..., nn.Module],
        *,
        padding: str = "symmetric",
        nominal_in: int | None = None,
    ):
        super().__init__()
        width_in = nominal_in or cin
        mid = expanded_channels(width_in, expansion) if expansion != 1 else cin
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_norm_act(cin, mid, 1, norm=norm, act=act))
        layers.append(conv_norm_act(mid, mid, kernel, stride, groups=mid, norm=norm, act=act, padding=padding))
        if se > 0:
            layers.append(SqueezeExcitation(mid, squeeze_channels(width_in, se), activation=act))
        layers.append(conv_norm_act(mid, cout, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)
        self._init_skip(cin, cout, stride, skip, drop_path, norm)


class FusedMBConv(_Block):
    """EfficientNetV2's Fused-MBConv: one regular kxk conv replaces expand + depthwise.

    With expansion 1 it is a single kxk conv + BN + activation (no projection), which is also
    MnasNet's "regular convolution" op. ``nominal_in`` as for :class:`MBConv`.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        expansion: int,
        se: float,
        skip: str,
        drop_path: float,
        act: Callable[..., nn.Module],
        norm: Callable[..., nn.Module],
        *,
        padding: str = "symmetric",
        nominal_in: int | None = None,
    ):
        super().__init__()
        width_in = nominal_in or cin
        layers: list[nn.Module] = []
        if expansion != 1:
            mid = expanded_channels(width_in, expansion)
            layers.append(conv_norm_act(cin, mid, kernel, stride, norm=norm, act=act, padding=padding))
            if se > 0:
                layers.append(SqueezeExcitation(mid, squeeze_channels(width_in, se), activation=act))
            layers.append(conv_norm_act(mid, cout, 1, norm=norm, act=None))
        else:
            layers.append(conv_norm_act(cin, cout, kernel, stride, norm=norm, act=act, padding=padding))
            if se > 0:
                layers.append(SqueezeExcitation(cout, squeeze_channels(width_in, se), activation=act))
        self.block = nn.Sequential(*layers)
        self._init_skip(cin, cout, stride, skip, drop_path, norm)


BLOCK_CLASSES = {"mbconv": MBConv, "fused": FusedMBConv}
