"""Patient-grouped, stratified folds: the one way featx cuts cross-validation folds (head selection,
early stopping, shift's domain classifier), so no patient is ever on both sides of a fold."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .._core.errors import FeatxError


class TooFewGroups(FeatxError):
    """Group k-fold cannot cut two folds: a class has fewer than two patient groups. `per_class`:
    {class index: its number of groups}, for callers that name the classes."""

    def __init__(self, per_class: dict[int, int]):
        self.per_class = per_class
        counts = ", ".join(f"class {c}: {n}" for c, n in per_class.items())
        super().__init__(f"too few patient groups per class for cross-validation ({counts}; at least 2 of each "
                         "are needed)")


def group_folds(y, groups, folds: int, seed: int) -> list:
    groups = np.asarray(groups if groups is not None else np.arange(len(y)))
    smallest_class = min(np.bincount(y)[np.bincount(y) > 0])
    k = min(folds, len(set(groups.tolist())), smallest_class)
    per_class = {int(c): len(set(groups[y == c].tolist())) for c in np.unique(y)}
    if k < 2 or min(per_class.values()) < 2:  # a class of one patient is never both trained on and held out
        raise TooFewGroups(per_class)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, groups))
