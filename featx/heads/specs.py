"""The six heads: how each is built (a plain scikit-learn Pipeline) and which grid selection tries.

Classes are balanced by default (the X-ray set is about 3:1). Grids are kept small enough that
all six heads on 5,216 x 2,048 features take under a minute on two cores (benchmarks/fit_speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from .._core.accelerators import threads_asked
from .._core.errors import FeatxError

EARLY_STOPPING_ROUNDS = 30


def _lightgbm(seed: int):
    from lightgbm import LGBMClassifier

    # n_estimators is an upper bound: early stopping on validation picks the number of trees. Threads as the
    # process was given them: two study workers each taking every core spin-wait on each other (40x slower).
    return LGBMClassifier(n_estimators=1000, class_weight="balanced", subsample=0.8, subsample_freq=1,
                          colsample_bytree=0.2, max_bin=63, random_state=seed, verbose=-1, n_jobs=threads_asked())


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


def is_lightgbm(spec: HeadSpec) -> bool:
    """LightGBM trains with early stopping on held-out rows."""
    return spec.make is _lightgbm


def is_lightgbm_model(step) -> bool:
    """Whether a fitted final step is a LightGBM model (without importing lightgbm)."""
    return type(step).__module__.split(".")[0] == "lightgbm"


def head_names(head) -> list[str]:
    """Head names from `all`, one name, names separated by commas ("logreg,knn") or a list: one syntax for
    fit, study and the API. An unknown name lists the valid ones."""
    parts = head.split(",") if isinstance(head, str) else list(head)
    names = []
    for part in (str(p).strip() for p in parts):
        if part == "all":
            names += HEAD_NAMES
        elif part in HEADS:
            names.append(part)
        elif part:
            raise FeatxError(f"unknown head '{part}': choose among {', '.join(HEAD_NAMES)} (several separated by "
                             "commas), or all")
    if not names:
        raise FeatxError(f"--head names no head: choose among {', '.join(HEAD_NAMES)}, or all")
    return list(dict.fromkeys(names))


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
