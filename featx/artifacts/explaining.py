"""`featx explain`: where in the image a model's evidence lies (reporting.heatmaps draws it).

- Linear heads (logreg, linsvm) on pooled features: the exact class activation map. Pooled
  features are the spatial mean of the last feature map, so the head's score is the mean of
  w . F[:, i, j] + b over positions: the map (StandardScaler and PCA folded into w) is that
  score per position, and its mean is exactly the head's decision value.
- Fine-tuned models: Grad-CAM (Selvaraju et al. 2017) on the last feature map by default, or on
  any named layer. For a ViT the default is the input of its last block's attention
  (`blocks.<last>.norm1`): a class-token head gets no gradient from the final patch tokens. Token
  outputs are laid back on the patch grid (prefix tokens dropped).
The map is computed on the model's input (resized, centre-cropped) and placed back over the
original image, so the returned heatmap has the image's own size. The image is decoded by the model's own
decode policy (its DICOM window, JPEG draft decoding), as `featx predict` decodes it, so a map and the
probabilities beside it come from the same pixels; a model whose features were decoded on the device
("device" mode) is explained from Pillow's decode of the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._core.errors import FeatxError
from ..data.images import ImageError, load_image
from ..data.transforms import EvalTransform, Normalize
from ..models.tokens import TokenFeatures, is_token_model
from ..models.views import probabilities
from .linear import linear_weights
from .predictors import FineTunedClassifier, ImageClassifier, load

LINEAR_HEADS = ("logreg", "linsvm")


def explain(model, image, *, target: str | None = None, layer: str | None = None) -> dict:
    """Heatmap of `image` for class `target` (default: the predicted class).

    Returns {"heatmap": HxW float array in [0, 1] at the image's size, "low_res": the map at
    feature resolution (unnormalised), "target", "proba", "method"}.
    """
    if isinstance(model, (str, Path)):
        model = load(model)
    try:
        img = _decoded(model, image)
    except ImageError as exc:
        raise FeatxError(f"cannot explain {image}: {exc}") from None
    except OSError as exc:
        raise FeatxError(f"cannot read {image}: {exc.strerror or exc}") from None
    if isinstance(model, FineTunedClassifier):
        net = model.network()
        if layer is None and is_token_model(net.backbone):
            layer = f"blocks.{len(net.backbone.blocks) - 1}.norm1"
        low, proba, t = _grad_cam(net, model.data_config, img, model, target, layer)
        method = f"Grad-CAM on {layer or 'the last feature map'}"
    elif isinstance(model, ImageClassifier):
        if model.sidecar.method.head not in LINEAR_HEADS:
            raise FeatxError(f"explain needs a linear head ({', '.join(LINEAR_HEADS)}) or a fine-tuned model; "
                             f"{model.info['head']} has no exact class activation map")
        if layer:
            raise FeatxError("--layer applies to fine-tuned models; a linear head's map uses the pooled layer")
        low, proba, t = _linear_cam(model, img, target)
        method = "class activation map (exact for a linear head)"
    else:
        raise FeatxError(f"cannot explain a {type(model).__name__}")
    config = model.data_config if isinstance(model, FineTunedClassifier) else model.backbone().data_config
    heat, box = _to_image(low, img.size, config)
    return {"heatmap": heat, "box": box, "low_res": low, "target": str(model.classes_[t]),
            "classes": [str(c) for c in model.classes_],
            "proba": proba, "method": method}


def _decoded(model, image):
    """The image's pixels as the model's predictions read them: its decode policy's DICOM window, and JPEG
    draft decoding where its features were made so."""
    policy = model.decode_policy
    config = model.data_config if isinstance(model, FineTunedClassifier) else model.backbone().data_config
    draft = EvalTransform(config).resize_side if policy.mode == "pil-draft" else None
    return load_image(image, draft, policy.dicom_window)


def _class_index(model, target, proba) -> int:
    if target is None:
        return int(model.rule.indices(proba[None])[0])
    names = [str(c) for c in model.classes_]
    if target not in names:
        raise FeatxError(f"--target {target!r} is not a class of this model ({', '.join(names)})")
    return names.index(target)


def _input(img, data_config) -> torch.Tensor:
    x = EvalTransform(data_config)(img)[None]
    return Normalize(data_config)(x)


def _spatial(fmap: torch.Tensor) -> torch.Tensor:
    """`fmap` if it is a spatial feature map (N×C×h×w); transformer tokens are not."""
    if fmap.ndim != 4:
        raise FeatxError(f"the backbone's last features are not a spatial map (shape {tuple(fmap.shape)})")
    return fmap


def _linear_cam(model: ImageClassifier, img, target):
    bb = model.backbone()
    if bb.layer:
        raise FeatxError("explain needs a head on the pooled (last) layer, not an inner layer")
    if isinstance(bb.model, TokenFeatures) or is_token_model(bb.model):
        raise FeatxError("a head on a vision transformer's tokens has no exact class activation map; explain a "
                         "fine-tuned model instead")
    with torch.inference_mode():
        fmap = _spatial(bb.model.forward_features(_input(img, bb.data_config)))[0].double().numpy()  # C x h x w
    pooled = fmap.mean((1, 2))
    proba = model.head.predict_proba(pooled[None].astype(np.float32))[0]
    t = _class_index(model, target, proba)
    coef, intercept = linear_weights(model.head)
    if coef.shape[0] == 1:  # binary: the score favours class 1; class 0 is its negative
        w, b = (coef[0], intercept[0]) if t == 1 else (-coef[0], -intercept[0])
    else:
        w, b = coef[t], intercept[t]
    low = np.tensordot(w, fmap, axes=1) + b  # mean over positions == the head's decision value
    return low, proba, t


def _grad_cam(net, data_config, img, model, target, layer):
    captured = {}
    x = _input(img, data_config).requires_grad_(True)  # the weights are frozen; gradients flow from the input
    with torch.enable_grad():
        if layer:
            modules = dict(net.backbone.named_modules())
            if layer not in modules:
                raise FeatxError(f"--layer {layer!r} is not a module of the backbone (see model.named_modules())")

            def keep(_module, _inputs, output):
                output.retain_grad()
                captured["fmap"] = output

            handle = modules[layer].register_forward_hook(keep)
            try:
                logits = net(x)
            finally:
                handle.remove()
            tokens = is_token_model(net.backbone) and captured.get("fmap") is not None and captured["fmap"].ndim == 3
            if captured.get("fmap") is None or (captured["fmap"].ndim != 4 and not tokens):
                raise FeatxError(f"--layer {layer!r} does not output a spatial feature map or tokens")
        else:
            fmap = _spatial(net.feature_map(x))
            fmap.retain_grad()
            captured["fmap"] = fmap
            logits = net.logits_from_feature_map(fmap)
        proba = probabilities(logits.detach())[0].numpy()
        t = _class_index(model, target, proba)
        net.zero_grad(set_to_none=True)
        logits[0, t].backward()
    fmap, grad = captured["fmap"].detach()[0], captured["fmap"].grad[0]
    if fmap.ndim == 2:  # tokens (L x D) of a ViT
        fmap, grad = _on_patch_grid(fmap, net.backbone), _on_patch_grid(grad, net.backbone)
    weights = grad.mean((1, 2))
    low = torch.relu((weights[:, None, None] * fmap).sum(0)).double().numpy()
    return low, proba, t


def _on_patch_grid(tokens: torch.Tensor, vit) -> torch.Tensor:
    """A ViT's L x D tokens as a D x h x w map of its patch tokens (class and register tokens dropped)."""
    patches = tokens[vit.num_prefix_tokens:]
    side = int(round(len(patches) ** 0.5))
    if side * side != len(patches):
        raise FeatxError(f"cannot lay {len(patches)} patch tokens on a square grid")
    return patches.reshape(side, side, -1).permute(2, 0, 1)


def _to_image(low: np.ndarray, size: tuple[int, int], data_config: dict):
    """Upsample the map over the centre crop the model saw and place it in the image's frame.

    Returns the heatmap (0 outside the crop) and the crop box (left, top, right, bottom)."""
    from PIL import Image

    width, height = size
    crop_pct = data_config.get("crop_pct", 1.0) or 1.0
    out_h, out_w = data_config["input_size"][1:]
    # The eval transform resizes the shorter side to input/crop_pct, then centre-crops input.
    scale = (min(out_h, out_w) / crop_pct) / min(width, height)
    crop_w, crop_h = min(width, round(out_w / scale)), min(height, round(out_h / scale))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    lo, hi = float(low.min()), float(low.max())
    norm = (low - lo) / (hi - lo) if hi > lo else np.zeros_like(low)
    up = Image.fromarray(norm.astype(np.float32), mode="F").resize((crop_w, crop_h), Image.BILINEAR)
    heat = np.zeros((height, width), np.float32)
    heat[top:top + crop_h, left:left + crop_w] = np.clip(np.asarray(up), 0, 1)
    return heat, (left, top, left + crop_w, top + crop_h)
