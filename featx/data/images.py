"""Decode any image file into 8-bit grayscale or RGB, by one set of rules.

Conversion rules (their version is part of every decode policy, featx.data.decode_policy):
- EXIF orientation is applied; multi-frame files (GIF, TIFF) use their first frame.
- 1-bit and 8-bit grayscale stay one channel until after resizing, then become 3 equal channels
  (resizing one channel instead of three is pixel-identical and about twice as fast on X-rays). So does
  an RGB file whose three channels are equal (X-rays saved as colour JPEGs, as the public pneumonia set is).
- 16-bit and 32-bit images are rescaled linearly from their own [min, max] to [0, 255], never
  clipped: medical 16-bit files often hold 10-12-bit data that a fixed /257 would leave near black.
- Transparency (RGBA, LA, palette with transparency) is composited onto black.
- Palette, CMYK, YCbCr, LAB and HSV images become RGB through Pillow's conversions.
- DICOM files (by their "DICM" preamble, whatever their name) are displayed by featx.data.dicom's
  rules: Modality LUT, the file's VOI LUT or window, MONOCHROME1 inverted, then 8 bits.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

from .dicom import DicomError, has_dicom_preamble, read_dicom

class ImageError(Exception):
    """An image that cannot be read; its message is the reason recorded in the cache."""


def load_image(path, draft_side: int | None = None, dicom_window: str = "default") -> Image.Image:
    """Open `path` as an 8-bit 'L' or 'RGB' image, following the rules in this module's docstring.

    `draft_side`: let a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's draft
    mode) while its shorter side stays >= draft_side. Much faster on full-size X-rays, but the pixels
    differ slightly from a full decode, so caches record it (decode mode pil-draft). `dicom_window`: how
    DICOM files are displayed (featx.data.dicom: default, minmax or "C,W").
    """
    if is_dicom(path):
        try:
            return read_dicom(path, dicom_window)
        except DicomError as exc:
            raise ImageError(str(exc)) from None
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


def is_dicom(source) -> bool:
    """Whether a path or file object holds a DICOM Part 10 file (its "DICM" preamble), whatever its name."""
    try:
        if hasattr(source, "read"):
            start = source.tell()
            head = source.read(132)
            source.seek(start)
        else:
            with open(source, "rb") as handle:
                head = handle.read(132)
    except OSError:
        return False  # Pillow will say why the file cannot be read
    return has_dicom_preamble(head)


def _to_l_or_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and _gray(img):
        return img.getchannel(0)
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


def _gray(img: Image.Image) -> bool:
    """Whether an RGB image's three channels are equal, pixel for pixel (about 1% of its resize's cost)."""
    pixels = np.asarray(img)
    return bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]))


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
