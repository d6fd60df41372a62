"""`FeatureExtractor`: a frozen backbone as a scikit-learn transformer over image paths.

So that `Pipeline([("features", FeatureExtractor("xception")), ("clf", LogisticRegression())])`
works with `cross_val_score` and `GridSearchCV`. Nothing is learned in `fit`; `transform` takes
features from a featx cache when one made the same way holds the same file bytes, and runs
the backbone for the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .._core.errors import FeatxError
from .._core.hashing import file_sha1
from .._core.options import check_options, feature_variant
from .._core.paths import default_cache_dir
from ..data.decode_policy import check_window


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Image paths -> pooled features of `backbone` (one row per path, in order).

    cache: a feature cache file, a folder searched for them (default: featx's cache folder),
    or None to always compute. Only caches made with the same backbone, weights and
    preprocessing are used, and rows are matched by the sha1 of the file's bytes.
    """

    def __init__(self, backbone: str = "xception", *, weights: str = "imagenet", layer: str | None = None,
                 image_size: int | None = None, pool: str | None = None, layers: str | None = None,
                 tta: str = "none", decode: str = "pil", dicom_window: str = "default", cache="auto",
                 device: str = "auto", batch_size: int | None = None):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.image_size = image_size
        self.pool = pool
        self.layers = layers
        self.tta = tta
        self.decode = decode
        self.dicom_window = dicom_window
        self.cache = cache
        self.device = device
        self.batch_size = batch_size

    def fit(self, X, y=None):
        """Nothing to learn: the backbone is frozen (the options are checked)."""
        self._validate_options()
        return self

    def _validate_options(self) -> None:
        """As scikit-learn does, at fit/transform rather than in __init__ (set_params bypasses __init__)."""
        check_options(tta=self.tta, decode=self.decode, device=self.device, batch_size=self.batch_size)
        feature_variant(self.image_size, self.pool, self.layers)
        check_window(self.dicom_window)

    def _policy(self):
        """How files become pixels, as extract records it (DICOM rules included, whatever the files)."""
        from .._core.runtime import resolve_device
        from ..data.decode_policy import DecodePolicy

        return DecodePolicy.for_run(self.decode, resolve_device(self.device), dicom_window=self.dicom_window)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

    def transform(self, X) -> np.ndarray:
        from ..data.loading import refuse_unreadable
        from .computing import compute_features

        self._validate_options()
        paths = [str(Path(p).expanduser().absolute()) for p in _as_paths(X)]
        bb, policy = self._built(), self._policy()
        out = np.full((len(paths), bb.num_features), np.nan, np.float32)
        cached = self._from_cache(paths, bb, policy)
        todo = [i for i in range(len(paths)) if i not in cached]
        for i, row in cached.items():
            out[i] = row
        if todo:
            feats, reasons, _ = compute_features(bb, [paths[i] for i in todo], device=self.device,
                                                 batch_size=self.batch_size,
                                                 tta=self.tta, policy=policy)
            refuse_unreadable([paths[i] for i in todo], reasons)
            out[todo] = feats
        self.n_cached_ = len(cached)  # how many rows the last transform took from the cache
        return out

    def get_feature_names_out(self, input_features=None):
        width = self._built().num_features
        return np.array([f"{self.backbone}_{i}" for i in range(width)], dtype=object)

    def _built(self):
        """The backbone, built once per instance (clones build their own)."""
        from ..models.backbones import create_backbone

        key = (self.backbone, self.weights, self.layer, self.image_size, self.pool, self.layers)
        if getattr(self, "_backbone_key", None) != key:
            self._backbone = create_backbone(self.backbone, self.weights, layer=self.layer, image_size=self.image_size,
                                             pool=self.pool, layers=self.layers)
            self._backbone_key = key
        return self._backbone

    def _from_cache(self, paths: list[str], bb, policy) -> dict[int, np.ndarray]:
        """Row index -> cached features, for files whose bytes a cache of the same recipe and precision holds."""
        from .._core.runtime import resolve_device
        from .computing import reproducing
        from .identity import FeatureRecipe
        from .store import find_caches

        if self.cache is None:
            return {}
        where = default_cache_dir() if self.cache == "auto" else Path(self.cache)
        if self.cache != "auto" and not where.exists():
            raise FeatxError(f"no feature cache at {where}")
        numbers = reproducing(resolve_device(self.device), None).identity()  # what it computes itself
        stores = [s for s in find_caches(where, FeatureRecipe.of(bb.identity(), tta=self.tta, decode=policy).to_dict())
                  if s.config.get("precision", "fp32") == numbers]  # never a bfloat16 row among float32 ones
        found: dict[int, np.ndarray] = {}
        if stores:
            wanted: dict[str, list[int]] = {}
            for i, p in enumerate(paths):
                wanted.setdefault(file_sha1(Path(p)), []).append(i)
            for store in stores:
                found.update(store.features_by_sha1(wanted, skip=found))
        return found


def _as_paths(X) -> list:
    if isinstance(X, (str, Path)):
        raise FeatxError("FeatureExtractor.transform takes a list of image paths, not a single path")
    X = np.asarray(X, dtype=object)
    if X.ndim == 2 and X.shape[1] == 1:  # a one-column frame or array of paths
        X = X[:, 0]
    if X.ndim != 1:
        raise FeatxError(f"FeatureExtractor expects a list of image paths, got an array of shape {X.shape}")
    return list(X)
