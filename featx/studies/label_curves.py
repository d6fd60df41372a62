"""How a head's answer changes with the number of labels: a head chosen and fitted on each label budget of
a cache's training pool (featx.data.budgets), and scored on an evaluation split that no choice sees:
the fit units of `featx study` (studies.study).

Honest budgets: at n images a head sees only those n (hyperparameters by patient-grouped CV inside them,
the threshold from those held-out predictions); the evaluation split never changes and never enters a
choice, so shuffling its labels changes no chosen parameter and no threshold.
"""

from __future__ import annotations

import time

import numpy as np

from .._core.errors import FeatxError
from ..artifacts.sidecar import MethodId
from ..models.numerics import Numerics
from ..data.budgets import Budget, label_budgets
from ..evaluation.folds import TooFewGroups
from ..evaluation.significance import bootstrap_auc_ci, point_metrics
from ..evaluation.thresholds import check_threshold, resolve_threshold
from ..features.store import FeatureStore
from ..heads.selection import select_head
from ..heads.specs import head_names

COLUMNS = ("method", "n", "n_images", "repeat", "roc_auc", "roc_auc_low", "roc_auc_high", "balanced_accuracy",
           "sensitivity", "specificity", "accuracy", "f1", "pr_auc", "threshold", "params", "train_seconds",
           "images_per_second")


def head_learning_curve(store: FeatureStore, head: str = "logreg", sizes=(25, 50, 100, 250, 500, 1000, "all"), *,
                        repeats: int = 3, seed: int = 0, pool: str = "train", evaluate_on: str = "test",
                        threshold: str | float = "youden", n_boot: int = 1000) -> list[dict]:
    """One record (COLUMNS, and the evaluation split's "proba") per size and repeat: `head` chosen and fitted
    on that budget of the `pool` split, scored on `evaluate_on` with a stratified bootstrap 95% ROC-AUC interval."""
    curve = Curve(Pool(store, pool, evaluate_on), head, threshold=threshold, seed=seed, n_boot=n_boot)
    return [curve.fit(budget) for budget in curve.budgets(sizes, repeats)]


class Pool:
    """A cache's training pool and evaluation split, read once for every head fitted on them."""

    def __init__(self, store: FeatureStore, pool: str = "train", evaluate_on: str = "test"):
        self.store = store
        self.X, self.y, self.groups = _split(store, pool)
        self.X_eval, self.y_eval, _ = _split(store, evaluate_on)


class Curve:
    """One head on one pool: one `fit` per budget."""

    def __init__(self, pool: Pool, head: str, *, threshold: str | float = "youden", seed: int = 0,
                 n_boot: int = 1000):
        [self.name] = head_names(head)
        self.store, self.seed, self.n_boot = pool.store, seed, n_boot
        self.rule = check_threshold(threshold, len(pool.store.classes))
        self.X, self.y, self.groups = pool.X, pool.y, pool.groups
        self.X_eval, self.y_eval = pool.X_eval, pool.y_eval
        self.method = MethodId(pool.store.config["backbone"], self.name,
                               Numerics.words(pool.store.config.get("compute")))

    def budgets(self, sizes, repeats: int) -> list[Budget]:
        return label_budgets(self.y, self.groups, sizes, repeats=repeats, seed=self.seed, classes=self.store.classes)

    def select(self, budget: Budget, site=None):
        """(the selection, its threshold) of the head chosen and fitted on `budget`'s images alone: by
        patient-grouped CV inside them, the threshold from their held-out predictions. `site`: a
        heads.adaptation.SiteFit whose adaptation the head gets, learnt on these images and the target's."""
        rows = budget.rows
        X = self.X[rows]
        mapped = site.learn(X) if site is not None else None
        try:
            with one_blas_thread():
                sel = select_head(self.name, mapped.source(X) if mapped else X, self.y[rows], self.groups[rows],
                                  seed=self.seed)
        except (TooFewGroups, FeatxError) as exc:  # e.g. folds of one class: the budget is too small
            raise FeatxError(f"{self.method} at n={budget.n or 'all'} (repeat {budget.repeat}): {exc}") from None
        if site is not None:
            sel, _ = site.finish(sel)
        return sel, resolve_threshold(self.rule, sel.selection_y, sel.selection_proba, len(self.store.classes))

    def fit(self, budget: Budget, site=None, also: np.ndarray | None = None) -> dict:
        """The head chosen and fitted on `budget`'s images alone (adapted by `site`), scored on the evaluation
        split (COLUMNS); with `also`, its probabilities on those feature rows too ("also_proba")."""
        started = time.perf_counter()
        sel, cut = self.select(budget, site)
        seconds = time.perf_counter() - started
        with one_blas_thread():
            proba = sel.estimator.predict_proba(self.X_eval)
        record = unit_record(self.method, budget.n, budget.n_images, budget.repeat, self.y_eval, proba, cut,
                             sel.params, seconds, n_boot=self.n_boot, seed=self.seed)
        if also is not None:
            record["also_proba"] = sel.estimator.predict_proba(also)
        return record


def unit_record(method: MethodId, n, n_images: int, repeat: int, y, proba, threshold, params: dict, seconds: float, *,
                images_per_second: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """One study row (COLUMNS, and "proba"): a method's metrics on the evaluation split at `threshold`, with
    a stratified bootstrap 95% ROC-AUC interval; `n` None is the whole pool. `images_per_second`: the
    training throughput (a fine-tune's images per second over its epochs; a head's, its images over its fit)."""
    metrics = point_metrics(np.asarray(y), np.asarray(proba), threshold)
    ci = bootstrap_auc_ci(y, proba, n_boot=n_boot, seed=seed) if metrics.get("roc_auc") is not None else None
    return {"method": method.label, "n": n or "all", "n_images": n_images, "repeat": repeat, **metrics,
            "roc_auc_low": ci[0] if ci else None, "roc_auc_high": ci[1] if ci else None,
            "threshold": threshold, "params": params, "train_seconds": seconds,
            "images_per_second": images_per_second or n_images / max(seconds, 1e-9), "proba": proba}


def one_blas_thread():
    """A study's heads on one BLAS thread: a product's sums in one order, whichever process runs the unit and
    with how many cores, so every executor saves the same records (two threads moved a logreg's PR-AUC at
    n=500 by 4e-9). LightGBM's trees do not depend on their threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _split(store: FeatureStore, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = store.arrays(split)
    if not len(y):
        raise FeatxError(f"{store.path} has no {split} images to {'learn from' if split == 'train' else 'evaluate on'}")
    return X.astype(np.float32, copy=False), y, np.asarray(store.groups(split))
