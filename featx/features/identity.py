"""What makes features what they are: the keys a cache records and on which caches and models must agree.

A cache's identity names its file (`<backbone>-<identity_hash>.h5`); two caches, or a cache and a
model, are interchangeable only when their FEATURE_IDENTITY values are equal.
"""

from __future__ import annotations

from .._core.hashing import record_hash

FORMAT_VERSION = 1  # of the HDF5 layout (store.py)

# The parts of a cache's config that must match for features to be interchangeable. pool and layers
# (token models) are absent where they are the model's own: caches made before them keep their identity.
FEATURE_IDENTITY = ("backbone", "timm_model", "numerics", "weights_sha256", "data_config", "layer", "pool", "layers",
                    "tta", "decode")


def feature_identity(backbone_identity: dict, *, tta: str, decode: str) -> dict:
    """The FEATURE_IDENTITY values: the backbone's (`Backbone.identity()`), TTA and decode policy."""
    return {**backbone_identity, "tta": tta, "decode": decode}


def cache_identity(backbone_identity: dict, *, data_root: str, precision: str, tta: str, dtype: str,
                   decode: str) -> dict:
    """Everything that changes a cache's content: the features' identity, the data, precision and dtype."""
    return {"format_version": FORMAT_VERSION, "data_root": data_root,
            **feature_identity(backbone_identity, tta=tta, decode=decode), "precision": precision, "dtype": dtype}


def variant_label(config: dict) -> str:
    """How a cache's features differ from its backbone's own, for a method's name: "" or e.g.
    " [cls+avg, last:4, 448 px]" (size, pool, layers, inner layer)."""
    parts = []
    if config.get("pool"):  # present only where it is not the model's own
        parts.append(config["pool"])
        if config.get("layers") not in (None, "last:1"):
            parts.append(config["layers"])
    if config.get("layer") not in (None, "pooled"):
        parts.append(config["layer"])
    size = (config.get("backbone_options") or {}).get("image_size")
    if size:
        parts.append(f"{size} px")
    return f" [{', '.join(parts)}]" if parts else ""


def identity_hash(identity: dict) -> str:
    return record_hash(identity, 10)


def differences(config: dict, wanted: dict, keys=None) -> list[str]:
    """The keys (of `keys`, default all of `wanted`) whose values differ between `config` and `wanted`."""
    return [k for k in (wanted if keys is None else keys) if config.get(k) != wanted.get(k)]
