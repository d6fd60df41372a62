"""Decode any image file into 8-bit grayscale or RGB, and preprocess it as its checkpoint expects.

Conversion rules (recorded in every cache as DECODE_POLICY):
- EXIF orientation is applied; multi-frame files (GIF, TIFF) use their first frame.
- 1-bit and 8-bit grayscale stay one channel until after resizing, then become 3 equal channels
  (resizing one channel instead of three is pixel-identical and about twice as fast on X-rays).
- 16-bit and 32-bit images are rescaled linearly from their own [min, max] to [0, 255], never
  clipped: medical 16-bit files often hold 10-12-bit data that a fixed /257 would leave near black.
- Transparency (RGBA, LA, palette with transparency) is composited onto black.
- Palette, CMYK, YCbCr, LAB and HSV images become RGB through Pillow's conversions.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import timm
import torch
from PIL import Image, ImageOps

DECODE_POLICY = "featx-decode-1"
JPEG_DRAFT_POLICY = DECODE_POLICY + "+jpeg-draft"


class ImageError(Exception):
    """An image that cannot be read; its message is the reason recorded in the cache."""


def load_image(path, draft_side: int | None = None) -> Image.Image:
    """Open `path` as an 8-bit 'L' or 'RGB' image, following the rules in this module's docstring.

    `draft_side`: let a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's draft
    mode) while its shorter side stays >= draft_side. Much faster on full-size X-rays, but the pixels
    differ slightly from a full decode, so caches record it (JPEG_DRAFT_POLICY).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data": the pixels still decode
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if draft_side and img.format == "JPEG":
                    scale = draft_side / min(img.size)
                    if scale < 0.5:
                        img.draft(img.mode, (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_l_or_rgb(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(_reason(exc)) from None
    except Exception as exc:  # Pillow's plugins raise assorted types on malformed files
        raise ImageError(f"{type(exc).__name__}: {_reason(exc)}") from None


def _to_l_or_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _rescale_to_l(np.asarray(img))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA"):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {mode}: {exc}") from None


def _rescale_to_l(array: np.ndarray) -> Image.Image:
    """Stretch a high-bit-depth image linearly from its own [min, max] onto 0..255."""
    if array.ndim != 2:
        raise ImageError(f"unsupported high-bit-depth array of shape {array.shape}")
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageError("image has no finite pixel values")
    lo, hi = values[finite].min(), values[finite].max()
    scaled = np.zeros_like(values) if hi == lo else (np.where(finite, values, lo) - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "(corrupt, or not an image)", text)
    return text[:200] if text else type(exc).__name__


class EvalTransform:
    """The checkpoint's own timm eval transform (resize, crop), stopping at a uint8 3×H×W tensor.

    Normalisation (mean/std) happens later on whole batches on the device: uint8 crosses
    process and device boundaries at a quarter of float32's size.
    """

    def __init__(self, data_config: dict):
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
        self.resize_crop = timm.data.create_transform(**cfg, is_training=False, use_prefetcher=True)
        size = self.resize_crop.transforms[0].size  # Resize's target: the shorter side, or (h, w)
        self.resize_side = max(size) if isinstance(size, (tuple, list)) else int(size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        tensor = self.resize_crop(img)
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.from_numpy(np.asarray(tensor))
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1).contiguous()
        return tensor


AUGMENTATIONS = ("xray", "natural", "none")


class TrainTransform:
    """Training-time augmentation, ending in the same uint8 3xHxW tensor as EvalTransform.

    xray: small rotations (+-10 deg) and shifts (5%), random resized crop (scale 0.8-1),
    brightness and contrast jitter (20%), and no horizontal flip (anatomy is not mirror
    symmetric). natural adds the flip. none is the eval transform. Images are first resized to
    the eval resize side, so rotating a 3k-pixel X-ray costs no more than a small one.
    """

    def __init__(self, data_config: dict, augment: str = "xray"):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}")
        self.eval = EvalTransform(data_config)
        self.augment = augment
        size = tuple(data_config["input_size"][1:])
        mode = InterpolationMode(data_config.get("interpolation", "bilinear").replace("random", "bilinear"))
        ops = [T.Resize(self.eval.resize_side, interpolation=mode, antialias=True),
               T.RandomAffine(degrees=10, translate=(0.05, 0.05), interpolation=InterpolationMode.BILINEAR),
               T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=mode, antialias=True),
               T.ColorJitter(brightness=0.2, contrast=0.2)]
        if augment == "natural":
            ops.append(T.RandomHorizontalFlip())
        self.ops = T.Compose([*ops, T.PILToTensor()])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.augment == "none":
            return self.eval(img)
        tensor = self.ops(img)
        return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


class Normalize(torch.nn.Module):
    """uint8 batch on the device -> float batch normalised with the checkpoint's mean and std."""

    def __init__(self, data_config: dict):
        super().__init__()
        mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1) * 255
        std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.mean) / self.std
