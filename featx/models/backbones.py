"""Building backbones: a registry name gives a frozen timm model, its feature width and its data config.

`extract` and `finetune` both build models through `create_backbone`, so they cannot drift apart.
Preprocessing always comes from the checkpoint's own timm `pretrained_cfg`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import timm
import torch
from torch import nn

from .._core.errors import FeatxError, first_line
from .._core.options import check_image_size
from . import weights as W
from .registry import BackboneSpec, get_spec
from .weight_files import ResolvedWeights, resolve_weights
from .tokens import TokenFeatures, check_token_options, native_pool


@dataclass
class Backbone:
    """A built backbone: the module, what it outputs, how to feed it, and where its weights came from."""

    spec: BackboneSpec
    model: nn.Module
    num_features: int
    data_config: dict
    weights: ResolvedWeights
    weights_sha256: str  # of the loaded tensors: the same weights from a file, a package or the hub are equal
    layer: str | None = None
    pool: str = "avg"  # how the features are pooled (models.tokens)
    layers: str | None = None  # last:K for token models
    image_size: int | None = None  # as asked; data_config["input_size"] says the size used

    def identity(self) -> dict:
        """Everything about the backbone that changes the features it computes.

        pool and layers appear only for a model read out otherwise than by its own pooling: the
        features of its own pooling need no word (FeatureRecipe records them as nulls)."""
        identity = {
            "backbone": self.spec.name,
            "timm_model": self.spec.timm_name,
            "numerics": self.spec.numerics,
            "weights_sha256": self.weights_sha256,
            "data_config": self.data_config,
            "layer": self.layer or "pooled",
        }
        if isinstance(self.model, TokenFeatures):
            identity.update(pool=self.pool, layers=self.layers or "last:1")
        return identity

    @property
    def weights_source(self) -> str:
        """Where the weights came from, for people."""
        return self.weights.label

    def options(self) -> dict:
        """The options that rebuild this backbone (recorded in caches and models, read back by predict)."""
        return {"image_size": self.image_size, "pool": self.pool, "layers": self.layers}


def create_backbone(name: str, weights: str = "imagenet", *, layer: str | None = None, image_size: int | None = None,
                    pool: str | None = None, layers: str | None = None, frozen: bool = True,
                    drop_path: float | None = None) -> Backbone:
    """Build a backbone by registry name with `weights` = "imagenet", "random", a state_dict file or a
    Hugging Face model folder.

    The model has no classifier (timm's num_classes=0): it outputs the pooled penultimate features,
    the globally pooled output of `layer` when one is named, or for token models the tokens `pool`
    says from the last `layers` blocks. `image_size` runs it at another size than the checkpoint's
    (ViTs resample their position table); the resize keeps the checkpoint's crop ratio. `drop_path`:
    timm's stochastic depth rate, for training (refused for an architecture without it).
    """
    spec = get_spec(name)
    if layer and (pool or layers):
        raise FeatxError("--layer NAME pools one inner layer; it cannot be combined with --pool or --layers")
    check_image_size(image_size)
    state, resolved = W.load_state(spec, resolve_weights(spec, weights))
    from_hub = resolved.kind == "hub" and state is None
    size = image_size or spec.image_size
    model = _create_model(spec, from_hub, size, {} if drop_path is None else {"drop_path_rate": drop_path})
    if spec.numerics == "keras":
        _use_keras_numerics(model)
    if state is not None:
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        W.load_into(model, state, classifier, resolved.label)
    data_config = _data_config(model, spec, size, resolved.preprocessing)
    _check_patches(model, spec, data_config["input_size"][1])
    weights_sha256 = W.state_sha256(model)  # of the timm model: the same whichever tokens or layer are pooled
    blocks = check_token_options(model, spec.name, pool or native_pool(model), layers) if pool or layers else None
    pool = pool or native_pool(model)
    width = getattr(model, "head_hidden_size", None) or model.num_features
    if layer:
        model = PooledLayer(model, layer)
        width = model.width(data_config["input_size"])
    elif layers or pool != native_pool(model):
        model = TokenFeatures(model, pool, blocks)
        width = model.width
    model.eval()
    if frozen:
        model.requires_grad_(False)
    return Backbone(spec, model, int(width), data_config, resolved, weights_sha256, layer, pool, layers, image_size)


def _create_model(spec: BackboneSpec, from_hub: bool, size: int | None, extra: dict) -> nn.Module:
    """timm's model without classifier; at another size than the checkpoint's, ViTs resample their
    position table on the fly (dynamic_img_size), CNNs need nothing. Random init is seeded so that
    every process asking for "random" builds the same backbone. `extra`: more timm arguments."""
    try:
        return _timm_model(spec, from_hub, size, extra)
    except TypeError as exc:
        if "drop_path_rate" in extra and "drop_path_rate" in str(exc):
            raise FeatxError(f"--drop-path: {spec.name} ({spec.timm_name}) has no stochastic depth") from None
        raise


def _timm_model(spec: BackboneSpec, from_hub: bool, size: int | None, extra: dict) -> nn.Module:
    native = timm.models.get_pretrained_cfg(spec.timm_name)
    resized = size is not None and (native is None or tuple(native.input_size[1:]) != (size, size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            if resized:
                try:
                    return timm.create_model(spec.timm_name, pretrained=from_hub, num_classes=0, dynamic_img_size=True,
                                             **extra)
                except TypeError as exc:  # CNNs take any input size and have no such argument
                    if "dynamic_img_size" not in str(exc):
                        raise
                    torch.manual_seed(0)
            return timm.create_model(spec.timm_name, pretrained=from_hub, num_classes=0, **extra)
        except TypeError:
            raise
        except Exception as exc:  # the hub raises many types; without it this is a bug and re-raised
            if not from_hub:
                raise
            raise FeatxError(W.missing_weights_message(spec, first_line(exc))) from None


def _check_patches(model: nn.Module, spec: BackboneSpec, size: int) -> None:
    """A ViT cuts its input into square patches: a size that is not a multiple of the patch is refused
    in one line (timm would stop on an assertion at the first image)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if not patch or getattr(model.patch_embed, "dynamic_img_pad", False):
        return
    side = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    if size % side:
        below, above = size // side * side, (size // side + 1) * side
        raise FeatxError(f"--image-size {size}: {spec.name} cuts images into {side}-px patches, so its input size must "
                         f"be a multiple of {side} (e.g. {below or above} or {above})")


def _data_config(model: nn.Module, spec: BackboneSpec, size: int | None, preprocessing: dict) -> dict:
    """The checkpoint's own timm data config, at `size` with the spec's crop ratio when given, and the
    mean/std of a Hugging Face model folder's preprocessor_config.json when there is one."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in timm.data.resolve_model_data_config(model).items()}
    if size is not None:
        config["input_size"] = [config["input_size"][0], size, size]
    if spec.crop_pct is not None:
        config["crop_pct"] = spec.crop_pct
    return {**config, **preprocessing}


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


def describe(spec: BackboneSpec) -> tuple[str, str, str, str, int, str]:
    """A `featx backbones` row; the model is built on the meta device, so nothing is allocated."""
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if spec.image_size:
        size = f"{spec.image_size}x{spec.image_size}"
    else:
        size = "x".join(str(s) for s in cfg.input_size[1:]) if cfg else "?"
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, device="meta")
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return (spec.name, spec.timm_name, size, native_pool(model), int(width),
            W.weights_available_offline(spec) or "no (needs download)")
