"""Which parts of a fine-tuned network train, and how fast: timm's parameter groups, counted from the top."""

from __future__ import annotations

from torch import nn

from .._core.errors import FeatxError
from ..models.network import FinetuneNetwork


def parameter_groups(model: nn.Module) -> list[list[str]]:
    """timm's coarse parameter groups (stem, blocks or stages, final layers), bottom to top. For a ViT:
    the patch embedding, then one group per block, the final norm with the last block."""
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return [[name for name, _ in model.named_parameters()]]
    grouped = group_parameters(model, matcher(coarse=True))
    return [names for _, names in sorted(grouped.items())]


def backbone_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """The backbone's optimizer parameter groups: one at `lr`, or with `layer_decay` one per layer,
    at lr x layer_decay^(layers above it) (BEiT's recipe, through timm's param_groups_layer_decay, which
    also exempts biases and norms from weight decay)."""
    if layer_decay is None:
        return [{"params": list(model.parameters()), "lr": lr, "name": "backbone"}]
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
    return [{"params": g["params"], "lr": lr * g["lr_scale"], "weight_decay": g["weight_decay"],
             "name": f"backbone x{g['lr_scale']:.3g}"} for g in groups]


def check_unfreeze(unfreeze: str, n_groups: int, backbone: str) -> int:
    if unfreeze in ("all", "none"):
        return n_groups if unfreeze == "all" else 0
    if unfreeze.startswith("last:"):
        try:
            n = int(unfreeze.split(":", 1)[1])
        except ValueError:
            n = -1
        if not 1 <= n <= n_groups:
            raise FeatxError(f"--unfreeze {unfreeze}: {backbone} has {n_groups} blocks (timm's coarse groups); "
                             f"choose last:1 to last:{n_groups}, all or none")
        return n
    raise FeatxError(f"--unfreeze must be all, none or last:N, not {unfreeze!r}")


def freeze(net: FinetuneNetwork, groups: list[list[str]], unfreeze: str, n_top: int) -> None:
    """Only the top `n_top` groups (all, none) of the backbone train; the head always does."""
    trainable = set()
    if unfreeze != "none":
        for names in groups[len(groups) - n_top:]:
            trainable.update(names)
    for name, p in net.backbone.named_parameters():
        p.requires_grad_(name in trainable)
    net.head.requires_grad_(True)


def train_mode(net: FinetuneNetwork) -> None:
    """Train mode, except BatchNorm layers that are frozen: they keep their ImageNet statistics."""
    net.train()
    for module in net.backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
