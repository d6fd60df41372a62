"""featx audit: which training labels look wrong.

Out-of-fold probabilities: the train images are cut into patient-grouped, stratified folds
(evaluation.folds), and each fold is predicted by a head chosen and fitted on the other folds, so no image,
and no other image of its patient, vouches for its own label. Confident learning (cleanlab's
`find_label_issues`, pruned by noise rate, ranked by self-confidence) flags the labels that the
out-of-fold probabilities contradict. Near-duplicates with different labels (cosine of their features at
least `duplicate_cosine`) are listed too. Only the train split is audited: validation and test images
evaluate or choose, and are never flagged or cleaned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .._core.errors import FeatxError
from ..evaluation.folds import TooFewGroups, group_folds
from ..features.store import FeatureStore
from .strategies import library

AUDITED = "train"


@dataclass
class Audit:
    """The flagged train images, most suspicious first."""

    store: FeatureStore | None       # the cache audited (None: arrays given directly)
    classes: list[str]
    paths: list[str]                  # flagged, most suspicious first
    given: list[str]
    suggested: list[str]
    score: np.ndarray                 # cleanlab's label quality (self-confidence): low is suspicious
    reason: list[str]
    audited: int = 0                  # train images audited
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [{"rank": i + 1, "path": p, "given": g, "suggested": s, "label_quality": round(float(q), 4),
                 "why": w} for i, (p, g, s, q, w) in enumerate(zip(self.paths, self.given, self.suggested,
                                                                   self.score, self.reason))]


def audit_labels(store: FeatureStore, *, head: str = "logreg", folds: int = 5, seed: int = 0,
                 duplicate_cosine: float = 0.98, exclude=()) -> Audit:
    """Flag the train labels of `store` that out-of-fold predictions contradict, and near-duplicates with
    other labels. `exclude`: paths left out of the audit (as out of training)."""
    if not 0 < duplicate_cosine <= 1:
        raise FeatxError(f"--duplicate-cosine must be in (0, 1], not {duplicate_cosine}")
    X, y = store.arrays(AUDITED)
    paths, groups = store.paths(AUDITED), np.asarray(store.groups(AUDITED))
    keep = np.array([p not in set(exclude) for p in paths], bool)
    if len(np.unique(y[keep])) < 2:
        raise FeatxError(f"{store.path}: the train split needs two classes to audit its labels")
    found = audit_arrays(X[keep], y[keep], groups[keep], [p for p, k in zip(paths, keep) if k], list(store.classes),
                         head=head, folds=folds, seed=seed, duplicate_cosine=duplicate_cosine)
    found.store = store
    return found


def audit_arrays(X, y, groups, paths: list[str], classes: list[str], *, head: str = "logreg", folds: int = 5,
                 seed: int = 0, duplicate_cosine: float = 0.98) -> Audit:
    """The audit of given features and labels (rows of one split): what audit_labels runs on a cache's
    train split, and what a benchmark runs on labels it flipped itself."""
    started = time.perf_counter()
    X, y, groups = np.asarray(X, np.float32), np.asarray(y), np.asarray(groups)
    proba = out_of_fold(X, y, groups, head=head, folds=folds, seed=seed)
    flagged, quality = _label_issues(y, proba)
    twins = _near_duplicates(X, y, quality, duplicate_cosine)
    order = [int(i) for i in flagged] + [i for i in sorted(twins, key=lambda i: quality[i]) if i not in set(flagged)]
    said = {i: f"near-duplicate (cosine {c:.3f}) of {paths[j]}, labelled {classes[y[j]]}" for i, (j, c) in twins.items()}
    why = ["; ".join(filter(None, [f"out-of-fold p({classes[y[i]]})={proba[i, y[i]]:.2f}" if i in set(flagged)
                                   else "", said.get(i, "")])) for i in order]
    return Audit(None, classes, [paths[i] for i in order], [classes[y[i]] for i in order],
                 [classes[int(proba[i].argmax())] for i in order], quality[order], why, len(y),
                 time.perf_counter() - started)


def out_of_fold(X, y, groups, *, head: str = "logreg", folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each image's probabilities from a head chosen and fitted on the folds without its patient."""
    from ..heads.selection import select_head

    try:
        splits = group_folds(y, groups, folds, seed)
    except TooFewGroups as exc:
        raise FeatxError(f"cannot audit by patient-grouped folds: {exc}") from None
    proba = np.zeros((len(y), len(np.unique(y))))
    for train, held in splits:
        sel = select_head(head, X[train], y[train], groups[train], seed=seed)
        proba[held] = sel.estimator.predict_proba(X[held])
    return proba


def _label_issues(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the flagged rows, most suspicious first; every row's label quality) by cleanlab."""
    flagged = library("cleanlab.filter", "cleanlab").find_label_issues(y, proba,
                                                                        return_indices_ranked_by="self_confidence")
    quality = library("cleanlab.rank", "cleanlab").get_label_quality_scores(y, proba, method="self_confidence")
    return np.asarray(flagged, int), quality


def _near_duplicates(X: np.ndarray, y: np.ndarray, quality: np.ndarray, cosine: float) -> dict[int, tuple[int, float]]:
    """Pairs of near-duplicates (cosine >= `cosine`) with different labels, each flagged once: the one whose
    label the out-of-fold probabilities support less; row -> (the other row, their cosine)."""
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    found: dict[int, tuple[int, float]] = {}
    for start in range(0, len(unit), 2048):
        sims = unit[start:start + 2048] @ unit.T
        for a, b in zip(*np.nonzero(sims >= cosine)):
            i, j = start + int(a), int(b)
            if i < j and y[i] != y[j]:
                worse, other = (i, j) if quality[i] <= quality[j] else (j, i)
                found.setdefault(worse, (other, float(sims[a, b])))
    return found
