"""Exponential moving average of a model's weights (EfficientNet V1 section 5.2: decay 0.9999)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Exponential moving average of weights and buffers (V1 section 5.2: decay 0.9999).

    The first update copies the model; later ones do ``ema = decay * ema + (1 - decay) * model``
    for floating tensors and copy the others (BatchNorm's step counters). With few steps per run
    use a smaller decay (e.g. 0.99), or the average is mostly the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state, state = self.module.state_dict(), model.state_dict()
        for k, v in ema_state.items():
            src = state[k].detach()
            if self.updates == 0 or not v.is_floating_point():
                v.copy_(src)
            else:
                v.lerp_(src.to(v.dtype), 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
