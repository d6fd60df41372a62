"""What a network answers for a batch, written once: the mean over the views test-time augmentation asks for
(none, or the image and its left-right mirror), and class probabilities from logits. Extraction, fine-tune
evaluation, Grad-CAM and the ONNX graph all go through these, so they cannot drift apart."""

from __future__ import annotations

import torch

def views_mean(forward, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """forward(x); under tta "hflip", the mean of forward(x) and forward(x mirrored left-right)."""
    out = forward(x)
    if tta == "hflip":
        out = (out + forward(torch.flip(x, dims=[3]))) / 2
    return out


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities of logits (N x classes), computed in float32 whatever the autocast precision."""
    return torch.softmax(logits.float(), dim=1)
