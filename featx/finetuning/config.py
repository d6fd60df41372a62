"""A fine-tune's options, checked once, and the record that names its run folder."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from .._core.errors import FeatxError
from .._core.options import check_batch_size, check_choice, check_image_size, check_number, flag
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
    ema: float | None = None
    select: str = "loss"
    drop_path: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    tta: str = "none"

    def __post_init__(self):
        _check_types(self)
        if self.init_head_from is not None:
            object.__setattr__(self, "init_head_from", str(self.init_head_from))
        if self.epochs < 1:
            raise FeatxError(f"--epochs must be at least 1, got {self.epochs}")
        for name in ("schedule", "augment", "class_weight", "select", "tta"):
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
        if self.ema is not None and not 0 < self.ema < 1:
            raise FeatxError(f"--ema is the decay of the weight average and must lie in (0, 1), e.g. 0.999; "
                             f"got {self.ema}")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise FeatxError(f"--drop-path is a rate and must lie in [0, 1), got {self.drop_path}")
        if self.mixup < 0 or self.cutmix < 0:
            raise FeatxError(f"--mixup and --cutmix are Beta(alpha, alpha) parameters and must not be negative, "
                             f"got {self.mixup} and {self.cutmix}")
        object.__setattr__(self, "dicom_window", check_window(self.dicom_window))

    def record(self) -> dict:
        """The options as recorded in the artifact's params, every one of them."""
        return asdict(self)

    def hashed(self) -> dict:
        """The options the run's hash is taken over (and its config.json records): every one, except that an
        option added later (ADDED_LATER) enters only when set away from the behaviour that came before it,
        so a run folder named before it existed keeps its name and resumes."""
        return {f.name: v for f, v in zip(fields(self), asdict(self).values())
                if f.name not in ADDED_LATER or v != ADDED_LATER[f.name]}


def _check_types(config: FinetuneConfig) -> None:
    """Each option of the type its field declares (a study file may hold "3" or "high"): one line, before
    any bound is compared."""
    for f in fields(config):
        value, optional = getattr(config, f.name), "None" in f.type
        if f.type.startswith("int"):
            check_number(f.name, value, integer=True, optional=optional)
        elif f.type.startswith("float"):
            check_number(f.name, value, optional=optional)
        elif not (value is None and optional) and not isinstance(value, (str, os.PathLike)):
            raise FeatxError(f"{flag(f.name)} takes text, not {value!r}")


# Options added after the first fine-tunes, at the values that reproduce what came before them.
ADDED_LATER = {"ema": None, "select": "loss", "drop_path": None, "mixup": 0.0, "cutmix": 0.0, "tta": "none"}
