"""How far one split's images lie from another's, measured on cached features (`featx shift`).

A domain classifier (standardised logistic regression, out-of-fold by patient-grouped CV) learns
to tell the two splits apart: its ROC-AUC is the shift score (0.5: the features show no shift;
1: every image betrays its split). The same within each class separates a change of the images
from a change of the class mix, which the class shares show directly. The images of the second
split farthest from every image of the first (nearest-neighbour distance on standardised
features) are the ones to look at.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from .._core.atomic import atomic_path, write_text_atomic
from .._core.console import log_line
from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint
from .._core.options import feature_variant
from .._core.paths import default_cache_dir
from ..evaluation.domain import domain_auc
from ..features.store import FeatureStore
from ..heads.fitting import resolve_store


@dataclass
class Shift:
    """The shift between two splits of one feature cache."""

    splits: tuple[str, str]
    counts: dict  # split -> {class: images}
    domain_auc: float
    domain_ci: tuple[float, float]
    per_class: dict  # class -> (auc, (low, high)) or None where too few patients
    unlike: list = field(default_factory=list)  # (path in the second split, distance, distance / typical)
    typical_distance: float = 0.0  # median nearest-neighbour distance within the first split
    embedding: dict | None = None  # the 2-D map: "xy", "split" (0/1), "label", "path", "method"
    classes: list = field(default_factory=list)
    data_root: str | None = None

    def lines(self) -> list[str]:
        a, b = self.splits
        out = [f"{a} -> {b} shift: domain AUC {self.domain_auc:.3f} [{self.domain_ci[0]:.3f}, "
               f"{self.domain_ci[1]:.3f}] (0.5: no shift visible in the features; 1: every image betrays its split)"]
        shares = {s: {c: n / max(1, sum(v.values())) for c, n in v.items()} for s, v in self.counts.items()}
        out.append("class shares: " + "; ".join(
            f"{s} " + ", ".join(f"{c} {share:.0%}" for c, share in shares[s].items()) for s in self.splits))
        for c, found in self.per_class.items():
            out.append(f"within {c}: " + ("too few patients to tell" if found is None else
                                          f"domain AUC {found[0]:.3f} [{found[1][0]:.3f}, {found[1][1]:.3f}]"))
        if self.unlike:
            out.append(f"{b} images most unlike {a} (nearest-neighbour distance / the median within {a}):")
            out += [f"  {path}  {ratio:.2f}" for path, _, ratio in self.unlike]
        return out

    def record(self) -> dict:
        """What is kept beside the cache (without the map's coordinates, which go in their own file)."""
        return {"auc": self.domain_auc, "ci": list(self.domain_ci), "counts": self.counts,
                "per_class": {c: None if v is None else [v[0], list(v[1])] for c, v in self.per_class.items()},
                "unlike": [list(u) for u in self.unlike]}


def shift(features=None, *, data=None, backbone: str | None = None, weights: str = "imagenet",
          splits=("train", "test"), image_size: int | None = None, pool: str | None = None,
          layers: str | None = None, cache_dir=None, seed: int = 0, n_boot: int = 1000, top: int = 10,
          embed: bool = True, log=None) -> Shift:
    """The shift from `splits[0]` to `splits[1]`, on a cache file (`features`) or on the cache of
    `backbone` on `data` (extracted first if missing), as `featx fit` finds it. `embed`: also a 2-D
    map of both splits (PCA to 50, then UMAP if umap-learn is installed, else t-SNE)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    variant = feature_variant(image_size, pool, layers)
    store = resolve_store(features, data, backbone, weights, variant, cache_dir, log or log_line)
    if len(splits) != 2 or splits[0] == splits[1]:
        raise FeatxError(f"--splits names two different splits, e.g. train,test; got {','.join(splits)}")
    result = measure_shift(store, splits, seed=seed, n_boot=n_boot, top=top, embed=embed)
    _remember(store, result)
    return result


def _record_path(cache: Path) -> Path:
    return Path(cache).with_suffix(".shift.json")


def _remember(store: FeatureStore, result: "Shift") -> None:
    """Keep the score (and the map's coordinates) beside the cache, where `featx compare` finds them, with
    what it was measured on: the features' config hash and each split's images (a model card shows a shift
    only where these are its own)."""
    cache = store.path
    path, key = _record_path(cache), "->".join(result.splits)
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[key] = {**result.record(), "config_hash": store.config.get("config_hash"),
                  "images": {s: images_fingerprint(zip(store.paths(s), store.sha1s(s))) for s in result.splits}}
    if result.embedding is not None:
        coordinates = _map_path(cache, result.splits)
        with atomic_path(coordinates) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{k: np.asarray(v) for k, v in result.embedding.items()})
        saved[key]["map"] = coordinates.name
    write_text_atomic(path, json.dumps(saved, indent=2) + "\n")


def _map_path(cache: Path, splits) -> Path:
    return Path(cache).with_suffix(f".shift-{'-'.join(splits)}.npz")


def recorded_shift(cache, to_split: str, with_map: bool = False) -> tuple[str, dict] | None:
    """(from split, record) of a shift measured into `to_split` on the cache at `cache`, or None. The
    record has "auc", "ci" and, when measured by this featx, "counts", "per_class", "unlike", and with
    `with_map` "embedding" (the map, read back from its file)."""
    path = _record_path(cache) if cache else None
    if path is None or not path.is_file():
        return None
    for key, found in json.loads(path.read_text()).items():
        start, _, end = key.partition("->")
        if end == to_split:
            coordinates = path.with_name(found["map"]) if with_map and found.get("map") else None
            if coordinates is not None and coordinates.is_file():
                with np.load(coordinates, allow_pickle=False) as stored:
                    found["embedding"] = {k: stored[k] for k in stored.files}
            return start, found
    return None


def measure_shift(store: FeatureStore, splits=("train", "test"), *, seed: int = 0, folds: int = 5,
                  n_boot: int = 1000, top: int = 10, embed: bool = False) -> Shift:
    """The shift from `splits[0]` to `splits[1]` of `store`'s features."""
    first, second = splits
    held = store.counts()
    for split in splits:
        if split not in held or not held[split].get("done"):
            raise FeatxError(f"{store.path} has no {split} images; its splits: {', '.join(held) or 'none'}")
    X = {s: store.arrays(s) for s in splits}
    groups = {s: [f"{s}/{g}" for g in store.groups(s)] for s in splits}  # a patient in both splits is two groups
    counts = {s: {c: int((X[s][1] == i).sum()) for i, c in enumerate(store.classes)} for s in splits}
    auc, ci = domain_auc(X[first][0], X[second][0], groups[first] + groups[second], seed, folds, n_boot)
    per_class = {}
    for i, c in enumerate(store.classes):
        a, b = X[first][1] == i, X[second][1] == i
        try:
            per_class[c] = domain_auc(X[first][0][a], X[second][0][b],
                                       list(np.array(groups[first])[a]) + list(np.array(groups[second])[b]),
                                       seed, folds, n_boot)
        except FeatxError:
            per_class[c] = None
    unlike, typical = _most_unlike(X[first][0], X[second][0], store.paths(second), top)
    embedding = None
    if embed:
        xy, method = embed_2d(np.vstack([X[first][0], X[second][0]]), seed)
        embedding = {"xy": xy, "split": np.r_[np.zeros(len(X[first][0]), int), np.ones(len(X[second][0]), int)],
                     "label": np.r_[X[first][1], X[second][1]], "method": method,
                     "path": np.array(store.paths(first) + store.paths(second), dtype=str)}
    return Shift(tuple(splits), counts, auc, ci, per_class, unlike, typical, embedding, list(store.classes),
                 store.config.get("data_root"))


def embed_2d(X: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of X for a map: standardised, PCA to 50 components, then UMAP when
    umap-learn is installed, else scikit-learn's t-SNE; and the method's name."""
    from sklearn.decomposition import PCA

    X = StandardScaler().fit_transform(X.astype(np.float64))
    k = min(50, X.shape[0] - 1, X.shape[1])
    X = PCA(n_components=k, random_state=seed).fit_transform(X) if k < X.shape[1] else X
    try:
        from umap import UMAP  # not `import umap`: numba's cache can leave an empty namespace package
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(X) - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X)
        return xy.astype(np.float32), f"t-SNE of PCA-{k}"
    with warnings.catch_warnings():  # a seed makes UMAP single-threaded, which it warns about
        warnings.simplefilter("ignore", UserWarning)
        xy = UMAP(n_components=2, random_state=seed).fit_transform(X)
    return np.asarray(xy, np.float32), f"UMAP of PCA-{k}"


def _most_unlike(A: np.ndarray, B: np.ndarray, paths: list[str], top: int):
    """The `top` rows of B farthest from their nearest row of A (standardised on A), and the median
    nearest-neighbour distance within A, for scale."""
    scaler = StandardScaler().fit(A)
    a, b = scaler.transform(A), scaler.transform(B)
    within = NearestNeighbors(n_neighbors=2).fit(a).kneighbors(a)[0][:, 1]
    typical = float(np.median(within)) or 1.0
    distance = NearestNeighbors(n_neighbors=1).fit(a).kneighbors(b)[0][:, 0]
    order = np.argsort(-distance)[:top]
    return [(paths[i], float(distance[i]), float(distance[i] / typical)) for i in order], typical
