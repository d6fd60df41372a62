"""Conformal prediction sets calibrated on labelled images of one site, by crepes.

Class-conditional (Mondrian) split conformal classification: each class keeps the scores 1 - p(class) of its
own calibration images, and a new image's set holds every class whose p-value exceeds 1 - confidence. If the
calibration images and later images of the site are exchangeable, each class's true label is in the set with
probability at least `confidence`, for that class on its own (Vovk et al. 2005; crepes' `class_cond=True`).
p-values are not smoothed, so an image always gets the same set. crepes (Boström 2022) was chosen over MAPIE
because it works on a model's scores as they are (featx's probabilities come from its own image pipeline, not
from a scikit-learn estimator) and has the class-conditional form, which keeps the promise for the rarer class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._core.errors import FeatxError
from .._core.optional import library

CONFIDENCE = 0.9
HOW = "class-conditional split conformal (crepes), scores 1 - p(class), p-values not smoothed"


def smallest_class(confidence: float) -> int:
    """Calibration images a class needs before its set can ever leave a class out: (n + 1)(1 - c) >= 1."""
    return math.ceil(confidence / (1 - confidence) - 1e-9)


def check_confidence(confidence: float) -> float:
    if not 0.5 <= confidence < 1:
        raise FeatxError(f"--confidence must lie in [0.5, 1), got {confidence}")
    return float(confidence)


@dataclass(frozen=True)
class ConformalSets:
    """What a model keeps to give sets: the confidence, and each class's calibration scores."""

    confidence: float
    scores: tuple[tuple[float, ...], ...]  # per class, sorted

    @classmethod
    def fit(cls, y, proba, confidence: float, classes) -> ConformalSets:
        """Calibrate on labels `y` (indices of `classes`) and the model's probabilities; refuses a class with too
        few images for its set ever to exclude a class at this confidence."""
        check_confidence(confidence)
        y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
        need = smallest_class(confidence)
        short = [f"{classes[c]} has {int((y == c).sum())}" for c in range(len(classes)) if (y == c).sum() < need]
        if short:
            raise FeatxError(f"conformal sets at {confidence:.0%} need at least {need} calibration images of each "
                             f"class; {', '.join(short)} (label more, or lower --confidence)")
        alphas = 1 - proba[np.arange(len(y)), y]
        return cls(confidence, tuple(tuple(sorted(float(a) for a in alphas[y == c])) for c in range(len(classes))))

    def p_values(self, proba) -> np.ndarray:
        """crepes' p-value of each class for each row (columns follow the classes)."""
        crepes = library("crepes", "crepes", "site")
        proba = np.asarray(proba, dtype=np.float64)
        cc = crepes.ConformalClassifier()
        cc.fit(np.concatenate([np.asarray(s) for s in self.scores]),
               bins=np.concatenate([np.full(len(s), c) for c, s in enumerate(self.scores)]))
        return np.column_stack([cc.predict_p(1 - proba, np.full(len(proba), c), smoothing=False)[:, c]
                                for c in range(proba.shape[1])])

    def members(self, proba) -> np.ndarray:
        """A boolean matrix: which classes each row's set holds."""
        return self.p_values(proba) > 1 - self.confidence

    def describe(self) -> str:
        counts = ", ".join(str(len(s)) for s in self.scores)
        return (f"{self.confidence:.0%} prediction sets ({HOW}; {counts} calibration images per class)")

    def to_json(self) -> dict:
        return {"confidence": self.confidence, "scores": [list(s) for s in self.scores], "method": HOW}

    @classmethod
    def from_json(cls, record: dict | None) -> ConformalSets | None:
        if not record:
            return None
        return cls(float(record["confidence"]), tuple(tuple(float(a) for a in s) for s in record["scores"]))


def set_words(members, classes) -> str:
    """A set for people: "PNEUMONIA"; "NORMAL or PNEUMONIA: not sure"; none: unlike the calibration images."""
    names = [str(c) for c, inside in zip(classes, members) if inside]
    if not names:
        return "no class: unlike this site's calibration images"
    return names[0] if len(names) == 1 else " or ".join(names) + ": not sure"
