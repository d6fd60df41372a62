"""The fine-tuned model: the registry's backbone -> dropout -> linear layer.

Built here, below both its users: `featx finetune` trains it, and a loaded fine-tune artifact
(artifacts.predictors) rebuilds it to predict and explain, without importing the training code.
"""

from __future__ import annotations

import torch
from torch import nn


class FinetuneNetwork(nn.Module):
    """Backbone -> dropout -> linear. `backbone` is exactly the module extract runs (timm, num_classes=0).

    State dict keys: backbone.*, head.weight, head.bias (the artifact format of model.pt).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.backbone(x))

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Class logits from the backbone's pooled features."""
        return self.head(self.dropout(pooled))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, before pooling (N×C×h×w for CNNs)."""
        return self.backbone.forward_features(x)

    def logits_from_feature_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """The rest of the forward pass from `feature_map`'s output: pool, dropout, linear."""
        return self.logits(self.backbone.forward_head(fmap, pre_logits=True))
