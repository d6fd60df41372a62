"""Decision thresholds: a fixed probability, or a rule chosen on held-out predictions, resolved one way.

Binary tasks threshold the second class's probability (e.g. PNEUMONIA after NORMAL); with more
classes the most probable class wins and no threshold applies.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as M

from .._core.errors import FeatxError

THRESHOLD_RULES = ("youden", "f1", "sensitivity=<v>")


def parse_threshold(threshold) -> float | str:
    """--threshold as given: a fixed probability in (0, 1), or a rule name, checked now rather than
    after minutes of training."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        threshold_rule(str(threshold))
        return str(threshold)
    if not 0 < value < 1:
        raise FeatxError(f"--threshold must lie between 0 and 1, got {value}")
    return value


def threshold_rule(rule: str) -> float | None:
    """Check a threshold rule; returns the target of `sensitivity=<v>`, None for youden and f1."""
    if rule in ("youden", "f1"):
        return None
    if rule.startswith("sensitivity="):
        try:
            target = float(rule.split("=", 1)[1])
        except ValueError:
            target = -1
        if not 0 < target <= 1:
            raise FeatxError(f"--threshold {rule}: the sensitivity must be a number in (0, 1]")
        return target
    raise FeatxError(f"--threshold must be a number or one of {', '.join(THRESHOLD_RULES)}, not {rule!r}")


def choose_threshold(y_true, positive_proba, rule: str) -> float:
    """A decision threshold picked on validation data: Youden's J, best F1, or a target sensitivity."""
    target = threshold_rule(rule)
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        raise FeatxError("cannot choose a threshold: the validation split has only one class")
    if rule == "youden":
        fpr, tpr, thresholds = M.roc_curve(y_true, positive_proba)
        return float(np.clip(thresholds[np.argmax(tpr - fpr)], 0, 1))
    if rule == "f1":
        precision, recall, thresholds = M.precision_recall_curve(y_true, positive_proba)
        f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
        return float(thresholds[np.argmax(f1)])
    positives = np.sort(np.asarray(positive_proba)[y_true == 1])
    # the highest threshold that still flags at least `target` of the positives
    index = int(np.floor((1 - target) * len(positives) + 1e-9))
    return float(positives[min(index, len(positives) - 1)])


def check_threshold(threshold, n_classes: int) -> float | str:
    """parse_threshold, and a rule needs two classes."""
    value = parse_threshold(threshold)
    if isinstance(value, str) and n_classes != 2:
        raise FeatxError(f"--threshold {value} applies to two classes; with {n_classes} classes featx predicts "
                         "the most probable one")
    return value


def resolve_threshold(threshold, y_held, proba_held, n_classes: int) -> float | None:
    """The threshold a model keeps: None for more than two classes, the number given, or the
    rule applied to held-out labels and probabilities (validation, or out-of-fold)."""
    if n_classes != 2:
        return None
    value = parse_threshold(threshold)
    if not isinstance(value, str):
        return value
    return choose_threshold(y_held, np.asarray(proba_held)[:, 1], value)


def rule_name(threshold) -> str:
    """What a sidecar records as the threshold rule: the rule's name, or "fixed"."""
    value = parse_threshold(threshold)
    return value if isinstance(value, str) else "fixed"
