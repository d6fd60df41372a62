"""Decode modes: how image files become the uint8 batches a backbone sees.

- pil (default): Pillow decodes each file in the loader's worker processes, and the
  checkpoint's own timm transform resizes and crops it there.
- pil-draft: the same, but large JPEGs decode at 1/2, 1/4 or 1/8 scale first (libjpeg's DCT
  scaling, Pillow's draft mode). Several times faster on full-size X-rays.
- device: workers only read bytes. JPEGs are decoded in batches by torchvision on the
  extraction device (nvJPEG on CUDA, libjpeg-turbo on the CPU) and resized there by the same
  transform ops applied to tensors, so a fast GPU is not held back by CPU decoding. A file that
  is not a plain 8-bit gray or RGB JPEG, carries an EXIF rotation (torchvision's CUDA decoder
  ignores `apply_exif_orientation`), lacks its end marker (truncated), or that the device decoder
  rejects, goes through Pillow instead, so such files are handled and reported exactly as in pil
  mode, on every device.

Each mode gives slightly different pixels, so the mode (for device, with the device type) is
part of every cache's identity (featx.data.decode_policy).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from .images import ImageError, load_image
from .transforms import EvalTransform

CHUNK = 32  # full-size images decoded on the device at once: bounds its memory (32 × 3k × 3k × 3 ≈ 0.9 GB)


def read_for_device(raw: bytes, dicom_window: str = "default") -> torch.Tensor:
    """Worker side of device mode: a plain JPEG's bytes as a 1-D uint8 tensor, anything else
    decoded by Pillow into a full-size C×H×W uint8 tensor (raises ImageError if unreadable)."""
    if _plain_jpeg(raw):
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return pil_to_tensor(load_image(io.BytesIO(raw), dicom_window=dicom_window))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.array(img, dtype=np.uint8)  # 'L' -> H×W, 'RGB' -> H×W×3
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


def _plain_jpeg(raw: bytes) -> bool:
    """From the header only: an upright 8-bit gray or RGB JPEG of sane size that ends with its EOI marker."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as img:
                fmt, mode, (w, h) = img.format, img.mode, img.size
                upright = fmt == "JPEG" and img.getexif().get(0x0112, 1) == 1  # EXIF orientation
    except Exception:  # Pillow's full decode will give the reason
        return False
    limit = Image.MAX_IMAGE_PIXELS
    return (upright and mode in ("L", "RGB") and (limit is None or w * h <= limit)
            and raw.rstrip(b"\0")[-2:] == b"\xff\xd9")


class DeviceDecoder:
    """Main-process side of device mode: a list of worker outputs -> one uint8 N×3×H×W batch on the device."""

    def __init__(self, data_config: dict, device: torch.device):
        from timm.data.transforms import MaybePILToTensor, MaybeToTensor, ToNumpy, ToTensor

        self.device = device
        ops = EvalTransform(data_config).resize_crop.transforms
        self.resize_crop = [op for op in ops if not isinstance(op, (MaybePILToTensor, MaybeToTensor, ToNumpy, ToTensor))]

    def __call__(self, items: list[torch.Tensor]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        """(indices decoded, their batch, (index, reason) for each unreadable item)."""
        good, images, problems = [], [], []
        for start in range(0, len(items), CHUNK):
            chunk = list(range(start, min(start + CHUNK, len(items))))
            for i, image in zip(chunk, self._decode([items[i] for i in chunk])):
                if isinstance(image, str):
                    problems.append((i, image))
                else:
                    good.append(i)
                    images.append(self._resize_crop(image))
        return good, (torch.stack(images) if images else None), problems

    def _decode(self, items: list[torch.Tensor]) -> list:
        """Full-size C×H×W uint8 tensors on the device, or a reason string, per item."""
        jpegs = [i for i, t in enumerate(items) if t.dim() == 1]
        out: list = [t.to(self.device, non_blocking=True) if t.dim() == 3 else None for t in items]
        if jpegs:
            try:
                decoded = _decode_jpeg([items[i] for i in jpegs], self.device)
            except RuntimeError:  # one bad file fails the batch: decode one by one
                decoded = [self._decode_one(items[i]) for i in jpegs]
            for i, image in zip(jpegs, decoded):
                out[i] = image
        return out

    def _decode_one(self, data: torch.Tensor):
        try:
            return _decode_jpeg(data, self.device)
        except RuntimeError:  # let Pillow decode it, or give the reason pil mode would give
            try:
                return pil_to_tensor(load_image(io.BytesIO(data.numpy().tobytes()))).to(self.device)
            except ImageError as exc:
                return str(exc)

    def _resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        for op in self.resize_crop:
            image = op(image)
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _decode_jpeg(data, device: torch.device):
    """torchvision's decode_jpeg (nvJPEG on CUDA; one batched call for a list), of upright JPEGs only.

    torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; featx pins
    torchvision, so the warning is silenced here and the move is left for when it is removed.
    """
    from torchvision.io import decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, device=device)
