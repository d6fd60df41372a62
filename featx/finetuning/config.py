"""A fine-tune's options, checked once, and the record that names its run folder."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

from .._core.errors import FeatxError
from .._core.options import check_batch_size, check_choice, check_image_size, check_number, flag
from ..data.decode_policy import check_window


def option(default, help: str, **how):
    """A fine-tune option, declared once: its default and help here, its type in the annotation, its limits
    in `__post_init__`. `featx finetune`'s click options are made from these (cli), a study file and
    `featx.finetune(**options)` are checked by the same class. `how`: kind="choice" (a vocabulary of
    _core.options), "path" or "window" (a DICOM window), min= for the CLI's range."""
    return field(default=default, metadata={"help": help, **how})


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that changes what a fine-tune learns (the run's hash is taken over these)."""

    backbone: str = option("xception", "Registered backbone or timm:<name>, built exactly as extract builds it.")
    weights: str = option("imagenet", "Starting weights: imagenet, random, a state_dict PATH, or a featx fine-tune of "
                          "this backbone (its model.pt or run folder) to continue from; its head is kept when the "
                          "classes are the same.")
    epochs: int = option(10, "Most epochs to train.", min=1)
    unfreeze: str = option("all", "Backbone parts that train: all, none, or last:N (top N blocks of a ViT, stages of "
                           "a CNN).")
    warmup_epochs: int = option(0, "Train the head alone for this many epochs first.", min=0)
    init_head_from: str | None = option(None, "Start the head from a featx fit logreg artifact of this backbone.",
                                        kind="path")
    lr: float = option(1e-4, "Peak learning rate of the backbone.")
    layer_decay: float | None = option(None, "Layer-wise learning-rate decay: each layer below the top learns this "
                                       "much slower (0.75 is the usual recipe for ViTs) [default: off].")
    head_lr: float = option(1e-3, "Peak learning rate of the head.")
    weight_decay: float = option(0.05, "AdamW weight decay.")
    schedule: str = option("cosine", "Learning-rate schedule, per step.", kind="choice")
    clip_grad: float = option(1.0, "Clip the gradient norm to this (0: off).")
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy.")
    class_weight: str = option("balanced", "Weight the loss by inverse class frequency.", kind="choice")
    dropout: float = option(0.2, "Dropout before the linear head.")
    patience: int = option(3, "Stop after this many epochs in which the selection metric did not improve.", min=1)
    augment: str = option("xray", "Train-time augmentation: xray has no flips; natural adds them; randaugment and "
                          "trivialaugment are torchvision's (no flips); corrupt applies one of featx's corruptions "
                          "(noise, blur, JPEG, contrast, brightness, rotation, zoom, shear, the Keras set) at a random "
                          "severity per image.", kind="choice")
    image_size: int | None = option(None, "Train and predict at this size instead of the backbone's (quick CPU runs).")
    limit_train: int | None = option(None, "Train on a seeded random subset of this many images.")
    batch_size: int | None = option(None, "Images per step [default: 16 on CPU, 64 on GPU].", min=1)
    seed: int = option(0, "Seed of the head, shuffling, augmentation and dropout.")
    dicom_window: str = option("default", "How DICOM files are displayed: their own VOI LUT or first window (min-max "
                               "where they have none), min-max of the modality values, or this window centre and "
                               "width.", kind="window")
    ema: float | None = option(None, "Keep a moving average of the weights with this decay (e.g. 0.999; timm's "
                               "ModelEmaV3 with warm-up), scored every epoch beside the raw weights; the average is "
                               "selected and saved [default: off].")
    select: str = option("loss", "Select the epoch by validation loss (lowest) or ROC-AUC (highest, macro over "
                         "classes; ties to the lower loss).", kind="choice")
    drop_path: float | None = option(None, "Stochastic depth rate (timm's drop_path_rate), for architectures that "
                                     "have it [default: the checkpoint's].")
    mixup: float = option(0.0, "Mixup alpha (timm's Mixup; 0: off).")
    cutmix: float = option(0.0, "CutMix alpha (timm's Mixup; 0: off).")
    tta: str = option("none", "Evaluate (and predict) with the mean logits of the image and its mirror (hflip), as "
                      "extract --tta.", kind="choice")
    precision: str = option("auto", "auto: autocast on a GPU (bf16 where supported, else fp16), float32 on a CPU. bf16: "
                            "bfloat16 autocast, on a GPU or on a CPU that computes in bfloat16 natively (AVX512-BF16, "
                            "AMX), where an epoch runs about 2x faster. fp32: float32 everywhere.", kind="choice")

    @classmethod
    def of(cls, options: dict, where: str = "") -> FinetuneConfig:
        """The config of `options` (field names), an unknown one refused in one line naming the known ones."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise FeatxError(f"unknown fine-tune option {unknown[0]!r}{where}; the options: "
                             + ", ".join(f.name for f in fields(cls)))
        return cls(**options)

    def __post_init__(self):
        _check_types(self)
        if self.init_head_from is not None:
            object.__setattr__(self, "init_head_from", str(self.init_head_from))
        if self.epochs < 1:
            raise FeatxError(f"--epochs must be at least 1, got {self.epochs}")
        for name in ("schedule", "augment", "class_weight", "select", "tta", "precision"):
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
ADDED_LATER = {"ema": None, "select": "loss", "drop_path": None, "mixup": 0.0, "cutmix": 0.0, "tta": "none",
               "precision": "auto"}
