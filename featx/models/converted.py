"""Checkpoints saved by Hugging Face `transformers`, in timm's key names.

A `Dinov2Model` folder (facebook/dinov2-*, microsoft/rad-dino) holds the same tensors as timm's
`vit_*_patch14_dinov2` under other names, with q, k and v as three linear layers where timm
has one. Converted by name, so every key is accounted for; shapes are checked when loaded.
"""

from __future__ import annotations

import re

import torch

from .._core.errors import FeatxError

_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_BLOCK = {  # within encoder.layer.<i>.
    "norm1": "norm1", "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2",  # SwiGLU (giant): packed as timm's SwiGLUPacked
}
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def is_transformers_dinov2(state: dict) -> bool:
    return any(k.startswith(("embeddings.patch_embeddings.", "dinov2.embeddings.")) for k in state)


def dinov2_from_transformers(state: dict, origin: str) -> dict[str, torch.Tensor]:
    """A transformers Dinov2Model state_dict (or Dinov2ForImageClassification's) in timm's key names."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items() if not k.startswith("classifier.")}
    if "embeddings.register_tokens" in state:
        raise FeatxError(f"{origin}: DINOv2 with registers from transformers is not converted yet; use timm's "
                         "vit_*_reg4_dinov2 weights (timm key names) instead")
    out, qkv = {}, {}
    for key, tensor in state.items():
        if key == "embeddings.mask_token":  # used only in DINOv2's training (masked patches)
            continue
        if key in _EMBEDDINGS:
            out[_EMBEDDINGS[key]] = tensor
            continue
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            raise FeatxError(f"{origin}: unexpected key {key} for a transformers Dinov2Model")
        block, rest = match.groups()
        part = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if part:
            qkv.setdefault((block, part[2]), {})[part[1]] = tensor
            continue
        name, _, kind = rest.rpartition(".")
        if name in _BLOCK:
            out[f"blocks.{block}.{_BLOCK[name]}.{kind}"] = tensor
        elif rest in _BLOCK:  # layer_scale*.lambda1 has no weight/bias suffix
            out[f"blocks.{block}.{_BLOCK[rest]}"] = tensor
        else:
            raise FeatxError(f"{origin}: unexpected key {key} for a transformers Dinov2Model")
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise FeatxError(f"{origin}: block {block} lacks some of query, key, value")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out
