"""What makes features what they are, as one value (`FeatureRecipe`), and the identity a cache derives from it.

A cache's identity names its file (`<backbone>-<identity_hash>.h5`); two caches, or a cache and a
model, are interchangeable only when their recipes are equal. No path enters either: a project
folder copied to another machine keeps its caches and models (rows are matched by relative path
and content).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .._core.hashing import record_hash
from ..data.decode_policy import DecodePolicy

FORMAT_VERSION = 1  # of the HDF5 layout (store.py)
RECIPE_VERSION = 2  # 2: no data folder in a cache's identity, the DICOM rules in every decode policy

# The recipe's fields as caches and sidecars record them (config keys).
FEATURE_IDENTITY = ("backbone", "timm_model", "numerics", "weights_sha256", "data_config", "layer", "pool", "layers",
                    "tta", "decode")


@dataclass(frozen=True)
class FeatureRecipe:
    """Everything that makes a feature: the backbone and its weights, how images are fed to it
    (data config, decode policy, TTA) and what is read out (layer, or pool and layers of a token
    model; None where they are the model's own)."""

    backbone: str
    timm_model: str
    numerics: str
    weights_sha256: str
    data_config: dict
    layer: str = "pooled"
    pool: str | None = None
    layers: str | None = None
    tta: str = "none"
    decode: DecodePolicy = field(default_factory=DecodePolicy)

    @classmethod
    def of(cls, backbone_identity: dict, *, tta: str, decode: DecodePolicy) -> FeatureRecipe:
        """The recipe of a built backbone (`Backbone.identity()`) fed by `decode`, with `tta`."""
        return cls(**backbone_identity, tta=tta, decode=decode)

    @classmethod
    def from_config(cls, config: dict) -> FeatureRecipe:
        """The recipe a cache's config or a sidecar's feature record holds, whichever featx wrote it."""
        return cls(config["backbone"], config["timm_model"], config.get("numerics", "timm"), config["weights_sha256"],
                   config["data_config"], config.get("layer") or "pooled", config.get("pool"), config.get("layers"),
                   config.get("tta") or "none", DecodePolicy.parse(config.get("decode")))

    def to_dict(self) -> dict:
        """The one serialisation: FEATURE_IDENTITY keys, nulls dropped, the decode policy as its text, and
        the version of these rules (`from_config` reads records with or without it)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["decode"] = self.decode.format()
        return {"recipe_version": RECIPE_VERSION, **{k: v for k, v in out.items() if v is not None}}

    def differences(self, other: FeatureRecipe) -> list[str]:
        """The fields on which two recipes differ (their features are interchangeable when there is none)."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def cache_identity(self, *, precision: str, dtype: str) -> dict:
        """Everything that changes a cache's content: the recipe, the numeric precision and the stored dtype."""
        return {"format_version": FORMAT_VERSION, **self.to_dict(), "precision": precision, "dtype": dtype}

    def variant(self, image_size: int | None = None) -> tuple[str, ...]:
        """How these features differ from their backbone's own, for a method's name: () or e.g.
        ("cls+avg", "last:4", "448 px") (pool, layers, inner layer, size)."""
        parts = []
        if self.pool:
            parts.append(self.pool)
            if self.layers not in (None, "last:1"):
                parts.append(self.layers)
        if self.layer != "pooled":
            parts.append(self.layer)
        if image_size:
            parts.append(f"{image_size} px")
        return tuple(parts)


def identity_hash(identity: dict) -> str:
    return record_hash(identity, 10)


def differences(config: dict, wanted: dict, keys=None) -> list[str]:
    """The keys (of `keys`, default all of `wanted`) whose values differ between `config` and `wanted`."""
    return [k for k in (wanted if keys is None else keys) if config.get(k) != wanted.get(k)]
