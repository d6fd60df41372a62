"""The caches of a dataset that hold the features asked for, judged from their records alone (no model
built, no torch): `featx fit --backbone --data` finds its features here."""

from __future__ import annotations

from pathlib import Path

from ..data.datasets import Dataset
from ..models.registry import get_spec
from ..models.weight_files import ResolvedWeights, recorded_kind, resolve_weights
from .store import FeatureStore, find_caches


def dataset_caches(ds: Dataset, backbone: str, weights: str, variant: dict, cache_dir: Path) -> list[FeatureStore]:
    """The caches in `ds`'s cache folder made by `backbone` with `weights` and `variant` (image_size, pool
    and layers as asked; None: the backbone's own)."""
    wanted = resolve_weights(get_spec(backbone, check_timm=False), weights)
    return [s for s in find_caches(Path(cache_dir) / ds.key, {"backbone": backbone}, recursive=False)
            if _same_weights(s.config, wanted) and _same_variant(s.config, variant)]


def _same_variant(config: dict, variant: dict) -> bool:
    """Whether a cache holds the features asked for: the size, pool and layers given; those not given,
    the backbone's own (caches older than these options hold only those). A pool asked for matches only a
    token model's cache: on a CNN, extraction refuses it."""
    made = config.get("backbone_options", {})
    own_pool = config.get("pool") is None  # the identity names pool and layers only when not the model's own
    tokens = not own_pool or made.get("pool") != "avg"  # a CNN records avg, and no pool in its identity
    return (variant["image_size"] == made.get("image_size") and variant["layers"] == made.get("layers")
            and (own_pool if variant["pool"] is None else tokens and variant["pool"] == made.get("pool")))


def _same_weights(config: dict, wanted: ResolvedWeights) -> bool:
    """Whether a cache was made from the weights asked for, judged from its record (no model built):
    by the weights file's fingerprint. Weights only the hub has match caches made from the hub; a
    cache that predates fingerprints matches nothing, and the extraction that follows finds it by its
    features' recipe and records one."""
    if wanted.fingerprint is not None:
        return config.get("weights_fingerprint") == wanted.fingerprint
    return wanted.kind == "hub" and recorded_kind(config) == "hub"
