"""A model's decision rule as one value: its classes, the threshold on the second class's probability (two
classes) and how that threshold was chosen. Predictors, point metrics, the model card, the ONNX export and
the demo all decide, describe and rank through it, so no two of them can disagree.

Two classes with a threshold: the second class when its probability reaches the threshold, else the first.
Otherwise (more classes, or no threshold) the most probable class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WHERE = "validation split or CV on train, never test"


def decided(proba: np.ndarray, threshold: float | None) -> np.ndarray:
    """The index of the decided class per row."""
    proba = np.asarray(proba)
    if proba.shape[1] == 2 and threshold is not None:
        return (proba[:, 1] >= threshold).astype(int)
    return proba.argmax(1)


@dataclass(frozen=True)
class DecisionRule:
    classes: tuple[str, ...]
    threshold: float | None = None
    how: str = "fixed"  # the threshold rule that chose it ("youden", "f1", "sensitivity=0.9") or "fixed"
    where: str | None = None  # on which labelled images, when not the model's own held-out predictions

    @classmethod
    def of(cls, info: dict) -> DecisionRule:
        """The rule a sidecar records."""
        classes = tuple(str(c) for c in info["classes"])
        threshold = info.get("threshold") if len(classes) == 2 else None
        return cls(classes, threshold, str(info.get("threshold_rule") or "fixed"), (info.get("local") or {}).get("where"))

    @property
    def thresholded(self) -> bool:
        return len(self.classes) == 2 and self.threshold is not None

    def indices(self, proba) -> np.ndarray:
        return decided(proba, self.threshold if self.thresholded else None)

    def decide(self, proba) -> np.ndarray:
        """Class names, one per row of `proba` (columns follow `classes`)."""
        return np.asarray(self.classes)[self.indices(proba)]

    def margin(self, proba) -> np.ndarray:
        """How far each row is from changing its answer: |p - threshold|, or the gap of the two most probable."""
        proba = np.asarray(proba, float)
        if self.thresholded:
            return np.abs(proba[:, 1] - self.threshold)
        top = np.sort(proba, axis=1)
        return top[:, -1] - top[:, -2]

    def describe(self, *, where: bool = False) -> str:
        """The rule in words: 'PNEUMONIA when p(PNEUMONIA) >= 0.4120, else NORMAL (threshold chosen by youden on
        held-out predictions)'; `where`: and which held-out predictions those may be."""
        if not self.thresholded:
            return "the most probable class"
        negative, positive = self.classes
        if self.how == "fixed":
            how = "fixed"
        elif self.where:
            how = f"chosen by {self.how} on {self.where}"
        else:
            how = f"chosen by {self.how} on held-out predictions" + (f": {WHERE}" if where else "")
        return f"{positive} when p({positive}) >= {self.threshold:.4f}, else {negative} (threshold {how})"

    def python(self, proba: str = "p", recipe: str = "r") -> str:
        """The decision as a Python expression over a probability vector `proba` and the export recipe `recipe`."""
        return f'int({proba}[1] >= {recipe}["threshold"])' if self.thresholded else f"int({proba}.argmax())"

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "threshold": self.threshold if self.thresholded else None,
                "threshold_rule": self.how, "decision": self.describe()}
