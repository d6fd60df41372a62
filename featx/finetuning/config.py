"""A fine-tune's options, checked once, and the record that names its run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .._core.errors import FeatxError
from .._core.options import check_batch_size, check_choice, check_image_size
from ..data.decode_policy import check_window


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that changes what a fine-tune learns (the run's hash is taken over these)."""

    backbone: str = "xception"
    weights: str = "imagenet"
    epochs: int = 10
    unfreeze: str = "all"
    warmup_epochs: int = 0
    init_head_from: str | None = None
    lr: float = 1e-4
    layer_decay: float | None = None
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    clip_grad: float = 1.0
    label_smoothing: float = 0.0
    class_weight: str = "balanced"
    dropout: float = 0.2
    patience: int = 3
    augment: str = "xray"
    image_size: int | None = None
    limit_train: int | None = None
    batch_size: int | None = None
    seed: int = 0
    dicom_window: str = "default"

    def __post_init__(self):
        if self.init_head_from is not None:
            object.__setattr__(self, "init_head_from", str(self.init_head_from))
        if self.epochs < 1:
            raise FeatxError(f"--epochs must be at least 1, got {self.epochs}")
        for name in ("schedule", "augment", "class_weight"):
            check_choice(name, getattr(self, name))
        for name in ("lr", "head_lr", "weight_decay", "clip_grad", "label_smoothing", "dropout"):
            if getattr(self, name) < 0:
                raise FeatxError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            raise FeatxError("--dropout and --label-smoothing must lie in [0, 1)")
        check_image_size(self.image_size)
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise FeatxError(f"--layer-decay must lie in (0, 1], got {self.layer_decay}")
        if self.limit_train is not None and self.limit_train < 2:
            raise FeatxError(f"--limit-train must be at least 2, got {self.limit_train}")
        check_batch_size(self.batch_size, auto=False)
        object.__setattr__(self, "dicom_window", check_window(self.dicom_window))

    def record(self) -> dict:
        """The options as recorded in the run's config.json and the artifact's params, every one of them."""
        return asdict(self)
