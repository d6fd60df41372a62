"""Choosing a head's hyperparameters without touching test.

On the validation split when there is one, else by stratified group k-fold on train (a patient
never sits on both sides of a fold). Scored by ROC-AUC (macro one-vs-rest for more classes).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.class_weight import compute_sample_weight

from .._core.errors import FeatxError
from .specs import EARLY_STOPPING_ROUNDS, HEADS, HeadSpec, build_head, head_names, is_lightgbm


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
            selection = _on_validation(base, spec, candidates, X, y, X_val, y_val)
        else:
            selection = _by_group_cv(base, spec, candidates, X, y, group_folds(y, groups, folds, seed))
    selection.train_seconds = time.perf_counter() - started
    return selection


def _on_validation(base: Pipeline, spec: HeadSpec, candidates: list[dict], X, y, X_val, y_val) -> Selection:
    candidates = _feasible(candidates, len(y))
    fitted = [_fit(clone(base).set_params(**p), spec, X, y, X_val, y_val) for p in candidates]
    scores = [auc_score(y_val, _scores(m, X_val)) for m in fitted]
    best = best_index(scores)
    estimator = fitted[best]
    if spec.finish is not None:
        estimator = _finished(estimator, spec, X, y)
    return _selection(estimator, candidates, scores, best, "validation split", estimator.predict_proba(X_val), y_val)


def _by_group_cv(base: Pipeline, spec: HeadSpec, candidates: list[dict], X, y, splits) -> Selection:
    candidates = _feasible(candidates, min(len(tr) for tr, _ in splits))
    scores, oofs, trees = [], [], []
    for params in candidates:
        oof, fold_trees = _cross_fit(clone(base).set_params(**params), spec, X, y, splits, finish=False)
        scores.append(float(np.nanmean([auc_score(y[va], oof[va]) for _, va in splits])))
        oofs.append(oof)
        trees.append(fold_trees)
    best = best_index(scores)
    final = clone(base).set_params(**candidates[best])
    if any(trees[best]):  # LightGBM: refit on all of train with the typical early-stopped size
        final.set_params(clf__n_estimators=int(np.median([t for t in trees[best] if t])))
    estimator = _fit(final, spec, X, y)
    held_proba = oofs[best]  # out-of-fold probabilities of the chosen head, for a threshold
    if spec.finish is not None:
        estimator = _finished(estimator, spec, X, y)
        held_proba, _ = _cross_fit(clone(base).set_params(**candidates[best]), spec, X, y, splits, finish=True)
    method = f"{len(splits)}-fold stratified group CV on train"
    return _selection(estimator, candidates, scores, best, method, held_proba, y)


def _selection(estimator, candidates, scores, best: int, method: str, held_proba, held_y) -> Selection:
    return Selection(estimator, _plain(candidates[best]), [(_plain(p), s) for p, s in zip(candidates, scores)],
                     method, held_proba, np.asarray(held_y))


def _feasible(candidates: list[dict], n_fit: int) -> list[dict]:
    """Drop settings a small training set cannot support (kNN's k above the images it has)."""
    kept = [p for p in candidates if p.get("clf__n_neighbors", 0) <= n_fit]
    return kept or [{**candidates[0], "clf__n_neighbors": n_fit}]


def group_folds(y, groups, folds: int, seed: int) -> list:
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
    if is_lightgbm(spec) and X_val is not None:
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


def auc_score(y_true, scores) -> float:
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


def best_index(scores: list[float]) -> int:
    values = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    return int(np.argmax(values))  # ties go to the first, i.e. the simplest / most regularised


def _plain(params: dict) -> dict:
    return {k.removeprefix("clf__"): (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}
