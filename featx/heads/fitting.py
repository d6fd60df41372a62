"""`featx fit`: train heads on a feature cache, pick a threshold, evaluate every split, save artifacts."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._core.console import log_line
from .._core.errors import FeatxError, first_line
from .._core.hashing import images_fingerprint, record_hash
from .._core.options import check_choice, feature_variant
from .._core.paths import default_cache_dir, file_safe
from ..artifacts import portable
from ..artifacts.format import build_sidecar, save_artifact
from ..artifacts.model_card import write_model_card
from ..artifacts.sidecar import feature_record
from ..data.datasets import SPLITS, STORED_SPLITS
from ..data.exclusion import Exclusion
from ..evaluation.folds import TooFewGroups
from ..evaluation.metrics import evaluate_with_intervals
from ..evaluation.thresholds import check_threshold, resolve_threshold, rule_name
from ..features.freshness import check_fresh, newly_labelled
from ..features.recipe import extract_command, extraction_options
from ..features.lookup import dataset_caches
from ..features.store import FeatureStore
from ..evaluation.domain import domain_auc
from ..features.target import Target, target_features
from .adaptation import SiteFit, check_adaptation
from .selection import Selection, classes_missing, select_head
from .specs import HEADS, head_names


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
        image_size: int | None = None, pool: str | None = None, layers: str | None = None,
        exclude=None, target=None, target_group_pattern: str | None = None, adapt: str = "none",
        log=None) -> list[FitResult]:
    """Train `head` ("all" for every head) on cached features and save one artifact per head.

    The features are a cache file (`features`), or the cache of `backbone` on `data`, which
    is extracted first if there is none (`image_size`, `pool`, `layers` pick which of its caches,
    as for extract; None: the backbone's own). Hyperparameters are chosen on the validation split,
    else by stratified group k-fold on train. `threshold` is a number or a rule chosen on the
    same held-out predictions: "youden", "f1" or "sensitivity=0.95". Test is only evaluated.

    out_of_core reads the features block by block (`block_rows` rows at a time) instead of
    loading them (featx.heads.out_of_core): logreg by streamed L-BFGS (`solver="lbfgs"`, the
    in-memory model) or SGD (`solver="sgd"`, fewer passes), lightgbm through lightgbm.Sequence.

    `exclude`: a file (or data.exclusion.Exclusion) naming train images not to train on, e.g. the labels
    featx audit flagged; the model's name and sidecar record the list.

    `target`: images of the site where the model will be used (a folder or manifest, labelled or not;
    features.target): never trained on; the train -> target shift is measured, labelled target images are
    scored as the split "target", and `adapt` (heads.adaptation: standardise, coral, ot, prior) adapts the
    head to the target's unlabelled features, a model of its own.
    """
    log = log or log_line
    names = _head_names(head, pca, out_of_core, solver)
    target = None if target is None else target if isinstance(target, Target) else Target(str(target), target_group_pattern)
    adaptation = check_adaptation(adapt, target=target, heads=names, out_of_core=out_of_core)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    variant = feature_variant(image_size, pool, layers)
    store = resolve_store(features, data, backbone, weights, variant, cache_dir, log)
    rule = check_threshold(threshold, len(store.classes))
    excluded = None if exclude is None else Exclusion.read(exclude, store.paths(), _row_splits(store))
    if excluded and out_of_core:
        raise FeatxError("--exclude works on features loaded in memory; drop --out-of-core, or remove the images")
    site = None if target is None else target_features(target, store, cache_dir=store.path.parent.parent, log=log)
    learner = (_Streamed(store, block_rows, seed, solver, log) if out_of_core else
               _InMemory(store, pca, seed, log, excluded.paths if excluded else ()))
    models_dir = Path(models_dir) if models_dir else cache_dir / "models"
    site_fit = _site(store, site, adaptation, learner, seed, log) if site else None
    key = {"pca": pca, "seed": seed, "threshold": rule, "out_of_core": out_of_core and solver,
           "images": _learned_from(store, excluded), **({"excluded": excluded} if excluded else {}),
           **({"adapted": [adaptation, site.fingerprint]} if adaptation else {})}
    results = []
    for name in names:
        try:
            results.append(_fit_one(name, learner, store, rule, models_dir, key, log, site_fit))
        except _CannotTrain as exc:  # with --head all, the other heads still train
            if len(names) == 1:
                raise
            log(f"  skipped {exc}")
    return results


class _CannotTrain(FeatxError):
    """A head that scikit-learn cannot train on these rows (e.g. MLP early stopping on a few images)."""


def _head_names(head: str, pca, out_of_core: bool, solver: str) -> list[str]:
    """The heads to train, after checking the options that do not need the features."""
    check_choice("solver", solver)
    names = head_names(head)
    if pca is not None and pca < 1:
        raise FeatxError(f"--pca must be a positive number of components, not {pca}")
    if not out_of_core:
        if solver != "lbfgs":
            raise FeatxError("--solver applies to --out-of-core logreg; in memory, logreg uses scikit-learn's lbfgs")
        return names
    from .out_of_core import STREAM_HEADS

    if head == "all":
        names = list(STREAM_HEADS)
    if pca is not None:
        raise FeatxError("--pca needs the features in memory; leave it out with --out-of-core")
    unsupported = [n for n in names if n not in STREAM_HEADS]
    if unsupported:
        verb = "needs" if len(unsupported) == 1 else "need"
        raise FeatxError(f"--out-of-core trains {' and '.join(STREAM_HEADS)} only; {', '.join(unsupported)} "
                         f"{verb} the features in memory")
    return names


def _site(store: FeatureStore, site, adaptation: str | None, learner, seed: int, log) -> SiteFit:
    """The target in this fit: its shift from train (said in the log), and the adaptation learnt now."""
    # the training rows as the learner holds them (read once); streamed ones are read here
    X_train, _, train_groups = learner.splits["train"] if isinstance(learner, _InMemory) else \
        (*store.arrays("train"), store.groups("train"))
    groups = [f"train/{g}" for g in train_groups] + [f"target/{g}" for g in site.groups]
    auc, ci = domain_auc(X_train, site.X, groups, seed)
    log(f"train -> target {site.name} shift: domain AUC {auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (0.5: no shift visible "
        "in the features; 1: every image betrays its site)")
    fit = SiteFit(site, {"auc": auc, "ci": list(ci)}, adaptation)
    mapped = fit.learn(learner.splits["train"][0]) if adaptation else None
    if mapped is not None:
        learner.map_features(mapped.source)
    if adaptation and not len(site.labelled):
        log(f"adapted to {site.name} without its labels: whether it is better there cannot be checked until some "
            "of its images are labelled (featx calibrate, or --target with labels)")
    return fit


def _fit_one(name: str, learner, store: FeatureStore, rule, models_dir: Path, key: dict, log,
             site: SiteFit | None = None) -> FitResult:
    """Select, threshold, evaluate and save one head (adapted to, and scored at, `site` when there is one)."""
    labels = learner.labels
    log(f"fitting {name} on {store.config['backbone']} features ({len(labels['train'])} train images"
        + learner.note + ")")
    try:
        sel = learner.select(name)
    except TooFewGroups as exc:
        raise FeatxError(_no_selection(store.classes, exc.per_class, learner.val_lacks)) from None
    except ValueError as exc:
        raise _CannotTrain(f"{name} cannot be trained on {len(labels['train'])} train images: {first_line(exc)}") \
            from None
    if learner.val_lacks:
        sel.method += f", as val has no {' or '.join(learner.val_lacks)} images"
    sel, _ = site.finish(sel) if site else (sel, None)
    cut = resolve_threshold(rule, sel.selection_y, sel.selection_proba, len(store.classes))
    splits = {split: (y, *learner.listing(store, split)) for split, y in labels.items()}

    def predict(split):
        return learner.predict_proba(sel.estimator, split)
    if site and len(site.features.labelled):
        scored = site.features.labelled
        splits["target"] = (site.features.y[scored], [site.features.paths[i] for i in scored],
                            [site.features.sha1s[i] for i in scored])

        def predict(split, _split_predict=predict):
            return sel.estimator.predict_proba(site.features.X[scored]) if split == "target" else _split_predict(split)
    key = {**key, "target": site.record(store.classes) if site else None}
    path, metrics = evaluate_and_save(name, store, sel, rule, cut, splits, predict, models_dir, key)
    log(f"  {name}: {sel.params} by {sel.method} in {sel.train_seconds:.1f} s -> {path}")
    return FitResult(name, path, sel.params, sel.method, cut, metrics, sel.train_seconds, sel.scores)


def evaluate_and_save(name: str, store: FeatureStore, sel: Selection, rule, cut, splits: dict, predict,
                      models_dir: Path, key: dict) -> tuple[Path, dict]:
    """A selected head's probabilities on each split (`splits`: split -> (labels, paths, sha1s); `predict`:
    split -> probabilities), its metrics with intervals at its threshold, saved as an artifact: (its path,
    the metrics). `featx fit` and the head a study keeps both end here."""
    started = time.perf_counter()
    probas = {split: predict(split) for split in splits}
    predict_seconds = (time.perf_counter() - started) / sum(len(y) for y, _, _ in splits.values())
    metrics = {split: evaluate_with_intervals(splits[split][0], p, store.classes, cut if cut is not None else 0.5)
               for split, p in probas.items()}
    predictions = {split: {"path": list(splits[split][1]), "sha1": list(splits[split][2]), "y": splits[split][0],
                           "proba": p} for split, p in probas.items()}
    return save_head(name, store, sel, rule, cut, metrics, predictions, models_dir, key, predict_seconds), metrics


def save_head(name: str, store: FeatureStore, sel: Selection, rule, cut, metrics: dict, predictions: dict,
              models_dir: Path, key: dict, predict_seconds: float) -> Path:
    """A selected head as a featx artifact (skops file, sidecar, predictions) and its model card, named by
    its features, head, options and the images it learned from (`key`); returns its path."""
    info = _sidecar(name, store, sel, rule, cut, metrics, key, predict_seconds, models_dir)
    path = models_dir / f"{file_safe(store.config['backbone'])}-{name}-{_artifact_hash(store, name, key)}{portable.SUFFIX}"
    save_artifact(path, sel.estimator, info, predictions)
    write_model_card(path)
    return path


def _no_selection(classes: list[str], per_class: dict[int, int], val_lacks) -> str:
    """Why no hyperparameter can be chosen, and what to do: validation is absent or lacks a class
    (`val_lacks`), and train has too few patient groups per class for group CV (`per_class`)."""
    patients = ", ".join(f"{classes[c]} {n}" for c, n in per_class.items())
    if val_lacks:
        why = f"the val split has no {' or '.join(val_lacks)} images, so it cannot rank "
    else:
        why = "there is no validation split to rank "
    fix = ("give validation images of every class (a val/ folder, or a larger --val-fraction once split.json is "
           "deleted)" if val_lacks else "cut one with --val-fraction 0.2")
    return (why + f"hyperparameters, and train has too few patient groups per class for group CV instead "
            f"(patients per class: {patients}; 2 of each are needed); {fix}, or add patients to train")


class _InMemory:
    """Features loaded whole: featx's grid search (heads.selection)."""

    note = ""  # what fit's log line adds
    val_lacks: tuple = ()  # the classes validation lacks, so that selection cannot use it

    def __init__(self, store: FeatureStore, pca, seed: int, log, excluded=()):
        _check_fits_in_memory(store)
        self.splits, self.kept = _load_splits(store, log, excluded)
        if excluded:
            self.note = f", {len(excluded)} excluded"
        X, y, _ = self.splits["train"]
        if pca is not None and pca > min(X.shape):
            raise FeatxError(f"--pca {pca} exceeds what {X.shape[0]} train images x {X.shape[1]} features allow")
        self.pca, self.seed = pca, seed
        self.labels = {split: v[1] for split, v in self.splits.items()}
        self.val_lacks = _classes_val_lacks(store, self.labels, log)
        self.selecting: dict = {}  # split -> (X, y, groups) heads are selected on, when not the split's own

    def select(self, name: str) -> Selection:
        X, y, groups = self.selecting.get("train", self.splits["train"])
        X_val, y_val, _ = self.selecting.get("val", self.splits.get("val", (None, None, None))) \
            if not self.val_lacks else (None, None, None)
        return select_head(name, X, y, groups, X_val, y_val, pca=self.pca, seed=self.seed)

    def map_features(self, mapping) -> None:
        """Select heads on train and validation features mapped into a target's space (an adaptation); the
        saved model is still scored on every split's features as they are."""
        self.selecting = {split: (mapping(X).astype(np.float32), y, g) for split, (X, y, g) in self.splits.items()
                          if split in ("train", "val")}

    def predict_proba(self, estimator, split: str) -> np.ndarray:
        return estimator.predict_proba(self.splits[split][0])

    def listing(self, store: FeatureStore, split: str) -> tuple[list, list]:
        """(paths, sha1s) of the split's rows as loaded (the excluded left out)."""
        keep = np.flatnonzero(self.kept[split])
        paths, sha1s = store.paths(split), store.sha1s(split)
        return [paths[i] for i in keep], [sha1s[i] for i in keep]


class _Streamed:
    """Features read block by block from the cache (heads.out_of_core)."""

    note = ", out of core"

    def __init__(self, store: FeatureStore, block_rows, seed: int, solver: str, log):
        from .out_of_core import BLOCK_ROWS, CachedSplits

        self.cached = CachedSplits(store, block_rows or BLOCK_ROWS)
        _check_train(store, {s: self.cached.y[s] for s in self.cached.rows}, log)
        self.cached.check_finite()
        self.labels, self.seed, self.solver = self.cached.y, seed, solver
        self.val_lacks = _classes_val_lacks(store, self.labels, log)

    def select(self, name: str) -> Selection:
        from .out_of_core import select_head as select_streamed

        return select_streamed(name, self.cached, seed=self.seed, solver=self.solver,
                               on_validation=not self.val_lacks)

    def predict_proba(self, estimator, split: str) -> np.ndarray:
        return self.cached.predict_proba(estimator, split)

    @staticmethod
    def listing(store: FeatureStore, split: str) -> tuple[list, list]:
        return store.paths(split), store.sha1s(split)


def resolve_store(features, data, backbone, weights, variant: dict, cache_dir: Path, log) -> FeatureStore:
    """The cache file asked for, or the one of `backbone` on `data` (extracted now if missing);
    `variant`: image_size, pool and layers, as for extract (None: the backbone's own). Either is
    checked against its images (features.freshness): a stale cache is refused with the command
    that updates it."""
    if features is not None:
        if data is not None or backbone is not None or any(v is not None for v in variant.values()):
            raise FeatxError("give either --features CACHE.h5 or --backbone with --data (and --image-size, --pool, "
                             "--layers), not both")
        store = features if isinstance(features, FeatureStore) else FeatureStore(features)
        check_fresh(store, None, _update_command(store))
        return store
    if data is None or backbone is None:
        raise FeatxError("say which features to fit on: --features CACHE.h5, or --backbone NAME --data DIR")
    from ..data.datasets import load_dataset

    ds = load_dataset(data, cache_dir=cache_dir)
    found = dataset_caches(ds, backbone, weights, variant, cache_dir)
    if len(found) > 1:
        listing = ", ".join(str(s.path) for s in found)
        raise FeatxError(f"several {backbone} caches for {ds.root}: {listing}; pick one with --features")
    if found:
        labelled = newly_labelled(found[0], ds)
        if labelled:
            from ..features.extraction import extract

            log(f"{labelled} images got their label since {found[0].path} was made: updating it (their features are kept)")
            return extract(ds, backbone, weights=weights, cache_dir=cache_dir, output=found[0].path, progress=False,
                           log=lambda line: None, **variant)
        update = extract_command(data, {"backbone": backbone, "weights": weights, **variant}, cache_dir=cache_dir)
        check_fresh(found[0], ds, update)
        return found[0]
    log(f"no {backbone} features cached for {ds.root} yet: extracting them first")
    from ..features.extraction import extract

    return extract(data, backbone, weights=weights, cache_dir=cache_dir, **variant)


def _update_command(store: FeatureStore) -> str:
    """The extract that updates a cache given by its file: the same options, into the same file."""
    config = store.config
    source = config.get("data_source")
    data = source if source and Path(source).exists() else store.data_root  # a moved project: where its data is now
    return extract_command(data, extraction_options(config), cache_dir=store.path.parent.parent, output=store.path)


def _load_splits(store: FeatureStore, log, excluded=()) -> tuple[dict, dict]:
    """((X, y, groups) per split present, less the `excluded` train paths; which rows each kept); refuse
    what no head can learn from."""
    counts = store.counts()
    out, kept = {}, {}
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
        keep = kept[split] = _kept(store, split, excluded, len(y))
        out[split] = (X[keep].astype(np.float32, copy=False), y[keep], np.asarray(store.groups(split))[keep])
    _check_train(store, {split: v[1] for split, v in out.items()}, log, counts)
    return out, kept


def _row_splits(store: FeatureStore) -> list[str]:
    """The split of each finished row, in the order of `store.paths()`."""
    return [STORED_SPLITS[c] for c in store.row_table().split[store.rows()]]


def _kept(store: FeatureStore, split: str, excluded, n: int) -> np.ndarray:
    """Which of the split's `n` rows are trained on: all but the `excluded` paths (read only when there are some)."""
    if not excluded:
        return np.ones(n, bool)
    return np.array([p not in excluded for p in store.paths(split)], bool)


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


def _classes_val_lacks(store: FeatureStore, labels: dict, log) -> list[str]:
    """The classes the validation split has no image of (none: it can score candidates); said once in the log."""
    if "val" not in labels:
        return []
    missing = [store.classes[c] for c in classes_missing(labels["train"], labels["val"])]
    if missing:
        log(f"the val split has no {' or '.join(missing)} images, so ROC-AUC cannot rank candidates on it: "
            "choosing hyperparameters and the threshold by group CV on train instead (val is still evaluated)")
    return missing


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


def _learned_from(store: FeatureStore, excluded=None) -> str:
    """Names the images a head learns and is selected on (train and validation, paths and bytes, less the
    excluded): part of its artifact's name, so that a re-fit after the data changed is saved beside the
    earlier model."""
    drop = excluded.paths if excluded else frozenset()
    return images_fingerprint((p, h) for split in ("train", "val")
                              for p, h in zip(store.paths(split), store.sha1s(split)) if p not in drop)[:16]


def _artifact_hash(store: FeatureStore, head: str, key: dict) -> str:
    record = {"features": store.config.get("config_hash"), "head": head,
              "grid": HEADS[head].grid, "pca": key["pca"], "seed": key["seed"], "threshold": key["threshold"],
              "images": key["images"], "out_of_core": key["out_of_core"],
              **({"adapted": key["adapted"]} if key.get("adapted") else {})}  # absent: the names of before
    return record_hash(record, 8)


def _seen_from(path: Path, folder) -> str:
    """`path` as seen from `folder` (a moved or copied project still finds it), or whole where no relative
    path leads there (another drive)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:
        return str(Path(path).resolve())


def _sidecar(name: str, store: FeatureStore, sel: Selection, rule, cut, metrics: dict, key: dict,
             predict_seconds: float, models_dir: Path) -> dict:
    cache = _seen_from(store.path, models_dir)
    features = feature_record(store.config, num_features=store.num_features, file=cache,
                              config_hash=store.config.get("config_hash"))
    selection = {"method": sel.method, "metric": "roc_auc",
                 "candidates": [{"params": p, "roc_auc": v} for p, v in sel.scores]}
    return build_sidecar(kind="head", head=name, params=sel.params, classes=store.classes, threshold=cut,
                         threshold_rule=rule_name(rule), features=features, metrics=metrics,
                         train_seconds=sel.train_seconds, predict_seconds_per_image=predict_seconds,
                         packages=("sklearn", "skops", "numpy", *(("lightgbm",) if name == "lightgbm" else ())),
                         pca=key["pca"], seed=key["seed"], selection=selection, out_of_core=bool(key["out_of_core"]),
                         **({"excluded": key["excluded"].record()} if key.get("excluded") else {}),
                         **({"target": key["target"]} if key.get("target") else {}))
