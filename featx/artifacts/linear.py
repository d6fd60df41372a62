"""A saved linear head as weights on raw features: its StandardScaler and PCA folded in.

Used to start a fine-tune's linear layer from a linear probe, and to draw a linear head's exact
class activation map. Both need the same (coef, intercept) on the backbone's pooled features.
"""

from __future__ import annotations

import numpy as np


def linear_weights(pipeline) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of a linear head Pipeline on raw pooled features, float64.

    coef has one row per class, or one row for a binary head (the score of the second class).
    A calibrated linear SVM gives its margin (Platt scaling is monotone in it).
    """
    clf = pipeline[-1]
    if hasattr(clf, "calibrated_classifiers_"):
        clf = clf.calibrated_classifiers_[0].estimator
    coef, intercept = clf.coef_.astype(np.float64), np.atleast_1d(clf.intercept_).astype(np.float64)
    steps = dict(pipeline.steps)
    if "pca" in steps:
        pca = steps["pca"]
        intercept = intercept - coef @ pca.components_ @ pca.mean_
        coef = coef @ pca.components_
    if "scale" in steps:
        scaler = steps["scale"]
        scale = np.where(scaler.scale_ == 0, 1, scaler.scale_)
        intercept = intercept - (coef * scaler.mean_ / scale).sum(1)
        coef = coef / scale
    return coef, intercept
