"""Classification metrics, computed one way for every method: heads and fine-tunes.

Binary tasks use the second class (e.g. PNEUMONIA after NORMAL) as positive and a decision
threshold on its probability; tasks with more classes use the argmax and report macro averages
plus per-class figures. Metrics undefined on a split (ROC-AUC with one class present) are None.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as M

from .significance import bootstrap_ci


def evaluate(y_true, proba, classes: list[str], threshold: float = 0.5) -> dict:
    """Every metric of one split: `proba` has one column per class, in the order of `classes`."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(1, keepdims=True)  # float32 rows drift from 1 by more than sklearn accepts
    k = len(classes)
    labels = np.arange(k)
    pred = (proba[:, 1] >= threshold).astype(int) if k == 2 else proba.argmax(1)
    cm = M.confusion_matrix(y_true, pred, labels=labels)
    present = np.unique(y_true)
    out = {"n": int(len(y_true)), "accuracy": M.accuracy_score(y_true, pred),
           "balanced_accuracy": _balanced_accuracy(cm)}
    if k == 2:
        tn, fp, fn, tp = cm.ravel()
        out.update(
            precision=_ratio(tp, tp + fp), recall=_ratio(tp, tp + fn), specificity=_ratio(tn, tn + fp),
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            roc_auc=M.roc_auc_score(y_true, proba[:, 1]) if len(present) == 2 else None,
            pr_auc=M.average_precision_score(y_true, proba[:, 1]) if len(present) == 2 else None,
            brier=M.brier_score_loss(y_true, proba[:, 1], pos_label=1),
            threshold=threshold,
        )
        out["sensitivity"] = out["recall"]
    else:
        per_class = {}
        for c, name in enumerate(classes):
            tp = cm[c, c]
            fp, fn = cm[:, c].sum() - tp, cm[c, :].sum() - tp
            tn = cm.sum() - tp - fp - fn
            per_class[name] = {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
                               "specificity": _ratio(tn, tn + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                               "roc_auc": M.roc_auc_score(y_true == c, proba[:, c]) if 0 < (y_true == c).sum() < len(y_true) else None,
                               "support": int(cm[c].sum())}
        for metric in ("precision", "recall", "specificity", "f1", "roc_auc"):
            values = [v[metric] for v in per_class.values() if v[metric] is not None]
            out[metric] = float(np.mean(values)) if values else None
        onehot = np.eye(k)[y_true]
        out.update(pr_auc=M.average_precision_score(onehot, proba, average="macro") if len(present) == k else None,
                   brier=float(((proba - onehot) ** 2).sum(1).mean()), per_class=per_class)
        out["sensitivity"] = out["recall"]
    out["log_loss"] = M.log_loss(y_true, np.clip(proba, 1e-15, 1), labels=labels)
    out["confusion_matrix"] = cm.tolist()
    return {key: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for key, v in out.items()}


MAX_BOOTSTRAPPED = 50_000  # a split larger than this (out-of-core training sets) gets no interval: memory


def evaluate_with_intervals(y_true, proba, classes: list[str], threshold: float = 0.5, *, n_boot: int = 1000,
                            seed: int = 0) -> dict:
    """`evaluate`, and under "ci" a stratified bootstrap 95% interval of each metric featx prints (none where
    the split holds one class): what fit and finetune save and show."""
    out = evaluate(y_true, proba, classes, threshold)
    y = np.asarray(y_true)
    ci = bootstrap_ci(y, np.asarray(proba, dtype=np.float64), threshold if len(classes) == 2 else None,
                      n_boot=n_boot, seed=seed) if 1 < len(np.unique(y)) and len(y) <= MAX_BOOTSTRAPPED else {}
    out["ci"] = {name: None if bounds is None else list(bounds) for name, bounds in ci.items()}  # as JSON keeps it
    return out


def _ratio(a, b) -> float | None:
    return float(a / b) if b else None


def _balanced_accuracy(cm: np.ndarray) -> float:
    recalls = [cm[c, c] / cm[c].sum() for c in range(len(cm)) if cm[c].sum()]
    return float(np.mean(recalls)) if recalls else 0.0
