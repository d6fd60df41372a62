"""A target site: images from where a model will be used, given beside the training data (`--target DIR|CSV`).

Its images are listed like any dataset (class folders, a manifest, `unlabelled/`; every image counts, whatever
folder split it sits in) and extracted into a cache of their own with exactly the training features' recipe.
They are never trained on: a head may be adapted to their unlabelled features, and labelled ones only score.
An image whose bytes are a training or validation image is refused before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint
from ..data.datasets import load_dataset
from ..data.files import sha1_of_files
from .identity import FeatureRecipe
from .recipe import extraction_options
from .store import FeatureStore


@dataclass(frozen=True)
class Target:
    """Where the target's images are, as the user named them, and how to group them into patients."""

    source: str
    group_pattern: str | None = None

    @property
    def name(self) -> str:
        return Path(self.source).stem


@dataclass(frozen=True)
class TargetFeatures:
    """The target's images with features of the training recipe: all rows, labels (-1 where none, indices of
    the training classes), patient groups, and the fingerprint that names this exact set of images."""

    name: str
    X: np.ndarray
    y: np.ndarray
    paths: tuple[str, ...]
    sha1s: tuple[str, ...]
    groups: tuple[str, ...]
    fingerprint: str

    @property
    def labelled(self) -> np.ndarray:
        return np.flatnonzero(self.y >= 0)

    def record(self) -> dict:
        """What a sidecar keeps of the target."""
        return {"site": self.name, "images": len(self.y), "labelled": int(len(self.labelled)),
                "images_sha256": self.fingerprint}


@dataclass(frozen=True)
class TargetListing:
    """The target's images as listed and hashed, before any feature exists: enough to refuse training images
    and to name the exact set (adapted models and a study's target scores are named by its fingerprint)."""

    target: Target
    ds: object  # data.datasets.Dataset
    sha1s: tuple[str, ...]
    fingerprint: str

    @classmethod
    def of(cls, target: Target, cache_dir) -> TargetListing:
        ds = load_dataset(target.source, group_pattern=target.group_pattern, cache_dir=cache_dir)
        sha1s = tuple(sha1_of_files([ds.absolute(p) for p in ds.paths]))
        return cls(target, ds, sha1s, images_fingerprint(zip(ds.paths, sha1s)))

    def check(self, classes, seen: dict) -> None:
        """Refuse labels outside `classes` and images whose bytes are in `seen` (sha1 -> the split they are in)."""
        foreign = [c for c in self.ds.classes if c not in classes]
        if foreign:
            raise FeatxError(f"--target {self.target.source} has labels the training data does not have "
                             f"({', '.join(foreign)}); its classes are {', '.join(classes)}")
        clash = [(p, seen[h]) for p, h in zip(self.ds.paths, self.sha1s) if h in seen]
        if clash:
            raise FeatxError(f"{len(clash)} --target images are {clash[0][1]} images of the training data (same "
                             f"bytes, e.g. {clash[0][0]}); a target site's images must be ones no model trains or "
                             "chooses on")

    def labelled(self, classes) -> tuple[np.ndarray, np.ndarray]:
        """(rows, labels as indices of `classes`) of the labelled images (`check` has seen every label is one)."""
        rows = np.flatnonzero(self.ds.labels >= 0)
        names = list(classes)
        return rows, np.array([names.index(self.ds.classes[self.ds.labels[i]]) for i in rows], int)

    def features(self, store: FeatureStore, *, cache_dir, log) -> TargetFeatures:
        """The target's features with `store`'s recipe, extracted first when not cached."""
        from .extraction import extract

        options = extraction_options(store.config)
        found = extract(self.ds, options.pop("backbone"), cache_dir=cache_dir, progress=False, log=lambda line: None,
                        **options)
        differs = FeatureRecipe.from_config(found.config).differences(FeatureRecipe.from_config(store.config))
        if differs:
            raise FeatxError(f"the target's features were made differently ({', '.join(differs)}); pass the weights "
                             "the training features were made with")
        X, y_local = found.arrays()
        y = np.array([-1 if v < 0 else store.classes.index(found.classes[v]) for v in y_local], dtype=int)
        paths, sha1s = found.paths(), found.sha1s()
        log(f"target {self.target.name}: {len(y)} images ({int((y >= 0).sum())} labelled), {found.path}")
        return TargetFeatures(self.target.name, X, y, tuple(paths), tuple(sha1s), tuple(found.groups()),
                              images_fingerprint(zip(paths, sha1s)))


def target_features(target: Target, store: FeatureStore, *, cache_dir, log) -> TargetFeatures:
    """The target's features with `store`'s recipe (extracted first when not cached), checked against
    `store`'s training and validation images."""
    listing = TargetListing.of(target, cache_dir)
    listing.check(store.classes, {h: split for split in ("train", "val") if split in store.counts()
                                  for h in store.sha1s(split)})
    return listing.features(store, cache_dir=cache_dir, log=log)
