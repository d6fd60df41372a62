"""How well a classifier tells two sets of feature rows apart: the shift score of `featx shift`, a study's
target site and a model card's target (0.5: the features show no shift; 1: every image betrays its set)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .._core.errors import FeatxError
from .folds import group_folds
from .significance import bootstrap_ci


def domain_auc(A: np.ndarray, B: np.ndarray, groups: list[str], seed: int = 0, folds: int = 5,
               n_boot: int = 1000) -> tuple[float, tuple[float, float]]:
    """Out-of-fold ROC-AUC of a standardised logistic regression telling rows of B from rows of A (folds keep
    each group on one side), with a bootstrap interval."""
    if len(A) < 2 or len(B) < 2:
        raise FeatxError("each split needs at least 2 images to measure a shift")
    X = np.vstack([A, B]).astype(np.float64)
    y = np.r_[np.zeros(len(A), int), np.ones(len(B), int)]
    proba = np.zeros(len(y))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    for train, held_out in group_folds(y, np.asarray(groups), folds, seed):
        proba[held_out] = model.fit(X[train], y[train]).predict_proba(X[held_out])[:, 1]
    both = np.c_[1 - proba, proba]
    return float(roc_auc_score(y, proba)), bootstrap_ci(y, both, None, n_boot=n_boot, seed=seed)["roc_auc"]
