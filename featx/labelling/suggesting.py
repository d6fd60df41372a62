"""featx suggest: which of a dataset's unlabelled images to label next, in order, and why.

The images waiting for a label are a manifest's rows with an empty label or the files of `unlabelled/`
(data.datasets). A strategy (labelling.strategies) chooses among them on the cached features of one
backbone, with the labelled train and validation images as what is already known; test images are never
read. A model strategy uses the head given (`model`, checked to be made on these features) or a logistic
regression chosen on the labelled images by patient-grouped CV. Whole patients: each suggestion says when
its patient already has a labelled image. An unlabelled file with the same bytes as a labelled one is
never suggested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._core.errors import FeatxError
from .._core.paths import default_cache_dir
from ..data.datasets import UNLABELLED, Dataset, load_dataset
from .strategies import check_strategy, choose, needs_model

KNOWN = ("train", "val")  # the labelled images a strategy counts as known; test is never read


@dataclass
class Suggestions:
    """The images to label next, best first: paths relative to `root`, why each, patient notes, and the
    probabilities of the model that chose them (None for cold-start strategies without a model)."""

    root: Path
    strategy: str
    backbone: str
    classes: list[str]
    paths: list[str]
    why: list[str]
    patients: list[str]
    proba: np.ndarray | None = None
    model: str = ""                   # which model gave `proba`
    notes: list[str] = field(default_factory=list)
    waiting: int = 0                  # images without a label, before choosing

    def rows(self) -> list[dict]:
        """One CSV row per suggestion: rank, path, why, patient, and p(class) when there is a model."""
        out = []
        for rank, (path, why, patient) in enumerate(zip(self.paths, self.why, self.patients), start=1):
            row = {"rank": rank, "path": path, "why": why, "patient": patient}
            if self.proba is not None:
                row.update({f"p({c})": round(float(p), 4) for c, p in zip(self.classes, self.proba[rank - 1])})
            out.append(row)
        return out


def suggest_images(data, backbone: str = "efficientnet_lite0", *, k: int = 20, strategy: str = "typiclust",
                   model=None, weights: str = "imagenet", cache_dir=None, seed: int = 0, group_pattern: str | None = None,
                   progress: bool = False, log=None) -> Suggestions:
    """The `k` unlabelled images of `data` to label next by `strategy`, on `backbone`'s cached features;
    `group_pattern`: the regex naming an image's patient in its file name (as for extract)."""
    from ..features.extraction import extract

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ds = data if isinstance(data, Dataset) else load_dataset(data, cache_dir=cache_dir, group_pattern=group_pattern)
    waiting = _check(ds, k, strategy)
    store = extract(ds, backbone, weights=weights, cache_dir=cache_dir, progress=progress, log=log or (lambda line: None))
    X_wait, paths = store.arrays(UNLABELLED)[0], store.paths(UNLABELLED)
    skipped = waiting - len(paths)
    copies = _copies_of_labelled(store, paths)
    keep = [i for i, p in enumerate(paths) if p not in copies]
    if k > len(keep):
        raise FeatxError(f"--k {k} is more than the {len(keep)} unlabelled images featx can suggest"
                         + (f" ({skipped} could not be read, {len(copies)} copy a labelled image)"
                            if skipped or copies else ""))
    parts = [store.arrays(s) for s in KNOWN]
    X_known = np.concatenate([p[0] for p in parts])
    y_known = np.concatenate([p[1] for p in parts])
    groups_known = [g for s in KNOWN for g in store.groups(s)]
    X = np.concatenate([X_known, X_wait]).astype(np.float32)
    candidates = len(X_known) + np.asarray(keep, int)
    proba, named = _model_proba(model, store, X, y_known, groups_known, strategy, seed)
    picks = choose(strategy, X, np.arange(len(X_known)), k, candidates=candidates, proba=proba,
                   classes=store.classes, seed=seed)
    chosen = [paths[r - len(X_known)] for r in picks.rows]
    notes = [f"{len(copies)} unlabelled images have the same bytes as a labelled one and are not suggested "
             f"(e.g. {sorted(copies)[0]})"] if copies else []
    if skipped:
        notes.append(f"{skipped} unlabelled images could not be read (featx info {store.path} lists them)")
    return Suggestions(ds.root, strategy, backbone, list(store.classes), chosen, picks.why,
                       _patient_notes(ds, chosen), proba[picks.rows] if proba is not None else None, named,
                       notes, waiting)


def _check(ds: Dataset, k: int, strategy: str) -> int:
    """How many images wait for a label, after the one-line refusals."""
    waiting = len(ds.unlabelled)
    if not waiting:
        raise FeatxError(f"no unlabelled images in {ds.source or ds.root}: give them an empty label in the manifest, "
                         "or put them in an unlabelled/ folder beside the class folders")
    labels = [int(label) for label, s in zip(ds.labels, ds.splits) if s in KNOWN]
    check_strategy(strategy, has_labels=bool(labels))
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise FeatxError(f"--k must be a positive number of images, not {k!r}")
    if k > waiting:
        raise FeatxError(f"--k {k} is more than the {waiting} unlabelled images")
    if needs_model(strategy):
        absent = [c for i, c in enumerate(ds.classes) if i not in set(labels)]
        if len(set(labels)) < 2:
            raise FeatxError(f"--strategy {strategy} needs labelled images of two classes or more, and only "
                             f"{ds.classes[labels[0]]} has labels yet: label some of another class first (a "
                             "cold-start strategy such as typiclust chooses them)")
        if absent:
            raise FeatxError(f"--strategy {strategy} needs labelled images of every class, and {', '.join(absent)} "
                             "has none yet: label some first (a cold-start strategy such as typiclust chooses them)")
    return waiting


def _copies_of_labelled(store, paths: list[str]) -> set[str]:
    """Unlabelled images whose bytes equal a labelled image's (any split): already labelled."""
    labelled = {h for s in ("train", "val", "test") for h in store.sha1s(s) if h}
    return {p for p, h in zip(paths, store.sha1s(UNLABELLED)) if h in labelled}


def _model_proba(model, store, X: np.ndarray, y, groups, strategy: str, seed: int):
    """(probabilities of every row of X, which model) for a model strategy or a given model; (None, "") else."""
    if model is not None:
        from ..artifacts.predictors import load
        from ..features.identity import FeatureRecipe

        loaded = load(model) if isinstance(model, (str, Path)) else model
        if not hasattr(loaded, "head"):
            raise FeatxError(f"{model}: featx suggest needs a head trained on frozen features (featx fit), not a "
                             "fine-tune")
        loaded.check_features(FeatureRecipe.from_config(store.config), str(store.path))
        return loaded.head.predict_proba(X), str(model)
    if not needs_model(strategy):
        return None, ""
    from ..heads.selection import select_head

    try:
        sel = select_head("logreg", X[:len(y)], np.asarray(y), np.asarray(groups), seed=seed)
    except FeatxError as exc:
        raise FeatxError(f"--strategy {strategy}: no logistic regression can be chosen on the labelled images "
                         f"({exc}); label more patients, or use a cold-start strategy") from None
    return sel.estimator.predict_proba(X), f"logreg chosen by patient-grouped CV on the {len(y)} labelled images"


def _patient_notes(ds: Dataset, chosen: list[str]) -> list[str]:
    """For each suggested image, whether its patient already has labelled images, or other suggestions."""
    group_of = dict(zip(ds.paths, ds.groups))
    labelled = {}
    for g, s in zip(ds.groups, ds.splits):
        if s != UNLABELLED:
            labelled.setdefault(g, set()).add(s)
    picked = [group_of[p] for p in chosen]
    notes = []
    for p, g in zip(chosen, picked):
        if g == p:
            notes.append("")
        elif g in labelled:
            notes.append(f"patient {g} already has labelled images ({', '.join(sorted(labelled[g]))})")
        elif picked.count(g) > 1:
            notes.append(f"patient {g}: {picked.count(g)} of these suggestions")
        else:
            notes.append("")
    return notes
