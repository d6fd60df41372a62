"""A sidecar as a value: which kind of model it describes, its method and the recipe of its features.

Heads and fine-tunes record their features through one writer (`feature_record`), and every reader
goes through `Sidecar.from_json`, which reads sidecars of every featx version. A method's name for
people is derived from `MethodId`, never parsed back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..features.identity import FEATURE_IDENTITY, FeatureRecipe
from ..models.numerics import Numerics

KINDS = ("head", "finetune")
CLEANED = "cleaned"  # a study's labels drawn without the images --exclude names (MethodId.labels)
# What a sidecar keeps of its features' config: the recipe, and facts for people and for rebuilding the backbone.
RECORDED = ("recipe_version", *FEATURE_IDENTITY, "weights_source", "weights_kind", "backbone_options", "precision", "compute", "dtype", "data_root",
            "dataset_key", "group_pattern", "group_source", "patients")  # groups: how patients were kept together (model cards)


def feature_record(config: dict, *, num_features: int, file=None, config_hash=None) -> dict:
    """A sidecar's "features": from a cache's config (a head) or a backbone's record (a fine-tune)."""
    return {"file": None if file is None else str(file), "config_hash": config_hash, "num_features": num_features,
            "config": {k: config.get(k) for k in RECORDED}}


@dataclass(frozen=True)
class MethodId:
    """What a method is, everywhere featx names one (study units and records, the verdict, recipe gains,
    figures, compare, robustness, cards, the demo): its backbone, how its features or training differ from
    the default (e.g. ("cls+avg", "448 px")), the head ("finetune" for a fine-tune), out of core or not, and
    the name a study gave its fine-tune recipe, and how a study chose its training labels (None: drawn at
    random from the whole pool; a labelling strategy's name; CLEANED: drawn at random from the pool without
    the images --exclude names). `label` is derived from it and never parsed back."""

    backbone: str
    head: str
    variant: tuple[str, ...] = ()
    out_of_core: bool = False
    recipe: str | None = None
    labels: str | None = None
    adapted: str | None = None  # the adaptation to a target site's unlabelled features (heads.adaptation), if any
    calibrated_at: str | None = None  # the site `featx calibrate` made this version for, if any

    @classmethod
    def finetune(cls, backbone: str, options: dict, *, started_from: dict | None = None,
                 recipe: str | None = None) -> MethodId:
        """A fine-tune with these options (FinetuneConfig's fields, as given or as recorded in params)."""
        return cls(backbone, "finetune", tuple(finetune_variant(options, started_from)), recipe=recipe)

    @property
    def finetuned(self) -> bool:
        return self.head == "finetune"

    @property
    def label(self) -> str:
        shown = f" [{', '.join(self.variant)}]" if self.variant else ""
        named = f" (recipe {self.recipe})" if self.recipe else ""
        chosen = "" if self.labels is None else (", flagged removed" if self.labels == CLEANED else
                                                 f", {self.labels} labels")
        adapted = (f", adapted by {self.adapted}" if self.adapted else "") + \
            (f", calibrated at {self.calibrated_at}" if self.calibrated_at else "")
        if self.finetuned:
            return f"{self.backbone} fine-tune{shown}{named}{chosen}{adapted}"
        return f"{self.backbone}{shown} + {self.head}" + (" (out of core)" if self.out_of_core else "") + chosen + adapted

    def __str__(self) -> str:
        return self.label


def finetune_variant(params: dict, started_from: dict | None) -> list[str]:
    """How a fine-tune's recipe differs from the plain one, in words, and the fine-tune it started from
    (its run folder's name): its lineage, as compare and the study show it."""
    words = [f"{params['image_size']} px"] if params.get("image_size") else []
    words += [f"augment {params['augment']}"] if params.get("augment", "xray") != "xray" else []
    words += [f"EMA {params['ema']:g}"] if params.get("ema") else []
    words += ["select auc"] if params.get("select") == "auc" else []
    words += ["tta hflip"] if params.get("tta", "none") != "none" else []
    words += [f"drop-path {params['drop_path']:g}"] if params.get("drop_path") else []
    words += [f"mixup {params['mixup']:g}"] if params.get("mixup") else []
    words += [f"cutmix {params['cutmix']:g}"] if params.get("cutmix") else []
    words += [f"{params['precision']}"] if params.get("precision", "auto") != "auto" else []
    if started_from:
        words.append(f"from {Path(started_from['path']).parent.name}")
    return words


@dataclass(frozen=True)
class Sidecar:
    """The typed face of a sidecar's JSON (`raw`, kept whole for the fields only one reader needs)."""

    kind: str
    method: MethodId
    recipe: FeatureRecipe
    classes: tuple[str, ...]
    threshold: float | None
    image_size: int | None
    data_root: str | None
    dataset: str | None  # the dataset's key (its place seen from the cache folder), or for older sidecars its folder
    raw: dict

    @classmethod
    def from_json(cls, info: dict) -> Sidecar:
        config = info["features"]["config"]
        kind = info.get("kind") or "head"
        recipe = FeatureRecipe.from_config(config)
        params = info.get("params") or {}
        # fine-tunes before one writer recorded their size only in params
        image_size = (config.get("backbone_options") or {}).get("image_size") or \
            (params.get("image_size") if kind == "finetune" else None)
        calibrated_at = (info.get("local") or {}).get("site")
        adapted = ((info.get("target") or {}).get("adaptation") or {}).get("method")
        if kind == "finetune":
            method = replace(MethodId.finetune(config["backbone"], {**params, "image_size": image_size},
                                               started_from=info.get("started_from")), calibrated_at=calibrated_at,
                             adapted=adapted)
        else:
            variant = recipe.variant(image_size) + Numerics.words(config.get("compute"))  # a CPU's bf16 says so
            method = MethodId(config["backbone"], info["head"], variant, bool(info.get("out_of_core")),
                              adapted=adapted, calibrated_at=calibrated_at)
        return cls(kind, method, recipe, tuple(info["classes"]), info.get("threshold"), image_size,
                   config.get("data_root"), config.get("dataset_key") or config.get("data_root"), info)

    def to_json(self) -> dict:
        return self.raw

    @property
    def finetuned(self) -> bool:
        return self.kind == "finetune"

    def features_file(self, artifact) -> Path | None:
        """The feature cache a head was fitted on, found from the artifact's folder (older sidecars recorded
        an absolute path); None for a fine-tune."""
        file = self.raw["features"].get("file")
        return None if not file else Path(artifact).parent / file  # an absolute `file` stays itself
