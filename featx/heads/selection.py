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
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.utils.class_weight import compute_sample_weight

from .._core.errors import FeatxError
from ..evaluation.folds import group_folds
from .specs import EARLY_STOPPING_ROUNDS, HEADS, HeadSpec, build_head, head_names, is_lightgbm, is_lightgbm_model


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
                folds: int = 5, grid: dict | None = None) -> Selection:
    """Grid search scored by ROC-AUC (macro one-vs-rest for more classes); test is never seen here.

    With a validation split, every candidate is fitted on train and scored on validation, and
    the best is kept. Without one, candidates are scored by stratified group k-fold on train
    and the best is refitted on all of train. Rows that score a candidate never train it, nor
    stop its training early: LightGBM early-stops on a patient-grouped part of its own training
    rows. `grid` replaces the head's default grid (scikit-learn's param_grid, unprefixed names).
    """
    started = time.perf_counter()
    spec = HEADS[head_names(name)[0]]
    base, default_grid = build_head(name, pca=pca, seed=seed)
    grid = default_grid if grid is None else {f"clf__{k}": list(v) for k, v in grid.items()}
    candidates = list(ParameterGrid(grid))
    groups = np.asarray(groups if groups is not None else np.arange(len(y)))
    fitter = _Fitter(spec, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # selection scores the result either way
        if X_val is not None and len(X_val):
            check_scorable(y, y_val)
            selection = _on_validation(base, fitter, candidates, X, y, groups, X_val, y_val)
        else:
            selection = _by_group_cv(base, fitter, candidates, X, y, groups, group_folds(y, groups, folds, seed))
    selection.train_seconds = time.perf_counter() - started
    return selection


def classes_missing(y, y_val) -> list[int]:
    """The classes of train that validation lacks: with any, ROC-AUC cannot rank candidates on it."""
    return sorted(set(np.unique(y).tolist()) - set(np.unique(y_val).tolist()))


def check_scorable(y, y_val) -> None:
    """Refuse a validation split that cannot rank candidates."""
    missing = classes_missing(y, y_val)
    if missing:
        names = ", ".join(f"class {c}" for c in missing)
        raise FeatxError(f"the validation split has no images of {names}, so no hyperparameter can be scored "
                         "on it; cut one with --val-fraction, or fit without a validation split (group CV)")


def _on_validation(base: Pipeline, fitter: "_Fitter", candidates: list[dict], X, y, groups, X_val,
                   y_val) -> Selection:
    candidates = _feasible(candidates, len(y))
    fitted = [fitter.fit(clone(base).set_params(**p), X, y, groups) for p in candidates]
    scores = [auc_score(y_val, _scores(m, X_val)) for m in fitted]
    best = best_index(scores)
    estimator = fitted[best]
    if fitter.spec.finish is not None or fitter.trees(estimator):  # the final form, on all of train
        estimator = fitter.final(base, candidates[best], [fitter.trees(estimator)], X, y)
    return _selection(estimator, candidates, scores, best, "validation split", estimator.predict_proba(X_val), y_val,
                      fitter)


def _by_group_cv(base: Pipeline, fitter: "_Fitter", candidates: list[dict], X, y, groups, splits) -> Selection:
    candidates = _feasible(candidates, min(len(tr) for tr, _ in splits))
    scores, oofs, trees = [], [], []
    for params in candidates:
        oof, fold_trees = _cross_fit(clone(base).set_params(**params), fitter, X, y, groups, splits, finish=False)
        scores.append(float(np.nanmean([auc_score(y[va], oof[va]) for _, va in splits])))
        oofs.append(oof)
        trees.append(fold_trees)
    best = best_index(scores)
    estimator = fitter.final(base, candidates[best], trees[best], X, y)
    held_proba = oofs[best]  # out-of-fold probabilities of the chosen head, for a threshold
    if fitter.spec.finish is not None:
        held_proba, _ = _cross_fit(clone(base).set_params(**candidates[best]), fitter, X, y, groups, splits,
                                   finish=True)
    method = f"{len(splits)}-fold stratified group CV on train"
    return _selection(estimator, candidates, scores, best, method, held_proba, y, fitter)


def _selection(estimator, candidates, scores, best: int, method: str, held_proba, held_y, fitter) -> Selection:
    params = _plain(candidates[best])
    if fitter.trees(estimator):
        params["n_estimators"] = fitter.trees(estimator)
    return Selection(estimator, params, [(_plain(p), s) for p, s in zip(candidates, scores)],
                     method, held_proba, np.asarray(held_y))


# How heads are chosen and fitted; what a saved result made by other rules would not match (featx study's
# units are named by it). 2: LightGBM's leaves fit a training set too small for 20 rows per leaf.
SELECTION_RULES = "featx-select-2"
LIGHTGBM_MIN_CHILD = 20  # LightGBM's own min_child_samples, kept wherever the training set allows a split


def _feasible(candidates: list[dict], n_fit: int) -> list[dict]:
    """Drop or adapt settings a small training set cannot support: kNN's k above the images it has, and
    LightGBM's 20 rows per leaf, which on fewer than 40 rows (after early stopping takes a fifth) allow no
    split at all, so every tree is a constant and ROC-AUC is 0.5. There the leaves may hold an eighth of
    the rows (at least 2), and the chosen parameters say so."""
    kept = [p for p in candidates if p.get("clf__n_neighbors", 0) <= n_fit] or \
        [{**candidates[0], "clf__n_neighbors": n_fit}]
    rows = int(0.8 * n_fit)  # what a tree is grown on, early stopping's fifth aside
    if rows < 2 * LIGHTGBM_MIN_CHILD:
        leaf = max(2, rows // 8)
        kept = [{**p, "clf__min_child_samples": leaf} if "clf__num_leaves" in p else p for p in kept]
    return kept


def _cross_fit(model: Pipeline, fitter: "_Fitter", X, y, groups, splits, *, finish: bool):
    """Out-of-fold class scores (probabilities when `finish`) and each fold's early-stopped tree count."""
    out = np.zeros((len(y), len(np.unique(y))))
    trees = []
    for tr, va in splits:
        m = fitter.fit(clone(model), X[tr], y[tr], groups[tr])
        if finish:
            m = fitter.finished(m, X[tr], y[tr])
        scores = m.predict_proba(X[va]) if finish else _scores(m, X[va])
        out[np.ix_(va, m.classes_)] = scores  # a fold may lack a class: its column stays 0
        trees.append(fitter.trees(m))
    return out, trees


def early_stopping_rows(y, groups, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows to train on, rows to stop on): a patient-grouped, stratified fifth of the training rows,
    so that early stopping never sees the rows that score the model; None when too few groups."""
    try:
        tr, stop = group_folds(y, groups, 5, seed)[0]
    except FeatxError:
        return None
    return tr, stop


@dataclass
class _Fitter:
    """Fits one head's candidates: balanced sample weights where asked, LightGBM early stopping inside."""

    spec: HeadSpec
    seed: int

    def fit(self, model: Pipeline, X, y, groups=None) -> Pipeline:
        kwargs = {}
        if self.spec.weight_samples:
            kwargs["clf__sample_weight"] = compute_sample_weight("balanced", y)
        inner = early_stopping_rows(y, groups, self.seed) if is_lightgbm(self.spec) and groups is not None else None
        if inner is None:
            return model.fit(X, y, **kwargs)
        from lightgbm import early_stopping

        tr, stop = inner
        prep = model[:-1].fit(X[tr], y[tr]) if len(model) > 1 else None
        Xt = prep.transform(X[tr]) if prep is not None else X[tr]
        Xs = prep.transform(X[stop]) if prep is not None else X[stop]
        model[-1].fit(Xt, y[tr], eval_X=(Xs,), eval_y=(y[stop],),
                      callbacks=[early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])
        return model

    def final(self, base: Pipeline, params: dict, trees: list, X, y) -> Pipeline:
        """The chosen candidate refitted on all of train (LightGBM: the median early-stopped tree count)."""
        model = clone(base).set_params(**params)
        if any(trees):
            model.set_params(clf__n_estimators=int(np.median([t for t in trees if t])))
        return self.finished(model, X, y) if self.spec.finish is not None else self.fit(model, X, y)

    def finished(self, model: Pipeline, X, y) -> Pipeline:
        """Refit the selected step inside its wrapper (the same hyperparameters, now with probabilities)."""
        steps = list(model.steps)
        steps[-1] = ("clf", self.spec.finish(clone(steps[-1][1])))
        return self.fit(Pipeline(steps), X, y)

    @staticmethod
    def trees(model: Pipeline) -> int | None:
        """The tree count a LightGBM model was early-stopped at (its n_estimators when refitted)."""
        step = model[-1]
        if not is_lightgbm_model(step):
            return None
        return int(getattr(step, "best_iteration_", 0) or step.n_estimators)


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
    """The best score's index; refused when no score is defined, so nothing is chosen by default."""
    values = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    if not np.isfinite(values).any():
        raise FeatxError("no candidate could be scored (ROC-AUC undefined: the held-out rows hold one class); "
                         "give a validation split with every class, or more images per class")
    return int(np.argmax(values))  # ties go to the first, i.e. the simplest / most regularised


def _plain(params: dict) -> dict:
    return {k.removeprefix("clf__"): (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}
