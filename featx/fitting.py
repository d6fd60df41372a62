"""`featx fit`: train heads on a feature cache, pick a threshold, evaluate every split, save artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import FEATURE_IDENTITY, save_artifact
from .data import SPLITS, default_cache_dir, file_safe
from .console import log_line
from .errors import FeatxError
from .heads import HEADS, head_names, select_head
from .metrics import choose_threshold, evaluate, parse_threshold
from .store import FeatureStore


@dataclass
class FitResult:
    """One trained head: where it was saved, what was chosen, and how it scored on each split."""

    head: str
    artifact: Path
    params: dict
    selection: str
    threshold: float | None
    metrics: dict          # split -> metrics (featx.evaluate)
    train_seconds: float
    scores: list = field(default_factory=list)


def fit(features=None, *, data=None, backbone: str | None = None, head: str = "logreg", pca: int | None = None,
        threshold: str | float = 0.5, seed: int = 0, cache_dir=None, models_dir=None, weights: str = "imagenet",
        out_of_core: bool = False, solver: str = "lbfgs", block_rows: int | None = None,
        log=None) -> list[FitResult]:
    """Train `head` ("all" for every head) on cached features and save one artifact per head.

    The features are a cache file (`features`), or the cache of `backbone` on `data`, which
    is extracted first if there is none. Hyperparameters are chosen on the validation split,
    else by stratified group k-fold on train. `threshold` is a number or a rule chosen on the
    same held-out predictions: "youden", "f1" or "sensitivity=0.95". Test is only evaluated.

    out_of_core reads the features block by block (`block_rows` rows at a time) instead of
    loading them (featx.streaming): logreg by streamed L-BFGS (`solver="lbfgs"`, the in-memory
    model) or SGD (`solver="sgd"`, fewer passes), lightgbm through lightgbm.Sequence.
    """
    log = log or log_line
    names = head_names(head)
    if pca is not None and pca < 1:
        raise FeatxError(f"--pca must be a positive number of components, not {pca}")
    if out_of_core:
        from .streaming import STREAM_HEADS

        if head == "all":
            names = list(STREAM_HEADS)
        if pca is not None:
            raise FeatxError("--pca needs the features in memory; leave it out with --out-of-core")
        unsupported = [n for n in names if n not in STREAM_HEADS]
        if unsupported:
            verb = "needs" if len(unsupported) == 1 else "need"
            raise FeatxError(f"--out-of-core trains {' and '.join(STREAM_HEADS)} only; {', '.join(unsupported)} "
                             f"{verb} the features in memory")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    store = _resolve_store(features, data, backbone, weights, cache_dir, log)
    threshold_rule = _check_threshold(threshold, len(store.classes))
    if solver != "lbfgs" and not out_of_core:
        raise FeatxError("--solver applies to --out-of-core logreg; in memory, logreg uses scikit-learn's lbfgs")
    models_dir = Path(models_dir) if models_dir else cache_dir / "models"
    if out_of_core:
        from .streaming import BLOCK_ROWS, CachedSplits, select_head as select_streamed

        cached = CachedSplits(store, block_rows or BLOCK_ROWS)
        _check_train(store, {s: cached.y[s] for s in cached.rows}, log)
        cached.check_finite()
        labels = cached.y

        def select(name):
            return select_streamed(name, cached, seed=seed, solver=solver)

        def predict_proba(estimator, split):
            return cached.predict_proba(estimator, split)
    else:
        _check_fits_in_memory(store)
        splits = _load_splits(store, log)
        X, y, groups = splits["train"]
        if pca is not None and pca > min(X.shape):
            raise FeatxError(f"--pca {pca} exceeds what {X.shape[0]} train images x {X.shape[1]} features allow")
        X_val, y_val, _ = splits.get("val", (None, None, None))
        labels = {split: v[1] for split, v in splits.items()}

        def select(name):
            return select_head(name, X, y, groups, X_val, y_val, pca=pca, seed=seed)

        def predict_proba(estimator, split):
            return estimator.predict_proba(splits[split][0])

    results = []
    for name in names:
        log(f"fitting {name} on {store.config['backbone']} features ({len(labels['train'])} train images"
            + (", out of core" if out_of_core else "") + ")")
        sel = select(name)
        cut = _threshold(threshold_rule, sel, len(store.classes))
        started = time.perf_counter()
        probas = {split: predict_proba(sel.estimator, split) for split in labels}
        predict_seconds = (time.perf_counter() - started) / sum(len(v) for v in labels.values())
        metrics = {split: evaluate(labels[split], p, store.classes, cut if cut is not None else 0.5)
                   for split, p in probas.items()}
        predictions = {split: {"path": store.paths(split), "sha1": store.sha1s(split), "y": labels[split],
                               "proba": p} for split, p in probas.items()}
        info = _sidecar(name, store, sel, threshold_rule, cut, metrics, pca, seed, predict_seconds)
        info["out_of_core"] = out_of_core
        path = models_dir / f"{file_safe(store.config['backbone'])}-{name}-{_artifact_hash(store, name, pca, seed, threshold_rule, out_of_core and solver)}.joblib"
        save_artifact(path, sel.estimator, info, predictions)
        log(f"  {name}: {sel.params} by {sel.method} in {sel.train_seconds:.1f} s -> {path}")
        results.append(FitResult(name, path, sel.params, sel.method, cut, metrics, sel.train_seconds, sel.scores))
    return results


def _resolve_store(features, data, backbone, weights, cache_dir: Path, log) -> FeatureStore:
    """The cache file asked for, or the one of `backbone` on `data` (extracted now if missing)."""
    if features is not None:
        if data is not None or backbone is not None:
            raise FeatxError("give either --features CACHE.h5 or --backbone with --data, not both")
        return features if isinstance(features, FeatureStore) else FeatureStore(features)
    if data is None or backbone is None:
        raise FeatxError("say which features to fit on: --features CACHE.h5, or --backbone NAME --data DIR")
    from .data import load_dataset

    ds = load_dataset(data, cache_dir=cache_dir)
    found = []
    for path in sorted((cache_dir / ds.key).glob("*.h5")):
        try:
            store = FeatureStore(path)
        except FeatxError:
            continue
        c = store.config
        if c.get("backbone") == backbone and c.get("data_root") == str(ds.root) and _same_weights(c, weights):
            found.append(store)
    if len(found) > 1:
        listing = ", ".join(str(s.path) for s in found)
        raise FeatxError(f"several {backbone} caches for {ds.root}: {listing}; pick one with --features")
    if found:
        store = found[0]
        if sorted(store.row_table().path) != sorted(ds.paths):
            raise FeatxError(f"the images in {ds.root} changed since {store.path} was made; "
                             f"run `featx extract --backbone {backbone} --data {data}` first")
        return store
    log(f"no {backbone} features cached for {ds.root} yet: extracting them first")
    from .extraction import extract

    return extract(data, backbone, weights=weights, cache_dir=cache_dir)


def _same_weights(config: dict, weights: str) -> bool:
    """Whether a cache was made with the weights asked for, judged from its record (no model built)."""
    source = config.get("weights_source", "")
    if weights == "random":
        return source.startswith("random")
    if weights == "imagenet":
        return not source.startswith("random")
    return source == str(Path(weights).expanduser().resolve())


def _load_splits(store: FeatureStore, log) -> dict:
    """(X, y, groups) per split present; refuse what no head can learn from."""
    counts = store.counts()
    out = {}
    for split in SPLITS:
        if split not in counts:
            continue
        X, y = store.arrays(split)
        if len(y) == 0:
            continue
        bad = ~np.isfinite(X)
        if bad.any():
            rows = int(bad.any(1).sum())
            raise FeatxError(f"{store.path}: {rows} {split} feature rows contain NaN or inf ({int(bad.sum())} values); "
                             "re-extract them (delete the cache file) before fitting")
        out[split] = (X.astype(np.float32, copy=False), y, np.asarray(store.groups(split)))
    _check_train(store, {split: v[1] for split, v in out.items()}, log, counts)
    return out


def _check_train(store: FeatureStore, labels: dict, log, counts: dict | None = None) -> None:
    """Refuse a train split no head can learn from; warn about a cache still being written."""
    pending = sum(c["pending"] for c in (counts or store.counts()).values())
    if pending and log is not None:
        log(f"warning: {store.path} is still being extracted ({pending} images pending); fitting on the finished rows")
    if "train" not in labels:
        raise FeatxError(f"{store.path} has no train images; heads need a train split")
    present = np.unique(labels["train"])
    if len(present) < 2:
        raise FeatxError(f"the train split has only one class ({store.classes[present[0]]}); a head needs at least two")
    missing = [c for i, c in enumerate(store.classes) if i not in present]
    if missing:
        raise FeatxError(f"the train split has no images of class {', '.join(missing)}")


def _check_fits_in_memory(store: FeatureStore) -> None:
    """Say so before loading features that would not fit, rather than being killed by the OS."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    needed = store.n_rows * store.num_features * 4 * 2  # float32, and a scaled copy inside the head
    if needed > 0.8 * available:
        raise FeatxError(f"{store.path}: {store.n_rows} x {store.num_features} features need about "
                         f"{needed / 2**30:.1f} GiB in memory, and {available / 2**30:.1f} GiB is free; "
                         "add --out-of-core (logreg, lightgbm) to read them block by block")


def _check_threshold(threshold, n_classes: int):
    """A float, or a rule name, which needs two classes."""
    value = parse_threshold(threshold)
    if isinstance(value, str) and n_classes != 2:
        raise FeatxError(f"--threshold {value} applies to two classes; with {n_classes} classes featx predicts "
                         "the most probable one")
    return value


def _threshold(rule, sel, n_classes: int):
    if n_classes != 2:
        return None
    if isinstance(rule, float):
        return rule
    return choose_threshold(sel.selection_y, sel.selection_proba[:, 1], rule)


def _artifact_hash(store: FeatureStore, head: str, pca, seed: int, rule, out_of_core) -> str:
    key = {"features": store.config.get("config_hash"), "file": str(store.path.resolve()), "head": head,
           "grid": HEADS[head].grid, "pca": pca, "seed": seed, "threshold": rule}
    key = json.dumps({**key, "out_of_core": out_of_core} if out_of_core else key, sort_keys=True)  # old names stay
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _sidecar(name, store, sel, rule, cut, metrics, pca, seed, predict_seconds) -> dict:
    import joblib
    import sklearn

    versions = {"python": platform.python_version(), "sklearn": sklearn.__version__, "joblib": joblib.__version__,
                "numpy": np.__version__}
    if name == "lightgbm":
        import lightgbm

        versions["lightgbm"] = lightgbm.__version__
    from . import __version__

    versions["featx"] = __version__
    return {
        "kind": "head",
        "head": name,
        "params": sel.params,
        "pca": pca,
        "seed": seed,
        "selection": {"method": sel.method, "metric": "roc_auc",
                      "candidates": [{"params": p, "roc_auc": v} for p, v in sel.scores]},
        "classes": store.classes,
        "threshold": cut,
        "threshold_rule": rule if isinstance(rule, str) else "fixed",
        "features": {
            "file": str(store.path.resolve()),
            "config_hash": store.config.get("config_hash"),
            "num_features": store.num_features,
            "config": {k: store.config.get(k) for k in (*FEATURE_IDENTITY, "weights_source", "precision", "dtype",
                                                         "data_root")},
        },
        "metrics": metrics,
        "train_seconds": sel.train_seconds,
        "predict_seconds_per_image": predict_seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions,
    }

