"""`--ema DECAY`: an exponential moving average of the network's weights (timm's ModelEmaV3).

With timm's warm-up (`use_warmup`, as `timm/train.py --model-ema-warmup`): the decay of update t is
min(DECAY, 1 - (1 + (t-1))^(-2/3)), and the first update copies the weights. Without it a small
budget's few hundred steps would leave the average near the ImageNet weights it started from. The
average keeps buffers too (BatchNorm statistics), so it is a network that can be evaluated as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """The averaged copy of a network, updated after every optimizer step."""

    def __init__(self, net: nn.Module, decay: float):
        from timm.utils.model_ema import ModelEmaV3

        self.ema = ModelEmaV3(net, decay=decay, use_warmup=True)
        self.ema.requires_grad_(False)
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def decay(self, update: int) -> float:
        """The weight the average keeps at its `update`-th update (1-based)."""
        return self.ema.get_decay(update)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        self.ema.update(net, step=self.updates)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
