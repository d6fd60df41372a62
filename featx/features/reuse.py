"""Deciding from the cache alone that an extraction has nothing left to do: no model, no torch.

Every extraction records its *request* (backbone, weights fingerprint, layer, TTA, decode policy,
dtype, device kind and library versions) in the cache's config; the files are checked apart. A re-run with the same
request finds that cache, checks the files (stat, and sha1 only of changed ones) and the row
status, and returns it. Anything else, or any doubt (a GPU, weights only on the hub, a
torchrun, a split to update, a shard to merge), goes the full way, which decides by the
features' identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._core import distributed
from .._core.errors import FeatxError
from .._core.hashing import record_hash
from .._core.versions import installed_version
from ..data.datasets import Dataset
from ..data.decode_policy import DecodePolicy
from ..models.numerics import Numerics
from ..models.registry import get_spec
from ..models.weight_files import resolve_weights
from .planning import cache_folder, row_table, same_files
from .store import FeatureStore, StoreWriter, find_caches


def extraction_request(backbone: str, *, weights: str, device_kind: str, layer: str | None, variant: dict, tta: str,
                       policy: DecodePolicy, dtype: str, numerics: Numerics) -> dict | None:
    """What a run was asked to compute, in terms known before building the model (no path: a copied
    project keeps answering it); None when the weights cannot be fingerprinted without the hub."""
    try:
        spec = get_spec(backbone, check_timm=False)
        fingerprint = resolve_weights(spec, weights).fingerprint
    except (FeatxError, OSError):
        return None
    if fingerprint is None:
        return None
    return {"backbone": spec.name, "timm_model": spec.timm_name, "weights": fingerprint, "layer": layer or "pooled",
            **variant, "tta": tta, "decode": policy.format(), "dtype": dtype, "precision": numerics.identity(),
            "device": device_kind,
            "timm": installed_version("timm"), "torch": installed_version("torch")}


def request_hash(request: dict) -> str:
    return record_hash(request, 12)


def finished_cache(ds: Dataset, backbone: str, *, weights: str, layer, variant: dict, tta, decode,
                   dtype, numerics: Numerics | None, cache_dir: Path, output=None, corruption=None,
                   dicom_window: str = "default") -> FeatureStore | None:
    """The cache a previous identical run finished for exactly these files, or None.
    `variant`: image_size, pool and layers as asked (None: the backbone's own). `numerics`: as asked, on a
    device known to be the CPU (None: not known without torch, so the full way decides)."""
    if distributed.world()[1] > 1 or numerics is None or numerics.device != "cpu":
        return None
    policy = DecodePolicy.for_run(decode, "cpu", dicom_window=dicom_window, corruption=corruption)
    request = extraction_request(backbone, weights=weights, device_kind="cpu", layer=layer, variant=variant,
                                 tta=tta, policy=policy, dtype=dtype, numerics=numerics)
    if request is None:
        return None
    wanted = request_hash(request)
    where = Path(output) if output else cache_folder(cache_dir, ds, corruption)
    for store in find_caches(where, recursive=False):
        if wanted in store.config.get("requests", ()) and _holds_every_file(store, ds):
            return store
    return None


def remember_request(path: Path, store: FeatureStore, request: dict) -> None:
    """Add a request to those the cache at `path` answers (the full way found it by identity), and
    record the fingerprint of its weights file, by which `fit --weights` finds the cache."""
    served, digest = list(store.config.get("requests", ())), request_hash(request)
    if digest not in served:
        with StoreWriter(path) as writer:
            writer.update_config({"requests": [*served, digest], "weights_fingerprint": request["weights"]})


def _holds_every_file(store: FeatureStore, ds: Dataset) -> bool:
    """Every file of `ds`, unchanged, with its label, split and group, is done or skipped in `store`,
    and no shard of an interrupted torchrun waits to be merged."""
    if store.classes != ds.classes or any(store.path.parent.glob(f"{store.path.name}.shard*")):
        return False
    held = store.row_table()
    now = row_table(ds, held)
    if not (same_files(held, now) and np.array_equal(held.split, now.split)):
        return False
    done, skipped = store.row_status()
    return bool((done | skipped).all())


