"""Turn an :class:`Architecture` into a ``torch.nn.Module``; count its parameters and MACs."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.errors import NasError
from search_spaces.arch import Architecture
from search_spaces.blocks import ACTIVATION_LAYERS, BLOCK_CLASSES, conv_norm_act


class Network(nn.Module):
    """stem -> stages -> 1x1 head -> global pool -> dropout -> linear (EfficientNet's layout)."""

    def __init__(self, arch: Architecture, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise NasError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.arch = arch
        self.num_classes = num_classes
        act = ACTIVATION_LAYERS[arch.activation]
        norm = partial(nn.BatchNorm2d, eps=arch.bn_eps, momentum=arch.bn_momentum)
        layers: list[nn.Module] = [
            conv_norm_act(in_channels, arch.stem, 3, 2, norm=norm, act=act, padding=arch.padding)
        ]
        total, idx, cin = arch.num_blocks, 0, arch.stem
        for stage in arch.stages:
            blocks = []
            for r in range(stage.repeats):
                # Stochastic depth grows linearly with the block index (EfficientNet, torchvision).
                drop = arch.drop_path * idx / total
                blocks.append(
                    BLOCK_CLASSES[stage.block](
                        cin,
                        stage.out,
                        stage.kernel,
                        stage.stride if r == 0 else 1,
                        stage.expansion,
                        stage.se,
                        stage.skip,
                        drop,
                        act,
                        norm,
                        padding=arch.padding,
                        nominal_in=stage.nominal_in if r == 0 else None,
                    )
                )
                cin = stage.out
                idx += 1
            layers.append(nn.Sequential(*blocks))
        layers.append(conv_norm_act(cin, arch.head, 1, norm=norm, act=act))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(arch.dropout)
        self.classifier = nn.Linear(arch.head, num_classes)
        if self.classifier.weight.device.type != "meta":  # counting on meta needs no initial values
            self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's EfficientNet initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def set_dropout(self, p: float) -> None:
        """Change the classifier dropout in place (progressive learning grows it per stage)."""
        if not 0.0 <= p < 1.0:
            raise NasError(f"dropout must be in [0, 1), got {p}")
        self.dropout.p = float(p)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def build(arch: Architecture, num_classes: int = 1000) -> Network:
    """Build the network an architecture describes (weights freshly initialised)."""
    if not isinstance(arch, Architecture):
        raise NasError(f"build() takes an Architecture, got {type(arch).__name__}")
    return Network(arch, num_classes)


def count_params(arch: Architecture, num_classes: int = 1000) -> int:
    """Parameter count, computed on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        return build(arch, num_classes).num_params()


def count_macs(arch: Architecture, resolution: int | None = None, num_classes: int = 1000) -> int:
    """Multiply-accumulates of one forward pass at ``resolution`` (default: the native one).

    Counted by ``torch.utils.flop_counter`` on the meta device (which counts 2 FLOPs per MAC for
    convolutions and matmuls), so even EfficientNet-B7 at 600 px costs no compute.
    """

    res = resolution or arch.resolution
    with torch.device("meta"):
        model = _without_batch_norm(build(arch, num_classes).eval())
        x = torch.empty(1, 3, res, res)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def _without_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with its batch norms replaced by identities, for counting. The flop counter counts
    convolutions and matrix products only, so a batch norm adds nothing to the count, but the counter
    decomposes it into elementwise operations first, which took over a third of the counting time."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, nn.Identity())
    return model
