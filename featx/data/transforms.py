"""Images as a checkpoint expects them: its own timm eval transform, training augmentation, normalisation."""

from __future__ import annotations

import numpy as np
import timm
import torch
from PIL import Image

from .._core.options import check_choice
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt

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


class TrainTransform:
    """Training-time augmentation, ending in the same uint8 3xHxW tensor as EvalTransform.

    xray: small rotations (+-10 deg) and shifts (5%), random resized crop (scale 0.8-1),
    brightness and contrast jitter (20%), and no horizontal flip (anatomy is not mirror
    symmetric). natural adds the flip. randaugment and trivialaugment: the resize and crop of xray, then
    torchvision's RandAugment (2 ops, magnitude 9) or TrivialAugmentWide; neither flips. corrupt applies one of featx.data.corruptions at a random
    severity 1-5 per image (as `featx robustness` tests), then the eval transform. none is the eval
    transform. Images are first resized to the eval resize side, so rotating (or blurring) a
    3k-pixel X-ray costs no more than a small one. Random draws come from torch's generator, so a
    seeded epoch repeats exactly.
    """

    def __init__(self, data_config: dict, augment: str = "xray"):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        check_choice("augment", augment)
        self.eval = EvalTransform(data_config)
        self.augment = augment
        size = tuple(data_config["input_size"][1:])
        mode = InterpolationMode(data_config.get("interpolation", "bilinear").replace("random", "bilinear"))
        crop = T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=mode, antialias=True)
        ops = [T.Resize(self.eval.resize_side, interpolation=mode, antialias=True),
               T.RandomAffine(degrees=10, translate=(0.05, 0.05), interpolation=InterpolationMode.BILINEAR),
               crop, T.ColorJitter(brightness=0.2, contrast=0.2)]
        if augment in ("randaugment", "trivialaugment"):
            policy = T.RandAugment(num_ops=2, magnitude=9) if augment == "randaugment" else T.TrivialAugmentWide()
            ops = [ops[0], crop, policy]
        if augment == "natural":
            ops.append(T.RandomHorizontalFlip())
        self.ops = T.Compose([*ops, T.PILToTensor()])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.augment == "none":
            return self.eval(img)
        if self.augment == "corrupt":
            return self.eval(self._corrupted(img))
        tensor = self.ops(img)
        return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor

    def _corrupted(self, img: Image.Image) -> Image.Image:
        """One corruption at one severity, drawn from torch's generator (seeded per epoch and image)."""
        name = CORRUPTIONS[int(torch.randint(len(CORRUPTIONS), ()))]
        severity = SEVERITIES[int(torch.randint(len(SEVERITIES), ()))]
        return corrupt(img, name, severity, key=str(int(torch.randint(2**62, ()))), side=self.eval.resize_side)


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
