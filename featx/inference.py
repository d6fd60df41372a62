"""Make a frozen backbone cheaper to run without changing what it computes.

BatchNorm in eval mode is an affine map per channel, so it can be folded into the convolution
before it: one op instead of two, about a quarter of EfficientNet's CPU time. Folding is done
generically (a convolution followed by a sibling BatchNorm) and then checked against the original
model on a random input; if the outputs differ beyond float32 rounding, the original is kept.
Only for frozen extraction: fine-tuning needs the BatchNorm layers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

FOLD_TOLERANCE = 1e-4  # max |difference| relative to max |output|


def fold_batchnorm(model: nn.Module, input_size) -> tuple[nn.Module, int]:
    """A copy of `model` with every conv -> BatchNorm pair folded, and the number folded (0: unchanged)."""
    folded = copy.deepcopy(model)
    count = 0
    for parent in folded.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if _foldable(conv, bn):
                _fold(conv, bn)
                setattr(parent, bn_name, _after_norm(bn))
                count += 1
    if count == 0 or not _same_outputs(model, folded, input_size):
        return model, 0
    return folded, count


def _foldable(conv, bn) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and type(bn) in _AFTER_NORM
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def _norm_act(bn):
    return nn.Sequential(bn.drop, bn.act)


def _plain_bn(bn):
    return nn.Identity()


# BatchNorm types whose forward is exactly "normalise, then (for timm's BatchNormAct2d) drop and act".
_AFTER_NORM = {nn.BatchNorm2d: _plain_bn}
try:
    from timm.layers import BatchNormAct2d

    _AFTER_NORM[BatchNormAct2d] = _norm_act
except ImportError:  # pragma: no cover - older timm
    pass


def _after_norm(bn) -> nn.Module:
    return _AFTER_NORM[type(bn)](bn)


def _same_outputs(a: nn.Module, b: nn.Module, input_size) -> bool:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *input_size, generator=generator)
    with torch.inference_mode():
        ya, yb = a(x), b(x)
    return bool((ya - yb).abs().max() <= FOLD_TOLERANCE * ya.abs().max().clamp_min(1e-12))
