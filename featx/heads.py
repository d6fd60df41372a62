"""Classical heads on cached features: plain scikit-learn estimators, selected without touching test.

Each head is a Pipeline a user can take out of featx. Hyperparameters are chosen on the
validation split when there is one, else by stratified group k-fold on train (a patient never
sits on both sides of a fold). Classes are balanced by default (the X-ray set is about 3:1).
Grids are kept small enough that all six heads on 5,216 x 2,048 features take under a minute
on two cores (benchmarks/fit_speed.py).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.class_weight import compute_sample_weight

from .errors import FeatxError

EARLY_STOPPING_ROUNDS = 30


def _lightgbm(seed: int):
    from lightgbm import LGBMClassifier

    # n_estimators is an upper bound: early stopping on validation picks the number of trees.
    return LGBMClassifier(n_estimators=1000, class_weight="balanced", subsample=0.8, subsample_freq=1,
                          colsample_bytree=0.2, max_bin=63, random_state=seed, verbose=-1)


def _calibrated_svm(step: LinearSVC) -> CalibratedClassifierCV:
    """LinearSVC has no probabilities: Platt-scale the selected one with 3-fold cross-fitting."""
    return CalibratedClassifierCV(step, cv=3, ensemble=False)


@dataclass(frozen=True)
class HeadSpec:
    """How to build one head: its final step, its default grid, and what it needs around it."""

    make: Callable[[int], object]      # seed -> the untrained final step
    grid: dict                         # hyperparameters of that step tried during selection
    scale: bool                        # put a StandardScaler first
    weight_samples: bool = False       # balance classes by sample_weight (no class_weight option)
    finish: Callable | None = None     # wraps the selected step once more (e.g. calibration)


HEADS: dict[str, HeadSpec] = {
    # Kornblith et al. 2019's linear probe: L2 logistic regression, C log-spaced over 1e-4..1e2.
    "logreg": HeadSpec(lambda seed: LogisticRegression(class_weight="balanced", max_iter=2000, tol=1e-3),
                       {"C": [float(c) for c in np.logspace(-4, 2, 7)]}, scale=True),
    "linsvm": HeadSpec(lambda seed: LinearSVC(class_weight="balanced", tol=1e-3, random_state=seed),
                       {"C": [1e-4, 1e-3, 1e-2, 1e-1]}, scale=True, finish=_calibrated_svm),
    "knn": HeadSpec(lambda seed: KNeighborsClassifier(weights="distance"),
                    {"n_neighbors": [5, 11, 21, 41]}, scale=True),
    "rf": HeadSpec(lambda seed: RandomForestClassifier(n_estimators=200, max_samples=0.5,
                                                       class_weight="balanced_subsample", n_jobs=-1,
                                                       random_state=seed),
                   {"min_samples_leaf": [1, 5]}, scale=False),
    "lightgbm": HeadSpec(_lightgbm, {"num_leaves": [7, 31], "learning_rate": [0.05, 0.1]}, scale=False),
    "mlp": HeadSpec(lambda seed: MLPClassifier(hidden_layer_sizes=(128,), early_stopping=True, max_iter=200,
                                               learning_rate_init=3e-3, n_iter_no_change=20,
                                               random_state=seed),
                    {"alpha": [1e-4, 1e-2, 1.0]}, scale=True, weight_samples=True),
}
HEAD_NAMES = tuple(HEADS)


def head_names(head: str) -> list[str]:
    """`all` or one name; an unknown name lists the valid ones."""
    if head == "all":
        return list(HEAD_NAMES)
    if head not in HEADS:
        raise FeatxError(f"unknown head '{head}': choose one of {', '.join(HEAD_NAMES)}, or all")
    return [head]


def build_head(name: str, *, pca: int | None = None, seed: int = 0) -> tuple[Pipeline, dict]:
    """The untrained Pipeline for a head, and its default grid (keys prefixed for the Pipeline)."""
    spec = HEADS[head_names(name)[0]]
    steps = []
    if spec.scale or pca:
        steps.append(("scale", StandardScaler()))
    if pca:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    steps.append(("clf", spec.make(seed)))
    return Pipeline(steps), {f"clf__{k}": v for k, v in spec.grid.items()}


@dataclass
class Selection:
    """The chosen head fitted on train, and the evidence for choosing it."""

    estimator: Pipeline
    params: dict                      # the chosen hyperparameters
    scores: list                      # (params, validation ROC-AUC) of every candidate
    method: str                       # "validation split" or "5-fold stratified group CV on train"
    selection_proba: np.ndarray       # the chosen head's held-out probabilities, for picking a threshold
    selection_y: np.ndarray           # their labels
    train_seconds: float = 0.0


def select_head(name: str, X, y, groups=None, X_val=None, y_val=None, *, pca=None, seed: int = 0,
                folds: int = 5) -> Selection:
    """Grid search scored by ROC-AUC (macro one-vs-rest for more classes); test is never seen here.

    With a validation split, every candidate is fitted on train and scored on validation, and
    the best fitted candidate is kept. Without one, candidates are scored by stratified group
    k-fold on train and the best is refitted on all of train.
    """
    started = time.perf_counter()
    spec = HEADS[head_names(name)[0]]
    base, grid = build_head(name, pca=pca, seed=seed)
    candidates = list(ParameterGrid(grid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # selection scores the result either way
        if X_val is not None and len(X_val):
            candidates = _feasible(candidates, len(y))
            fitted = [_fit(clone(base).set_params(**p), spec, X, y, X_val, y_val) for p in candidates]
            scores = [_auc(y_val, _scores(m, X_val)) for m in fitted]
            best = _argmax(scores)
            estimator, method = fitted[best], "validation split"
            if spec.finish is not None:
                estimator = _finished(estimator, spec, X, y)
            held_proba, held_y = estimator.predict_proba(X_val), np.asarray(y_val)
        else:
            splits = _group_folds(y, groups, folds, seed)
            candidates = _feasible(candidates, min(len(tr) for tr, _ in splits))
            scores, oofs, trees = [], [], []
            for params in candidates:
                oof, fold_trees = _cross_fit(clone(base).set_params(**params), spec, X, y, splits, finish=False)
                scores.append(float(np.nanmean([_auc(y[va], oof[va]) for _, va in splits])))
                oofs.append(oof)
                trees.append(fold_trees)
            best = _argmax(scores)
            final = clone(base).set_params(**candidates[best])
            if any(trees[best]):  # LightGBM: refit on all of train with the typical early-stopped size
                final.set_params(clf__n_estimators=int(np.median([t for t in trees[best] if t])))
            estimator = _fit(final, spec, X, y)
            held_proba = oofs[best]  # out-of-fold probabilities of the chosen head, for a threshold
            if spec.finish is not None:
                estimator = _finished(estimator, spec, X, y)
                held_proba, _ = _cross_fit(clone(base).set_params(**candidates[best]), spec, X, y, splits,
                                           finish=True)
            held_y = np.asarray(y)
            method = f"{len(splits)}-fold stratified group CV on train"
    return Selection(estimator, _plain(candidates[best]), [(_plain(p), s) for p, s in zip(candidates, scores)],
                     method, held_proba, held_y, time.perf_counter() - started)


def _feasible(candidates: list[dict], n_fit: int) -> list[dict]:
    """Drop settings a small training set cannot support (kNN's k above the images it has)."""
    kept = [p for p in candidates if p.get("clf__n_neighbors", 0) <= n_fit]
    return kept or [{**candidates[0], "clf__n_neighbors": n_fit}]


def _group_folds(y, groups, folds: int, seed: int) -> list:
    groups = np.asarray(groups if groups is not None else np.arange(len(y)))
    smallest_class = min(np.bincount(y)[np.bincount(y) > 0])
    k = min(folds, len(set(groups.tolist())), smallest_class)
    if k < 2:
        raise FeatxError("no validation split, and too few patient groups or images per class for "
                         "cross-validation on train; re-extract with --val-fraction or add images")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, groups))


def _cross_fit(model: Pipeline, spec: HeadSpec, X, y, splits, *, finish: bool):
    """Out-of-fold class scores (probabilities when `finish`) and each fold's early-stopped tree count."""
    out = np.zeros((len(y), len(np.unique(y))))
    trees = []
    for tr, va in splits:
        m = _fit(clone(model), spec, X[tr], y[tr], X[va], y[va])
        if finish:
            m = _finished(m, spec, X[tr], y[tr])
        scores = m.predict_proba(X[va]) if finish else _scores(m, X[va])
        out[np.ix_(va, m.classes_)] = scores  # a fold may lack a class: its column stays 0
        trees.append(getattr(m[-1], "best_iteration_", None))
    return out, trees


def _fit(model: Pipeline, spec: HeadSpec, X, y, X_val=None, y_val=None) -> Pipeline:
    kwargs = {}
    if spec.weight_samples:
        kwargs["clf__sample_weight"] = compute_sample_weight("balanced", y)
    if spec.make is _lightgbm and X_val is not None:
        from lightgbm import early_stopping

        prep = model[:-1].fit(X, y) if len(model) > 1 else None
        Xt = prep.transform(X) if prep is not None else X
        Xv = prep.transform(X_val) if prep is not None else X_val
        model[-1].fit(Xt, y, eval_X=(Xv,), eval_y=(y_val,),
                      callbacks=[early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])
        return model
    return model.fit(X, y, **kwargs)


def _finished(model: Pipeline, spec: HeadSpec, X, y) -> Pipeline:
    """Refit the selected step inside its wrapper (the same hyperparameters, now with probabilities)."""
    steps = list(model.steps)
    steps[-1] = ("clf", spec.finish(clone(steps[-1][1])))
    return _fit(Pipeline(steps), spec, X, y)


def _scores(model, X) -> np.ndarray:
    """Class scores for ranking: probabilities, or the decision function of a margin classifier."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)
    d = model.decision_function(X)
    return np.column_stack([-d, d]) if d.ndim == 1 else d


def _auc(y_true, scores) -> float:
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if scores.shape[1] == 2:
        return float(roc_auc_score(y_true, scores[:, 1]))
    if len(present) < scores.shape[1]:  # a fold lacks a class: average over the classes it has
        return float(np.mean([roc_auc_score(y_true == c, scores[:, c]) for c in present]))
    return float(roc_auc_score(y_true, _softmax(scores), multi_class="ovr", average="macro"))


def _softmax(s: np.ndarray) -> np.ndarray:
    if np.all(s >= 0) and np.allclose(s.sum(1), 1):
        return s
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _argmax(scores: list[float]) -> int:
    values = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    return int(np.argmax(values))  # ties go to the first, i.e. the simplest / most regularised


def _plain(params: dict) -> dict:
    return {k.removeprefix("clf__"): (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}
