"""`--mixup ALPHA` / `--cutmix ALPHA`: timm's Mixup on each training batch, with soft targets.

timm mixes a batch with its reverse and asks for an even batch: an odd one mixes all but its last
image, which keeps its own (smoothed) label. timm draws from NumPy's global generator, which the
training loop seeds per (seed, epoch), so a resumed run mixes as an uninterrupted one.
"""

from __future__ import annotations

import torch


class Mixing:
    def __init__(self, mixup: float, cutmix: float, label_smoothing: float, num_classes: int):
        from timm.data import Mixup

        self.k, self.smoothing = num_classes, label_smoothing
        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                         num_classes=num_classes)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Smoothed one-hot targets, as timm's mixup_target with nothing mixed."""
        off = self.smoothing / self.k
        return torch.full((len(y), self.k), off, device=y.device).scatter_(1, y[:, None], 1 - self.smoothing + off)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even = len(x) - len(x) % 2
        if even < 2:
            return x, self.targets(y)
        mixed, soft = self.mix(x[:even].clone(), y[:even])
        if even == len(x):
            return mixed, soft
        return torch.cat([mixed, x[even:]]), torch.cat([soft, self.targets(y[even:])])
