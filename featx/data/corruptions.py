"""Image corruptions for robustness tests: ImageNet-C-style families at severities 1-5 (0: none).

Each corruption takes a decoded 8-bit 'L' or 'RGB' image (featx.data.images.load_image) and
returns one of the same mode and size, before the checkpoint's own transform. Spatial
parameters are given for a 224-px image and scale with the image's shorter side, so a blur or
a shift means the same to the model on a 3k-px X-ray as on a 224-px one.

Deterministic: the random draws (noise fields, directions, flips) come from a generator seeded
by the image's key (its path) and the corruption, and are the same at every severity, so
severity alone sets the strength: severity 3 is severity 1's corruption, stronger.

Parameters per severity 1..5 (intensities on a 0-1 scale):
- gaussian_noise: additive noise, sigma 0.08, 0.12, 0.18, 0.26, 0.38 (ImageNet-C).
- shot_noise: Poisson noise of x * c photons (normal approximation), c 60, 25, 12, 5, 3 (ImageNet-C).
- gaussian_blur: sigma 1, 2, 3, 4, 6 px at 224 px (ImageNet-C), by Pillow's box-pass approximation.
- motion_blur: a line kernel 5, 9, 13, 17, 21 px long at 224 px, at a random angle.
- jpeg_compression: JPEG quality 25, 18, 15, 10, 7 (ImageNet-C).
- contrast: (x - mean) * c + mean, c 0.4, 0.3, 0.2, 0.1, 0.05 (ImageNet-C).
- brightness: x + b, b 0.1, 0.2, 0.3, 0.4, 0.5, clipped (ImageNet-C adds b to HSV value).
- rotation: 3, 6, 9, 12, 15 degrees, random sign, black corners.
- zoom: into the centre by 1.1, 1.2, 1.3, 1.4, 1.5.
- shear: horizontal shear 0.05, 0.1, 0.15, 0.2, 0.25 (tan of the angle), random sign, black fill.
- seed_perturbation: the Keras ImageDataGenerator set of the pneumonia write-up featx started from
  (rotation 30 deg, shear 0.2, zoom 0.2, shifts 0.1, horizontal flip, channel shift 0.1, brightness
  0.5-1.5), its ranges scaled by severity / 5 and combined; the flip is drawn once per image.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
from PIL import Image

from .._core.errors import FeatxError

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 224  # spatial parameters are given for an image of this shorter side

_PARAMS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "motion_blur": (5, 9, 13, 17, 21),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "rotation": (3, 6, 9, 12, 15),
    "zoom": (1.1, 1.2, 1.3, 1.4, 1.5),
    "shear": (0.05, 0.1, 0.15, 0.2, 0.25),
    "seed_perturbation": (0.2, 0.4, 0.6, 0.8, 1.0),
}
CORRUPTIONS = tuple(_PARAMS)


def check_corruption(name: str, severity: int) -> None:
    if name not in _PARAMS:
        raise FeatxError(f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES):
        raise FeatxError(f"corruption severity must be 0 (none) to 5, not {severity!r}")


def parse_corruption(text: str | None) -> tuple[str, int] | None:
    """"name:severity" (e.g. gaussian_noise:3) -> (name, severity); None, "none" and severity 0 -> None."""
    if text in (None, "", "none"):
        return None
    name, _, severity = str(text).partition(":")
    if not severity.isdigit():
        raise FeatxError(f"--corruption must be NAME:SEVERITY (e.g. gaussian_noise:3), not {text!r}")
    check_corruption(name, int(severity))
    return None if int(severity) == 0 else (name, int(severity))


def corrupt(img: Image.Image, name: str, severity: int, key: str, side: int | None = None) -> Image.Image:
    """`img` ('L' or 'RGB') with corruption `name` at `severity` (0: unchanged), drawn for `key` (the path).

    With `side` (the checkpoint's resize side), a larger image is shrunk to it first, so a blur costs
    the same on a 3k-px X-ray as on a small one."""
    check_corruption(name, severity)
    if severity == 0:
        return img
    if img.mode not in ("L", "RGB"):
        raise FeatxError(f"corruptions take 8-bit L or RGB images, not {img.mode}")
    if side and min(img.size) > side:
        scale = side / min(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BICUBIC)
    value = _PARAMS[name][severity - 1]
    scale = min(img.size) / REFERENCE_SIDE
    return _APPLY[name](img, value, _generator(key, name), scale)


def _generator(key: str, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{key}\0{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) * np.float32(1 / 255)


def _image(x: np.ndarray, mode: str) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8), mode=mode)


def _gaussian_noise(img, sigma, rng, scale):
    x = _array(img)
    return _image(x + sigma * rng.standard_normal(x.shape), img.mode)


def _shot_noise(img, photons, rng, scale):
    """Poisson noise of x * c photons, by its normal approximation x + sqrt(x / c) z: one field z for
    every severity (exact Poisson draws would differ per severity) and fast on full-size X-rays."""
    x = _array(img)
    return _image(x + np.sqrt(x / photons) * rng.standard_normal(x.shape), img.mode)


def _gaussian_blur(img, sigma, rng, scale):
    """Pillow's Gaussian blur (three box passes, a close approximation; radius = sigma): a few times
    faster than an exact filter, which matters in the loader worker."""
    from PIL import ImageFilter

    return img.filter(ImageFilter.GaussianBlur(radius=sigma * scale))


def _motion_blur(img, length, rng, scale):
    """Convolution with a thin line, edges extended; by FFT, a few times faster than a direct
    convolution of the line's bounding box, which matters in the loader worker."""
    from scipy.signal import fftconvolve

    x = _array(img)
    kernel = _line_kernel(length * scale, rng.uniform(0, math.pi)).astype(np.float32)
    r = kernel.shape[0] // 2
    if x.ndim == 2:
        return _image(fftconvolve(np.pad(x, r, mode="edge"), kernel, mode="valid"), img.mode)
    padded = np.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
    return _image(fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1)), img.mode)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised, anti-aliased line `length` px long through the centre at `angle` (bilinear splats)."""
    half = max(length - 1, 1) / 2
    size = 2 * math.ceil(half) + 3
    centre = size // 2
    kernel = np.zeros((size, size))
    for t in np.linspace(-half, half, int(8 * length) + 2):
        r, c = centre + t * math.sin(angle), centre + t * math.cos(angle)
        r0, c0 = int(math.floor(r)), int(math.floor(c))
        fr, fc = r - r0, c - c0
        kernel[r0, c0] += (1 - fr) * (1 - fc)
        kernel[r0 + 1, c0] += fr * (1 - fc)
        kernel[r0, c0 + 1] += (1 - fr) * fc
        kernel[r0 + 1, c0 + 1] += fr * fc
    return kernel / kernel.sum()


def _jpeg(img, quality, rng, scale):
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert(img.mode)


def _contrast(img, c, rng, scale):
    x = _array(img)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - mean) * c + mean, img.mode)


def _brightness(img, b, rng, scale):
    return _image(_array(img) + b, img.mode)


def _affine(img: Image.Image, matrix) -> Image.Image:
    """Pillow's inverse affine map (output pixel -> input pixel), about the image centre, black outside."""
    w, h = img.size
    a, b, c, d = matrix
    cx, cy = w / 2, h / 2
    coeffs = (a, b, cx - a * cx - b * cy, c, d, cy - c * cx - d * cy)
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=0)


def _rotation(img, degrees, rng, scale):
    sign = 1 if rng.random() < 0.5 else -1
    return img.rotate(sign * degrees, resample=Image.BILINEAR, fillcolor=0)


def _zoom(img, factor, rng, scale):
    return _affine(img, (1 / factor, 0, 0, 1 / factor))


def _shear(img, k, rng, scale):
    sign = 1 if rng.random() < 0.5 else -1
    return _affine(img, (1, sign * k, 0, 1))


def _seed_perturbation(img, strength, rng, scale):
    """The write-up's Keras ImageDataGenerator augmentation, its ranges scaled by `strength` (0-1)."""
    draws = rng.uniform(-1, 1, 7)  # rotation, shear, zoom x, zoom y, shift x, shift y, brightness
    channel_shift, flip = rng.uniform(-1, 1), rng.random() < 0.5
    angle = math.radians(30 * strength * draws[0])
    shear = 0.2 * strength * draws[1]
    zx, zy = 1 + 0.2 * strength * draws[2], 1 + 0.2 * strength * draws[3]
    cos, sin = math.cos(angle), math.sin(angle)
    a, b, c, d = cos / zx, (sin + shear) / zx, -sin / zy, cos / zy
    out = _affine(img, (a, b, c, d))
    w, h = img.size
    dx, dy = 0.1 * strength * draws[4] * w, 0.1 * strength * draws[5] * h
    out = out.transform(out.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), resample=Image.BILINEAR, fillcolor=0)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    x = _array(out) * (1 + 0.5 * strength * draws[6]) + 0.1 * strength * channel_shift
    return _image(x, img.mode)


_APPLY = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur, "jpeg_compression": _jpeg, "contrast": _contrast, "brightness": _brightness,
    "rotation": _rotation, "zoom": _zoom, "shear": _shear, "seed_perturbation": _seed_perturbation,
}
