"""Which tokens of a token model (a ViT) become its features, pooled how, from which blocks.

A CNN's features are the average of its last feature map. A ViT ends in tokens, and which of
them make the feature matters: timm's default is the class token after the final norm; DINOv2's
linear evaluation concatenates it with the mean of the patch tokens, over the last four blocks.
Pools: cls (timm's global_pool="token"), avg (mean of the patch tokens; class and register
tokens left out), cls+avg (both, concatenated). `last:K` concatenates the pooled outputs of the
last K blocks, each through the final norm (as DINOv2's `get_intermediate_layers(norm=True)`).
"""

from __future__ import annotations

import torch
from torch import nn

from .._core.errors import FeatxError
from .._core.options import check_choice, check_layers

_TIMM_POOLS = {"token": "cls", "avg": "avg"}  # timm's global_pool -> featx's name


def is_token_model(model: nn.Module) -> bool:
    """A timm ViT-like model: tokens with a known number of prefix (class, register) tokens."""
    return hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_intermediates")


def native_pool(model: nn.Module) -> str:
    """How the model pools by itself (timm's num_classes=0 forward): cls or avg, or timm's own word."""
    if not is_token_model(model):
        return "avg"
    pool = getattr(model, "global_pool", "token")
    return _TIMM_POOLS.get(pool, pool or "none")


def check_token_options(model: nn.Module, backbone: str, pool: str, layers: str | None) -> int | None:
    """The number of blocks to pool, after refusing what does not apply to this model, in one line
    (called only where a pool or blocks were asked for)."""
    check_choice("pool", pool)
    blocks = check_layers(layers)
    if not is_token_model(model):  # asked for a pool or blocks at all: a CNN has neither to choose
        option = f"--layers {layers}" if blocks is not None else f"--pool {pool}"
        raise FeatxError(f"{option} applies to token models (ViTs); {backbone} is a CNN, whose features are always "
                         "the average of its last feature map: leave it out, or use --layer NAME for an inner layer")
    if "cls" in pool and model.num_prefix_tokens < 1:
        raise FeatxError(f"--pool {pool}: {backbone} has no class token; use --pool avg")
    if blocks is not None and blocks > len(model.blocks):
        raise FeatxError(f"--layers {layers}: {backbone} has {len(model.blocks)} blocks")
    return blocks


class TokenFeatures(nn.Module):
    """A ViT's pooled tokens (`pool`) from its last block or, with `blocks`, its last `blocks` blocks concatenated."""

    def __init__(self, model: nn.Module, pool: str, blocks: int | None):
        super().__init__()
        self.model, self.pool, self.blocks = model, pool, blocks

    @property
    def width(self) -> int:
        return (self.blocks or 1) * len(self.pool.split("+")) * self.model.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.model.num_prefix_tokens
        if self.blocks is None:
            tokens = self.model.forward_features(x)
            outputs = [(tokens[:, :n], tokens[:, n:])]
        else:
            outputs = [(prefix, patches) for patches, prefix in self.model.forward_intermediates(
                x, indices=self.blocks, norm=True, output_fmt="NLC", intermediates_only=True,
                return_prefix_tokens=True)]
        fc_norm = getattr(self.model, "fc_norm", nn.Identity())  # timm's norm after average pooling, if any
        parts = []
        for prefix, patches in outputs:
            if "cls" in self.pool:
                parts.append(prefix[:, 0])
            if "avg" in self.pool:
                parts.append(fc_norm(patches.mean(dim=1)))
        return torch.cat(parts, dim=1)
